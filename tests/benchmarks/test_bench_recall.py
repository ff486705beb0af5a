"""Suite ``recall`` (benchmarks/suite_recall.py): a tiny run end to end (2 training steps per
point), the state sizes it records, the commands it records, and the findings rules on
synthetic results."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import suite_recall as sr  # noqa: E402


def main(argv):
    """``python -m benchmarks ARGV`` in-process (benchmarks/__main__.py's ``main``)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("benchmarks_main",
                                                  ROOT / "benchmarks" / "__main__.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two seeds of one point, 2 steps each, merged into a results file of older rows (no
    ``seed``): attention_d16's is replaced by the seed-0 row, swa_w8's is kept."""
    out = tmp_path_factory.mktemp("recall")
    old = [{**_row("attention", 16, 4192, 0.5, name="attention_d16"), "dtype": "float32",
            "run": "old", "cpu_s": 1.0},
           {**_row("sliding window", 8, 2176, 0.2, name="swa_w8"), "dtype": "float32",
            "run": "old", "cpu_s": 1.0}]
    (out / "recall-cpu.json").write_text(json.dumps(
        {"meta": {"date": "old"}, "runs": {"old": {"date": "old"}}, "rows": old}))
    main(["recall", "--recall-only", "attention_d16", "--recall-steps", "2", "--recall-extra",
          "data.val_size=64", "--threads", "1", "--results", str(out), "--recall-seeds", "0",
          "1"])
    return out, json.loads((out / "recall-cpu.json").read_text())


def test_tiny_run_rows(tiny):
    out, data = tiny
    kept = [r for r in data["rows"] if r["run"] == "old"]
    assert [(r["name"], r["seed"]) for r in kept] == [("swa_w8", 0)]
    a, b = (r for r in data["rows"] if r["run"] != "old")
    assert a["name"] == b["name"] == "attention_d16" and (a["seed"], b["seed"]) == (0, 1)
    # attention, d 16, 2 heads of 8: K and V of all 64 tokens in 2 layers, plus the 2 short
    # convolutions' last 3 inputs (kernel 4)
    assert a["state_size"] == 2 * (2 * 2 * 8 * 64) + 2 * 3 * 16
    assert " seed=0 " in a["command"] and "data.seed" not in a["command"]
    assert " seed=1 data.seed=101 " in b["command"]
    for r in (a, b):
        assert r["global_step"] == r["steps"] == 2
        assert 0.0 <= r["val_acc"] <= 1.0 and r["chance"] == pytest.approx(1 / 32, abs=1e-4)
        assert r["layer_pattern"][0] == "conv" and len(r["layer_pattern"]) == 4
        assert r["dtype"] == "float32" and r["run"] == data["meta"]["run"]
    assert (out / "recall-cpu.png").stat().st_size > 1000
    table = sr.render(data)
    assert "| attention | d_model 16 | 4,192 |" in table and "2 seeds) | 2 |" in table
    assert "seeds 0, 1 (accuracy: mean (min–max) over the seeds)" in table
    assert table == sr.render(json.loads(json.dumps(data)))        # a function of the JSON


def test_row_state_size_is_the_models(tiny):
    """The recorded state equals MemLM.state_size of the model the command builds."""
    from hydra.utils import instantiate
    from recipes import compose
    _, data = tiny
    for r in data["rows"]:
        over = shlex.split(r["command"])[2:]
        if r["run"] == "old":
            continue
        # the command is the config
        assert over == sr.overrides(r["name"], r["steps"], r["seed"])
        net = instantiate(compose(over, "/tmp/unused").model)
        assert r["state_size"] == net.state_size(sr.SEQ_LEN)
        assert r["params"] == sum(p.numel() for p in net.parameters())


def _state(name):
    from hydra.utils import instantiate
    from recipes import compose
    return instantiate(compose(sr.overrides(name), "/tmp/unused").model).state_size(sr.SEQ_LEN)


def test_recurrent_state_sizes():
    """The state of the recurrent points, from the models the sweep builds, against the
    formulas (2 mixer layers + 2 short convolutions of kernel 4 keeping 3 inputs of d)."""
    conv = lambda d: 2 * 3 * d                                          # noqa: E731
    # linear attention, d 32, 2 heads of 16 (elu map: 16 features): S [16 x 16] + z [16] per
    # head, independent of the length
    assert _state("linear_attention_d32") == 2 * 2 * (16 * 16 + 16) + conv(32)
    # BASED f 4: Taylor features 1 + 4 + 4*5/2 = 15, 2 heads of 32: S [15 x 32] + z [15]; then
    # window-8 attention (7 past K and V of 2 heads of 32)
    assert _state("based_f4") == 2 * (15 * 32 + 15) + 2 * 2 * 32 * 7 + conv(64)
    # sliding window 16: 15 past K and V of 2 heads of 32 per layer
    assert _state("swa_w16") == 2 * (2 * 2 * 32 * 15) + conv(64)
    # MoM: per layer n memories of 4 heads of 16 x 16, and the convolution's last 3 inputs
    # of q (4 x 16) and of each memory's k and v (4 x 32)
    for m in (1, 4):
        assert _state(f"mom_m{m}") == 2 * (m * 4 * 16 * 16 + 3 * (4 * 16 + m * 4 * 32)) + conv(64)


def test_quick_is_a_subset_with_the_same_settings():
    class A:
        quick, recall_only = True, None
    assert set(sr.selected(A)) <= set(sr.POINTS) and len(sr.selected(A)) >= 2
    A.quick = False
    assert sr.selected(A) == list(sr.POINTS)
    # every point: same task, seed, steps and layer count; only the mixer and its size vary
    for name in sr.POINTS:
        over = sr.overrides(name)
        assert over[:2] == sr.TASK and f"trainer.max_steps={sr.STEPS}" in over
        assert f"seed={sr.SEED}" in over
        assert sum(o.startswith("model.layer_pattern=[conv,") for o in over) == 1


def _row(family, value, state, acc, name=None):
    return {"name": name or f"{family}_{value}", "family": family, "knob": "k", "value": value,
            "state_size": state, "val_acc": acc, "chance": 1 / 32, "params": 1000,
            "global_step": 500, "train_s": 1.0, "threads": 1, "command": "python train.py"}


def _data(rows):
    return {"meta": {"device": "cpu", "torch": "x", "cpu": "c"}, "runs": {}, "rows": rows}


ATTN = [_row("attention", 16, 4000, 0.3), _row("attention", 64, 16000, 0.99)]


def test_based_rule_equal_or_smaller_state():
    la = [_row("linear attention", 32, 1000, 0.1), _row("linear attention", 64, 5000, 0.3)]
    good = [_row("BASED", 4, 900, 0.2), _row("BASED", 16, 5000, 0.9)]
    f = sr.findings(_data(ATTN + la + good))["based"]
    assert (f["beaten"], f["verdict"]) == (2, "reproduced")
    # BASED better only at a larger state than linear attention: not at equal state
    big = [_row("BASED", 16, 6000, 0.9)]
    f = sr.findings(_data(ATTN + la + big))["based"]
    assert (f["beaten"], f["verdict"]) == (0, "not reproduced")
    # one of two beaten (the one at state 1000 has no BASED point of equal or smaller state):
    # partly
    f = sr.findings(_data(ATTN + la + [_row("BASED", 16, 5000, 0.9)]))["based"]
    assert (f["beaten"], f["verdict"]) == (1, "partly reproduced")
    f = sr.findings(_data(ATTN + la + [_row("BASED", 16, 5000, 0.32)]))["based"]
    assert (f["beaten"], f["verdict"]) == (0, "not reproduced")      # 0.32 - 0.3 is a tie
    # all beaten but attention not near 100 %: partly
    weak = [_row("attention", 64, 16000, 0.85)]
    assert sr.findings(_data(weak + la + good))["based"]["verdict"] == "partly reproduced"


def test_tradeoff_and_mom_rules():
    rows = ATTN + [_row("sliding window", 8, 2000, 0.5), _row("sliding window", 32, 8000, 0.52),
                   _row("MoM", 1, 3000, 0.99), _row("MoM", 4, 12000, 0.97)]
    f = sr.findings(_data(rows))
    t = f["tradeoff"]
    assert t["rise"] == ["attention"] and t["sat"] == ["MoM"] and t["other"] == ["sliding window"]
    assert t["verdict"] == "partly reproduced"                       # 2 of 3 families
    assert f["mom"]["verdict"] == "not reproduced"
    rows[3] = _row("sliding window", 32, 8000, 0.8)
    rows += [_row("MoM", 2, 6000, 0.999)]
    f = sr.findings(_data(rows))
    assert f["tradeoff"]["verdict"] == "reproduced"
    assert f["mom"]["verdict"] == "partly reproduced"      # 2 memories beat 1, 4 do not
    rows[4] = _row("MoM", 1, 3000, 0.5)
    assert sr.findings(_data(rows))["mom"]["verdict"] == "reproduced"


def test_findings_sentences_use_the_json_numbers():
    la = [_row("linear attention", 64, 5000, 0.3125)]
    rows = ATTN + la + [_row("BASED", 16, 4000, 0.875), _row("MoM", 1, 3000, 0.25),
                        _row("MoM", 4, 12000, 0.625)]
    text = sr.render_findings(_data(rows))
    paras = text.strip().split("\n\n")
    assert [p.split("**")[1] for p in paras] == ["BASED", "Zoology / MQAR", "MoM"]
    assert "87.5 %" in paras[0] and "31.2 %" in paras[0] and "99.0 %" in paras[0]
    assert "62.5 %" in paras[2] and "25.0 %" in paras[2] and "12,000" in paras[2]
    assert "): reproduced at this scale" in paras[0]


def _seeded(family, value, state, accs, name=None):
    return [{**_row(family, value, state, a, name), "seed": sd} for sd, a in enumerate(accs)]


def test_findings_on_all_seeds():
    """Reproduced needs the margin in the mean over the seeds AND in the worst seed (per-seed
    differences, the seeds both points have); partly: in some seed; not: in none."""
    one = _seeded("MoM", 1, 3000, [0.5, 0.5, 0.5])
    f = sr.findings(_data(one + _seeded("MoM", 4, 12000, [0.8, 0.82, 0.84])))["mom"]
    assert f["verdict"] == "reproduced" and f["seeds"] == [0, 1, 2]
    # seed 2 only 2 points above: the mean (70.7 %) passes, the worst seed decides: partly
    data = _data(one + _seeded("MoM", 4, 12000, [0.8, 0.8, 0.52]))
    assert sr.findings(data)["mom"]["verdict"] == "partly reproduced"
    text = sr.render_findings(data)
    assert ("4 memories reach 70.7 % (52.0–80.0, 3 seeds) against 50.0 % (50.0–50.0, 3 seeds) "
            "for one memory of the same size (state 12,000 against 3,000; per seed +30.0, "
            "+30.0, +2.0 points, seeds 0, 1, 2).") in text
    assert sr.findings(_data(one + _seeded("MoM", 4, 12000, [0.4, 0.3, 0.45])))["mom"][
        "verdict"] == "not reproduced"
    # a seed missing for one point: the seeds both have
    f = sr.findings(_data(one[:2] + _seeded("MoM", 4, 12000, [0.8, 0.8, 0.52])))["mom"]
    assert f["seeds"] == [0, 1] and f["verdict"] == "reproduced"
    # BASED: beaten in 2 of 3 seeds only is not beaten; attention near 100 % in every seed
    attn = _seeded("attention", 16, 4000, [0.3] * 3) + _seeded("attention", 64, 16000,
                                                               [0.99, 0.99, 0.95])
    la = _seeded("linear attention", 64, 5000, [0.3, 0.3, 0.3])
    b = sr.findings(_data(attn + la + _seeded("BASED", 16, 4000, [0.9, 0.9, 0.32])))["based"]
    assert (b["beaten"], b["some"], b["verdict"]) == (0, 1, "partly reproduced")
    b = sr.findings(_data(attn + la + _seeded("BASED", 16, 4000, [0.9, 0.9, 0.9])))["based"]
    assert (b["beaten"], b["verdict"]) == (1, "reproduced")
    weak = attn[:3] + _seeded("attention", 64, 16000, [0.99, 0.99, 0.85])
    b = sr.findings(_data(weak + la + _seeded("BASED", 16, 4000, [0.9, 0.9, 0.9])))["based"]
    assert b["verdict"] == "partly reproduced"             # attention's seed 2 below 90 %
    # trade-off: attention rises in the mean, not in seed 2
    t = sr.findings(_data(attn[:3] + _seeded("attention", 64, 16000, [0.99, 0.99, 0.32])
                          ))["tradeoff"]
    assert t["rise"] == [] and t["verdict"] == "not reproduced"


def test_findings_name_their_own_seeds():
    """MoM re-run with 3 seeds, the rest of the sweep with seed 0 alone: each sentence says the
    seeds its own rows have (no "in every seed" for a single-seed comparison)."""
    la = [_row("linear attention", 64, 5000, 0.3)]
    mom = _seeded("MoM", 1, 3000, [0.5, 0.4, 0.6]) + _seeded("MoM", 4, 12000, [0.2, 0.3, 0.1])
    text = sr.render_findings(_data(ATTN + la + [_row("BASED", 16, 4000, 0.9)] + mom))
    based, trade, m = text.strip().split("\n\n")
    assert "in every seed" not in based and "87.5" not in based
    assert "reaches 99.0 % (seed 0 only)" in based
    assert trade.endswith("(a rise is more than 5 points in the mean over the seeds and in every "
                          "seed; 2 families, seeds 0, 1, 2 for MoM; seed 0 only for "
                          "attention).")
    assert "seeds 0, 1, 2)." in m
    assert sr._where({"attention": [0], "MoM": [0]}) == ""
    assert sr._where({"attention": [1], "MoM": [1]}) == ", seed 1 only"
    assert sr._where({"attention": [0, 1], "MoM": [0, 1]}) == ", seeds 0, 1"


def test_old_rows_without_seed_are_seed_0(tmp_path):
    old = [_row("MoM", 1, 3000, 0.5), _row("MoM", 4, 12000, 0.8)]      # no "seed": seed 0
    new = [{**_row("MoM", 1, 3000, 0.5), "seed": 1}, {**_row("MoM", 4, 12000, 0.9), "seed": 1}]
    f = sr.findings(_data(old + new))["mom"]
    assert f["seeds"] == [0, 1] and f["most"]["accs"] == {0: 0.8, 1: 0.9}
    assert "seed 0 only" in sr.render_findings(_data(old))
    path = tmp_path / "recall-cpu.json"
    path.write_text(json.dumps(_data(old)))
    assert sr.upgrade_old_rows(path) and not sr.upgrade_old_rows(path)
    assert {r["seed"] for r in json.loads(path.read_text())["rows"]} == {0}


def test_seeds_option_and_overrides():
    from benchmarks.__main__ import parse
    _, _, args = parse(["recall", "--recall-only", "mom_m1", "--recall-seeds", "1", "2"])
    assert sr.seeds(args) == [1, 2]
    assert sr.seeds(parse(["recall"])[2]) == [0]
    with pytest.raises(SystemExit):
        parse(["recall", "--recall-seeds", "-1"])
    o0, o2 = sr.overrides("mom_m1"), sr.overrides("mom_m1", seed=2)
    assert "seed=0" in o0 and not any(o.startswith("data.seed") for o in o0)
    i = o2.index("seed=2")
    assert o2[i + 1] == "data.seed=102" and o2[:i] + o2[i + 2:] == [o for o in o0 if o != "seed=0"]
