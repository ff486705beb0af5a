"""End to end on CPU: a checkpoint trained by the training pipeline (train.py's ``run``),
evaluated by ``python -m memarch.eval`` on passkey + needle + MQAR + a 4-example
LongBench-format JSONL written here; every JSON, JSONL and PNG output is checked. Also the
command line's errors (unknown task, no prompts, unknown config key)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from memarch.eval.longbench.data import FIELDS
from train_helpers import ROOT, TINY, compose_cfg

PNG = b"\x89PNG\r\n\x1a\n"
PROMPTS = {"triviaqa": "Answer the question based on the given passage.\n\n{context}\n\n{input}",
           "passage_count": "There are some paragraphs.\n\n{context}\n\nHow many? {input}\n"}


def _train(tmp, overrides):
    from memarch.lit.train import run
    out = run(compose_cfg([*TINY, "trainer.max_steps=4", "validate_at_end=false",
                           "checkpoint.every_n_steps=4", *overrides], tmp))
    return out["checkpoint"]


@pytest.fixture(scope="module")
def byte_ckpt(tmp_path_factory):
    """The passkey experiment: a byte-level model (it can read text and MQAR tokens)."""
    return _train(tmp_path_factory.mktemp("train_pk"), ["experiment=passkey_tiny",
                                                          "data.dataset.seq_len=128"])


@pytest.fixture(scope="module")
def mqar_ckpt(tmp_path_factory):
    """``make train``'s experiment (hybrid_tiny): an MQAR model over 65 token ids."""
    return _train(tmp_path_factory.mktemp("train_mqar"), [])


def _cli(*args, timeout=300):
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "memarch.eval", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _longbench_files(tmp):
    (tmp / "dataset2prompt.json").write_text(json.dumps(PROMPTS))
    data = tmp / "lb"
    data.mkdir()
    for ds, answers in (("triviaqa", [["Paris"], ["London", "london city"]]),
                        ("passage_count", [["3"], ["4"]])):
        rows = [{"input": f"Question {i}?", "context": "Paragraph 1: some text. " * (10 + 40 * i),
                 "answers": a, "length": 100 + 400 * i, "dataset": ds, "language": "en",
                 "all_classes": None, "_id": f"{ds}{i}"} for i, a in enumerate(answers)]
        (data / f"{ds}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp / "dataset2prompt.json", data


def _png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG


@pytest.mark.slow
def test_trained_checkpoint_evaluated_from_the_command_line(byte_ckpt, tmp_path, checks):
    prompts, data = _longbench_files(tmp_path)
    out = tmp_path / "eval"
    r = _cli(f"checkpoint={byte_ckpt}", "preset=smoke",
             "tasks=[passkey,needle,mqar,longbench:triviaqa,longbench:passage_count]",
             "settings.passkey.lengths=[256,512]", "settings.passkey.n_per_length=2",
             "settings.needle.lengths=[256,512]", f"longbench.prompts={prompts}",
             f"longbench.data_dir={data}", "longbench.max_length=600", f"out_dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    for line in ("passkey", "needle", "mqar", "longbench:triviaqa", "longbench:passage_count"):
        checks.true(line in r.stdout, f"summary table lists {line}")
    summary = json.loads((out / "summary.json").read_text())
    checks.true(summary["model"] == str(byte_ckpt), "model named by its checkpoint")
    res = summary["results"]
    expected_lengths = {"passkey": ["256", "512"], "needle": ["256", "512"],
                        "mqar": ["64", "128"]}
    for task, lengths in expected_lengths.items():
        s = json.loads((out / f"{task}.json").read_text())
        checks.true(s == res[task], f"{task}.json == summary entry")
        checks.true(list(s["by_length"]) == lengths, f"{task}: by_length {s['by_length']}")
        checks.true(0 <= s["score"] <= 100 and s["max_length_run"] >= int(lengths[-1]) - 2,
                    f"{task}: score and longest length")
        rows = [json.loads(x) for x in (out / f"{task}.jsonl").read_text().splitlines()]
        checks.true(len(rows) == s["n_examples"] and rows, f"{task}.jsonl: one line an example")
        checks.true(_png(out / f"{task}_by_length.png"), f"{task}_by_length.png")
    grid = res["needle"]["by_depth_length"]
    checks.true(list(grid) == ["0", "50", "100"] and all(list(v) == ["256", "512"]
                                                         for v in grid.values()), "needle grid")
    checks.true(_png(out / "needle_heatmap.png"), "needle_heatmap.png")
    lb = json.loads((out / "longbench.json").read_text())
    checks.true(lb == res["longbench"], "longbench.json == summary entry")
    for ds in ("triviaqa", "passage_count"):
        t = lb["tasks"][f"longbench:{ds}"]
        checks.true(t["n_examples"] == 2 and 0 <= t["score"] <= 100, f"{ds}: {t}")
        rows = [json.loads(x) for x in (out / "longbench" / f"{ds}.jsonl").read_text()
                .splitlines()]
        checks.true([r["_id"] for r in rows] == [f"{ds}0", f"{ds}1"], f"{ds}: rows in order")
        checks.true(rows[1]["prompt_tokens"] > 600 and rows[1]["input_tokens"] == 600,
                    f"{ds}: the long prompt is truncated to the budget")
        checks.true(rows[0]["input_tokens"] == rows[0]["prompt_tokens"] < 600, "short: kept")


@pytest.mark.slow
def test_default_training_checkpoint_runs_mqar_and_refuses_text(mqar_ckpt, tmp_path, checks):
    """``make train``'s experiment (hybrid_tiny) is an MQAR model over 65 token ids: MQAR
    runs; a text suite stops with a message that says why."""
    ckpt = mqar_ckpt
    r = _cli(f"checkpoint={ckpt}", "tasks=[mqar]", "settings.mqar.lengths=[64]",
             "settings.mqar.n_per_length=32", f"out_dir={tmp_path / 'a'}")
    assert r.returncode == 0, r.stderr[-3000:]
    checks.true(json.loads((tmp_path / "a" / "mqar.json").read_text())["by_length"].keys()
                == {"64"}, "mqar ran")
    r = _cli(f"checkpoint={ckpt}", "tasks=[passkey]", "settings.passkey.lengths=[128]",
             f"out_dir={tmp_path / 'b'}")
    checks.true(r.returncode != 0 and "vocab_size is 65" in r.stderr
                and "Traceback" not in r.stderr, r.stderr[-2000:])


@pytest.mark.slow
def test_command_line_errors_are_one_clear_line(byte_ckpt, tmp_path, checks):
    r = _cli(f"checkpoint={byte_ckpt}", "tasks=[passky]", f"out_dir={tmp_path}")
    checks.true(r.returncode != 0 and "unknown task(s) ['passky']; known tasks:" in r.stderr
                and "passkey" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:])
    r = _cli(f"checkpoint={byte_ckpt}", "tasks=[longbench:qasper]", f"out_dir={tmp_path}")
    checks.true(r.returncode != 0 and "longbench.prompts is not set" in r.stderr
                and "dataset2prompt.json" in r.stderr, r.stderr[-2000:])
    r = _cli(f"checkpoint={tmp_path / 'none.ckpt'}", "tasks=[mqar]", f"out_dir={tmp_path}")
    checks.true(r.returncode != 0 and "checkpoint: file not found" in r.stderr, r.stderr[-2000:])
    r = _cli(f"checkpoint={byte_ckpt}", "tasks=[mqar]", "+batchsize=3", f"out_dir={tmp_path}")
    checks.true(r.returncode != 0 and "unknown key(s) ['batchsize']" in r.stderr,
                r.stderr[-2000:])


@pytest.mark.slow
def test_longbench_data_and_setting_errors_from_the_command_line(byte_ckpt, tmp_path, checks):
    """Probe (command line): ``longbench.limit=0`` and a trec row with ``all_classes: null``
    are one clear line each (naming ``longbench.limit``; the file, line and task), before any
    suite runs; empty ``answers`` and a ``longbench.max_length`` too small for the
    template give warnings (task, count / lengths) and the run goes on."""
    prompts, data = _longbench_files(tmp_path)
    lb = [f"longbench.prompts={prompts}", f"longbench.data_dir={data}"]
    r = _cli(f"checkpoint={byte_ckpt}", "tasks=[longbench:triviaqa]", *lb, "longbench.limit=0",
             f"out_dir={tmp_path / 'a'}")
    checks.true(r.returncode != 0 and "longbench.limit must be a positive int or null" in r.stderr
                and "Traceback" not in r.stderr, r.stderr[-2000:])
    trec = {"input": "What is it?", "context": "Type: Location", "answers": ["Location"],
            "length": 10, "dataset": "trec", "language": "en", "all_classes": None, "_id": "t0"}
    (data / "trec.jsonl").write_text(json.dumps(trec) + "\n")
    (tmp_path / "dataset2prompt.json").write_text(json.dumps({**PROMPTS,
                                                               "trec": "{context}\n{input}"}))
    r = _cli(f"checkpoint={byte_ckpt}", "tasks=[passkey,longbench:trec]", *lb,
             f"out_dir={tmp_path / 'b'}")
    checks.true(r.returncode != 0 and "trec.jsonl: line 1" in r.stderr
                and "'trec'" in r.stderr and "all_classes" in r.stderr
                and "Traceback" not in r.stderr, r.stderr[-2000:])
    checks.true(not list((tmp_path / "b").glob("*.json*")), "checked before passkey ran")
    rows = [json.loads(x) for x in (data / "triviaqa.jsonl").read_text().splitlines()]
    rows[1]["answers"] = []
    (data / "triviaqa.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    r = _cli(f"checkpoint={byte_ckpt}", "tasks=[longbench:triviaqa]", *lb,
             "longbench.max_length=60", f"out_dir={tmp_path / 'c'}")
    assert r.returncode == 0, r.stderr[-3000:]
    checks.true("longbench:triviaqa: 1 of 2 examples have empty 'answers'" in r.stderr,
                r.stderr[-2000:])
    checks.true("longbench:triviaqa: the prompt template without the context" in r.stderr
                and "longbench.max_length=60" in r.stderr, r.stderr[-2000:])
    lbs = json.loads((tmp_path / "c" / "longbench.json").read_text())
    checks.true(lbs["tasks"]["longbench:triviaqa"]["n_examples"] == 2, f"{lbs['tasks']}")


def test_longbench_fields_are_the_official_ones(checks):
    checks.true(set(FIELDS) == {"input", "context", "answers", "length", "dataset", "language",
                                "all_classes", "_id"}, "LongBench's JSONL fields")


@pytest.mark.slow
def test_auto_preset_on_the_default_training_checkpoint(mqar_ckpt, tmp_path, checks):
    """The README's first command (no preset: ``auto``) on ``make train``'s MQAR model runs
    mqar and says which suites it skipped and why."""
    out = tmp_path / "auto"
    r = _cli(f"checkpoint={mqar_ckpt}", "settings.mqar.lengths=[64,128]",
             "settings.mqar.n_per_length=16", f"out_dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    checks.true("auto: skipped passkey, needle, ruler_niah_multikey, ruler_niah_multivalue, "
                "ruler_vt, ruler_cwe, perplexity: a text suite; the tokenizer byte has 256 "
                "text token ids but the model's vocab_size is 65" in r.stdout, r.stdout[-3000:])
    checks.true("auto: skipped longbench:" in r.stdout and "auto: running mqar" in r.stdout,
                r.stdout[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    checks.true(summary["tasks"] == ["mqar"] and list(summary["results"]) == ["mqar"],
                f"{summary['tasks']}")
    checks.true({"passkey", "needle", "ruler_cwe", "perplexity", "longbench"}
                <= set(summary["skipped"]), f"{summary['skipped']}")
    checks.true(list(summary["results"]["mqar"]["by_length"]) == ["64", "128"], "mqar lengths")


@pytest.mark.slow
def test_auto_preset_on_a_byte_checkpoint(byte_ckpt, tmp_path, checks):
    """A byte-level model: the text suites run, mqar is skipped (the model reads text), and
    a length too short for a suite is dropped and reported."""
    out = tmp_path / "auto"
    small = ["settings.passkey.lengths=[256]", "settings.passkey.n_per_length=1",
             "settings.needle.lengths=[256]", "settings.needle.depths=[50]",
             "settings.needle.n_per_cell=1", "+settings.needle.max_new_tokens=4",
             "settings.ruler_niah_multikey.lengths=[600]",
             "settings.ruler_niah_multikey.n_per_length=1",
             "+settings.ruler_niah_multikey.max_new_tokens=4",
             "settings.ruler_niah_multivalue.lengths=[600]",
             "settings.ruler_niah_multivalue.n_per_length=1",
             "+settings.ruler_niah_multivalue.max_new_tokens=4",
             "settings.ruler_vt.lengths=[1000]", "settings.ruler_vt.n_per_length=1",
             "+settings.ruler_vt.max_new_tokens=4",
             "settings.ruler_cwe.lengths=[1024,1700]", "settings.ruler_cwe.n_per_length=1",
             "+settings.ruler_cwe.max_new_tokens=4"]
    r = _cli(f"checkpoint={byte_ckpt}", *small, f"out_dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    text = ["passkey", "needle", "ruler_niah_multikey", "ruler_niah_multivalue", "ruler_vt",
            "ruler_cwe"]
    checks.true(summary["tasks"] == text, f"{summary['tasks']}")
    checks.true("auto: skipped mqar: a token-level task" in r.stdout
                and "reads text (tokenizer byte)" in r.stdout, r.stdout[-3000:])
    checks.true("auto: ruler_cwe: lengths [1024] skipped" in r.stdout, r.stdout[-3000:])
    checks.true(list(summary["results"]["ruler_cwe"]["by_length"]) == ["1700"], "1024 dropped")
    for t in text:
        checks.true(_png(out / f"{t}_by_length.png"), f"{t}_by_length.png")


@pytest.mark.slow
def test_synthetic_preset_is_checked_before_any_suite_runs(byte_ckpt, tmp_path, checks):
    """The issue's run: ``preset=synthetic`` on a byte model stopped after 6 of 7 suites with
    an error that did not name ruler_cwe. Now it stops before the first suite, naming it, and
    leaves no empty output folder."""
    out = tmp_path / "runs" / "synthetic"
    r = _cli(f"checkpoint={byte_ckpt}", "preset=synthetic", f"out_dir={out}")
    checks.true(r.returncode != 0 and "memarch.eval: ruler_cwe: a length of 1024 tokens is too "
                "short for this task" in r.stderr and "Traceback" not in r.stderr,
                r.stderr[-2000:])
    checks.true(not (tmp_path / "runs").exists(), "no empty output folder")


@pytest.mark.slow
def test_failed_runs_leave_no_empty_output_folder(mqar_ckpt, tmp_path, checks):
    for args in (["tasks=[passky]"], ["tasks=[passkey]"], ["+batchsize=3"],
                 [f"checkpoint={tmp_path / 'none.ckpt'}"]):
        out = tmp_path / "eval_outputs" / "2026-01-01" / "00-00-00"
        r = _cli(f"checkpoint={mqar_ckpt}", *args, f"out_dir={out}")
        checks.true(r.returncode != 0 and "memarch.eval:" in r.stderr, r.stderr[-2000:])
        checks.true(not (tmp_path / "eval_outputs").exists(), f"{args}: left {out}")
    ignored = (ROOT / ".gitignore").read_text().split()
    checks.true("eval_outputs/" in ignored and "outputs/" in ignored, ".gitignore")


def test_eval_configs_are_not_training_config_groups(checks):
    """The eval configs live in the memarch.eval package (eval/configs/), outside train.py's
    config path: ``train.py --help`` does not list them; ``python -m memarch.eval --help``
    still finds its presets."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
    groups = r.stdout.split("== Config ==")[0]
    checks.true(r.returncode == 0 and "model:" in groups, r.stderr[-2000:])
    checks.true("eval" not in groups and "preset" not in groups, groups)
    checks.true(not (ROOT / "configs" / "eval").exists(), "configs/eval moved")
    r = _cli("--help")
    checks.true(r.returncode == 0 and "preset: auto, longbench, longbench_e, real, smoke, synthetic"
                in r.stdout and "tasks: auto" in r.stdout, r.stdout[:2000] + r.stderr[-2000:])
