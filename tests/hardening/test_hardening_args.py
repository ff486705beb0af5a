"""Hardening: strict argument parsing in the constructors, ``impl``
validated, ``delta_rule``'s beta range and scale, states that carry what they belong to,
and clear errors for meta / mismatched-dtype input and huge arguments."""

from __future__ import annotations

import re
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from memarch import mixers as mx
from memarch.kernels import delta_rule
from memarch.models import HMT, MemLM

D = 32
INF, NAN = float("inf"), float("nan")


def _lm(**kw):
    return MemLM(**{"vocab_size": 11, "d_model": 16, "mixers": {"c": mx.ShortConv},
                    "layer_pattern": ["c"], **kw})


def _hmt(**kw):
    return HMT(_lm(), **{"segment_len": 8, "sensory_len": 2, "n_memories": 2, **kw})


def _raises_naming(fn, owner: str, name: str, value, checks):
    """fn() raises ValueError/TypeError whose message names the owner, the argument and
    the value."""
    with pytest.raises((ValueError, TypeError)) as e:
        fn()
    msg = str(e.value)
    checks.true(owner in msg, f"names the owner {owner}: {msg}")
    checks.true(re.search(rf"\b{re.escape(name)}\b", msg) is not None,
                f"names the argument {name}: {msg}")
    checks.true(repr(value) in msg or str(value) in msg, f"names the value {value!r}: {msg}")


# -- 1. one strict parser: bools, ints, finite numbers --------------------------------------
BOOLS = [
    (mx.NeuralMemory, "momentum", "false"), (mx.NeuralMemory, "forgetting", "no"),
    (mx.NeuralMemory, "residual_norm", "no"), (mx.NeuralMemory, "momentum", 1),
    (mx.MoM, "shared_memory", "no"), (mx.MoM, "shared_memory", 0),
    (mx.LinearAttention, "normalize", "no"), (mx.LinearAttention, "gated", "yes"),
    (mx.ShortConv, "bias", "no"), (mx.BaseConv, "bias", "False"),
    (mx.BaseConv, "conv_bias", "no"),
]


@pytest.mark.parametrize("cls,name,value", BOOLS)
def test_bool_arguments_refuse_strings_and_numbers(cls, name, value, checks):
    """Probe: NeuralMemory(momentum='false') and MoM(shared_memory='no') were True."""
    _raises_naming(lambda: cls(D, **{name: value}), cls.__name__, name, value, checks)


@pytest.mark.parametrize("kw,name,value", [
    (dict(tie_embeddings="no"), "tie_embeddings", "no"),
    (dict(mlp_bias="no"), "mlp_bias", "no"),
])
def test_memlm_bool_arguments(kw, name, value, checks):
    _raises_naming(lambda: _lm(**kw), "MemLM", name, value, checks)


INTS = [
    (mx.ShortConv, dict(d_model=True), "d_model", True),       # Mixer(d_model=True)
    (mx.NeuralMemory, dict(d_model=True), "d_model", True),    # NeuralMemory(True)
    (mx.NeuralMemory, dict(chunk_size=True), "chunk_size", True),
    (mx.NeuralMemory, dict(depth=True), "depth", True),
    (mx.NeuralMemory, dict(conv_size=True), "conv_size", True),
    (mx.MoM, dict(n_memories=True), "n_memories", True),
    (mx.MoM, dict(topk=2.0), "topk", 2.0),
    (mx.MoM, dict(conv_size=False), "conv_size", False),
    (mx.MoM, dict(expand_v=True), "expand_v", True),
    (mx.LinearAttention, dict(n_heads=True), "n_heads", True),
    (mx.ShortConv, dict(kernel_size=True), "kernel_size", True),
    (mx.BaseConv, dict(kernel_size="3"), "kernel_size", "3"),
    (mx.BaseConv, dict(expand_proj=True), "expand_proj", True),
    (mx.MemoryAsContext, dict(segment_len=True), "segment_len", True),
    (mx.MemoryAsGate, dict(window=True), "window", True),
    (mx.ShortConv, dict(layer_idx="0"), "layer_idx", "0"),
]


@pytest.mark.parametrize("cls,kw,name,value", INTS)
def test_int_arguments_refuse_bools_floats_strings(cls, kw, name, value, checks):
    kw = dict(kw)
    d = kw.pop("d_model", D)
    _raises_naming(lambda: cls(d, **kw), cls.__name__, name, value, checks)


FLOATS = [
    (mx.MoM, "norm_eps", -1), (mx.MoM, "norm_eps", 0.0), (mx.MoM, "norm_eps", NAN),
    (mx.MoM, "norm_eps", True),
    (mx.MoM, "aux_loss_coef", INF), (mx.MoM, "aux_loss_coef", NAN),
    (mx.MoM, "aux_loss_coef", True),
    (mx.MoM, "expand_v", INF),
    (mx.NeuralMemory, "max_lr", INF), (mx.NeuralMemory, "max_lr", True),
    (mx.NeuralMemory, "max_lr", "0.1"),
    (mx.NeuralMemory, "max_grad_norm", True), (mx.NeuralMemory, "max_grad_norm", INF),
    (mx.NeuralMemory, "theta_init", NAN), (mx.NeuralMemory, "eta_init", "0.5"),
    (mx.LinearAttention, "eps", NAN), (mx.LinearAttention, "eps", INF),
    (mx.LinearAttention, "eps", "1e-6"), (mx.LinearAttention, "eps", True),
]


@pytest.mark.parametrize("cls,name,value", FLOATS, ids=lambda v: repr(v) if isinstance(
    v, float) else None)
def test_number_arguments_refuse_nonfinite_bools_strings(cls, name, value, checks):
    """Probe: MoM(norm_eps=-1) gave NaN outputs; aux_loss_coef=inf and
    NeuralMemory(max_grad_norm=True) were accepted; NeuralMemory(max_lr=inf) gave 'math
    domain error'."""
    _raises_naming(lambda: cls(D, **{name: value}), cls.__name__, name, value, checks)


@pytest.mark.parametrize("kw,name,value", [
    (dict(norm_eps=True), "norm_eps", True), (dict(norm_eps=INF), "norm_eps", INF),
    (dict(init_std=NAN), "init_std", NAN), (dict(init_std=-1.0), "init_std", -1.0),
    (dict(d_hidden=True), "d_hidden", True), (dict(vocab_size=True), "vocab_size", True),
])
def test_memlm_number_arguments(kw, name, value, checks):
    _raises_naming(lambda: _lm(**kw), "MemLM", name, value, checks)


@pytest.mark.parametrize("kw,name,value", [
    (dict(segment_len=True), "segment_len", True), (dict(sensory_len=True), "sensory_len", True),
    (dict(n_memories=2.0), "n_memories", 2.0), (dict(summary_len=True), "summary_len", True),
    (dict(recall_dim=True), "recall_dim", True), (dict(bptt_segments=True), "bptt_segments", True),
    (dict(d_model=True), "d_model", True), (dict(freeze_backbone="no"), "freeze_backbone", "no"),
])
def test_hmt_arguments(kw, name, value, checks):
    _raises_naming(lambda: _hmt(**kw), "HMT", name, value, checks)


def test_valid_arguments_still_build(checks):
    """What the strict parser must keep taking: ints for floats, None where allowed."""
    checks.true(mx.MoM(D, n_heads=2, norm_eps=1, aux_loss_coef=0, expand_v=2).v_dim == 32,
                "int for a float")
    checks.true(mx.NeuralMemory(D, n_heads=2, max_lr=1, max_grad_norm=None).max_lr == 1.0,
                "int max_lr")
    checks.true(mx.LinearAttention(D, eps=0).eps == 0.0, "eps = 0")
    checks.true(mx.ShortConv(D, layer_idx=None).layer_idx is None, "layer_idx None")


# -- 2. impl validated ----------------------------------------------------------------------
@pytest.mark.parametrize("build", [
    partial(mx.MoM, D, n_heads=2), partial(mx.MoM, D, n_heads=2, cell="linear"),
    partial(mx.LinearAttention, D), partial(mx.BasedLinearAttention, D, n_heads=2,
                                            feature_dim=4),
])
def test_impl_is_validated(build, checks):
    """Probe: MoM(impl='bogus') was accepted (and failed, or not, at the first call)."""
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'naive', 'torch', "
                                         r"'triton'\), got 'bogus'"):
        build(impl="bogus")
    checks.true(build(impl="naive").impl == "naive", "a valid impl still builds")


# -- 3. delta_rule: beta range, scale -------------------------------------------------------
def _dr_inputs(T=16):
    q, k = (F.normalize(torch.randn(1, T, 2, 8), dim=-1) for _ in range(2))
    return q, k, torch.randn(1, T, 2, 4), torch.rand(1, T, 2)


@pytest.mark.parametrize("impl", ["naive", "torch", "triton"])
@pytest.mark.parametrize("bad", [5.0, -1.0, 2.5])
def test_delta_rule_refuses_beta_outside_0_2(impl, bad, checks):
    """Probe: beta = 5 or -1 grew the state to NaN / 1e31 within 512 tokens."""
    q, k, v, beta = _dr_inputs()
    beta = beta.clone()
    beta[0, 3, 1] = bad
    with pytest.raises(ValueError, match=r"delta_rule: beta must lie in \[0, 2\].*"
                                         + re.escape(f"{bad:.4g}")):
        delta_rule(q, k, v, beta, impl=impl)
    checks.true(True)


def test_delta_rule_beta_edges_are_accepted(checks):
    q, k, v, beta = _dr_inputs()
    for b in (0.0, 2.0):
        o, _ = delta_rule(q, k, v, torch.full_like(beta, b), impl="torch")
        ref, _ = delta_rule(q, k, v, torch.full_like(beta, b), impl="naive")
        checks.close(o, ref, atol=1e-5, rtol=1e-5, msg=f"beta = {b}: torch vs naive")
        if b == 0.0:                                   # nothing is ever written: o = 0
            checks.close(o, torch.zeros_like(o), atol=0, msg="beta = 0 writes nothing")


@pytest.mark.parametrize("scale", [NAN, INF, -1.0, 0.0, "a", True, torch.tensor(1.0)])
def test_delta_rule_refuses_a_bad_scale(scale, checks):
    """Probe: scale=nan was accepted; scale='a' gave 'could not convert string to float'."""
    q, k, v, beta = _dr_inputs()
    with pytest.raises(ValueError, match=r"delta_rule: scale must be a number > 0 or None"):
        delta_rule(q, k, v, beta, scale=scale, impl="torch")
    checks.true(True)


def test_delta_rule_docstring_states_the_stability_condition(checks):
    doc = delta_rule.__doc__
    checks.true("beta_t ||k_t||^2 in [0, 2]" in doc, "stability condition in the docstring")


def test_mom_feeds_unit_norm_keys_to_delta_rule(monkeypatch, checks):
    """MoM's gated delta cell L2-normalises q and k before the delta rule, so beta in (0, 1)
    keeps beta ||k||^2 in [0, 2] (a routed-out token has k = 0: an identity step)."""
    from memarch.mixers import mom
    seen = {}

    def spy(q, k, v, beta, **kw):
        seen["k"], seen["beta"] = k, beta
        return delta_rule(q, k, v, beta, **kw)
    monkeypatch.setattr(mom, "delta_rule", spy)
    m = mx.MoM(D, n_heads=2)
    with torch.no_grad():
        m.qkv_proj.weight.mul_(50.0)                     # large raw keys
        m(torch.randn(2, 9, D))
    n = seen["k"].norm(dim=-1)
    checks.true(bool((((n - 1).abs() < 1e-5) | (n == 0)).all()), "unit-norm (or routed-out) keys")
    bk = seen["beta"] * n.pow(2)
    checks.true(bool(((bk >= 0) & (bk <= 2)).all()), "beta ||k||^2 in [0, 2]")


# -- 4. states carry what they belong to ----------------------------------------------------
def test_mom_state_of_another_cell_is_refused(checks):
    """Probe: a linear-cell MoM accepted a gated-delta MoM state (same shapes)."""
    x = torch.randn(2, 5, D)
    gd = mx.MoM(D, layer_idx=0, n_heads=2, cell="gated_delta")
    lin = mx.MoM(D, layer_idx=0, n_heads=2, cell="linear")
    s_gd, s_lin = gd(x).state, lin(x).state
    for m, s in ((lin, s_gd), (gd, s_lin)):
        with pytest.raises(ValueError, match=r"MoM \(layer 0\): state must be a \w+, got a \w+"):
            m(x, s)
        checks.true(isinstance(s, mx.MoMState), "both kinds are MoMStates")
    checks.true(gd(x, s_gd).y.shape == x.shape and lin(x, s_lin).y.shape == x.shape,
                "own states still run")


def _bump(state, path):
    """state with the int64 field at ``path`` (e.g. ('memory', 'pos')) + 1."""
    if len(path) == 1:
        return state._replace(**{path[0]: getattr(state, path[0]) + 1})
    return state._replace(**{path[0]: _bump(getattr(state, path[0]), path[1:])})


TITANS = {
    "nm": (lambda: mx.NeuralMemory(D, layer_idx=0, n_heads=2, chunk_size=4), [("pos",)]),
    "mac": (lambda: mx.MemoryAsContext(D, layer_idx=0, n_heads=2, segment_len=4,
                                       memory=dict(n_heads=2)),
            [("pos",), ("memory", "pos")]),
    "mag": (lambda: mx.MemoryAsGate(D, layer_idx=0, n_heads=2, window=4,
                                    memory=dict(n_heads=2, chunk_size=4)),
            [("pos",), ("memory", "pos"), ("attn", "pos")]),
}


@pytest.mark.parametrize("name", list(TITANS))
@pytest.mark.parametrize("n", [6, 8])
def test_titans_refuses_an_edited_position(name, n, checks):
    """Probe: a hand-edited pos (+1) was accepted by NeuralMemory, MAC and MAG."""
    build, paths = TITANS[name]
    m = build()
    x = torch.randn(2, n, D)
    s = m(x).state
    for path in paths:
        with pytest.raises(ValueError, match=r"\(layer 0\): state field '[\w.]*pos' "):
            m(x[:, :1], _bump(s, path))
        checks.n += 1
    if name != "nm":                         # every pos moved together: the pending keys
        every = s
        for path in paths:
            every = _bump(every, path)
        with pytest.raises(ValueError, match=r"pos"):
            m(x[:, :1], every)
        checks.n += 1
    checks.true(m(x[:, :1], s).y.shape == (2, 1, D), "the unedited state runs")


# -- 5. clear errors: meta, dtype, huge arguments -------------------------------------------
MIXERS = {
    "mom": lambda: mx.MoM(D, n_heads=2), "mom_linear": lambda: mx.MoM(D, n_heads=2, cell="linear"),
    "nm": lambda: mx.NeuralMemory(D, n_heads=2, chunk_size=4),
    "mac": lambda: mx.MemoryAsContext(D, n_heads=2, segment_len=4, memory=dict(n_heads=2)),
    "mag": lambda: mx.MemoryAsGate(D, n_heads=2, window=4, memory=dict(n_heads=2, chunk_size=4)),
    "linear": lambda: mx.LinearAttention(D, n_heads=2),
    "based": lambda: mx.BasedLinearAttention(D, n_heads=2, feature_dim=4),
    "baseconv": lambda: mx.BaseConv(D),
}


@pytest.mark.parametrize("name", list(MIXERS))
def test_meta_input_is_refused_clearly(name, checks):
    """Probe: meta inputs or states gave 'Tensor.item() cannot be called on meta tensors'."""
    m = MIXERS[name]()
    x = torch.randn(1, 3, D, device="meta")
    with pytest.raises(ValueError, match=r"x is on the meta device"):
        m(x)
    mm = MIXERS[name]().to("meta")
    with pytest.raises(ValueError, match=r"x is on the meta device"):
        mm(x)
    checks.true(True)


@pytest.mark.parametrize("name", list(MIXERS))
def test_input_dtype_other_than_the_parameters(name, checks):
    """Probe: fp16 input to an fp32 module gave torch's 'm1 and m2' dtype message."""
    m = MIXERS[name]()
    with pytest.raises(TypeError, match=r"x has dtype torch.float16 but the module's parameters "
                                        r"have dtype torch.float32.*torch.autocast"):
        m(torch.randn(1, 3, D).half())
    checks.true(m(torch.randn(1, 3, D)).y.dtype == torch.float32, "fp32 still runs")


@pytest.mark.parametrize("build,names", [
    (lambda: mx.MoM(D, n_heads=2, n_memories=10 ** 8), ["n_memories"]),
    (lambda: mx.MoM(D, n_heads=2, expand_v=10 ** 9), ["expand_v"]),
    (lambda: mx.NeuralMemory(D, n_heads=2, chunk_size=10 ** 9), ["chunk_size"]),
    (lambda: mx.NeuralMemory(D, n_heads=2, expansion=10 ** 10), ["expansion"]),
    (lambda: mx.MemoryAsContext(D, n_heads=2, segment_len=10 ** 9), ["segment_len"]),
    (lambda: mx.LinearAttention(D, n_heads=2, feature_map="taylor", feature_dim=10 ** 6),
     ["feature_dim"]),
    (lambda: mx.ShortConv(D, kernel_size=10 ** 10), ["kernel_size"]),
    (lambda: _hmt(n_memories=10 ** 9), ["n_memories"]),
])
def test_huge_arguments_are_refused_at_construction(build, names, checks):
    """Probe: huge arguments gave 'tried to allocate 128 GB' at the first call, naming no
    argument."""
    with pytest.raises(ValueError) as e:
        build()
    for n in names:
        checks.true(n in str(e.value), f"names {n}: {e.value}")


def test_hmt_refuses_edited_recent_tokens(checks):
    """Probe: an edited HMT state.recent gave 'index out of range in self'."""
    model = _hmt()
    s = model(torch.randint(0, 11, (2, 10))).state
    with pytest.raises(ValueError, match=r"HMT: state field 'recent' must hold token ids in "
                                         r"\[0, vocab_size=11\), got values in \[\d+, 11\]"):
        model(torch.randint(0, 11, (2, 1)), s._replace(recent=s.recent.fill_(11)))
    checks.true(True)
