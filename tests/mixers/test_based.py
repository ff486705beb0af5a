"""BASED: Taylor feature maps, linear attention vs its quadratic form, BASED LMs."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from memarch.generation import generate
from memarch.mixers import (
    Attention,
    BaseConv,
    BasedLinearAttention,
    LinearAttention,
    TaylorFeatureMap,
)
from memarch.models import MemLM


@pytest.mark.parametrize("d", [4, 16])
def test_taylor_forms_give_one_plus_s_plus_half_s_squared(d, checks):
    q, k = torch.randn(2, 500, d), torch.randn(2, 500, d)
    s = (q * k).sum(-1) / math.sqrt(d)
    want = 1 + s + s ** 2 / 2
    for form, n in [("full", 1 + d + d * d), ("unique", 1 + d + d * (d + 1) // 2)]:
        phi = TaylorFeatureMap(d, form=form)
        fq, fk = phi(q), phi(k)
        checks.true(fq.shape[-1] == n == phi.out_dim, f"{form}: {n} features")
        checks.close((fq * fk).sum(-1), want, atol=1e-5, rtol=1e-5, msg=f"{form} inner product")


@pytest.mark.parametrize("form", ["unique", "full"])
def test_taylor_linear_attention_equals_quadratic_form(form, checks):
    """y = tril(1 + s + s^2/2) v / rowsum: the parallel (quadratic) reference."""
    m = BasedLinearAttention(24, n_heads=3, feature_dim=8, taylor_form=form).double()
    x = torch.randn(2, 70, 24, dtype=torch.float64)
    B, T, H, d = 2, 70, 3, 8
    q = m.q_proj(x).view(B, T, H, d).transpose(1, 2)
    k = m.k_proj(x).view(B, T, H, d).transpose(1, 2)
    v = m.v_proj(x).view(B, T, H, 8).transpose(1, 2)
    s = q @ k.transpose(-1, -2) / math.sqrt(d)                          # [B, H, T, T]
    a = torch.tril(1 + s + s ** 2 / 2)
    y = (a @ v) / (a.sum(-1, keepdim=True) + 1e-12)
    ref = m.o_proj(y.transpose(1, 2).reshape(B, T, 24))
    checks.close(m(x).y, ref, atol=1e-10, rtol=1e-10, msg="Taylor LA vs quadratic form")


def test_linear_attention_feature_maps_against_quadratic_form(checks):
    for fm in ["elu", "relu"]:
        m = LinearAttention(16, n_heads=2, feature_map=fm, eps=0.0).double()
        x = torch.randn(1, 30, 16, dtype=torch.float64)
        q = m.phi(m.q_proj(x).view(1, 30, 2, 8)).transpose(1, 2)
        k = m.phi(m.k_proj(x).view(1, 30, 2, 8)).transpose(1, 2)
        v = m.v_proj(x).view(1, 30, 2, 8).transpose(1, 2)
        a = torch.tril(q @ k.transpose(-1, -2))
        y = (a @ v) / a.sum(-1, keepdim=True)
        checks.close(m(x).y, m.o_proj(y.transpose(1, 2).reshape(1, 30, 16)), atol=1e-10,
                     msg=f"{fm} linear attention")


def test_gated_linear_attention_against_quadratic_form(checks):
    """y_t = sum_j exp(G_t - G_j) phi(q_t).phi(k_j) v_j / (same without v), G = cumsum g."""
    m = LinearAttention(16, n_heads=2, feature_map="relu", gated=True, eps=1e-6).double()
    x = torch.randn(1, 40, 16, dtype=torch.float64)
    q = m.phi(m.q_proj(x).view(1, 40, 2, 8)).transpose(1, 2)
    k = m.phi(m.k_proj(x).view(1, 40, 2, 8)).transpose(1, 2)
    v = m.v_proj(x).view(1, 40, 2, 8).transpose(1, 2)
    G = (torch.nn.functional.logsigmoid(m.g_proj(x)) / 16).cumsum(1).transpose(1, 2)  # [1,2,T]
    a = torch.tril((q @ k.transpose(-1, -2)) * (G[..., :, None] - G[..., None, :]).exp())
    a = a * m.scale                                       # eps is added to the scaled normaliser
    y = (a @ v) / (a.sum(-1, keepdim=True) + 1e-6)
    checks.close(m(x).y, m.o_proj(y.transpose(1, 2).reshape(1, 40, 16)), atol=1e-10,
                 rtol=1e-10, msg="gated linear attention")


def based_lm(vocab=50, d_model=32, window=8):
    """BASED's pattern: BaseConv, Taylor linear attention, sliding window, BaseConv."""
    return MemLM(vocab_size=vocab, d_model=d_model,
                 mixers={"conv": partial(BaseConv, kernel_size=3, expand_proj=2),
                         "based": partial(BasedLinearAttention, n_heads=4, feature_dim=8),
                         "swa": partial(Attention, n_heads=2, window=window, block_size=5)},
                 layer_pattern=["conv", "based", "swa", "conv"])


def test_based_lm_streaming_contract(checks):
    m = based_lm().double()
    ids = torch.randint(0, 50, (2, 75))                  # > 64 (kernel chunk) and > 3 windows
    par = m(ids)
    for cuts in [[1, 2, 3, 7, 8, 9, 30, 64, 65], list(range(1, 75))]:
        s, outs, a = None, [], 0
        for b in [*cuts, 75]:
            o = m(ids[:, a:b], s)
            outs.append(o.logits)
            s, a = o.state, b
        checks.close(torch.cat(outs, 1), par.logits, atol=1e-10, rtol=1e-10, msg="logits")
        checks.close(s, par.state, atol=1e-10, rtol=1e-10, msg="final state")


def test_based_cached_generation_equals_uncached(checks):
    m = based_lm().eval()
    prompt = torch.randint(0, 50, (2, 20))
    cached = generate(m, prompt, 25, chunk_size=7).tokens
    ids = prompt
    with torch.no_grad():
        for _ in range(25):
            ids = torch.cat([ids, m(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    checks.equal(cached, ids[:, 20:], "greedy tokens")
    checks.true(m.state_size(10) == m.state_size(10_000), "constant-size state")
