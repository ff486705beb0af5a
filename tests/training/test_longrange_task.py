"""Long-range MQAR (``memarch.data.MQAR(gap=...)``): the layout puts every key-value pair more
than ``gap`` tokens before every query; ``gap=0`` is the old MQAR item for item; errors name
the config key; a window-only stack whose receptive field L x (W - 1) + sum(K - 1) is <= gap
cannot see any value from a query (bitwise), while full attention can; the config and the
evaluation suite use the same generator with the gap."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from memarch.eval.model import EvalModel
from memarch.eval.synthetic import mqar as mq
from memarch.eval.synthetic.common import LengthTooShortError

from memarch.data import IGNORE_INDEX, MQAR
from memarch.mixers import Attention, ShortConv
from memarch.models import MemLM

ROOT = Path(__file__).resolve().parents[2]


# -- the layout -------------------------------------------------------------------------------
def _check_item(it, *, T, N, K, V, gap, checks):
    ids, lab = it["input_ids"], it["labels"]
    checks.true(ids.shape == lab.shape == (T,), f"shapes {ids.shape} {lab.shape}")
    keys, vals = ids[0:2 * N:2], ids[1:2 * N:2]
    pairs = dict(zip(keys.tolist(), vals.tolist()))
    checks.true(len(pairs) == N and all(1 <= k <= K for k in pairs), f"{N} distinct keys")
    checks.true(len(set(pairs.values())) == N
                and all(K + 1 <= v <= K + V for v in pairs.values()), "values after the keys")
    q = (lab != IGNORE_INDEX).nonzero().flatten()
    kv_pos = torch.arange(2 * N)
    checks.true(len(q) == N and bool((q[:, None] > kv_pos[None, :] + gap).all()),
                f"every query > every key/value position + gap: {q.tolist()}")
    checks.true(int(q.min()) >= 2 * N + gap and bool(((q - 2 * N - gap) % 2 == 0).all()),
                f"queries at even offsets of the query region: {q.tolist()}")
    checks.true(sorted(ids[q].tolist()) == sorted(pairs), "each key queried exactly once")
    checks.true(all(pairs[int(ids[p])] == int(lab[p]) for p in q), "label = the key's value")
    rest = torch.ones(T, dtype=torch.bool)
    rest[:2 * N], rest[q] = False, False
    checks.true(bool((ids[rest] == 0).all()), "filler (0) in the gap and between queries")
    checks.true(bool((ids[2 * N:2 * N + gap] == 0).all()), "the gap is filler")
    checks.true(not bool(((ids > K) & (torch.arange(T) >= 2 * N)).any()),
                "no value after the key-value block")


@pytest.mark.parametrize("T,N,gap,power_a", [(128, 4, 72, 0.01), (88, 4, 72, 0.01),
                                             (200, 8, 100, 1.0), (64, 4, 1, 0.5)])
def test_layout_every_pair_more_than_gap_before_every_query(T, N, gap, power_a, checks):
    K = V = 32
    ds = MQAR(seq_len=T, num_kv_pairs=N, num_keys=K, num_values=V, power_a=power_a, gap=gap,
              seed=3)
    checks.true(ds.gap == gap and ds.vocab_size == 1 + K + V and ds.chance == 1 / V, "attrs")
    for i in range(25):
        _check_item(ds[i], T=T, N=N, K=K, V=V, gap=gap, checks=checks)
    if T == 4 * N + gap:                 # tightest length: the N query slots are all used
        q = (ds[0]["labels"] != IGNORE_INDEX).nonzero().flatten()
        checks.true(q.tolist() == list(range(2 * N + gap, T, 2)), f"{q.tolist()}")


def test_layout_is_deterministic_per_seed_and_index(checks):
    kw = {"seq_len": 128, "num_kv_pairs": 4, "num_keys": 32, "num_values": 32, "gap": 72}
    a, b = MQAR(seed=5, **kw), MQAR(seed=5, **kw)
    for i in (0, 1, 17, 10 ** 9):
        checks.equal(a[i]["input_ids"], b[i]["input_ids"], f"ids {i}")
        checks.equal(a[i]["labels"], b[i]["labels"], f"labels {i}")
    checks.equal(a[3]["input_ids"], a[3]["input_ids"], "same item twice")
    checks.true(not torch.equal(a[3]["input_ids"], MQAR(seed=6, **kw)[3]["input_ids"]),
                "seeds differ")
    checks.true(not torch.equal(a[3]["input_ids"], a[4]["input_ids"]), "indices differ")
    # the queries spread over the query region (not always at its start)
    starts = {int((a[i]["labels"] != IGNORE_INDEX).nonzero().max()) for i in range(50)}
    checks.true(len(starts) > 3, f"last query positions vary: {sorted(starts)}")


# -- gap=0 is the old MQAR ---------------------------------------------------------------------
def _old_mqar_item(*, seq_len=64, num_kv_pairs=8, num_keys=32, num_values=32, power_a=0.01,
                   seed=0, index=0) -> dict:
    """A copy of MQAR.__getitem__ before ``gap`` existed (same random draws)."""
    g = torch.Generator().manual_seed((seed * 0x9E3779B1 + index) % (2 ** 63))
    N, T = num_kv_pairs, seq_len
    space = (T - 2 * N) // 2
    x = torch.arange(1, space + 1, dtype=torch.float64)
    gap_p = power_a * x.pow(power_a - 1)
    keys = torch.randperm(num_keys, generator=g)[:N] + 1
    vals = torch.randperm(num_values, generator=g)[:N] + 1 + num_keys
    ids = torch.zeros(T, dtype=torch.long)
    ids[0:2 * N:2], ids[1:2 * N:2] = keys, vals
    gaps = torch.multinomial(gap_p, N, replacement=False, generator=g)
    qpos = 2 * N + 2 * gaps
    ids[qpos] = keys
    labels = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
    labels[qpos] = vals
    return {"input_ids": ids, "labels": labels}


# Computed with memarch.data.MQAR before ``gap`` was added.
_Q = IGNORE_INDEX
GOLDEN = [
    ({}, 0,
     [13, 53, 32, 42, 26, 35, 29, 61, 20, 62, 30, 39, 10, 46, 11, 51, 20, 0, 13, 0, 26, 0, 30, 0,
      0, 0, 0, 0, 0, 0, 0, 0, 11, 0, 10, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 29, 0, 0, 0, 0,
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
     {16: 62, 18: 53, 20: 35, 22: 39, 32: 51, 34: 46, 36: 42, 48: 61}),
    ({}, 7,
     [16, 61, 12, 49, 4, 48, 7, 38, 20, 41, 21, 36, 22, 52, 2, 55, 16, 0, 22, 0, 0, 0, 21, 0, 12,
      0, 20, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4,
      0, 0, 0, 0, 0, 0, 0, 0, 0],
     {16: 61, 18: 52, 22: 36, 24: 49, 26: 41, 28: 38, 44: 55, 54: 48}),
    ({"seq_len": 32, "num_kv_pairs": 4, "num_keys": 8, "num_values": 8, "seed": 5,
      "power_a": 0.5}, 3,
     [8, 13, 4, 10, 7, 9, 3, 15, 0, 0, 8, 0, 7, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0,
      0, 0],
     {10: 13, 12: 9, 18: 10, 26: 15}),
]


@pytest.mark.parametrize("case", range(len(GOLDEN)))
def test_gap_0_reproduces_the_old_items_golden(case, checks):
    kw, i, ids, labels = GOLDEN[case]
    want = torch.full((len(ids),), _Q, dtype=torch.long)
    for p, v in labels.items():
        want[p] = v
    for ds in (MQAR(**kw), MQAR(**kw, gap=0)):
        it = ds[i]
        checks.equal(it["input_ids"], torch.tensor(ids), f"ids of item {i}")
        checks.equal(it["labels"], want, f"labels of item {i}")


@pytest.mark.parametrize("kw", [
    {},
    {"seq_len": 64, "num_kv_pairs": 4, "seed": 1},
    {"seq_len": 256, "num_kv_pairs": 16, "power_a": 1.0, "seed": 1000},
    {"seq_len": 33, "num_kv_pairs": 8, "num_keys": 8, "num_values": 9},     # odd length
])
def test_gap_0_reproduces_the_old_logic(kw, checks):
    ds = MQAR(**kw, gap=0)
    for i in (0, 1, 2, 5, 99, 123456):
        old = _old_mqar_item(**kw, index=i)
        checks.equal(ds[i]["input_ids"], old["input_ids"], f"{kw} item {i} ids")
        checks.equal(ds[i]["labels"], old["labels"], f"{kw} item {i} labels")


def test_a_gap_changes_only_where_the_queries_sit(checks):
    """Same draws: the pairs are the gap=0 item's, the queries shift by ``gap`` over a smaller
    region (so the key order of the queries may differ, never the pairs)."""
    a = MQAR(seq_len=128, num_kv_pairs=4, seed=2)
    b = MQAR(seq_len=128, num_kv_pairs=4, gap=72, seed=2)
    for i in range(5):
        checks.equal(a[i]["input_ids"][:8], b[i]["input_ids"][:8], f"item {i}: same pairs")
    checks.true(any(not torch.equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(5)),
                "the gap moves the queries")


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("gap", [-1, 1.5, True, "8", None])
def test_a_bad_gap_names_the_config_key(gap, checks):
    with pytest.raises(ValueError, match=r"^MQAR: data\.dataset\.gap must be an int >= 0, got "):
        MQAR(seq_len=128, num_kv_pairs=4, gap=gap)
    checks.n += 1


def test_a_short_seq_len_names_the_numbers(checks):
    with pytest.raises(ValueError, match=r"^MQAR: data\.dataset\.seq_len must be >= 4 \* "
                                         r"data\.dataset\.num_kv_pairs \+ data\.dataset\.gap = "
                                         r"4 \* 4 \+ 72 = 88, got 87$"):
        MQAR(seq_len=87, num_kv_pairs=4, gap=72)
    with pytest.raises(ValueError, match=r"^MQAR: data\.dataset\.seq_len must be >= 4 \* "
                                         r"data\.dataset\.num_kv_pairs = 32, got 31$"):
        MQAR(seq_len=31, num_kv_pairs=8)                      # gap=0: the message as before
    checks.true(len(MQAR(seq_len=88, num_kv_pairs=4, gap=72)[0]["input_ids"]) == 88,
                "4 * num_kv_pairs + gap is enough")


# -- at chance by construction -----------------------------------------------------------------
def receptive_field(pattern, window: int, kernel_size: int) -> int:
    """Tokens a stack sees back: L x (W - 1) over the windowed layers + sum(K - 1) over the
    convs (docs/design.md#memory-beyond-the-window)."""
    return sum(window - 1 if p == "swa" else kernel_size - 1 for p in pattern)


PATTERN = ["conv", "swa", "swa", "conv", "swa", "swa"]
WINDOW, KSIZE = 16, 4


def _window_lm(**kw):
    torch.manual_seed(0)
    return MemLM(vocab_size=65, d_model=32,
                 mixers={"conv": partial(ShortConv, kernel_size=KSIZE),
                         "swa": partial(Attention, n_heads=2, window=WINDOW)},
                 layer_pattern=PATTERN, **kw).eval()


def _full_lm():
    torch.manual_seed(0)
    return MemLM(vocab_size=65, d_model=32,
                 mixers={"conv": partial(ShortConv, kernel_size=KSIZE),
                         "attn": partial(Attention, n_heads=2)},
                 layer_pattern=["conv", "attn", "attn", "conv", "attn", "attn"]).eval()


def _batch(ds, n):
    items = [ds[i] for i in range(n)]
    return (torch.stack([x["input_ids"] for x in items]),
            torch.stack([x["labels"] for x in items]))


def _other_values(ids, N, K, V):
    """The batch with every value of the key-value block replaced by a different value."""
    out = ids.clone()
    v = out[:, 1:2 * N:2] - K - 1
    out[:, 1:2 * N:2] = (v + 7) % V + K + 1
    assert bool((out[:, 1:2 * N:2] != ids[:, 1:2 * N:2]).all())
    return out


@torch.no_grad()
def test_a_window_only_stack_cannot_see_any_value_from_a_query(checks):
    """With R = 4 x 15 + 2 x 3 = 66 <= gap = 72 the logits at every query are bitwise the same
    whatever the values are: no window-only model of this stack beats chance (1/num_values).
    A full-attention stack's query logits do change (the check can fail)."""
    R = receptive_field(PATTERN, WINDOW, KSIZE)
    checks.true(R == 66, f"receptive field {R}")
    N, K, V, gap = 4, 32, 32, 72
    checks.true(R <= gap, "the gap is out of reach")
    ds = MQAR(seq_len=128, num_kv_pairs=N, num_keys=K, num_values=V, gap=gap, seed=11)
    ids, labels = _batch(ds, 8)
    other = _other_values(ids, N, K, V)
    q = labels != IGNORE_INDEX
    win = _window_lm()
    a, b = win(ids, None).logits, win(other, None).logits
    checks.true(bool(torch.equal(a[q], b[q])), "window-only: query logits bitwise unchanged")
    # positions within reach of a value do change: the perturbation is seen at all
    reach = torch.zeros(128, dtype=torch.bool)
    reach[1:2 * N] = True                           # the key-value block itself
    checks.true(bool((a[:, reach] != b[:, reach]).any(-1).all()), "seen within reach")
    checks.true(bool(torch.equal(a[:, 2 * N + R:], b[:, 2 * N + R:])), "unchanged beyond reach")
    full = _full_lm()
    a, b = full(ids, None).logits, full(other, None).logits
    changed = (a != b).any(-1)[q]
    checks.true(bool(changed.all()), f"full attention sees the values: {changed.tolist()}")
    # the same through the evaluation's streaming path (chunks carry the window state)
    m = EvalModel(win, None, chunk_size=5)
    checks.equal(mq.mqar_predictions(m, ids)[q], mq.mqar_predictions(m, other)[q],
                 "chunked window-only predictions at queries")


@torch.no_grad()
def test_the_receptive_field_formula_is_tight_for_the_stack(checks):
    """Perturbing token p changes the window-only stack's output at p + R and never beyond
    (fp64 and larger weights so a change through six layers is far above rounding)."""
    R = receptive_field(PATTERN, WINDOW, KSIZE)
    win = _window_lm(init_std=0.2).double()
    ids = torch.randint(1, 65, (2, 120), generator=torch.Generator().manual_seed(0))
    p = 10
    other = ids.clone()
    other[:, p] = (ids[:, p] % 64) + 1
    a, b = win(ids, None).logits, win(other, None).logits
    diff = (a != b).any(-1)                                                 # [B, T]
    checks.true(bool(diff[:, p:p + R + 1].all()), f"changed up to p + R = {p + R}")
    checks.true(not bool(diff[:, p + R + 1:].any()), "unchanged after p + R")
    checks.true(not bool(diff[:, :p].any()), "causal")


# -- the config ---------------------------------------------------------------------------------
def test_the_longrange_config_is_out_of_reach_of_a_window_16_stack(checks):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(ROOT / "configs/data/mqar_longrange.yaml")
    base = OmegaConf.load(ROOT / "configs/data/mqar.yaml")
    checks.true(set(cfg) == set(base) and set(cfg.dataset) == set(base.dataset) | {"gap"},
                f"same keys as mqar.yaml plus gap: {sorted(cfg.dataset)}")
    checks.true(cfg._target_ == base._target_ and cfg.dataset._target_ == base.dataset._target_,
                "same targets")
    d = cfg.dataset
    checks.true((d.seq_len, d.num_kv_pairs, d.num_keys, d.num_values) == (128, 4, 32, 32),
                f"{d}")
    R = receptive_field(["swa"] * 4 + ["conv"] * 2, 16, 4)
    checks.true(R == 66 and d.gap >= R, f"gap {d.gap} >= receptive field {R}")
    checks.true(cfg.vocab_size == 1 + d.num_keys + d.num_values, "vocab_size")
    ds = instantiate(d)(seed=0, split="train")
    checks.true(isinstance(ds, MQAR) and ds.gap == d.gap and ds.seq_len == d.seq_len, "builds")
    _check_item(ds[0], T=d.seq_len, N=d.num_kv_pairs, K=d.num_keys, V=d.num_values, gap=d.gap,
                checks=checks)


# -- evaluation ---------------------------------------------------------------------------------
def test_eval_suite_uses_the_generator_with_the_gap(tmp_path, checks):
    m = EvalModel(_window_lm(), None, chunk_size=7)
    n, kv, gap = 6, 4, 72
    s = mq.run_mqar(m, tmp_path, lengths=[128, 160], num_kv_pairs=kv, gap=gap, n_per_length=n,
                    batch_size=4, seed=2)
    checks.true(s["settings"]["gap"] == gap and list(s["by_length"]) == ["128", "160"],
                f"{s['settings']}")
    checks.true(s["n_queries"] == 2 * n * kv and s["chance"] == 100 / 32, "counts")
    checks.true(0 <= s["score"] <= 100 and (tmp_path / "mqar_by_length.png").exists(), "ran")
    rows = [json.loads(x) for x in (tmp_path / "mqar.jsonl").read_text().splitlines()]
    want = []
    for L in (128, 160):
        ds = mq.mqar_dataset(L, kv, num_keys=32, num_values=32, power_a=0.01, seed=2, gap=gap)
        checks.true(ds.gap == gap, "the dataset carries the gap")
        for i in range(n):
            it = ds[i]
            want.append(it["labels"][it["labels"] != IGNORE_INDEX].tolist())
    checks.true([r["answers"] for r in rows] == want, "answers from MQAR(gap=72)")
    plain = mq.run_mqar(m, tmp_path / "plain", lengths=[128, 160], num_kv_pairs=kv,
                        n_per_length=n, batch_size=4, seed=2)
    checks.true(plain["settings"]["gap"] == 0, "default gap 0")
    rows0 = [json.loads(x) for x in (tmp_path / "plain" / "mqar.jsonl").read_text().splitlines()]
    checks.true([r["answers"] for r in rows0] != want, "the gap reaches the generator")


def test_eval_suite_checks_the_gap(tmp_path, checks):
    m = EvalModel(_window_lm(), None, chunk_size=64)
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match=r"^mqar: gap: expected an integer >= 0"):
            mq.run_mqar(m, tmp_path, lengths=[128], gap=bad)
        checks.n += 1
    with pytest.raises(LengthTooShortError,
                       match=r"^mqar: lengths: 64 is too short for num_kv_pairs=4 and gap=72 "
                             r"\(the layout needs seq_len >= 4 \* num_kv_pairs \+ gap = 88\)"):
        mq.run_mqar(m, tmp_path, lengths=[64, 128], num_kv_pairs=4, gap=72)
    checks.true(not (tmp_path / "mqar.jsonl").exists(), "checked before anything runs")
    plan = mq.mqar_suite(m, lengths=[64, 80, 128], num_kv_pairs=4, gap=72)
    checks.true(plan.too_short() == {64: 88, 80: 88}, f"{plan.too_short()}")


def test_evaluate_passes_the_gap_and_auto_drops_short_lengths(tmp_path, capsys, checks):
    from memarch.eval.run import evaluate
    m = EvalModel(_window_lm(), None, chunk_size=64)
    out = evaluate(m, "auto", tmp_path / "a", verbose=True, settings={
        "mqar": {"lengths": [64, 128], "n_per_length": 2, "num_kv_pairs": 4, "gap": 72}})
    text = capsys.readouterr().out
    r = out["results"]["mqar"]
    checks.true(list(r["by_length"]) == ["128"] and r["settings"]["gap"] == 72, f"{r}")
    checks.true("auto: mqar: lengths [64] skipped" in text, text)
    with pytest.raises(LengthTooShortError, match=r"^mqar: lengths: 64 is too short .*gap=72"):
        evaluate(m, ["mqar"], tmp_path / "b", verbose=False, settings={
            "mqar": {"lengths": [64, 128], "num_kv_pairs": 4, "gap": 72}})
    checks.true(not (tmp_path / "b").exists(), "nothing written")


def test_the_eval_presets_take_a_gap_without_plus(checks):
    """``python -m memarch.eval checkpoint=... tasks=[mqar] settings.mqar.gap=72``: the presets
    define ``settings.mqar.gap`` (0), so the override needs no ``+``."""
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(ROOT / "eval/configs"), version_base="1.3"):
        for preset in ("auto", "smoke", "synthetic"):
            cfg = compose("eval", overrides=["checkpoint=x", f"preset={preset}",
                                             "tasks=[mqar]", "settings.mqar.gap=72"])
            checks.true(cfg.settings.mqar.gap == 72, f"{preset}: {cfg.settings.mqar}")
            base = compose("eval", overrides=["checkpoint=x", f"preset={preset}"])
            checks.true(base.settings.mqar.gap == 0, f"{preset}: gap 0 by default")
