"""LongBench harness: task facts, prompts, middle truncation, prediction + official scoring,
and its errors (missing data / prompts, malformed JSONL, unknown task, bad checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lm_helpers import hybrid_lm
from memarch.eval.longbench import metrics
from memarch.eval.longbench import tasks as lb
from memarch.eval.longbench.run import build_prompt_ids, run_longbench, truncate_middle
from memarch.eval.model import EvalModel
from memarch.eval.run import evaluate, known_tasks

SHARED = Path(__file__).resolve().parents[3] / "shared" / "longbench"

# pred.py's dataset lists, and eval.py's dataset2metric (LongBench v1, THUDM/LongBench)
V1 = ["narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh", "hotpotqa", "2wikimqa",
      "musique", "dureader", "gov_report", "qmsum", "multi_news", "vcsum", "trec", "triviaqa",
      "samsum", "lsht", "passage_count", "passage_retrieval_en", "passage_retrieval_zh", "lcc",
      "repobench-p"]
E = ["qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "gov_report", "multi_news", "trec",
     "triviaqa", "samsum", "passage_count", "passage_retrieval_en", "lcc", "repobench-p"]
METRIC = {"qa_f1_score": ["narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa",
                          "musique", "triviaqa"],
          "qa_f1_zh_score": ["multifieldqa_zh"], "rouge_zh_score": ["dureader", "vcsum"],
          "rouge_score": ["gov_report", "qmsum", "multi_news", "samsum"],
          "classification_score": ["trec", "lsht"], "retrieval_score": ["passage_retrieval_en"],
          "count_score": ["passage_count"], "retrieval_zh_score": ["passage_retrieval_zh"],
          "code_sim_score": ["lcc", "repobench-p"]}
MAXLEN = {"narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "multifieldqa_zh": 64,
          "hotpotqa": 32, "2wikimqa": 32, "musique": 32, "dureader": 128, "gov_report": 512,
          "qmsum": 512, "multi_news": 512, "vcsum": 512, "trec": 64, "triviaqa": 32,
          "samsum": 128, "lsht": 64, "passage_count": 32, "passage_retrieval_en": 32,
          "passage_retrieval_zh": 32, "lcc": 64, "repobench-p": 64}

PROMPTS = {"triviaqa": "Answer the question.\n\n{context}\n\n{input}",
           "passage_count": "Count.\n\n{context}\n\nQ: {input}\nA: ",
           "qasper": "Read.\n\n{context}\n\nQuestion: {input}\nAnswer:"}


def test_task_facts_match_the_official_tables(checks):
    checks.true(lb.v1_names() == V1, "the 21 v1 tasks, in pred.py's order")
    checks.true(lb.e_names() == E, "the 13 LongBench-E tasks")
    for metric, names in METRIC.items():
        for n in names:
            checks.true(lb.resolve(f"longbench:{n}")[0].metric == metric, f"{n}: {metric}")
    for n in V1:
        s = lb.resolve(f"longbench:{n}")[0]
        checks.true(s.max_new_tokens == MAXLEN[n], f"{n}: max_new_tokens")
        checks.true(s.first_line == (n in ("trec", "triviaqa", "samsum", "lsht")), n)
        checks.true(s.chat_template == (n not in ("trec", "triviaqa", "samsum", "lsht", "lcc",
                                                  "repobench-p")), n)
        checks.true(s.stop_at_newline == (n == "samsum"), n)
    e = lb.resolve("longbench_e")
    checks.true([s.data_name for s in e] == [f"{n}_e" for n in E], "E data names")
    if (SHARED / "dataset2maxlen.json").is_file():      # the official file, when present
        official = json.loads((SHARED / "dataset2maxlen.json").read_text())
        checks.true(official == MAXLEN, "dataset2maxlen.json")
        prompts = json.loads((SHARED / "dataset2prompt.json").read_text())
        checks.true(sorted(prompts) == sorted(V1), "dataset2prompt.json covers the v1 tasks")


@pytest.mark.parametrize("n,budget", [(10, 20), (20, 20), (21, 20), (1000, 20), (1000, 7),
                                      (5, None)])
def test_truncate_middle_keeps_first_and_last_half_budget(n, budget, checks):
    ids = list(range(n))
    out = truncate_middle(ids, budget)
    if budget is None or n <= budget:
        checks.true(out == ids, "short prompts are untouched")
    else:
        h = budget // 2
        checks.true(out == ids[:h] + ids[n - h:], f"first and last {h} of {n}")
        checks.true(len(out) == 2 * h, "length")


def _model(cls=EvalModel, **kw):
    torch.manual_seed(0)
    return cls(hybrid_lm(vocab=257), "byte", chunk_size=64, **kw)


def test_prompt_truncation_at_the_token_level(checks):
    m = _model()
    spec = lb.resolve("longbench:qasper")[0]
    ctx = "".join(chr(ord("a") + i % 26) for i in range(3000))
    ex = {"context": ctx, "input": "Why?", "_id": "x"}
    full = m.encode(PROMPTS["qasper"].format(**ex))
    ids, n = build_prompt_ids(m, spec, PROMPTS["qasper"], ex, max_length=1000)
    checks.true(n == len(full) and ids == full[:500] + full[-500:], "first 500 + last 500")
    ids, _ = build_prompt_ids(m, spec, PROMPTS["qasper"], ex, max_length=1000,
                              chat_template="[INST]{prompt}[/INST]")
    checks.true(m.decode(ids) == "[INST]" + m.decode(full[:500] + full[-500:]) + "[/INST]",
                "chat template wraps the truncated prompt")
    few_shot = lb.resolve("longbench:triviaqa")[0]                  # no chat template
    ids, _ = build_prompt_ids(m, few_shot, PROMPTS["triviaqa"], ex, max_length=None,
                              chat_template="[INST]{prompt}[/INST]")
    checks.true(ids == m.encode(PROMPTS["triviaqa"].format(**ex)), "few-shot: no template")


def _example(i, *, answers, length, dataset, all_classes=None, inp=None):
    return {"input": inp or f"question {i}", "context": f"context {i} " * 5, "answers": answers,
            "length": length, "dataset": dataset, "language": "en",
            "all_classes": all_classes, "_id": f"id{i}"}


def _write(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


class Scripted(EvalModel):
    """Answers from a table keyed by a marker in the prompt; records generation settings."""

    def __init__(self, script, **kw):
        super().__init__(hybrid_lm(vocab=257), "byte", **kw)
        self.script, self.calls = script, []

    def generate_text(self, prompt_ids, max_new_tokens, *, stop_at_newline=False,
                      min_new_tokens=0):
        text = self.decode(prompt_ids)
        self.calls.append((max_new_tokens, stop_at_newline, min_new_tokens))
        return next(v for k, v in self.script.items() if k in text)


@pytest.fixture
def lb_files(tmp_path):
    prompts = tmp_path / "dataset2prompt.json"
    prompts.write_text(json.dumps(PROMPTS))
    data = tmp_path / "data"
    _write(data / "triviaqa.jsonl", [
        _example(0, answers=["Paris", "paris france"], length=100, dataset="triviaqa"),
        _example(1, answers=["The Beatles"], length=200, dataset="triviaqa")])
    _write(data / "passage_count_e.jsonl", [
        _example(2, answers=["3"], length=1000, dataset="passage_count_e"),
        _example(3, answers=["4"], length=5000, dataset="passage_count_e"),
        _example(4, answers=["5"], length=9000, dataset="passage_count_e"),
        _example(5, answers=["6"], length=9500, dataset="passage_count_e")])
    return prompts, data


def test_longbench_predicts_and_scores_like_the_official_scorer(lb_files, tmp_path, checks):
    prompts, data = lb_files
    m = Scripted({"question 0": "\n\nParis, France\nignored second line",   # first line only
                  "question 1": "beatles",                                  # F1: 2*1*.5/1.5
                  "question 2": "3 passages, 3 in all",                     # count: 2/2
                  "question 3": "4 or 5",                                   # count: 1/2
                  "question 4": "none",                                     # 0
                  "question 5": "6"})                                       # 1
    out = run_longbench(m, tmp_path / "out", tasks=["longbench:triviaqa",
                                                    "longbench_e:passage_count"],
                        prompts=str(prompts), data_dir=str(data), max_length=3500)
    tq, pc = out["tasks"]["longbench:triviaqa"], out["tasks"]["longbench_e:passage_count"]
    # triviaqa, first line "Paris, France" vs "paris france" -> F1 1; "beatles" vs
    # "The Beatles" -> normalised "beatles" vs "beatles" -> 1; mean 100
    checks.true(tq["score"] == 100.0, f"triviaqa {tq}")
    checks.true(pc["score"] == round(100 * (1 + 0.5 + 0 + 1) / 4, 2), f"passage_count {pc}")
    checks.true(pc["by_length"] == {"0-4k": 100.0, "4-8k": 50.0, "8k+": 50.0}, f"{pc}")
    checks.true(m.calls[0] == (32, False, 0) and m.calls[2] == (32, False, 0), "settings")
    rows = [json.loads(x) for x in
            (tmp_path / "out" / "longbench" / "passage_count_e.jsonl").read_text().splitlines()]
    checks.true([r["pred"] for r in rows] == ["3 passages, 3 in all", "4 or 5", "none", "6"],
                "predictions in the official pred format")
    checks.true(all({"pred", "answers", "all_classes", "length"} <= set(r) for r in rows), "keys")
    summary = json.loads((tmp_path / "out" / "longbench.json").read_text())
    checks.true(summary["longbench_avg"] == 100.0 and summary["longbench_e_avg"] == 62.5, "avg")


def test_samsum_stops_at_newline_and_may_not_stop_first(tmp_path, checks):
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"samsum": "{context}{input}"}))
    _write(tmp_path / "samsum.jsonl", [_example(0, answers=["a b"], length=1, dataset="samsum")])
    m = Scripted({"question": "a b"})
    run_longbench(m, tmp_path / "o", tasks=["longbench:samsum"], prompts=str(prompts),
                  data_dir=str(tmp_path))
    checks.true(m.calls == [(128, True, 1)], f"{m.calls}")


def test_generation_stops_at_newline_and_min_new_tokens_forbids_an_early_stop(checks):
    m = _model()
    ids = m.encode("hello there")
    free = m.generate(ids, 12)
    nl = m.token_id("\n")
    # force a newline as the greedy first token: a head with a large bias on it
    head = torch.nn.Linear(m.net.d_model, 257, bias=True)
    with torch.no_grad():
        head.weight.copy_(m.net.embed.weight)
        head.bias.zero_()[nl] = 1e4
    m.net.head = head
    checks.true(m.generate_text(ids, 8, stop_at_newline=True) == "", "stops at once")
    out = m.generate(ids, 3, stop_tokens=[nl], min_new_tokens=1)
    checks.true(len(out) == 1 and out[0] != nl, f"first token is not the stop token: {out}")
    checks.true(len(free) == 12, "no stop tokens: max_new_tokens tokens")


# -- errors -----------------------------------------------------------------------------
def test_longbench_without_prompts_says_where_to_get_them(lb_files, tmp_path):
    _, data = lb_files
    with pytest.raises(ValueError, match=r"longbench.prompts.*dataset2prompt.json.*github.com"):
        evaluate(_model(), ["longbench:triviaqa"], tmp_path, longbench={"data_dir": str(data)},
                 verbose=False)


def test_missing_data_file_names_the_path(lb_files, tmp_path):
    prompts, data = lb_files
    with pytest.raises(FileNotFoundError, match=r"data_dir.*qasper.jsonl"):
        run_longbench(_model(), tmp_path, tasks=["longbench:qasper"], prompts=str(prompts),
                      data_dir=str(data))
    with pytest.raises(FileNotFoundError, match="hub is offline"):     # HF_HUB_OFFLINE=1
        run_longbench(_model(), tmp_path, tasks=["longbench:qasper"], prompts=str(prompts))
    with pytest.raises(FileNotFoundError, match="longbench.prompts: file not found"):
        run_longbench(_model(), tmp_path, tasks=["longbench:qasper"],
                      prompts=str(tmp_path / "nope.json"), data_dir=str(data))


@pytest.mark.parametrize("bad,line,what", [
    ('{"input": "q"\n', 2, "malformed JSON"),
    ('[1, 2]\n', 2, "expected a JSON object"),
    ('{"input": "q"}\n', 2, "missing field"),
])
def test_malformed_jsonl_line_is_named(lb_files, tmp_path, bad, line, what, checks):
    prompts, data = lb_files
    good = (data / "triviaqa.jsonl").read_text().splitlines(keepends=True)
    (data / "triviaqa.jsonl").write_text(good[0] + bad + good[1])
    with pytest.raises(ValueError, match=rf"triviaqa.jsonl: line {line}: {what}") as e:
        run_longbench(_model(), tmp_path, tasks=["longbench:triviaqa"], prompts=str(prompts),
                      data_dir=str(data))
    checks.true(str(data) in str(e.value), "the file is named")


@pytest.mark.parametrize("name", ["pasky", "longbench:qasperr", "longbench_e:musique",
                                  "longbench:"])
def test_unknown_task_lists_the_known_ones(name, tmp_path, checks):
    with pytest.raises(ValueError, match="unknown task") as e:
        evaluate(_model(), [name], tmp_path, verbose=False)
    for k in ("passkey", "longbench:qasper", "longbench_e:qasper", "perplexity"):
        checks.true(k in str(e.value), f"lists {k}")
    checks.true(set(known_tasks()) >= {"longbench", "longbench_e", "mqar", "needle"}, "known")


def test_unknown_setting_key_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"settings.passkey: unknown key\(s\) \['lenghts'\]"):
        evaluate(_model(), ["passkey"], tmp_path, settings={"passkey": {"lenghts": [64]}},
                 verbose=False)
    with pytest.raises(ValueError, match=r"longbench: unknown key\(s\) \['max_len'\]"):
        evaluate(_model(), ["longbench"], tmp_path, longbench={"max_len": 5}, verbose=False)


def test_checkpoint_whose_config_cannot_be_rebuilt(tmp_path):
    from memarch.checkpoint import CONFIG_KEY
    bad = tmp_path / "bad.ckpt"
    torch.save({CONFIG_KEY: {"_target_": "memarch.models.NoSuchModel", "d_model": 8},
                "state_dict": {}}, bad)
    with pytest.raises(ValueError, match=r"cannot rebuild the model from its config.*NoSuchModel"):
        EvalModel.from_checkpoint(bad)
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="no 'memarch_model_config' entry"):
        EvalModel.from_checkpoint(tmp_path / "foreign.ckpt")
    with pytest.raises(FileNotFoundError, match="checkpoint: file not found"):
        EvalModel.from_checkpoint(tmp_path / "missing.ckpt")


def test_text_suite_on_a_token_level_model_says_so(tmp_path):
    m = EvalModel(hybrid_lm(vocab=65), "byte")
    with pytest.raises(ValueError, match="256 text token ids but the model's vocab_size is 65"):
        m.encode("text")
    passkey_model = EvalModel(hybrid_lm(vocab=256), "byte")     # bytes only, no end-of-text id
    passkey_model.encode("text")
    assert passkey_model.eos_id is None


# -- bad data and settings ------------------------------------------------------------
TREC = "Classify.\n\n{context}\n{input}"


@pytest.mark.parametrize("task", ["trec", "lsht"])
@pytest.mark.parametrize("bad_row", [{"all_classes": None}, "drop"])
def test_classification_row_without_all_classes_fails_before_generation(task, bad_row,
                                                                        tmp_path, checks):
    """Probe: a trec / lsht row with ``all_classes: null`` (or no ``all_classes`` key) on
    line 2 of the file of the second task; the error names the file, task and line, and
    comes before the first task generates anything."""
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({**PROMPTS, task: TREC}))
    data = tmp_path / "data"
    _write(data / "triviaqa.jsonl", [_example(0, answers=["Paris"], length=1,
                                              dataset="triviaqa")])
    classes = ["Location", "Person"]
    bad = _example(2, answers=["Person"], length=1, dataset=task, all_classes=classes)
    if bad_row == "drop":
        del bad["all_classes"]
    else:
        bad.update(bad_row)
    _write(data / f"{task}.jsonl", [_example(1, answers=["Person"], length=1, dataset=task,
                                             all_classes=classes), bad])
    m = Scripted({"question": "Person"})
    what = "all_classes" if bad_row != "drop" else r"missing field\(s\) \['all_classes'\]"
    with pytest.raises(ValueError, match=rf"{task}.jsonl: line 2.*{what}") as e:
        evaluate(m, ["longbench:triviaqa", f"longbench:{task}"], tmp_path / "out",
                 longbench={"prompts": str(prompts), "data_dir": str(data)}, verbose=False)
    if bad_row != "drop":
        checks.true(f"LongBench task '{task}'" in str(e.value) and "id2" in str(e.value),
                    f"task and _id named: {e.value}")
    checks.true(m.calls == [], "no generation before the error")
    checks.true(not (tmp_path / "out").exists(), "nothing written")
    # with a valid class list the task runs
    _write(data / f"{task}.jsonl", [_example(1, answers=["Person"], length=1, dataset=task,
                                             all_classes=classes)])
    out = run_longbench(m, tmp_path / "ok", tasks=[f"longbench:{task}"], prompts=str(prompts),
                        data_dir=str(data))
    checks.true(out["tasks"][f"longbench:{task}"]["score"] == 100.0, f"{out['tasks']}")


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "3"])
def test_longbench_limit_must_be_positive(limit, lb_files, tmp_path, checks):
    """Probe: ``longbench.limit=0`` (and -1, 1.5, true, "3") is an error naming
    ``longbench.limit``, not a ZeroDivisionError (0) or a silently dropped last row (-1)."""
    prompts, data = lb_files
    msg = r"longbench.limit must be a positive int or null"
    with pytest.raises(ValueError, match=msg):
        evaluate(_model(), ["longbench:triviaqa"], tmp_path,
                 longbench={"prompts": str(prompts), "data_dir": str(data), "limit": limit},
                 verbose=False)
    with pytest.raises(ValueError, match=msg):
        run_longbench(_model(), tmp_path, tasks=["longbench:triviaqa"], prompts=str(prompts),
                      data_dir=str(data), limit=limit)
    m = Scripted({"question": "Paris"})
    out = run_longbench(m, tmp_path / "one", tasks=["longbench:triviaqa"], prompts=str(prompts),
                        data_dir=str(data), limit=1)
    checks.true(out["tasks"]["longbench:triviaqa"]["n_examples"] == 1 and len(m.calls) == 1,
                "limit=1: the first example")


@pytest.mark.parametrize("max_length", [1, 0, 2.5])
def test_longbench_max_length_below_two_names_the_key(max_length, lb_files, tmp_path):
    """Probe: ``longbench.max_length=1`` (0, 2.5) is an error naming ``longbench.max_length``
    before any generation (it used to fail only on the first prompt that needed cutting)."""
    prompts, data = lb_files
    with pytest.raises(ValueError, match=r"longbench.max_length must be an int >= 2"):
        run_longbench(Scripted({}), tmp_path, tasks=["longbench:triviaqa"],
                      prompts=str(prompts), data_dir=str(data), max_length=max_length)


def test_empty_answers_warn_with_the_count_and_score_zero(tmp_path, checks):
    """Probe: 2 of 3 triviaqa rows with ``answers: []``: a warning names the task and the
    count; those rows score 0 and count in the mean, as the official eval.py (its max over
    gold answers starts at 0) -- the same number as ``metrics.scorer``."""
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps(PROMPTS))
    rows = [_example(0, answers=["Paris"], length=1, dataset="triviaqa"),
            _example(1, answers=[], length=1, dataset="triviaqa"),
            _example(2, answers=[], length=1, dataset="triviaqa")]
    _write(tmp_path / "triviaqa.jsonl", rows)
    m = Scripted({"question": "Paris"})
    with pytest.warns(UserWarning, match=r"longbench:triviaqa: 2 of 3 examples have empty "
                                         r"'answers' \(_id 'id1', 'id2'\); they score 0"):
        out = run_longbench(m, tmp_path / "o", tasks=["longbench:triviaqa"],
                            prompts=str(prompts), data_dir=str(tmp_path))
    t = out["tasks"]["longbench:triviaqa"]
    official = metrics.scorer("qa_f1_score", ["Paris"] * 3, [r["answers"] for r in rows],
                              first_line=True)
    checks.true(t["score"] == 33.33 == official and t["n_examples"] == 3, f"{t}, {official}")


def test_max_length_too_small_for_the_template_warns(lb_files, tmp_path, checks, recwarn):
    """Probe: ``longbench.max_length=40`` for qasper, whose template around the context
    ("Read.\\n\\n" before, "\\n\\nQuestion: question 0\\nAnswer:" after: 7 + 30 byte tokens)
    does not fit in the 20 tokens each side that middle truncation keeps: a warning names
    the task, the template's length and max_length; the run goes on. 3500: no warning."""
    prompts, data = lb_files
    _write(data / "qasper.jsonl", [_example(0, answers=["x"], length=1, dataset="qasper")])
    m = Scripted({"": "x"})
    with pytest.warns(UserWarning, match=r"longbench:qasper: the prompt template without the "
                                         r"context is up to 37 tokens \(7 before the context, "
                                         r"30 after.*longbench.max_length=40 keeps only the "
                                         r"first and last 20 tokens"):
        out = run_longbench(m, tmp_path / "o", tasks=["longbench:qasper"], prompts=str(prompts),
                            data_dir=str(data), max_length=40)
    checks.true(out["tasks"]["longbench:qasper"]["n_examples"] == 1, "the run goes on")
    recwarn.clear()
    run_longbench(m, tmp_path / "o2", tasks=["longbench:qasper"], prompts=str(prompts),
                  data_dir=str(data), max_length=3500)
    checks.true(not [w for w in recwarn if "template" in str(w.message)], "3500: no warning")


class FailsOn(Scripted):
    """A Scripted model that raises when the prompt holds ``marker``."""

    def __init__(self, script, marker):
        super().__init__(script)
        self.marker = marker

    def generate_text(self, prompt_ids, max_new_tokens, **kw):
        if self.marker in self.decode(prompt_ids):
            raise RuntimeError("out of memory (simulated)")
        return super().generate_text(prompt_ids, max_new_tokens, **kw)


def test_longbench_json_keeps_finished_tasks_when_a_later_task_fails(lb_files, tmp_path,
                                                                       checks):
    """Probe: the second LongBench task raises mid-way: ``longbench.json`` holds the first
    task's score and ``failed`` (task and error), and the error is re-raised."""
    prompts, data = lb_files
    m = FailsOn({"question": "Paris"}, marker="question 3")
    with pytest.raises(RuntimeError, match="simulated"):
        run_longbench(m, tmp_path, tasks=["longbench:triviaqa", "longbench_e:passage_count"],
                      prompts=str(prompts), data_dir=str(data))
    s = json.loads((tmp_path / "longbench.json").read_text())
    checks.true(list(s["tasks"]) == ["longbench:triviaqa"], f"{s['tasks']}")
    checks.true(s["failed"] == {"task": "longbench_e:passage_count",
                                "error": "RuntimeError: out of memory (simulated)"}, f"{s}")
    checks.true("longbench_avg" in s and "longbench_e_avg" not in s, "averages of finished")


@pytest.mark.parametrize("fail_in", ["needle", "longbench_e:passage_count"])
def test_summary_json_keeps_finished_suites_when_a_later_one_fails(fail_in, lb_files, tmp_path,
                                                                   monkeypatch, checks):
    """Probe: evaluate(passkey, needle, longbench:triviaqa, longbench_e:passage_count) where
    needle (a suite) or passage_count (a LongBench task, after triviaqa) raises:
    ``summary.json`` holds what finished and ``failed``; the error is re-raised."""
    import memarch.eval.run as run_mod
    prompts, data = lb_files

    from memarch.eval.synthetic.common import FnSuite

    def needle(out_dir):
        if fail_in == "needle":
            raise RuntimeError("needle broke")
        return {"score": 10.0}

    def passkey_plan(model):
        return FnSuite("passkey", lambda out_dir: {"score": 50.0, "n_examples": 2})

    def needle_plan(model):
        return FnSuite("needle", needle)

    monkeypatch.setattr(run_mod, "planners", lambda: {"passkey": passkey_plan,
                                                      "needle": needle_plan})
    m = FailsOn({"question": "Paris"}, marker="question 3")
    tasks = ["passkey", "needle", "longbench:triviaqa", "longbench_e:passage_count"]
    with pytest.raises(RuntimeError):
        evaluate(m, tasks, tmp_path, longbench={"prompts": str(prompts), "data_dir": str(data)},
                 verbose=False)
    s = json.loads((tmp_path / "summary.json").read_text())
    checks.true(s["tasks"] == tasks and s["results"]["passkey"]["score"] == 50.0, f"{s}")
    checks.true(s["failed"]["task"] == fail_in, f"{s['failed']}")
    if fail_in == "needle":
        checks.true(list(s["results"]) == ["passkey"] and m.calls == [], "LongBench not run")
        checks.true(s["failed"]["error"] == "RuntimeError: needle broke", f"{s['failed']}")
    else:
        checks.true(list(s["results"]) == ["passkey", "needle", "longbench"], f"{s}")
        checks.true(list(s["results"]["longbench"]["tasks"]) == ["longbench:triviaqa"], f"{s}")
        checks.true(s["results"]["longbench"] == json.loads(
            (tmp_path / "longbench.json").read_text()), "longbench.json == summary entry")
