"""Perplexity by position (memarch.eval.perplexity) and the lm-evaluation-harness adapter
(memarch.eval.lm_eval_adapter), both checked against an independent single full forward of a
tiny random model (no state, no chunks); the lm-eval runs are offline, on tiny local tasks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lm_helpers import hybrid_lm
from memarch.eval.model import EvalModel
from memarch.eval.perplexity import bucket_edges, run_perplexity

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
LETTERS = b" abcdefgh"


@torch.no_grad()
def full_logprobs(net, ids):
    """One forward over ``ids`` from an empty state: log p(ids[t] | ids[:t]) for t >= 1, and
    whether ids[t] is the argmax; plus the log-probabilities [T - 1, V]."""
    logits = net(torch.tensor([list(ids)]))[0][0].float()
    lp = F.log_softmax(logits, -1)[:-1]
    tgt = torch.tensor(list(ids[1:]))
    return lp.gather(-1, tgt[:, None])[:, 0], lp.argmax(-1) == tgt


@torch.no_grad()
def full_greedy(net, ids, n):
    """``n`` greedy tokens, each from a fresh full forward over everything so far."""
    ids, out = list(ids), []
    for _ in range(n):
        tok = int(net(torch.tensor([ids]))[0][0, -1].argmax())
        ids.append(tok)
        out.append(tok)
    return out


class Letters(torch.nn.Module):
    """A random byte-level MemLM whose logits favour `` abcdefgh`` by 30 nats, so greedy text
    is readable (stop strings can be chosen from it); still a plain random model otherwise."""

    def __init__(self, net):
        super().__init__()
        self.inner, self.vocab_size = net, net.vocab_size
        bias = torch.full((net.vocab_size,), -30.0)
        bias[list(LETTERS)] = 0.0
        self.register_buffer("bias", bias)

    def forward(self, ids, state=None):
        logits, state, aux = self.inner(ids, state)
        return logits + self.bias, state, aux


# ---------------------------------------------------------------------------------------
# perplexity
# ---------------------------------------------------------------------------------------
def _text(tmp_path, n_words=400):
    g = torch.Generator().manual_seed(1)
    words = ["in", "the", "beginning", "God", "created", "heaven", "and", "earth", "was",
             "without", "form", "void", "darkness", "upon", "face", "of", "deep."]
    idx = torch.randint(len(words), (n_words,), generator=g).tolist()
    p = tmp_path / "text.txt"
    p.write_text(" ".join(words[i] for i in idx) + "\n", encoding="utf-8")
    return p


def test_perplexity_matches_full_forward(tmp_path, checks):
    net = hybrid_lm(vocab=257)
    model = EvalModel(net, "byte", chunk_size=7, name="tiny")        # 7: chunks cross buckets
    text = _text(tmp_path)
    ids = list(text.read_bytes())
    T, offsets, edges = 100, [0, 57], [10, 30, 64]
    s = run_perplexity(model, tmp_path / "out", text_file=str(text), max_tokens=T,
                       bucket=edges, offsets=offsets)
    nll = torch.stack([-full_logprobs(net, ids[o:o + T + 1])[0].double() for o in offsets])
    checks.true(nll.shape == (2, T), "two streams of T positions")
    want_edges = [0, 10, 30, 64, 100]
    labels = ["0-9", "10-29", "30-63", "64-99"]
    checks.true(s["settings"]["bucket_edges"] == want_edges, "edges")
    checks.true(list(s["by_position"]) == labels, f"labels {list(s['by_position'])}")
    rows = [json.loads(x) for x in (tmp_path / "out/perplexity.jsonl").read_text().splitlines()]
    checks.true([r["label"] for r in rows] == labels, "one jsonl line per bucket")
    for i, (a, b) in enumerate(pairwise(want_edges)):
        want = math.exp(float(nll[:, a:b].mean()))
        cum = math.exp(float(nll[:, :b].mean()))
        checks.true(math.isclose(s["by_position"][labels[i]], want, rel_tol=1e-5),
                    f"bucket {labels[i]}: {s['by_position'][labels[i]]} vs {want}")
        checks.true(math.isclose(s["cumulative_by_position"][labels[i]], cum, rel_tol=1e-5),
                    f"cumulative {labels[i]}")
        checks.true((rows[i]["start"], rows[i]["end"], rows[i]["n_tokens"]) == (a, b, 2 * (b - a)),
                    f"bucket bounds {rows[i]}")
        checks.true(math.isclose(rows[i]["ppl"], want, rel_tol=1e-5), "jsonl ppl")
        for k, o in enumerate(offsets):
            checks.true(math.isclose(rows[i]["per_stream_ppl"][k],
                                     math.exp(float(nll[k, a:b].mean())), rel_tol=1e-5),
                        "per-stream ppl")
    checks.true(math.isclose(s["ppl"], math.exp(float(nll.mean())), rel_tol=1e-5), "overall")
    checks.true(s["n_tokens"] == 2 * T and s["max_length_run"] == T, "counts")
    saved = json.loads((tmp_path / "out/perplexity.json").read_text())
    checks.true(saved["task"] == "perplexity" and saved["model"] == "tiny", "summary file")
    checks.true(math.isclose(saved["ppl"], s["ppl"], rel_tol=1e-12), "summary ppl")
    checks.true({"settings", "environment", "seconds", "buckets"} <= set(saved), "keys")
    png = (tmp_path / "out/perplexity_by_position.png").read_bytes()
    checks.true(png.startswith(PNG) and len(png) > 1000, "PNG")


def test_perplexity_buckets_and_offsets(tmp_path, checks):
    checks.true(bucket_edges(32, 100) == [0, 32, 64, 96, 100], "width")
    checks.true(bucket_edges(100, 100) == [0, 100], "one bucket")
    checks.true(bucket_edges([0, 50, 100], 100) == [0, 50, 100], "explicit edges kept")
    for bad in (0, [], [5, 5], [30, 10], [0, 101], True, [1.5]):
        with pytest.raises(ValueError, match="bucket"):
            bucket_edges(bad, 100)
    model = EvalModel(hybrid_lm(vocab=257), "byte", chunk_size=16)
    text = _text(tmp_path, n_words=60)
    n = len(text.read_bytes())
    s = run_perplexity(model, tmp_path / "even", text_file=str(text), max_tokens=32,
                       bucket=16, n_streams=3)
    last = n - 33
    checks.true(s["settings"]["offsets"] == [0, last // 2, last], f"even {s['settings']}")
    checks.true(list(s["by_position"]) == ["0-15", "16-31"], "labels")
    r1 = run_perplexity(model, tmp_path / "r1", text_file=str(text), max_tokens=32,
                        n_streams=4, offsets="random", seed=3)
    r2 = run_perplexity(model, tmp_path / "r2", text_file=str(text), max_tokens=32,
                        n_streams=4, offsets="random", seed=3)
    offs = r1["settings"]["offsets"]
    checks.true(offs == r2["settings"]["offsets"] and r1["ppl"] == r2["ppl"], "seeded")
    checks.true(len(offs) == 4 and all(0 <= o <= last for o in offs), f"in range {offs}")


def test_perplexity_errors(tmp_path, checks):
    model = EvalModel(hybrid_lm(vocab=257), "byte", chunk_size=16)
    missing = tmp_path / "no_such_text.txt"
    with pytest.raises(FileNotFoundError, match="no_such_text.txt") as e:
        run_perplexity(model, tmp_path, text_file=str(missing), max_tokens=8)
    checks.true("text_file" in str(e.value), "names the setting")
    short = tmp_path / "short.txt"
    short.write_text("only a few bytes")                           # 16 tokens
    with pytest.raises(ValueError, match=r"has 16 tokens, fewer than the 17 needed"):
        run_perplexity(model, tmp_path, text_file=str(short), max_tokens=16)
    with pytest.raises(ValueError, match="offsets"):
        run_perplexity(model, tmp_path, text_file=str(short), max_tokens=8, offsets=[8])
    with pytest.raises(ValueError, match="text_file: required"):
        run_perplexity(model, tmp_path, max_tokens=8)
    with pytest.raises(ValueError, match="max_tokens"):
        run_perplexity(model, tmp_path, text_file=str(short), max_tokens=0)
    s = run_perplexity(model, tmp_path, text_file=str(short), max_tokens=15, bucket=4)
    checks.true(s["settings"]["bucket_edges"] == [0, 4, 8, 12, 15], "just long enough")
    checks.true((tmp_path / "perplexity.json").is_file(), "summary written")


# ---------------------------------------------------------------------------------------
# lm-eval adapter
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter():
    pytest.importorskip("lm_eval")
    from memarch.eval import lm_eval_adapter
    return lm_eval_adapter


class Req:                                       # what the adapter reads of lm-eval's Instance
    def __init__(self, *args):
        self.args = args


def _tiny(chunk_size=3):
    torch.manual_seed(0)
    net = Letters(hybrid_lm(vocab=257))
    return net, EvalModel(net, "byte", chunk_size=chunk_size, name="tiny")


def _expected_ll(net, ctx: bytes, cont: bytes, eos=256):
    ids = (list(ctx) if ctx else [eos]) + list(cont)
    lp, greedy = full_logprobs(net, ids)
    n = len(cont)
    return float(lp[-n:].double().sum()), bool(greedy[-n:].all())


def test_loglikelihood_and_rolling_match_full_forward(adapter, checks):
    net, model = _tiny()
    lm = adapter.MemarchLM(model=model)
    greedy = bytes(full_greedy(net, list(b"bad cafe"), 4))             # a greedy continuation
    cases = [(b"bad cafe", b" ace"), (b"bad cafe", greedy), (b"bad cafe", b" h"),
             (b"", b"head"), (b"deaf bead", b" c"), (b"abc  ", b"de")]
    reqs = [Req(c.decode(), x.decode()) for c, x in cases]
    got = lm.loglikelihood(reqs)
    for (c, x), (ll, is_greedy) in zip(cases, got):
        if c.endswith(b" "):                     # trailing spaces move to the continuation
            c, x = c.rstrip(b" "), b" " * (len(c) - len(c.rstrip(b" "))) + x
        want, want_greedy = _expected_ll(net, c, x)
        checks.true(abs(ll - want) < 1e-5, f"{c}|{x}: {ll} vs {want}")
        checks.true(is_greedy == want_greedy, f"{c}|{x}: is_greedy {is_greedy}")
    checks.true(got[1][1] is True and got[0][1] is False, "a greedy and a non-greedy case")
    # max_length: context + continuation cut from the left to max_length + 1 tokens
    short = adapter.MemarchLM(model=model, max_length=5)
    (ll, _), = short.loglikelihood([Req("deaf bead", " c")])
    want, _ = _expected_ll(net, b"bead", b" c")
    checks.true(abs(ll - want) < 1e-5, f"max_length: {ll} vs {want}")
    docs = ["a bad face", "h", "cab " * 9]
    rolled = lm.loglikelihood_rolling([Req(d) for d in docs])
    for d, r in zip(docs, rolled):
        want = float(full_logprobs(net, [256] + list(d.encode()))[0].double().sum())
        checks.true(abs(r - want) < 1e-5, f"rolling {d!r}: {r} vs {want}")


def test_registry_and_construction(adapter, tmp_path, checks):
    from lm_eval.api.registry import get_model
    checks.true(get_model("memarch") is adapter.MemarchLM, "registered as 'memarch'")
    checks.true(get_model("dummy").__name__ == "DummyLM", "lm-eval's own models still there")
    _checkpoint(tmp_path / "tiny.ckpt")
    # model_args win over run-level settings (lm-eval's CLI passes device=cuda:0 by default)
    lm = adapter.MemarchLM.create_from_arg_string(
        f"checkpoint={tmp_path / 'tiny.ckpt'},device=cpu,chunk_size=5,max_length=None",
        {"device": "cuda:0", "batch_size": 1, "max_batch_size": None})
    checks.true((lm.model.chunk_size, lm.max_length, str(lm.device)) == (5, None, "cpu"),
                "parsed model_args")
    checks.true(lm.model.tokenizer_name == "byte"
                and lm.model.name == str(tmp_path / "tiny.ckpt"), "checkpoint")
    with pytest.raises(ValueError, match="exactly one of"):
        adapter.MemarchLM()
    with pytest.raises(ValueError, match="chunk_size"):
        adapter.MemarchLM(net=hybrid_lm(vocab=257), chunk_size="many")
    lm = adapter.MemarchLM(net=hybrid_lm(vocab=256), tokenizer="byte", device="cpu")
    with pytest.raises(ValueError, match="prefix_token_id"):
        lm.loglikelihood([Req("", "abc")])
    (ll, _), = adapter.MemarchLM(net=hybrid_lm(vocab=256), prefix_token_id=10
                                 ).loglikelihood([Req("", "abc")])
    checks.true(math.isfinite(ll), "an explicit start token")


def _stop_case(net, prompt: bytes, n=12):
    """A greedy continuation and a 2-character stop string first found at index >= 2."""
    out = bytes(full_greedy(net, list(prompt), n)).decode()
    for k in range(2, n - 2):
        s = out[k:k + 2]
        if out.index(s) == k:
            return out, s
    raise AssertionError(f"no usable stop string in {out!r}")


def test_generate_until_stops_and_caps(adapter, checks):
    net, model = _tiny()
    lm = adapter.MemarchLM(model=model)
    out, stop = _stop_case(net, b"a bad cafe")
    other = bytes(full_greedy(net, list(b"hhh"), 12)).decode()
    reqs = [Req("a bad cafe", {"until": [stop], "max_gen_toks": 12, "do_sample": False}),
            Req("a bad cafe", {"until": stop, "max_gen_toks": 3}),
            Req("hhh", {"until": ["\x00"], "max_gen_toks": 12, "temperature": 0.0})]
    got = lm.generate_until(reqs)
    checks.true(got[0] == out[:out.index(stop)] and len(got[0]) >= 2, f"{got[0]!r} {out!r}")
    checks.true(got[1] == out[:3].split(stop)[0], f"max_gen_toks caps: {got[1]!r}")
    checks.true(got[2] == other and len(other) == 12, f"no stop: all max_gen_toks {got[2]!r}")
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until([Req("abc", {"do_sample": True, "temperature": 1.0})])


def _write_tasks(root: Path, docs_mc, docs_ll, docs_gen, docs_roll, stop):
    cache = root / "hf_cache"
    files = {"mc": docs_mc, "ll": docs_ll, "gen": docs_gen, "roll": docs_roll}
    for k, rows in files.items():
        (root / f"{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def head(name, kind):
        return (f"task: memarch_tiny_{name}\ndataset_path: json\ndataset_kwargs:\n"
                f"  data_files:\n    test: {root / (name + '.jsonl')}\n"
                f"  cache_dir: {cache}\ntest_split: test\noutput_type: {kind}\n")

    (root / "mc.yaml").write_text(
        head("mc", "multiple_choice") + 'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (root / "ll.yaml").write_text(
        head("ll", "loglikelihood") + 'doc_to_text: "{{context}}"\n'
        'doc_to_target: "{{target}}"\ntarget_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (root / "gen.yaml").write_text(
        head("gen", "generate_until") + 'doc_to_text: "{{prompt}}"\n'
        'doc_to_target: "{{answer}}"\n'
        f"generation_kwargs:\n  until: [{json.dumps(stop)}]\n  max_gen_toks: 12\n"
        "  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n"
        "    higher_is_better: true\n")
    (root / "roll.yaml").write_text(
        head("roll", "loglikelihood_rolling") + 'doc_to_text: ""\n'
        'doc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n")


def test_simple_evaluate_tiny_tasks(adapter, tmp_path, checks):
    import lm_eval
    from lm_eval.tasks import TaskManager
    net, model = _tiny(chunk_size=4)
    out, stop = _stop_case(net, b"a bad cafe")
    mc = [{"question": "bad cafe", "choices": ["ace", "bed", "h"], "label": 1},
          {"question": "a deaf hag", "choices": ["bag", "dab"], "label": 0},
          {"question": "cede", "choices": ["a", "ba", "cab", "dead"], "label": 2}]
    greedy = bytes(full_greedy(net, list(b"fade"), 3)).decode()
    ll = [{"context": "fade", "target": greedy}, {"context": "fade", "target": "zzz"}]
    gen = [{"prompt": "a bad cafe", "answer": out[:out.index(stop)]},
           {"prompt": "hhh", "answer": "never"}]
    roll = [{"text": "a bad face"}, {"text": "cab cab dab"}]
    _write_tasks(tmp_path, mc, ll, gen, roll, stop)
    names = [f"memarch_tiny_{k}" for k in ("mc", "ll", "gen", "roll")]
    r = lm_eval.simple_evaluate(
        model=adapter.MemarchLM(model=model), tasks=names, log_samples=True,
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
    res, samples = r["results"], r["samples"]

    # multiple choice: lm-eval's acc == argmax of our full-forward log-likelihoods
    hits = []
    for doc, smp in zip(mc, sorted(samples["memarch_tiny_mc"], key=lambda s: s["doc_id"])):
        want = [_expected_ll(net, doc["question"].encode(), (" " + c).encode())[0]
                for c in doc["choices"]]
        checks.true([tuple(a) for a in smp["arguments"]]
                    == [(doc["question"], " " + c) for c in doc["choices"]], "requests")
        for (got, _), w in zip(smp["filtered_resps"], want):
            checks.true(abs(got - w) < 1e-5, f"mc ll {got} vs {w}")
        hits.append(float(max(range(len(want)), key=want.__getitem__) == doc["label"]))
    checks.true(math.isclose(res["memarch_tiny_mc"]["acc,none"], sum(hits) / len(hits)),
                f"acc {res['memarch_tiny_mc']['acc,none']} vs {hits}")

    # loglikelihood: acc is is_greedy; the first target is greedy, the second is not
    for doc, smp in zip(ll, sorted(samples["memarch_tiny_ll"], key=lambda s: s["doc_id"])):
        got, is_greedy = smp["filtered_resps"][0]
        checks.true(tuple(smp["arguments"][0]) == ("fade", doc["target"]), "request")
        want, want_greedy = _expected_ll(net, b"fade", doc["target"].encode())
        checks.true(abs(got - want) < 1e-5 and is_greedy == want_greedy, f"ll {doc}")
    checks.true(res["memarch_tiny_ll"]["acc,none"] == 0.5, "one greedy target of two")

    # generate_until: cut at the stop string, else max_gen_toks tokens
    preds = [s["filtered_resps"][0] for s in
             sorted(samples["memarch_tiny_gen"], key=lambda s: s["doc_id"])]
    checks.true(preds[0] == out[:out.index(stop)], f"stopped: {preds[0]!r} ({out!r}, {stop!r})")
    other = bytes(full_greedy(net, list(b"hhh"), 12)).decode()
    checks.true(preds[1] == (other.split(stop)[0]), f"second prompt {preds[1]!r} {other!r}")
    checks.true(res["memarch_tiny_gen"]["exact_match,none"] == 0.5, "exact match")

    # rolling: the document after the end-of-text token
    for doc, smp in zip(roll, sorted(samples["memarch_tiny_roll"], key=lambda s: s["doc_id"])):
        want = float(full_logprobs(net, [256] + list(doc["text"].encode()))[0].double().sum())
        checks.true(abs(smp["filtered_resps"][0] - want) < 1e-5, f"rolling {doc}")


def _checkpoint(path: Path):
    from memarch.checkpoint import CONFIG_KEY, TOKENIZER_KEY
    from memarch.config import instantiate
    cfg = {"_target_": "memarch.models.MemLM", "vocab_size": 257, "d_model": 32,
           "mixers": {"conv": {"_target_": "memarch.mixers.ShortConv", "_partial_": True,
                               "kernel_size": 4},
                      "swa": {"_target_": "memarch.mixers.Attention", "_partial_": True,
                              "n_heads": 4, "window": 8, "n_sinks": 2}},
           "layer_pattern": ["conv", "swa"]}
    net = instantiate(cfg)
    torch.save({CONFIG_KEY: cfg, TOKENIZER_KEY: "byte",
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return net


@pytest.mark.slow
def test_cli_runs_registered_model(adapter, tmp_path, checks):
    """``python -m memarch.eval.lm_eval_adapter --model memarch ...`` from a checkpoint."""
    net = _checkpoint(tmp_path / "tiny.ckpt")
    mc = [{"question": "bad cafe", "choices": ["ace", "bed", "h"], "label": 1},
          {"question": "a deaf hag", "choices": ["bag", "dab"], "label": 0}]
    _write_tasks(tmp_path, mc, [], [], [], "x")
    for k in ("ll", "gen", "roll"):
        (tmp_path / f"{k}.yaml").unlink()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "memarch.eval.lm_eval_adapter", "--model", "memarch",
           "--model_args", f"checkpoint={tmp_path / 'tiny.ckpt'},chunk_size=3,device=cpu",
           "--tasks", "memarch_tiny_mc", "--include_path", str(tmp_path),
           "--output_path", str(tmp_path / "results")]
    p = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    checks.true(p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    files = sorted((tmp_path / "results").rglob("results_*.json"))
    checks.true(len(files) == 1, f"one results file: {files}")
    acc = json.loads(files[0].read_text())["results"]["memarch_tiny_mc"]["acc,none"]
    hits = []
    for doc in mc:
        want = [_expected_ll(net, doc["question"].encode(), (" " + c).encode())[0]
                for c in doc["choices"]]
        hits.append(float(max(range(len(want)), key=want.__getitem__) == doc["label"]))
    checks.true(math.isclose(acc, sum(hits) / len(hits)), f"acc {acc} vs {hits}")


@pytest.mark.slow
def test_cli_hub_task_offline_is_one_message(adapter, tmp_path, monkeypatch, capsys, checks):
    """``memarch-lm-eval`` with a hub task whose data is not cached (offline): one message
    that says the data must be cached or given as local files with --include_path, not
    lm-eval's 30-line traceback. The loader is monkeypatched to fail as offline
    ``datasets.load_dataset`` does (ConnectionError)."""
    import datasets
    from lm_eval.api import task as lm_task
    _checkpoint(tmp_path / "tiny.ckpt")
    (tmp_path / "hub.yaml").write_text(
        "task: memarch_hub_task\ndataset_path: memarch-test/not-cached\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: \"{{q}}\"\ndoc_to_choice: \"{{c}}\"\n"
        "doc_to_target: \"{{l}}\"\nmetric_list:\n  - metric: acc\n")
    calls = []

    def offline(*args, **kwargs):
        calls.append(kwargs.get("path"))
        raise ConnectionError(f"Couldn't reach '{kwargs.get('path')}' on the Hub "
                              "(OfflineModeIsEnabled)")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    for cls in (lm_task.Task, lm_task.ConfigurableTask):   # undo main()'s guard afterwards
        monkeypatch.setattr(cls, "download", cls.__dict__["download"])
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as exc:
        adapter.main(["--model", "memarch", "--model_args",
                      f"checkpoint={tmp_path / 'tiny.ckpt'},device=cpu",
                      "--tasks", "memarch_hub_task", "--include_path", str(tmp_path)])
    msg = str(exc.value.code)
    checks.true(calls == ["memarch-test/not-cached"], f"the loader was called: {calls}")
    checks.true(msg.startswith("memarch-lm-eval: task 'memarch_hub_task': cannot load its data "
                               "memarch-test/not-cached: ConnectionError"), msg)
    checks.true("must be in the Hugging Face datasets cache" in msg and "--include_path" in msg
                and "dataset_path: json" in msg, msg)
    checks.true(len(msg.splitlines()) == 2, f"short: {msg}")
