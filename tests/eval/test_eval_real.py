"""``python -m memarch.eval`` on a real pretrained model: the trained context (a converted
checkpoint's ``context_length``: reported in ``summary.json``, and a warning for a suite whose
longest pass goes past it with attention that sees every distance), and ``preset=real``
(passkey / needle at 1k-8k, perplexity by position on the shipped KJV). The ``real`` tests
run SmolLM2-135M-Instruct (``make real-model``) and are skipped without it."""

from __future__ import annotations

import pytest
import torch
from memarch.eval.model import EvalModel
from memarch.eval.run import context_warnings, evaluate
from train_helpers import ROOT

from memarch.checkpoint import CONFIG_KEY, TOKENIZER_KEY
from memarch.config import instantiate

STREAM = {"mixers.attn.window": 1024, "mixers.attn.n_sinks": 4,
          "mixers.attn.sink_positions": "cache"}


def _net(vocab=256, **attn):
    cfg = {"_target_": "memarch.models.MemLM", "vocab_size": vocab, "d_model": 32,
           "mixers": {"attn": {"_target_": "memarch.mixers.Attention", "_partial_": True,
                               "n_heads": 2, **attn},
                      "conv": {"_target_": "memarch.mixers.ShortConv", "_partial_": True,
                               "kernel_size": 4}},
           "layer_pattern": ["conv", "attn"], "d_hidden": 64}
    return cfg, instantiate(cfg)


def _sd(net):
    """Weights as memarch's training writes them (Lightning keys start with ``net.``)."""
    return {f"net.{k}": v for k, v in net.state_dict().items()}


def _conv_only():
    cfg, _ = _net()
    return instantiate({**cfg, "layer_pattern": ["conv", "conv"]})


# -- the trained context -------------------------------------------------------------------
def test_attention_reach_and_context_problem(checks):
    dense = EvalModel(_net()[1], "byte", context_length=64)
    checks.true(dense.attention_reach() is None, "full attention: unbounded reach")
    checks.true(dense.context_problem(64) is None, "64 tokens fit a 64-token context")
    why = dense.context_problem(65)
    checks.true(why is not None and "65 tokens" in why and "64" in why, f"named: {why}")
    win = EvalModel(_net(window=8)[1], "byte", context_length=64)
    checks.true(win.attention_reach() == 8, "a window of 8 reaches 8 positions")
    checks.true(win.context_problem(10 ** 6) is None, "a window within the context never "
                "goes past it")
    sinks = EvalModel(_net(window=8, n_sinks=4, sink_positions="cache")[1], "byte",
                      context_length=64)
    checks.true(sinks.attention_reach() == 12, "window + sinks at cache positions: W + S")
    checks.true(sinks.context_problem(10 ** 6) is None, "cache-position sinks: bounded")
    absolute = EvalModel(_net(window=8, n_sinks=4)[1], "byte", context_length=64)
    checks.true(absolute.attention_reach() is None, "sinks at absolute positions: unbounded")
    checks.true(absolute.context_problem(65) is not None, "absolute sinks past the context")
    wide = EvalModel(_net(window=128)[1], "byte", context_length=64)
    checks.true("128" in (wide.context_problem(200) or ""), "a window wider than the context")
    conv = EvalModel(_conv_only(), "byte", context_length=64)
    checks.true(conv.attention_reach() == 0 and conv.context_problem(10 ** 6) is None,
                "no attention: no position limit")
    unknown = EvalModel(_net()[1], "byte")
    checks.true(unknown.context_length is None and unknown.context_problem(10 ** 6) is None,
                "unknown context: nothing to say")
    with pytest.raises(ValueError, match="context_length"):
        EvalModel(_net()[1], "byte", context_length=0)


def test_checkpoint_context_length_is_read(tmp_path, checks):
    """A converted checkpoint records its trained context (``memarch_converted``)."""
    from memarch.convert import CONVERTED_KEY
    cfg, net = _net()
    path = tmp_path / "conv.ckpt"
    torch.save({CONFIG_KEY: cfg, TOKENIZER_KEY: None, "state_dict": _sd(net),
                CONVERTED_KEY: {"model_type": "llama", "context_length": 300}}, path)
    checks.true(EvalModel.from_checkpoint(path).context_length == 300, "context_length read")
    plain = tmp_path / "plain.ckpt"
    torch.save({CONFIG_KEY: cfg, TOKENIZER_KEY: None, "state_dict": _sd(net)}, plain)
    checks.true(EvalModel.from_checkpoint(plain).context_length is None, "unknown: None")


def test_evaluate_warns_past_the_trained_context(tmp_path, checks, capsys):
    """Prompt + generated tokens past the context: a printed warning and ``warnings`` in
    summary.json; the suite still runs. Within the context, or with a window: none."""
    kw = {"passkey": {"lengths": [384], "n_per_length": 1, "max_new_tokens": 3}}
    model = EvalModel(_net()[1], "byte", context_length=385)
    out = evaluate(model, ["passkey"], tmp_path / "a", settings=kw)
    why = out.get("warnings", {}).get("passkey", "")
    checks.true("386 tokens" in why and "385" in why, f"384 + 3 - 1 tokens fed: {why}")
    checks.true("warning: passkey:" in capsys.readouterr().out, "printed")
    checks.true(out["context_length"] == 385 and "passkey" in out["results"], "it still ran")
    fits = EvalModel(_net()[1], "byte", context_length=386)
    out = evaluate(fits, ["passkey"], tmp_path / "b", settings=kw, verbose=False)
    checks.true("warnings" not in out and out["context_length"] == 386, "386 fed, 386 fit")
    win = EvalModel(_net(window=16, n_sinks=2, sink_positions="cache")[1], "byte",
                    context_length=64)
    from memarch.eval.synthetic import PLANS
    plans = {"passkey": PLANS["passkey"](win, **kw["passkey"])}
    checks.true(context_warnings(win, plans) == {}, "window + cache sinks: no warning")


# -- preset=real -----------------------------------------------------------------------------
def _preset(name="real", overrides=()):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    with initialize_config_dir(config_dir=str(ROOT / "eval" / "configs"), version_base="1.3"):
        cfg = compose("eval", overrides=["checkpoint=x", f"preset={name}", *overrides])
    return OmegaConf.to_container(cfg, resolve=False)


def test_real_preset_is_valid(checks):
    from memarch.eval.run import check_settings, planners, validate_tasks
    c = _preset()
    validate_tasks(c["tasks"])
    checks.true(c["tasks"] == ["passkey", "needle", "perplexity"], f"tasks {c['tasks']}")
    table = planners()
    for t, kw in c["settings"].items():
        check_settings(table[t], kw, f"settings.{t}")
    s = c["settings"]
    for t in ("passkey", "needle"):
        checks.true(len(s[t]["lengths"]) == 4 and max(s[t]["lengths"]) > 8000,
                    f"{t}: 1k .. 8k")
    # longest pass within SmolLM2's 8192: prompt + max_new_tokens (defaults) - 1
    import inspect
    for t in ("passkey", "needle"):
        new = inspect.signature(table[t]).parameters["max_new_tokens"].default
        checks.true(max(s[t]["lengths"]) + new - 1 <= 8192, f"{t} fits 8192 tokens")
    checks.true(s["perplexity"]["max_tokens"] == 8192, "perplexity over 8192 positions")
    for f in (s["needle"]["haystack_file"], s["perplexity"]["text_file"]):
        checks.true((ROOT / f).is_file(), f"{f} ships in the repo")


# -- the real model --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_ckpt(real_checkpoint):
    """SmolLM2-135M-Instruct converted by ``python -m memarch.convert gguf`` (conftest's,
    shared with the other real tests), or skip."""
    return real_checkpoint


@pytest.mark.real
def test_real_model_context_and_prompts(smollm2_ckpt, checks):
    """SmolLM2: trained context 8192 read from the checkpoint; prompts get no BOS (the GGUF
    says add_bos_token false) and the answers stop at <|im_end|>; the 8k setting of
    preset=real fits, 8192-token prompts do not, and window + sinks never go past."""
    torch.set_num_threads(1)
    from memarch.eval.synthetic import PLANS
    m = EvalModel.from_checkpoint(smollm2_ckpt)
    checks.true(m.context_length == 8192, f"context_length {m.context_length}")
    checks.true(m.reads == "text" and m.text_problem() is None, "a text model")
    ids = m.encode("What is the pass key? The pass key is")
    checks.true(ids[0] != m.tokenizer.bos_id and m.decode(ids) ==
                "What is the pass key? The pass key is", "no BOS, round trip")
    checks.true(m.eos_id == m.tokenizer.token_to_id("<|im_end|>"), "eos is <|im_end|>")
    c = _preset()["settings"]
    fits = {t: PLANS[t](m, **{**c[t], "lengths": [max(c[t]["lengths"])]})
            for t in ("passkey", "needle")}
    checks.true(context_warnings(m, fits) == {}, "preset=real's 8k lengths fit 8192")
    over = {"passkey": PLANS["passkey"](m, lengths=[8192], n_per_length=1)}
    checks.true("8203 tokens" in context_warnings(m, over).get("passkey", ""),
                "8192 + 12 - 1 tokens: past the context")
    s = EvalModel.from_checkpoint(smollm2_ckpt, overrides=STREAM)
    checks.true(s.attention_reach() == 1028, "window 1024 + 4 sinks at cache positions")
    checks.true(s.context_problem(10 ** 6) is None, "window + sinks: any length")


@pytest.mark.real
def test_real_model_finds_the_pass_key(smollm2_ckpt, tmp_path, checks):
    """The harness end to end on the real model (the prompt as is, no chat template): dense
    SmolLM2 finds a 5-digit pass key in 512 tokens of filler."""
    torch.set_num_threads(1)
    from memarch.eval.synthetic import run_passkey
    m = EvalModel.from_checkpoint(smollm2_ckpt)
    r = run_passkey(m, tmp_path, lengths=[512], n_per_length=2)
    checks.true(r["score"] == 100.0, f"passkey@512: {r['score']}")
    checks.true(r["max_length_run"] == 512, "prompts of exactly 512 tokens")
