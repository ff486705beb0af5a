"""benchmarks/recipes.py: row names with seeds, the findings' rule on all seeds (on synthetic
rows), the findings table, and a 2-step recipe run that records its loss curve and, for MoM,
its routing statistics."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import recipes  # noqa: E402


def test_seed_names_and_commands():
    assert recipes.resolve("titans_mac_tiny") == ("titans_mac_tiny", 0)
    assert recipes.resolve("titans_mac_tiny_seed2") == ("titans_mac_tiny", 2)
    assert recipes.row_name("mom_gdn_tiny", 0) == "mom_gdn_tiny"
    assert recipes.row_name("mom_gdn_tiny", 1) == "mom_gdn_tiny_seed1"
    over, cmd = recipes.recipe_of("mom_gdn_tiny_1mem_seed2")
    assert over[-2:] == ["seed=2", "data.seed=102"] and cmd.endswith(" seed=2 data.seed=102")
    assert cmd.startswith("python train.py experiment=mom_gdn_tiny ")
    assert recipes.recipe_of("default_seed1")[1] == "python train.py seed=1 data.seed=101"
    with pytest.raises(SystemExit, match="unknown recipe 'nope_seed1'"):
        recipes.resolve("nope_seed1")


def _rows(block, base):
    return {recipes.row_name(n, sd): {"val_acc": a}
            for n, accs in (("blk", block), ("base", base)) for sd, a in enumerate(accs)}


@pytest.mark.parametrize("block, base, verdict, met", [
    ([0.9, 0.8, 0.7], [0.03, 0.03, 0.03], "reproduced", 3),
    ([0.9, 0.9, 0.1], [0.03, 0.03, 0.03], "partly reproduced", 2),   # mean ok, worst seed not
    ([0.3, 0.2, 0.1], [0.03, 0.03, 0.03], "partly reproduced", 1),
    ([0.1, 0.1, 0.1], [0.03, 0.03, 0.03], "not reproduced", 0),
    ([0.9, 0.9], [0.03, 0.03], "not judged", 2),                     # 2 seeds only
])
def test_judge_on_all_seeds(block, base, verdict, met):
    j = recipes.judge(_rows(block, base), "blk", "base", 0.2)
    assert (j["verdict"], j["met"]) == (verdict, met)
    assert j["gains"] == pytest.approx([a - b for a, b in zip(block, base)])


def test_judge_pairs_seeds():
    """Gains are per seed (the same seed's data), not best against worst."""
    j = recipes.judge(_rows([0.5, 0.3, 0.9], [0.1, 0.05, 0.65]), "blk", "base", 0.2)
    assert j["gains"] == pytest.approx([0.4, 0.25, 0.25]) and j["verdict"] == "reproduced"


def test_render_findings(monkeypatch):
    monkeypatch.setattr(recipes, "FINDINGS", [("a claim", "blk", "base", 0.2)])
    rows = [{"name": n, **r} for n, r in _rows([0.9, 0.9, 0.1], [0.03, 0.04, 0.02]).items()]
    text = recipes.render_findings({"rows": rows})
    assert ("| a claim | `blk` | `base` | 63.3 % (10.0–90.0) | 3.0 % (2.0–4.0) | "
            "+87.0, +86.0, +8.0 | +20 | **partly reproduced** (goal met in 2 of 3 seeds) |"
            ) in text


def test_two_step_mom_run_records_curve_and_routing(monkeypatch):
    monkeypatch.setattr(recipes, "CURVE_EVERY", 1)
    over, cmd = recipes.RECIPES["mom_gdn_crowded"]
    monkeypatch.setitem(recipes.RECIPES, "mom_gdn_crowded",
                        ([*over, "trainer.max_steps=2", "data.val_size=8",
                          "model.d_model=32"], cmd))
    row = recipes.run_recipe("mom_gdn_crowded_seed1")
    assert row["seed"] == 1 and row["recipe"] == "mom_gdn_crowded"
    assert len(row["curve"]) == 2 and all(x > 0 for x in row["curve"])
    layers = row["routing"]["layers"]
    assert len(layers) == 2 and row["routing"]["n_queries"] == 8 * 16


def test_render_tried_and_routing(monkeypatch):
    monkeypatch.setattr(recipes, "TRIED", [("T", "base", ["blk"])])
    rows = [{"name": n, "command": f"cmd {n}", "global_step": 4, "train_s": 1.0, "threads": 1,
             "curve": [3.0, 2.0, 1.0], **r}
            for n, r in _rows([0.5, 0.3], [0.03, 0.04]).items()]
    text = recipes.render_tried({"rows": rows})
    assert "| `blk` | `cmd blk` | 50.0 % (seed 0), 30.0 % (seed 1) | 40.0 % (30.0–50.0) | 4 | " \
           "3.00 → 2.00 → 1.00 |" in text
    assert text.index("`base`") < text.index("`blk`")
    layer = {"layer": 0, "route_by": "token", "load": [0.5, 0.5], "value_top1_match": 0.1,
             "value_topk_overlap": 0.3, "chance_top1": 0.5, "chance_topk_overlap": 1.0,
             "accuracy_value_overlap": 0.25, "accuracy_no_value_overlap": None}
    routing = recipes.render_routing({"rows": [{"recipe": "r", "seed": 2,
                                                "routing": {"layers": [layer]}}]})
    assert "| `r` | 2 | 0 | token | 50 / 50 % | 10.0 % | 30.0 % | 50.0 % / 100.0 % | " \
           "25.0 % / — |" in routing
