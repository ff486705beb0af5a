"""The results suites' shared machinery (benchmarks/common.py, benchmarks/__main__.py,
benchmarks/update_readme.py): merging rows by key, the entry point's checks, the index."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402
import update_readme  # noqa: E402


def _meta(date, quick=False, wall=10.0):
    return {"date": date, "device": "cpu", "cpu": "X", "threads": 2, "torch": "t",
            "quick": quick, "wall_s": wall, "commit": "abc"}


def test_merge_replaces_rows_by_key_keeps_the_rest_and_prunes_runs():
    key = ("model", "T")
    full = common.merge(None, [{"model": "a", "T": 1, "v": 1}, {"model": "a", "T": 2, "v": 2},
                               {"model": "b", "T": 1, "v": 3}], _meta("d1", wall=100), key)
    assert [r["run"] for r in full["rows"]] == ["d1"] * 3
    quick = common.merge(full, [{"model": "a", "T": 1, "v": 10}], _meta("d2", True, 5), key)
    assert [(r["model"], r["T"], r["v"], r["run"]) for r in quick["rows"]] == [
        ("a", 2, 2, "d1"), ("b", 1, 3, "d1"), ("a", 1, 10, "d2")]
    assert quick["meta"]["date"] == "d2" and set(quick["runs"]) == {"d1", "d2"}
    # a run that no longer owns a row leaves ``runs``
    again = common.merge(quick, [{"model": m, "T": t, "v": 0} for m, t in
                                 (("a", 1), ("a", 2), ("b", 1))], _meta("d3"), key)
    assert set(again["runs"]) == {"d3"} and len(again["rows"]) == 3


def test_two_runs_in_one_second_get_distinct_ids():
    a = common.merge(None, [{"k": 1}], _meta("d1"), ("k",))
    b = common.merge(a, [{"k": 2}], _meta("d1"), ("k",))
    assert b["meta"]["run"] == "d1#2" and set(b["runs"]) == {"d1", "d1#2"}
    assert [r["run"] for r in b["rows"]] == ["d1", "d1#2"]


def test_key_compares_values_not_identity():
    # lists and dicts in a key (e.g. a layer pattern) compare by value
    k = ("cfg",)
    a = common.merge(None, [{"cfg": {"w": [1, 2]}, "v": 1}], _meta("d1"), k)
    b = common.merge(a, [{"cfg": {"w": [1, 2]}, "v": 2}], _meta("d2"), k)
    assert len(b["rows"]) == 1 and b["rows"][0]["v"] == 2


def test_index_sums_full_runs_and_shows_the_latest_quick(tmp_path):
    data = common.merge(None, [{"k": 1}], _meta("2026-01-01T00:00:00", wall=90), ("k",))
    data = common.merge(data, [{"k": 2}], _meta("2026-01-02T00:00:00", wall=150), ("k",))
    data = common.merge(data, [{"k": 3}], _meta("2026-01-03T00:00:00", True, 40), ("k",))
    common.write_json(tmp_path / "recall-cpu.json", data)
    (tmp_path / "other-cpu.json").write_text("{}")          # not a suite: ignored
    table = common.render_index(tmp_path)
    row = [ln for ln in table.splitlines() if ln.startswith("| `recall`")]
    assert len(row) == 1 and "| 3 |" in row[0]
    assert "| 4.0 min | - | - | 40 s |" in row[0]        # 90 + 150 s; the quick run alone
    assert "| **all** | cpu | | 4.0 min | | | 40 s | | |" in table


def test_index_cpu_time_and_load(tmp_path):
    m1 = {**_meta("d1", wall=100), "cpu_s": 150.0, "loadavg": 7.5}
    m2 = {**_meta("d2", wall=20), "cpu_s": 30.0, "loadavg": 1.2}
    data = common.merge(common.merge(None, [{"k": 1}], m1, ("k",)), [{"k": 2}], m2, ("k",))
    common.write_json(tmp_path / "long-cpu.json", data)
    row = common.render_index(tmp_path).splitlines()[2]
    assert "| 2.0 min | 3.0 min | 7.5 | - |" in row, row


def test_write_json_is_atomic(tmp_path):
    p = tmp_path / "x-cpu.json"
    common.write_json(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1} and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("args, message", [
    (["nosuch"], "unknown suite 'nosuch'"),
    ([], "usage: python -m benchmarks SUITE"),
    (["mixers", "--dtype", "float64"], "--dtype must be float32, bfloat16 or float16"),
])
@pytest.mark.slow
def test_entry_point_errors_name_the_problem(args, message):
    p = subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and message in p.stderr, p.stderr[-2000:]


def test_update_readme_routes_suite_blocks():
    for suite in common.SUITES:
        assert update_readme.script_for(f"{suite}-cpu") == f"suite_{suite}"
        assert update_readme.script_for(f"{suite}-h200") == f"suite_{suite}"
    assert update_readme.script_for("recipes_cpu") == "recipes"
    assert update_readme.BLOCK.fullmatch("<!-- bench:recall-cpu__findings -->\nx\n"
                                         "<!-- /bench:recall-cpu__findings -->")
