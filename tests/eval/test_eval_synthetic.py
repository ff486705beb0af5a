"""Synthetic long-context suites: prompts hit their token budget and put the needle at its
depth, an oracle that reads the prompt scores 100 and a constant model 0, RULER's metrics by
hand, MQAR's teacher-forced accuracy by hand, result files, determinism, and bad input."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest
import torch
from lm_helpers import hybrid_lm
from memarch.eval.model import EvalModel
from memarch.eval.synthetic import SUITES, passkey_match, string_match_all, string_match_part
from memarch.eval.synthetic import mqar as mq
from memarch.eval.synthetic.common import NOISE, insert_at_depths
from memarch.eval.synthetic.needle import INSTRUCTION, QUESTION, needle_examples
from memarch.eval.synthetic.passkey import TASK_DESCRIPTION, passkey_examples
from memarch.eval.synthetic.ruler import cwe_examples, niah_examples, vt_examples

PNG = b"\x89PNG\r\n\x1a\n"

# Small settings per text suite (byte tokenizer: one token per character).
SMALL = {
    "passkey": {"lengths": [256, 384], "n_per_length": 2},
    "needle": {"lengths": [256, 384], "depths": [0, 50, 100], "n_per_cell": 1},
    "ruler_niah_multikey": {"lengths": [448, 512], "n_per_length": 2, "num_keys": 2},
    "ruler_niah_multivalue": {"lengths": [448, 512], "n_per_length": 2, "num_values": 2},
    "ruler_vt": {"lengths": [384, 512], "n_per_length": 2, "num_hops": 2, "fewshot": False},
    "ruler_cwe": {"lengths": [384, 512], "n_per_length": 2, "num_common": 3, "freq_common": 4,
                  "freq_uncommon": 1, "fewshot": False},
}


def _model(cls=EvalModel, vocab=257, tokenizer="byte", chunk_size=64):
    torch.manual_seed(0)
    return cls(hybrid_lm(vocab=vocab), tokenizer, chunk_size=chunk_size)


# -- fake models --------------------------------------------------------------------------------
def solve(prompt: str) -> str:
    """What a perfect reader of the prompt answers (parses only the prompt text)."""
    if prompt.endswith("What is the pass key? The pass key is"):
        return " " + re.search(r"The pass key is (\d+)\. Remember it", prompt).group(1) + "."
    if prompt.endswith(QUESTION):
        return " " + re.search(r"The special magic number is (\d+)\.", prompt).group(1) + "."
    m = re.search(r"for (\S+) mentioned in the provided text (?:is|are)$", prompt)
    if m:
        vals = re.findall(rf"special magic numbers for {re.escape(m.group(1))} is: (\d+)\.",
                          prompt)
        return " " + ", ".join(vals) + "."
    if prompt.endswith("they are: "):
        main = prompt[prompt.rfind("Memorize and track"):]
        value = re.search(r"assigned the value (\d+) in the text above", main).group(1)
        src = dict(re.findall(r"VAR ([A-Z]+) = (VAR [A-Z]+|\d+)", main))

        def resolve(v):
            s = src[v]
            return resolve(s[4:]) if s.startswith("VAR ") else s
        return " ".join(v for v in src if resolve(v) == value)
    if prompt.endswith("most often in the list are:"):
        main = prompt[prompt.rfind("appear most often.\n"):]
        k = int(re.search(r"What are the (\d+) most common", main).group(1))
        words = re.findall(r"\d+\. (\S+)", main[:main.index("\nQuestion:")])
        return " " + " ".join(f"{i + 1}. {w}" for i, (w, _) in
                              enumerate(Counter(words).most_common(k)))
    raise AssertionError(f"unknown prompt: ...{prompt[-80:]!r}")


class Oracle(EvalModel):
    """Answers by reading its prompt: every suite must score 100."""

    def generate(self, ids, max_new_tokens, *, stop_tokens=(), min_new_tokens=0):
        return self.encode(solve(self.decode(ids)))[:max_new_tokens]


class ConstNet(torch.nn.Module):
    """Always predicts the byte ``x``."""
    vocab_size = 257

    def forward(self, ids, state=None):
        logits = torch.zeros(*ids.shape, self.vocab_size)
        logits[..., ord("x")] = 1.0
        return logits, state, None


class RecallNet(torch.nn.Module):
    """Exact associative recall through its state: remembers ``key -> value`` when a key is
    followed by a value, and at a known key predicts its value (only for keys where
    ``answers(key)``); elsewhere all logits are 0 (argmax: token 0)."""

    def __init__(self, num_keys, vocab_size, answers=lambda k: True):
        super().__init__()
        self.num_keys, self.vocab_size, self.answers = num_keys, vocab_size, answers

    def forward(self, ids, state=None):
        B, T = ids.shape
        state = state or [({}, None)] * B
        logits, new = torch.zeros(B, T, self.vocab_size), []
        for b in range(B):
            table, prev = dict(state[b][0]), state[b][1]
            for t in range(T):
                tok = int(ids[b, t])
                if prev is not None and 1 <= prev <= self.num_keys < tok:
                    table.setdefault(prev, tok)
                if tok in table and self.answers(tok):
                    logits[b, t, table[tok]] = 1.0
                prev = tok
            new.append((table, prev))
        return logits, new, None


# -- metrics ------------------------------------------------------------------------------------
def _ruler_all(preds, refs):       # NVIDIA/RULER scripts/eval/synthetic/constants.py (wrapped)
    score = sum([sum([1.0 if r.lower() in pred.lower() else 0.0 for r in ref]) / len(ref)
                 for pred, ref in zip(preds, refs)]) / len(preds) * 100
    return round(score, 2)


def _ruler_part(preds, refs):
    score = sum([max([1.0 if r.lower() in pred.lower() else 0.0 for r in ref])
                 for pred, ref in zip(preds, refs)]) / len(preds) * 100
    return round(score, 2)


def test_ruler_string_match_by_hand(checks):
    preds = ["The numbers are 123 and 456.", "ABC", "nothing"]
    refs = [["123", "456", "789"], ["abc", "xyz"], ["q"]]
    # all: (2/3 + 1/2 + 0) / 3 * 100 = 38.888.. ; part: (1 + 1 + 0) / 3 * 100 = 66.666..
    checks.true(string_match_all(preds, refs) == 38.89, "string_match_all")
    checks.true(string_match_part(preds, refs) == 66.67, "string_match_part")
    checks.true(string_match_all(["Apple PIE"], [["apple", "pie"]]) == 100.0, "case-insensitive")
    checks.true(string_match_part(["no"], [["a", "b"]]) == 0.0, "none found")
    rng = random.Random(0)
    for _ in range(200):                                    # against RULER's own one-liners
        n = rng.randint(1, 4)
        alphabet = "abAB1"
        preds = ["".join(rng.choices(alphabet, k=rng.randint(0, 6))) for _ in range(n)]
        refs = [["".join(rng.choices(alphabet, k=rng.randint(1, 2)))
                 for _ in range(rng.randint(1, 3))] for _ in range(n)]
        checks.true(string_match_all(preds, refs) == _ruler_all(preds, refs), f"{preds} {refs}")
        checks.true(string_match_part(preds, refs) == _ruler_part(preds, refs), f"{preds}")
    with pytest.raises(ValueError, match="as many predictions"):
        string_match_all(["a"], [])


def test_passkey_match_takes_the_first_number(checks):
    preds = ["12345.", " The key is 12345 and 7", "123456", "x 54321 12345"]
    checks.true(passkey_match(preds, [["12345"]] * 4) == 50.0, "first digit run, exactly")


# -- prompt construction ------------------------------------------------------------------------
@pytest.mark.parametrize("L", [256, 333, 512])
def test_passkey_prompt_length_and_depth(L, checks):
    m = _model()
    for ex in passkey_examples(m.encode, lengths=[L], n_per_length=4, seed=3):
        checks.true(L - 2 <= ex.prompt_tokens <= L and ex.ids == m.encode(ex.prompt),
                    f"{ex.prompt_tokens} tokens for {L}")
        key = ex.answers[0]
        info = f"The pass key is {key}. Remember it. {key} is the pass key."
        pre, post = ex.prompt.split("\n" + info + "\n")
        n_pre = len(m.encode(pre)) - len(m.encode(TASK_DESCRIPTION + "\n"))
        n_post = len(m.encode(post)) - len(m.encode("\nWhat is the pass key? The pass key is"))
        frac = n_pre / (n_pre + n_post)
        checks.true(abs(frac - ex.depth / 100) <= 1.5 / (n_pre + n_post), f"depth {frac}")
        checks.true(NOISE.startswith(pre[len(TASK_DESCRIPTION) + 1:][:80]), "filler prefix")


@pytest.mark.parametrize("haystack", ["noise", "file"])
@pytest.mark.parametrize("L", [300, 512])
def test_needle_prompt_length_and_depth(L, haystack, tmp_path, checks):
    m = _model()
    hay = None
    if haystack == "file":
        hay = tmp_path / "hay.txt"
        rng = random.Random(1)
        hay.write_text("\n".join(" ".join(rng.choice(["alpha", "beta", "gamma", "delta"])
                                          for _ in range(rng.randint(2, 5))) + "."
                                 for _ in range(300)))
    depths = [0, 10, 25, 50, 75, 90, 100]
    fracs = []
    for ex in needle_examples(m.encode, lengths=[L], depths=depths, n_per_cell=1,
                              haystack_file=hay):
        checks.true(L - 2 <= ex.prompt_tokens <= L, f"{ex.prompt_tokens} tokens for {L}")
        needle = f"The special magic number is {ex.answers[0]}."
        head = len(m.encode(INSTRUCTION + "\n"))
        at = len(m.encode(ex.prompt[:ex.prompt.index(needle)])) - head     # token index
        hay_tokens = ex.prompt_tokens - head - len(m.encode("\n" + QUESTION)) \
            - len(m.encode(needle)) - 1                                     # - separator
        frac = at / hay_tokens
        fracs.append(frac)
        if ex.depth == 0:
            checks.true(at == 0, "depth 0: first")
        elif ex.depth == 100:
            checks.true(ex.prompt.endswith(needle + "\n" + QUESTION), "depth 100: last")
        else:                        # backed up to the start of its sentence (< 30 chars)
            checks.true(ex.depth / 100 - 30 / hay_tokens <= frac <= ex.depth / 100 + 1e-9,
                        f"depth {ex.depth}: at {frac:.3f}")
            checks.true(ex.prompt[ex.prompt.index(needle) - 2] in ".\n", "sentence start")
    checks.true(fracs == sorted(fracs), "depth order")


def test_insert_at_depths_keeps_the_text(checks):
    text = "A b. C d. E f. G h."
    out = insert_at_depths(text, ["X.", "Y."], [0, 60])
    checks.true(out == "X. A b. C d. Y. E f. G h.", out)
    checks.true(insert_at_depths(text, ["Z."], [100]) == text + " Z.", "end")
    lines = insert_at_depths("a\nb\nc", ["V", "W"], [40, 40], unit="line")
    checks.true(lines == "a\nV\nW\nb\nc", repr(lines))


def test_ruler_prompts(checks):
    m = _model()
    for nk, nv in [(3, 1), (1, 3)]:
        for ex in niah_examples(m.encode, task="t", lengths=[600], n_per_length=3, num_keys=nk,
                                num_values=nv):
            checks.true(598 <= ex.prompt_tokens <= 600, f"niah {ex.prompt_tokens}")
            checks.true(len(re.findall(r"One of the special magic numbers", ex.prompt))
                        == nk * nv, "every needle inside")
            checks.true(len(ex.answers) == nv and all(a in ex.prompt for a in ex.answers), "")
            checks.true(("are" in ex.prompt[-12:]) == (nv > 1), "singular/plural template")
    for ex in vt_examples(m.encode, lengths=[1200], n_per_length=3, num_hops=3, fewshot=True,
                          num_chains=2):                # (no model runs: a longer prompt)
        checks.true(1198 <= ex.prompt_tokens <= 1200, f"vt {ex.prompt_tokens}")
        main = ex.prompt[ex.prompt.rfind("Memorize and track"):]
        lines = [ln for ln in main.split("\n") if ln.startswith("VAR ")]
        checks.true(len(lines) == 2 * 4, "two chains of 1 + 3 assignments")
        first = [ln.split()[1] for ln in lines if ln.split()[1] in ex.answers]
        checks.true(first == ex.answers, "the first chain, in order")
    for ex in cwe_examples(m.encode, lengths=[512], n_per_length=3, num_common=3,
                           freq_common=4, freq_uncommon=1, fewshot=False):
        checks.true(512 - 20 <= ex.prompt_tokens <= 512, f"cwe {ex.prompt_tokens}")
        counts = Counter(re.findall(r"\d+\. (\S+)", ex.prompt.split("\nQuestion")[0]))
        checks.true(all(counts[w] == 4 for w in ex.answers), "common words 4 times")
        checks.true(sum(counts.values()) == 12 + ex.meta["num_uncommon"]
                    and max(c for w, c in counts.items() if w not in ex.answers) == 1, "rest once")


# -- scores -------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", list(SMALL))
def test_oracle_scores_100(task, tmp_path, checks):
    s = SUITES[task](_model(Oracle), tmp_path, **SMALL[task], max_new_tokens=256)
    checks.true(s["score"] == 100.0, f"{task}: {s['score']}")
    checks.true(all(v == 100.0 for v in s["by_length"].values()), f"{s['by_length']}")
    rows = [json.loads(x) for x in (tmp_path / f"{task}.jsonl").read_text().splitlines()]
    checks.true(all(r["score"] == 100.0 for r in rows), "every example")


@pytest.mark.parametrize("task", ["ruler_vt", "ruler_cwe"])
def test_oracle_reads_past_the_solved_example(task, tmp_path, checks):
    kw = {**SMALL[task], "lengths": [1400], "fewshot": True}
    s = SUITES[task](_model(Oracle), tmp_path, **kw, max_new_tokens=256)
    checks.true(s["score"] == 100.0, f"{task} with its solved example: {s['score']}")
    checks.true(1300 < s["max_length_run"] <= 1400, f"{s['max_length_run']}")


@pytest.mark.parametrize("task", ["passkey", "needle"])
def test_constant_model_scores_0(task, tmp_path, checks):
    m = EvalModel(ConstNet(), "byte", chunk_size=64)
    s = SUITES[task](m, tmp_path, **SMALL[task], max_new_tokens=8)
    rows = [json.loads(x) for x in (tmp_path / f"{task}.jsonl").read_text().splitlines()]
    checks.true(all(r["prediction"] == "x" * 8 for r in rows), "constant prediction")
    checks.true(s["score"] == 0.0 and set(s["by_length"].values()) == {0.0}, f"{s['score']}")


def _mqar_items(L, n, kv, K, V, seed=0):
    ds = mq.MQAR(seq_len=L, num_kv_pairs=kv, num_keys=K, num_values=V, power_a=0.01,
              seed=mq.EVAL_SEED_OFFSET + seed)
    return [ds[i] for i in range(n)]


def test_mqar_matches_a_hand_computed_teacher_forced_accuracy(tmp_path, checks):
    m = _model(vocab=9, tokenizer=None, chunk_size=7)             # chunks across the state
    s = mq.run_mqar(m, tmp_path, lengths=[32, 48], num_kv_pairs=4, num_keys=4, num_values=4,
                    n_per_length=10, batch_size=4, seed=2)
    tot_hit = tot = 0
    for L in (32, 48):
        items = _mqar_items(L, 10, 4, 4, 4, seed=2)
        hit = n = 0
        for it in items:                                          # one full pass each
            with torch.no_grad():
                pred = m.net(it["input_ids"][None], None)[0][0].argmax(-1)
            q = it["labels"] != mq.IGNORE_INDEX
            hit += int((pred[q] == it["labels"][q]).sum())
            n += int(q.sum())
        checks.true(abs(s["by_length"][str(L)] - 100 * hit / n) < 1e-9,
                    f"L={L}: {s['by_length'][str(L)]} vs {100 * hit / n}")
        tot_hit, tot = tot_hit + hit, tot + n
    checks.true(abs(s["score"] - 100 * tot_hit / tot) < 1e-9, "pooled over query positions")
    checks.true(s["n_queries"] == tot == 2 * 10 * 4 and s["max_length_run"] == 48, "counts")


def test_mqar_recall_net_through_chunks(tmp_path, checks):
    K = V = 16
    net = RecallNet(K, 1 + K + V)
    s = mq.run_mqar(EvalModel(net, None, chunk_size=5), tmp_path, lengths=[64, 128],
                    num_kv_pairs=[4, 8], num_keys=K, num_values=V, n_per_length=6,
                    batch_size=4)
    checks.true(s["score"] == 100.0, f"perfect recall: {s['score']}")
    half = RecallNet(K, 1 + K + V, answers=lambda k: k % 2 == 0)
    s = mq.run_mqar(EvalModel(half, None, chunk_size=5), tmp_path, lengths=[64, 128],
                    num_kv_pairs=[4, 8], num_keys=K, num_values=V, n_per_length=6,
                    batch_size=4)
    for L, kv in ((64, 4), (128, 8)):
        keys = [int(k) for it in _mqar_items(L, 6, kv, K, V)
                for k in it["input_ids"][it["labels"] != mq.IGNORE_INDEX]]
        expect = 100 * sum(k % 2 == 0 for k in keys) / len(keys)
        checks.true(0 < expect < 100 and abs(s["by_length"][str(L)] - expect) < 1e-9,
                    f"L={L}: {s['by_length'][str(L)]} vs {expect}")


# -- result files -------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["passkey", "needle", "ruler_cwe", "mqar"])
def test_result_files(task, tmp_path, checks):
    if task == "mqar":
        m, kw = _model(tokenizer=None), {"lengths": [64, 96], "n_per_length": 5, "batch_size": 2}
    else:
        m, kw = _model(), {**SMALL[task], "max_new_tokens": 4}
    s = SUITES[task](m, tmp_path, **kw)
    summary = json.loads((tmp_path / f"{task}.json").read_text())
    for key in ("task", "model", "settings", "score", "by_length", "max_length_run",
                "n_examples", "environment", "seconds"):
        checks.true(key in summary, f"{task}.json has {key}")
    checks.true(summary["task"] == task and summary["score"] == s["score"], "summary")
    checks.true(list(summary["by_length"]) == [str(L) for L in kw["lengths"]], "by_length")
    checks.true(0 < summary["max_length_run"] <= max(kw["lengths"]), "max_length_run")
    rows = [json.loads(x) for x in (tmp_path / f"{task}.jsonl").read_text().splitlines()]
    checks.true(len(rows) == summary["n_examples"] > 0, "one JSONL line per example")
    checks.true(max(r["prompt_tokens"] for r in rows) == summary["max_length_run"], "max")
    for r in rows:
        checks.true({"length", "prompt_tokens", "prediction", "answers", "score"} <= set(r),
                    f"row fields {sorted(r)}")
    pngs = [f"{task}_by_length.png"] + (["needle_heatmap.png"] if task == "needle" else [])
    for name in pngs:
        checks.true((tmp_path / name).read_bytes()[:8] == PNG, f"{name} is a PNG")
    if task == "needle":
        grid = summary["by_depth_length"]
        checks.true(list(grid) == ["0", "50", "100"] and
                    all(list(v) == ["256", "384"] for v in grid.values()), "depth x length")
        checks.true(all("depth" in r for r in rows), "depth per example")


# -- determinism --------------------------------------------------------------------------------
def test_examples_are_deterministic_by_seed(tmp_path, checks):
    m = _model()

    def prompts(seed):
        return ([e.prompt for e in passkey_examples(m.encode, lengths=[256, 300],
                                                    n_per_length=3, seed=seed)]
                + [e.prompt for e in niah_examples(m.encode, task="t", lengths=[512],
                                                   n_per_length=2, num_keys=2, num_values=1,
                                                   seed=seed)]
                + [e.prompt for e in cwe_examples(m.encode, lengths=[400], n_per_length=2,
                                                  num_common=2, seed=seed, fewshot=False)])
    a, b, c = prompts(0), prompts(0), prompts(1)
    checks.true(a == b, "same seed, same prompts")
    checks.true(all(x != y for x, y in zip(a, c)), "another seed, other prompts")
    one = [e.prompt for e in passkey_examples(m.encode, lengths=[300], n_per_length=3)]
    checks.true(one == a[3:6], "an example does not depend on the other lengths")
    for i in range(2):
        SUITES["needle"](m, tmp_path / str(i), **SMALL["needle"], max_new_tokens=4)
    checks.true((tmp_path / "0" / "needle.jsonl").read_text()
                == (tmp_path / "1" / "needle.jsonl").read_text(), "same run, same JSONL")


# -- bad input ----------------------------------------------------------------------------------
def test_bad_input_names_the_parameter(tmp_path, checks):
    m = _model()
    for task in ("needle", "ruler_niah_multikey"):
        with pytest.raises(FileNotFoundError, match="haystack_file.*missing.txt"):
            SUITES[task](m, tmp_path, lengths=[512], haystack_file=str(tmp_path / "missing.txt"))
        checks.true(not (tmp_path / f"{task}.jsonl").exists(), "nothing written")
    for task in ("passkey", "needle", "ruler_niah_multivalue", "ruler_vt", "ruler_cwe"):
        with pytest.raises(ValueError, match=rf"^{task}: a length of 64 tokens is too short"):
            SUITES[task](m, tmp_path, lengths=[512, 64])
        checks.true(not (tmp_path / f"{task}.jsonl").exists(), f"{task}: nothing written")
    with pytest.raises(ValueError, match="lengths: expected a non-empty list"):
        SUITES["passkey"](m, tmp_path, lengths=[])
    with pytest.raises(ValueError, match="lengths: expected distinct"):
        SUITES["mqar"](m, tmp_path, lengths=[64, 64])
    with pytest.raises(ValueError, match="depths"):
        SUITES["needle"](m, tmp_path, lengths=[512], depths=[50, 120])
    with pytest.raises(ValueError, match="n_per_length"):
        SUITES["ruler_vt"](m, tmp_path, lengths=[512], n_per_length=0)
    small = _model(vocab=9, tokenizer=None)
    with pytest.raises(ValueError, match=r"num_keys=32, num_values=32.*vocab_size 9"):
        SUITES["mqar"](small, tmp_path, lengths=[64])
    with pytest.raises(ValueError, match="lengths: 32 is too short for num_kv_pairs=16"):
        SUITES["mqar"](m, tmp_path, lengths=[32], num_kv_pairs=16)
    with pytest.raises(ValueError, match="num_kv_pairs"):
        SUITES["mqar"](m, tmp_path, lengths=[64, 128], num_kv_pairs=[4])
    checks.true(sorted(SUITES) == sorted(["passkey", "needle", "mqar", "ruler_niah_multikey",
                                          "ruler_niah_multivalue", "ruler_vt", "ruler_cwe"]),
                "registry")


# -- evaluate: tasks=auto, checks before the first suite, suite names in errors, titles -------
class ZeroNet(torch.nn.Module):
    """All logits 0 (argmax: token 0), any vocabulary."""

    def __init__(self, vocab_size):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, ids, state=None):
        return torch.zeros(*ids.shape, self.vocab_size), state, None


def _constant(vocab=257, tokenizer="byte", reads=None, name="model", title=None):
    return EvalModel(ZeroNet(vocab), tokenizer, chunk_size=64, reads=reads, name=name,
                     title=title)


def test_auto_picks_the_suites_that_fit_the_model(tmp_path, capsys, checks):
    from memarch.eval.run import auto_tasks, evaluate
    from memarch.eval.synthetic import TEXT_SUITES
    # `make train`'s model: MQAR ids (vocabulary 65), no text tokenizer in the checkpoint
    mq_model = _constant(vocab=65)                  # as from_checkpoint: reads unknown
    run, skipped = auto_tasks(mq_model)
    checks.true(run == ["mqar"], f"token model runs mqar only: {run}")
    checks.true(set(skipped) == {*TEXT_SUITES, "perplexity", "longbench"}, f"{skipped}")
    checks.true(all("vocab_size is 65" in skipped[t] for t in TEXT_SUITES), skipped["passkey"])
    run, skipped = auto_tasks(_constant(vocab=300, reads="tokens"))
    checks.true(run == ["mqar"] and "reads token ids" in skipped["passkey"],
                f"told it reads tokens: {run} {skipped['passkey']}")
    out = evaluate(mq_model, "auto", tmp_path / "mq",
                   settings={"mqar": {"lengths": [64], "n_per_length": 4}})
    text = capsys.readouterr().out
    checks.true(out["tasks"] == ["mqar"] and list(out["results"]) == ["mqar"], f"{out['tasks']}")
    checks.true("auto: skipped passkey, needle, ruler_niah_multikey, ruler_niah_multivalue, "
                "ruler_vt, ruler_cwe, perplexity: a text suite; the tokenizer byte has 256 "
                "text token ids but the model's vocab_size is 65" in text
                and "auto: running mqar" in text, text)
    summary = json.loads((tmp_path / "mq" / "summary.json").read_text())
    checks.true(set(summary["skipped"]) == set(skipped), "skipped suites in summary.json")
    # a byte model: text suites; mqar skipped (it reads text); a too-short length dropped
    byte_model = _constant()                        # bytes fit: taken to read text
    run, skipped = auto_tasks(byte_model, {"perplexity": {"text_file": "x.txt"}})
    checks.true(run == [*TEXT_SUITES, "perplexity"], f"byte model: {run}")
    checks.true("reads text" in skipped["mqar"] and "tasks=[mqar]" in skipped["mqar"],
                skipped["mqar"])
    small = {t: {**kw, "max_new_tokens": 2} for t, kw in SMALL.items()}
    small["ruler_cwe"] = {"lengths": [64, 512], "n_per_length": 1, "num_common": 3,
                          "freq_common": 4, "freq_uncommon": 1, "fewshot": False,
                          "max_new_tokens": 2}
    small["ruler_vt"] = {**small["ruler_vt"], "lengths": [64]}
    out = evaluate(byte_model, ["auto"], tmp_path / "b", settings=small)
    text = capsys.readouterr().out
    want = [t for t in TEXT_SUITES if t != "ruler_vt"]
    checks.true(out["tasks"] == want, f"{out['tasks']}")
    checks.true(list(out["results"]["ruler_cwe"]["by_length"]) == ["512"], "64 dropped")
    checks.true("auto: ruler_cwe: lengths [64] skipped: the prompt without any haystack takes"
                in text, text)
    checks.true("every length [64] is too short" in out["skipped"]["ruler_vt"],
                f"{out['skipped']['ruler_vt']}")
    checks.true("\nskipped (why: above, and summary.json): mqar, perplexity, longbench, ruler_vt"
                in text, text)


def test_auto_with_no_fitting_suite_says_why(tmp_path, checks):
    from memarch.eval.run import evaluate
    m = _constant(vocab=9, tokenizer=None)
    with pytest.raises(ValueError, match=r"tasks=auto: no suite fits this model: passkey: .*"
                                         r"mqar: its vocabulary .* vocab_size 9"):
        evaluate(m, "auto", tmp_path / "out", verbose=False)
    checks.true(not (tmp_path / "out").exists(), "nothing written")
    with pytest.raises(ValueError, match="'auto' picks the suites itself"):
        evaluate(m, ["auto", "mqar"], tmp_path / "out", verbose=False)


def test_every_suite_is_checked_before_the_first_runs(tmp_path, checks):
    """The issue: preset=synthetic on a byte model ran 6 suites and then stopped at ruler_cwe
    (``a length of 1024 tokens is too short``, no suite named). Now every suite's settings and
    lengths are checked first, and the error names the suite."""
    from memarch.eval.run import evaluate
    m = _constant()
    settings = {"passkey": {**SMALL["passkey"], "max_new_tokens": 2},
                "ruler_cwe": {"lengths": [1024], "n_per_length": 1}}
    with pytest.raises(ValueError, match=r"^ruler_cwe: a length of 1024 tokens is too short for "
                                         r"this task: .* takes 1625 tokens .*preset=auto"):
        evaluate(m, ["passkey", "ruler_cwe"], tmp_path / "a", settings=settings, verbose=False)
    checks.true(not (tmp_path / "a").exists(), "passkey did not run; no folder")
    bad = {"needle": ({"lengths": [256], "depths": [120]}, r"^needle: depths"),
           "ruler_vt": ({"lengths": [512], "n_per_length": 0}, r"^ruler_vt: n_per_length"),
           "mqar": ({"lengths": [32], "num_kv_pairs": 16}, r"^mqar: lengths: 32 is too short"),
           "perplexity": ({"text_file": str(tmp_path / "no.txt")},
                          r"^perplexity: text_file: file not found")}
    for task, (kw, pattern) in bad.items():
        with pytest.raises((ValueError, OSError), match=pattern):
            evaluate(m, ["passkey", task], tmp_path / "b", settings={**settings, task: kw},
                     verbose=False)
        checks.true(not (tmp_path / "b").exists(), f"{task}: checked before passkey ran")
    # a model that cannot read text: the first text suite named, before mqar runs
    tok = _constant(vocab=65, reads="tokens")
    with pytest.raises(ValueError, match=r"^passkey: EvalModel: the tokenizer byte .*vocab_size "
                                         r"is 65"):
        evaluate(tok, ["mqar", "passkey"], tmp_path / "c", verbose=False,
                 settings={"mqar": {"lengths": [64], "n_per_length": 2}})
    checks.true(not (tmp_path / "c").exists(), "mqar did not run")


def test_an_error_while_a_suite_runs_names_it(tmp_path, checks):
    from memarch.eval.run import evaluate

    class Broken(EvalModel):
        def generate(self, *a, **k):
            raise ValueError("generate: boom")
    m = Broken(ZeroNet(257), "byte", chunk_size=64)
    with pytest.raises(ValueError, match=r"^needle: generate: boom"):
        evaluate(m, ["needle"], tmp_path, settings={"needle": SMALL["needle"]}, verbose=False)
    failed = json.loads((tmp_path / "summary.json").read_text())["failed"]
    checks.true(failed["task"] == "needle" and "needle: generate: boom" in failed["error"],
                f"{failed}")


def test_plot_titles_use_the_run_name(tmp_path, monkeypatch, checks):
    from memarch.eval.model import run_name
    from memarch.eval.synthetic import plots
    path = ("/home/someone/projects/memarch/outputs/2026-12-02/03-16-46/checkpoints/"
            "last.ckpt")
    checks.true(run_name(path) == "2026-12-02/03-16-46 last", run_name(path))
    checks.true(run_name("/x/my_run/checkpoints/step_000400.ckpt") == "my_run step_000400",
                "a plain run folder")
    long = "/tmp/" + "a" * 80 + "/checkpoints/last.ckpt"
    checks.true(len(run_name(long)) <= 48 and "..." in run_name(long), run_name(long))
    titles = []

    def capture(*a, title="", **k):
        titles.append(title)
    monkeypatch.setattr(plots, "accuracy_by_length", capture)
    monkeypatch.setattr(plots, "needle_heatmap", capture)
    m = _constant(name=path, title=run_name(path))
    SUITES["needle"](m, tmp_path, **SMALL["needle"], max_new_tokens=2)
    SUITES["mqar"](m, tmp_path, lengths=[64], n_per_length=2)
    checks.true(titles == ["needle: 2026-12-02/03-16-46 last"] * 2
                + ["mqar: 2026-12-02/03-16-46 last"], f"{titles}")
    checks.true(json.loads((tmp_path / "needle.json").read_text())["model"] == path,
                "result files keep the full path")


def test_the_printed_table_names_mqar_pairs_per_length():
    """After ``make train`` the eval table printed 42 % against training's 98.7 % with no
    hint that MQAR's pairs grow with the length; each length now shows its pairs."""
    from memarch.eval.run import format_table
    table = format_table({"mqar": {"score": 42.1, "max_length_run": 256,
                                   "by_length": {"128": 98.7, "256": 50.0},
                                   "settings": {"lengths": [128, 256], "num_kv_pairs": [4, 8]}},
                          "passkey": {"score": 50.0, "by_length": {"128": 50.0}}})
    assert "128[4 pairs]:99 256[8 pairs]:50" in table, table
    assert "128:50" in table.splitlines()[-1], table            # other tasks unchanged
