"""The README's figures come from results files, and its runnable snippets run.

* every ``<!-- bench:NAME -->`` block equals the render of benchmarks/results/NAME.json;
* no percentage figure appears in the README outside those generated blocks, unless it is a
  non-result figure in ALLOWED_PERCENT (chance levels, definitions);
* every ```python block preceded by ``<!-- runnable -->`` executes as written, and so does
  every one preceded by ``<!-- runnable: real -->`` (it uses the real model: marked ``real``,
  skipped without ``make real-model``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT / "benchmarks"))

import update_readme

# Percentages that are not measured results, with why. Anything else in the README outside
# generated blocks must live in a results file (and so in a block).
ALLOWED_PERCENT = {
    "3.1 %": "MQAR chance level, 1/32 (4 pairs, 32 values)",
    "10 %": "chance level of one decimal digit",
    "100 %": "needle depth range 0-100 % (a setting)",
    "44%": "state saved by the unique-pair Taylor map, (1+d+d(d+1)/2)/(1+d+d^2) at d=16",
}
PERCENT = re.compile(r"\d+(?:[.,]\d+)?\s?%")


def _readme() -> str:
    return README.read_text()


def _blocks(text):
    return [(m.group(1), m.group(2)) for m in update_readme.BLOCK.finditer(text)]


def test_readme_has_the_generated_blocks():
    names = [n for n, _ in _blocks(_readme())]
    assert {"recipes_cpu", "ops_cpu", "decode_cpu", "suites"} <= set(names), names
    # issue 17: every results suite has its table in the README, and each paper's findings
    assert {f"{s}-cpu" for s in update_readme.SUITES} <= set(names), names
    assert {"recall-cpu__findings", "long-cpu__findings", "streaming-cpu__findings"} <= set(names)
    for name in names:                   # NAME__VIEW: a view of results/NAME.json
        if name == "suites":             # the index, rendered from all the suites' files
            continue
        base = name.partition("__")[0]
        assert (ROOT / "benchmarks" / "results" / f"{base}.json").exists(), name


@pytest.mark.parametrize("name", [n for n, _ in _blocks(README.read_text())])
def test_block_equals_render_of_its_results_file(name):
    block = dict(_blocks(_readme()))[name]
    assert block.strip() == update_readme.render_block(name), (
        f"README block {name} differs from benchmarks/results/{name}.json: run "
        "python benchmarks/update_readme.py")


def test_no_percentage_in_prose_outside_generated_blocks():
    prose = update_readme.BLOCK.sub("", _readme())
    found = [(m.group(0), prose[max(0, m.start() - 60):m.end() + 20].replace("\n", " "))
             for m in PERCENT.finditer(prose)]
    bad = [(fig, ctx) for fig, ctx in found if fig not in ALLOWED_PERCENT]
    assert not bad, ("percentages in README prose that come from no results file (put them "
                     f"in a generated block or ALLOWED_PERCENT if not a result): {bad}")


def test_percentage_check_catches_a_hand_typed_figure():
    prose = "reaches 98.7 % held-out accuracy (chance 3.1 %)"
    assert [m.group(0) for m in PERCENT.finditer(prose)
            if m.group(0) not in ALLOWED_PERCENT] == ["98.7 %"]


def test_recipes_results_name_the_machine_and_command():
    data = json.loads((ROOT / "benchmarks" / "results" / "recipes_cpu.json").read_text())
    for key in ("date", "cpu", "threads", "torch", "commit"):
        assert data["meta"].get(key) not in (None, ""), key
    import recipes
    names = {r["name"] for r in data["rows"]}
    assert names == set(recipes.RECIPES), names
    for r in data["rows"]:
        assert 0.0 <= r["val_acc"] <= 1.0 and r["global_step"] > 0, r
        for key in ("date", "cpu", "threads", "torch", "commit"):   # each row names its machine
            assert r.get(key) not in (None, ""), (r["name"], key)
        assert r["command"] == recipes.RECIPES[r["name"]][1]
        block = "recipes_cpu__hmt" if r["name"].startswith("hmt_") else "recipes_cpu"
        # HMT's table names each run with its memory; the run without it adds one override
        command = r["command"].replace(" model.n_memories=0", "")
        assert f"`{command}`" in update_readme.render_block(block), r["name"]


def _runnable_snippets(kind: str = ""):
    text = _readme()
    return re.findall(rf"<!-- runnable{kind} -->\n```python\n(.*?)```", text, re.DOTALL)


def test_readme_marks_the_kernels_snippet_runnable():
    assert any("from memarch.kernels import" in s for s in _runnable_snippets())


@pytest.mark.parametrize("i", range(len(_runnable_snippets())))
def test_runnable_snippet_executes(i, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    src = _runnable_snippets()[i]
    code = compile(src, f"README.md runnable snippet {i}", "exec")
    exec(code, {"__name__": "__readme__"})  # noqa: S102 - the README's own snippet


@pytest.mark.real
@pytest.mark.parametrize("i", range(len(_runnable_snippets(": real"))))
def test_real_model_snippet_executes(i, capsys):
    from memarch.pretrained import RealModelMissing, real_model_path
    try:
        real_model_path()
    except RealModelMissing as e:
        pytest.skip(str(e))
    src = _runnable_snippets(": real")[i]
    exec(compile(src, f"README.md real-model snippet {i}", "exec"),  # noqa: S102
         {"__name__": "__readme__"})
    if "What is the capital of France?" in src:
        assert "Paris" in capsys.readouterr().out


def test_ops_profiler_prints_no_usdt_lines():
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import torch, ops; "
            "print(ops._peak_cpu(lambda: torch.randn(64, 64).sum()) >= 0)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    assert "True" in p.stdout
    assert "USDT" not in p.stdout + p.stderr and "profiler_start" not in p.stderr, p.stderr


def test_readme_figures_are_drawn_from_the_results_json(tmp_path):
    """Every results-suite figure the README shows exists and is what the suite's ``plot``
    draws from its JSON (``update_readme.py`` redraws them; PNG bytes are not compared)."""
    import importlib
    shown = set(re.findall(r"\]\(benchmarks/results/([\w.-]+\.png)\)", _readme()))
    drawn = set()
    for suite in update_readme.SUITES:
        mod = importlib.import_module(f"suite_{suite}")
        for path in sorted((ROOT / "benchmarks" / "results").glob(f"{suite}-*.json")):
            stem = tmp_path / path.stem
            drawn |= {p.name for p in mod.plot(json.loads(path.read_text()), stem) or []}
    suite_figures = {f for f in shown if f.split("-", 1)[0] in update_readme.SUITES}
    assert suite_figures, "the README shows no results-suite figure"
    assert suite_figures <= drawn, suite_figures - drawn
    for name in shown:
        assert (ROOT / "benchmarks" / "results" / name).exists(), name
