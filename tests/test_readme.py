"""README.md and benchmarks/README.md: their figures come from results files, and their
snippets and commands run.

* every ``<!-- bench:NAME -->`` block of either file equals the render of
  benchmarks/results/NAME.json (its links relative to the file);
* no percentage figure appears outside those generated blocks, unless it is a non-result
  figure in ALLOWED_PERCENT (chance levels, definitions);
* every ```python block preceded by ``<!-- runnable -->`` executes as written, so does every
  one preceded by ``<!-- runnable: real -->`` (the real model: marked ``real``, skipped
  without ``make real-model``), and every one preceded by ``<!-- runnable: after make train
  -->`` (run in a folder whose ``outputs/`` holds a checkpoint of the default experiment,
  trained here for a few steps);
* every ``python train.py ...`` command of README.md (in a ```bash block or inline) composes
  its Hydra config and passes ``check_config``, without training;
* every command of README.md's ```bash blocks is classified (COMMANDS): run here (quick), run
  under ``slow`` or ``real``, composed only (train.py), or a set-up command (``make``, whose
  target must exist). A command that needs a GPU or a file the repository does not hold is
  marked in the README by a trailing comment (``# GPU only``, ``# needs ...``): exactly those
  are skipped, by that marker. Commands run with bash in a scratch folder, the venv's
  ``bin/`` first on ``PATH`` (as after ``source .venv/bin/activate``), with the lines
  ``NAME=value`` of their block before them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
README = ROOT / "README.md"
BENCH_README = ROOT / "benchmarks" / "README.md"
DOCS = (README, BENCH_README)
sys.path.insert(0, str(ROOT / "benchmarks"))

import update_readme  # noqa: E402

# Percentages that are not measured results, with why. Anything else in either file outside
# generated blocks must live in a results file (and so in a block).
ALLOWED_PERCENT = {
    "3.1 %": "MQAR chance level, 1/32 (4 pairs, 32 values)",
    "10 %": "chance level of one decimal digit",
    "100 %": "needle depth range 0-100 % (a setting)",
}
PERCENT = re.compile(r"\d+(?:[.,]\d+)?\s?%")


def _text(path: Path = README) -> str:
    return path.read_text()


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _blocks(text):
    return [(m.group(1), m.group(2)) for m in update_readme.BLOCK.finditer(text)]


def _all_blocks():
    return [(_rel(p), n) for p in DOCS for n, _ in _blocks(_text(p))]


def test_the_update_script_covers_both_files():
    assert set(update_readme.FILES) == set(DOCS)


def test_the_generated_blocks_are_all_there():
    names = [n for _, n in _all_blocks()]
    assert {"recipes_cpu", "recipes_cpu__hmt", "ops_cpu", "decode_cpu", "suites",
            "aot_resources", "gpu_check_h200", "titans_cpu", "real_eval-cpu",
            "hmt_real-cpu", "inference-cpu__targets"} <= set(names), names
    # every results suite has its table, and each paper's findings
    assert {f"{s}-cpu" for s in update_readme.SUITES} <= set(names), names
    findings = {"recall-cpu__findings", "long-cpu__findings", "streaming-cpu__findings"}
    assert findings <= {n for n, _ in _blocks(_text(README))}, "the README shows the findings"
    for name in names:                   # NAME__VIEW: a view of results/NAME.json
        if name == "suites":             # the index, rendered from all the suites' files
            continue
        base = name.partition("__")[0]
        assert (ROOT / "benchmarks" / "results" / f"{base}.json").exists(), name


# results files that no README table shows, with why
NOT_SHOWN = {"probes": "the bad-input audit's record (benchmarks/probes.py), checked by tests"}


def test_every_results_file_has_a_block():
    shown = {n.partition("__")[0] for _, n in _all_blocks()}
    missing = [p.name for p in sorted((ROOT / "benchmarks" / "results").glob("*.json"))
               if p.stem not in shown and p.stem not in NOT_SHOWN]
    assert not missing, f"results files in no block of README.md or benchmarks/README.md: {missing}"


@pytest.mark.parametrize("doc,name", _all_blocks())
def test_block_equals_render_of_its_results_file(doc, name):
    path = ROOT / doc
    block = dict(_blocks(_text(path)))[name]
    assert block.strip() == update_readme.render_in(name, path), (
        f"{doc} block {name} differs from benchmarks/results/{name}.json: run "
        "python benchmarks/update_readme.py")


def test_an_unknown_block_name_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="no script renders it"):
        update_readme.script_for("nonsense_cpu")


def test_links_in_benchmarks_readme_are_relative_to_it():
    assert "](benchmarks/" not in _text(BENCH_README)
    assert update_readme.rebase_links("![x](benchmarks/results/a.png)", BENCH_README) == \
        "![x](results/a.png)"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", [_rel(p) for p in DOCS])
def test_links_between_the_files_resolve(doc):
    """Every relative link of either file names a file that exists, and every ``#anchor`` a
    heading of the file it points to."""
    path = ROOT / doc
    for target in re.findall(r"\]\(([^)\s]+)\)", _text(path)):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{doc}: link to a missing file: {target}"
        if anchor:
            heads = re.findall(r"^#+ (.+)$", dest.read_text(), re.MULTILINE)
            assert anchor in {_slug(h) for h in heads}, f"{doc}: no heading for {target}"


@pytest.mark.parametrize("doc", [_rel(p) for p in DOCS])
def test_no_percentage_in_prose_outside_generated_blocks(doc):
    prose = update_readme.BLOCK.sub("", _text(ROOT / doc))
    found = [(m.group(0), prose[max(0, m.start() - 60):m.end() + 20].replace("\n", " "))
             for m in PERCENT.finditer(prose)]
    bad = [(fig, ctx) for fig, ctx in found if fig not in ALLOWED_PERCENT]
    assert not bad, (f"percentages in {doc} prose that come from no results file (put them "
                     f"in a generated block or ALLOWED_PERCENT if not a result): {bad}")


def test_percentage_check_catches_a_hand_typed_figure():
    prose = "reaches 98.7 % held-out accuracy (chance 3.1 %)"
    assert [m.group(0) for m in PERCENT.finditer(prose)
            if m.group(0) not in ALLOWED_PERCENT] == ["98.7 %"]


def test_readme_is_for_a_user():
    """The sections in the order a user needs them, and about 400 lines."""
    text = _text(README)
    heads = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert heads == ["Set-up", "Use a layer", "Models and generation", "A real pretrained model",
                     "Training", "Evaluation", "Results", "Layout"], heads
    assert len(text.splitlines()) < 500, len(text.splitlines())
    for folder in ("memarch/", "kernels/", "configs/", "train.py", "eval/", "benchmarks/",
                   "tests/", "docs/", "Makefile"):
        layout = text.split("## Layout")[1]
        assert re.search(rf"^{re.escape(folder)}\s", layout, re.MULTILINE), folder
    assert "source .venv/bin/activate" in text
    assert "../shared" not in text


def test_recipes_results_name_the_machine_and_command():
    data = json.loads((ROOT / "benchmarks" / "results" / "recipes_cpu.json").read_text())
    for key in ("date", "cpu", "threads", "torch", "commit"):
        assert data["meta"].get(key) not in (None, ""), key
    import recipes
    names = {r["name"] for r in data["rows"]}
    rows = {r["name"]: r for r in data["rows"]}
    assert {recipes.resolve(n)[0] for n in names} == set(recipes.RECIPES), names
    assert set(recipes.RECIPES) <= names                  # every recipe has its seed-0 row
    for r in data["rows"]:
        assert 0.0 <= r["val_acc"] <= 1.0 and r["global_step"] > 0, r
        for key in ("date", "cpu", "threads", "torch", "commit"):   # each row names its machine
            assert r.get(key) not in (None, ""), (r["name"], key)
        want = recipes.recipe_of(r["name"])[1]
        if r.get("seed_convention") == "init only":        # earlier runs: seed=S alone
            base, seed = recipes.resolve(r["name"])
            want = f"{recipes.RECIPES[base][1]} seed={seed}"
        assert r["command"] == want, r["name"]
        on = rows.get(r["name"].replace("_nomem", ""))
        if "_nomem" in r["name"] and (on is None or on.get("seed_convention")):
            continue   # shown beside another HMT run of its seed (whose command is the row's)
        block = "recipes_cpu__hmt" if r["name"].startswith("hmt_") else "recipes_cpu"
        # HMT's table names each run with its memory; the run without it adds one override
        command = r["command"].replace(" model.n_memories=0", "")
        assert f"`{command}`" in update_readme.render_block(block), r["name"]


# -- python snippets ----------------------------------------------------------------------
def _snippets(kind: str = ""):
    return [(_rel(p), s) for p in DOCS for s in
            re.findall(rf"<!-- runnable{kind} -->\n```python\n(.*?)```", _text(p), re.DOTALL)]


def _exec(doc: str, i: int, src: str) -> None:
    exec(compile(src, f"{doc} runnable snippet {i}", "exec"),  # noqa: S102 - the README's own
         {"__name__": "__readme__"})


def test_readme_marks_the_kernels_snippet_runnable():
    assert any("from memarch.kernels import" in s for _, s in _snippets())
    assert _snippets(": after make train"), "the README shows generation from make train's model"


@pytest.mark.parametrize("i", range(len(_snippets())))
def test_runnable_snippet_executes(i, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    doc, src = _snippets()[i]
    _exec(doc, i, src)


@pytest.mark.real
@pytest.mark.parametrize("i", range(len(_snippets(": real"))))
def test_real_model_snippet_executes(i, capsys):
    from memarch.pretrained import RealModelMissing, real_model_path
    try:
        real_model_path()
    except RealModelMissing as e:
        pytest.skip(str(e))
    doc, src = _snippets(": real")[i]
    _exec(doc, i, src)
    if "What is the capital of France?" in src:
        assert "Paris" in capsys.readouterr().out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A scratch folder whose ``outputs/DATE/TIME/checkpoints/last.ckpt`` is the default
    experiment (``make train``'s), trained for a few steps at a small width."""
    from memarch.lit.train import run
    ws = tmp_path_factory.mktemp("after_make_train")
    out = ws / "outputs" / "2026-01-01" / "00-00-00"
    cfg = _compose(["trainer.max_steps=4", "trainer.val_check_interval=4", "data.val_size=8",
                    "model.d_model=32", "logger={}", "trainer.enable_progress_bar=false",
                    f"paths.output_dir={out}"])
    run(cfg)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    return ws


@pytest.mark.parametrize("i", range(len(_snippets(": after make train"))))
def test_snippet_after_make_train_executes(i, trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    doc, src = _snippets(": after make train")[i]
    _exec(doc, i, src)
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"\[\d+\]", printed), printed      # one generated token id


# -- commands -----------------------------------------------------------------------------
MARKER = re.compile(r"\b(GPU only|needs\b.*)")
ASSIGN = re.compile(r"^([A-Z_][A-Z0-9_]*)=(\S.*)$")
# how each command of README.md's bash blocks is checked: the first pattern that matches
COMMANDS = [
    (r"source \.venv/bin/activate", "setup"),
    (r"make( -n -W pyproject\.toml)? [\w-]+( [A-Z_]+=\S+)*", "setup"),
    (r"python train\.py debug=tiny", "quick"),
    (r"python -m memarch\.eval checkpoint=\$CKPT (preset=smoke|'settings\.mqar\..*)", "quick"),
    (r"python -m memarch\.eval checkpoint=\$CKPT", "slow"),
    (r"python train\.py ckpt_path=\$CKPT .*", "slow"),
    (r"python -m memarch\.(convert|generate|eval) .*smollm2\.ckpt.*", "real"),
    (r"python train\.py .*", "compose"),       # composed and checked only: training takes long
]


def _split_comment(line: str) -> tuple[str, str]:
    """``command  # comment`` -> (command, comment); a ``#`` inside quotes is not one."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip(), line[i + 1:].strip()
    return line.strip(), ""


def _bash_commands(text: str):
    """(command, comment, the block's NAME=value lines before it) for every command of every
    ```bash block; continuation lines are joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        assigns = []
        for line in block.replace("\\\n", " ").splitlines():
            cmd, comment = _split_comment(line)
            if not cmd:
                continue
            cmd = re.sub(r"\s+", " ", cmd)
            if ASSIGN.match(cmd):
                assigns.append(cmd)
            else:
                out.append((cmd, comment, tuple(assigns)))
    return out


def _kind(cmd: str) -> str | None:
    return next((kind for pat, kind in COMMANDS if re.fullmatch(pat, cmd)), None)


README_COMMANDS = _bash_commands(_text(README))


def _train_commands() -> list[str]:
    """Every ``python train.py ...`` of README.md: in bash blocks and in inline code."""
    text = _text(README)
    inline = re.findall(r"`(python train\.py [^`]*)`", text)
    return sorted({c for c, _, _ in README_COMMANDS if c.startswith("python train.py")}
                  | set(inline))


def test_every_readme_command_is_checked():
    assert README_COMMANDS
    unknown = [c for c, comment, _ in README_COMMANDS if not MARKER.search(comment)
               and _kind(c) is None]
    assert not unknown, ("README commands that this test does not know how to check: add "
                         f"them to COMMANDS (or mark them # GPU only / # needs ...): {unknown}")
    kinds = {_kind(c) for c, comment, _ in README_COMMANDS if not MARKER.search(comment)}
    assert {"quick", "compose", "real", "setup"} <= kinds, kinds
    assert any("GPU only" in comment for _, comment, _ in README_COMMANDS)
    assert len(_train_commands()) >= 15


def test_commands_read_nothing_outside_the_repository():
    for cmd, comment, assigns in README_COMMANDS:
        assert "../" not in cmd + " ".join(assigns), cmd
        assert "device=cuda" not in cmd and "--device cuda" not in cmd \
            and "trainer=gpu" not in cmd and "trainer=fsdp" not in cmd \
            or "GPU only" in comment, f"a GPU command not marked # GPU only: {cmd}"


def test_make_commands_name_real_targets():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.MULTILINE))
    for cmd, _, _ in README_COMMANDS:
        if cmd.startswith("make "):
            target = next(w for w in cmd.split()[1:] if not w.startswith("-")
                          and "=" not in w and w != "pyproject.toml")
            assert target in targets, cmd


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=overrides)


def _placeholders(cmd: str) -> str:
    return (cmd.replace("$GGUF", str(Path("~/.cache/memarch/SmolLM2-135M-Instruct.Q4_1.gguf")
                                     .expanduser()))
            .replace("$CKPT", "outputs/2026-01-01/00-00-00/checkpoints/last.ckpt"))


@pytest.mark.parametrize("cmd", _train_commands())
def test_train_command_composes_and_checks(cmd, tmp_path):
    """The command's config as train.py composes it, checked as train.py checks it before
    building anything (unknown keys, wrong types, missing values)."""
    from memarch.lit.train import check_config
    args = shlex.split(_placeholders(cmd))[2:]
    cfg = _compose([*args, f"paths.output_dir={tmp_path}"])
    check_config(cfg)


def _run(cmd: str, assigns, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    """``cmd`` as a user runs it after ``source .venv/bin/activate``, in ``cwd``: bash, with
    the block's assignments first; repository paths made absolute (``cwd`` is scratch)."""
    line = re.sub(r"(?<![\w/.])(train\.py|memarch/data/corpora/)", lambda m: f"{ROOT}/{m[1]}",
                  cmd)
    script = "set -e\n" + "\n".join(assigns) + "\n"
    if any(a.startswith("GGUF=") for a in assigns):
        from memarch.pretrained import RealModelMissing, real_model_path
        with contextlib.suppress(RealModelMissing):   # no real model: the command's own path
            script += f"GGUF={shlex.quote(str(real_model_path()))}\n"   # $MEMARCH_CACHE's
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
           "VIRTUAL_ENV": str(Path(bindir).parent), "OMP_NUM_THREADS": "1",
           "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(["bash", "-c", script + line], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          check=False)


def _runs(kind: str):
    return [pytest.param(c, a, id=c[:70]) for c, comment, a in README_COMMANDS
            if _kind(c) == kind and not MARKER.search(comment)]


def _check(p: subprocess.CompletedProcess, cmd: str) -> None:
    assert p.returncode == 0, f"{cmd}\nexit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"


@pytest.mark.parametrize("cmd,assigns", _runs("quick"))
def test_quick_command_runs(cmd, assigns, trained):
    _check(_run(cmd, assigns, trained, timeout=300), cmd)


@pytest.mark.slow
@pytest.mark.parametrize("cmd,assigns", _runs("slow"))
def test_slow_command_runs(cmd, assigns, trained):
    # "train further to 1,200 steps" from the fixture's 4-step checkpoint would train ~1,200
    # steps here; the command runs as written but for a target 4 steps on (resuming is what
    # it checks)
    run = re.sub(r"trainer\.max_steps=\d+", "trainer.max_steps=8", cmd)
    _check(_run(run, assigns, trained, timeout=1800), cmd)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A scratch folder holding ``smollm2.ckpt``, made by the README's own convert command."""
    from memarch.pretrained import RealModelMissing, real_model_path
    try:
        real_model_path()
    except RealModelMissing as e:
        pytest.skip(str(e))
    ws = tmp_path_factory.mktemp("real_model")
    convert = [(c, a) for c, _, a in README_COMMANDS if c.startswith("python -m memarch.convert")]
    assert convert, "the README converts the real model"
    _check(_run(*convert[0], ws, timeout=1800), convert[0][0])
    assert (ws / "smollm2.ckpt").is_file()
    return ws


@pytest.mark.slow
@pytest.mark.real
@pytest.mark.parametrize("cmd,assigns", _runs("real"))
def test_real_model_command_runs(cmd, assigns, converted):
    _check(_run(cmd, assigns, converted, timeout=1800), cmd)


# -- the rest -------------------------------------------------------------------------------
def test_ops_profiler_prints_no_usdt_lines():
    """The CPU peak-memory probe of the benchmarks (``common.peak_bytes``, the profiler's
    allocation trace) keeps the profiler's C-level chatter out of the output."""
    code = ("import sys; sys.path.insert(0, 'benchmarks'); import torch, common; "
            "print(common.peak_bytes(lambda: torch.randn(64, 64).sum()) >= 0)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    assert "True" in p.stdout
    assert "USDT" not in p.stdout + p.stderr and "profiler_start" not in p.stderr, p.stderr


def test_figures_are_drawn_from_the_results_json(tmp_path):
    """Every results-suite figure either file shows exists and is what the suite's ``plot``
    draws from its JSON (``update_readme.py`` redraws them; PNG bytes are not compared)."""
    import importlib
    shown = set()
    for doc in DOCS:
        for link in re.findall(r"\]\(([\w./-]+\.png)\)", _text(doc)):
            path = (doc.parent / link).resolve()
            assert path.exists(), f"{_rel(doc)}: {link}"
            if path.parent == ROOT / "benchmarks" / "results":
                shown.add(path.name)
    drawn = set()
    for suite in update_readme.SUITES:
        mod = importlib.import_module(f"suite_{suite}")
        for path in sorted((ROOT / "benchmarks" / "results").glob(f"{suite}-*.json")):
            stem = tmp_path / path.stem
            drawn |= {p.name for p in mod.plot(json.loads(path.read_text()), stem) or []}
    suite_figures = {f for f in shown if f.split("-", 1)[0] in update_readme.SUITES}
    assert suite_figures, "no results-suite figure is shown"
    assert suite_figures <= drawn, suite_figures - drawn
