"""Linear attention in Triton: chunked forward/backward kernels and a fused one-token decode.

Chunks of BT = 64 tokens; inside chunk n, b_t = chunk-local cumsum of g, H_n = state before it:

    forward   H_{n+1} = exp(b_C) H_n + sum_s exp(b_C - b_s) k_s v_s^T                  (_fwd_h)
              o_t = scale [exp(b_t) q_t H_n + sum_{s<=t} exp(b_t - b_s) (q_t.k_s) v_s] (_fwd_o)
    backward  dH_n = exp(b_C) dH_{n+1} + scale sum_t exp(b_t) q_t^T do_t                (_bwd_dh)
              dq_t = scale [exp(b_t) do_t H_n^T + sum_{s<=t} exp(b_t-b_s) (do_t.v_s) k_s]
              dk_s = scale sum_{t>=s} exp(b_t-b_s) (do_t.v_s) q_t + exp(b_C-b_s) dH_{n+1} v_s
                                                                                         (_bwd_dqk)
              dv_s = scale sum_{t>=s} exp(b_t-b_s) (q_t.k_s) do_t + exp(b_C-b_s) dH_{n+1}^T k_s
                                                                                         (_bwd_dv)
              d b_t = q_t.dq_t - k_t.dk_t (+ sum(dH_{n+1} * H_{n+1}) at t = C),
              dg_t = sum_{t' >= t in chunk} d b_t'

K and V are tiled (see TILES, config(); K, V <= 256; the chunked kernels get them zero-padded
to multiples of 16, see linear_attn_triton). States are fp32; every load is up-cast to
fp32; tl.dot runs in "ieee" fp32 for fp32 inputs and tf32 (no less precise than fp16/bf16)
otherwise. Normalisation (z) runs as one extra column of ones in v (linear_attn_triton). q, k
[B, T, H, K], v [B, T, H, V] contiguous; gc [B, H, N*BT] fp32; hbuf/dhbuf [B, H, N, K, V] fp32.

Causality for any input: a non-finite q/k/v/g at token s changes no output before s. Masks
select (tl.where), never multiply; _fwd_o's A @ v runs on values sanitised to 0 where
non-finite, and the visible coefficients A[t, s] (s <= t) of a token s whose value row (in
the V tile) is non-finite are NaN, so outputs that see s are NaN (one |v| < inf test per tile,
no libdevice).
Chunk states take the raw values (they only reach later chunks; the final state may be NaN).
The backward kernels make no such promise for non-finite inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .._triton_common import chunk_cumsum, dot_precision, load_tile, store_tile, tile

BT = 64
DECODE_CALLS = 0          # counts decode-kernel launches (tests check the path is taken)


# (BK, BV, num_warps) of each kernel, by (tile(K), tile(V)): the [BK, BV] tile of the state
# kernels (_fwd_h, _bwd_dh: both on the grid), the grid tile and the tile of the loop of the
# per-chunk kernels (_fwd_o, _bwd_dv: BV on the grid, a loop over K in BK; _bwd_dqk: BK on the
# grid, a loop over V in BV), and _decode's (BV on the grid, a loop over K). Every entry is
# spill-free on sm_80 and sm_90 for fp16/bf16/fp32, with and without g, every flag
# (aot_configs(True)); _decode's also for K and/or V not multiples of 16 (it runs on the
# caller's head dims; the chunked kernels get them padded, see linear_attn_triton). Measured,
# not a rule: ptxas spills a few bytes at some register/occupancy steps (e.g. _fwd_o at
# [BK, BV] = [32, 64] with fp32 and 8 warps: 128 registers and an 8-byte stack).
TILES = {
    "fwd_h": {(16, 16): (16, 16, 8), (16, 32): (16, 32, 8), (16, 64): (16, 64, 8),
              (32, 16): (32, 16, 4), (32, 32): (32, 32, 8), (32, 64): (32, 64, 8),
              (64, 16): (64, 16, 8), (64, 32): (64, 32, 8), (64, 64): (64, 32, 8)},
    "bwd_dh": {(16, 16): (16, 16, 8), (16, 32): (16, 32, 8), (16, 64): (16, 64, 8),
               (32, 16): (32, 16, 8), (32, 32): (32, 32, 8), (32, 64): (32, 64, 8),
               (64, 16): (64, 16, 8), (64, 32): (64, 32, 8), (64, 64): (64, 32, 8)},
    "fwd_o": {(16, 16): (16, 16, 8), (16, 32): (16, 32, 8), (16, 64): (16, 64, 4),
              (32, 16): (32, 16, 8), (32, 32): (16, 32, 8), (32, 64): (16, 64, 4),
              (64, 16): (32, 16, 8), (64, 32): (16, 32, 8), (64, 64): (16, 64, 4)},
    "bwd_dqk": {(16, 16): (16, 16, 8), (16, 32): (16, 32, 8), (16, 64): (16, 64, 8),
                (32, 16): (32, 16, 8), (32, 32): (32, 32, 8), (32, 64): (32, 64, 8),
                (64, 16): (32, 16, 8), (64, 32): (32, 32, 8), (64, 64): (32, 64, 8)},
    "bwd_dv": {(16, 16): (16, 16, 8), (16, 32): (16, 32, 8), (16, 64): (16, 64, 8),
               (32, 16): (32, 16, 4), (32, 32): (32, 32, 8), (32, 64): (32, 64, 8),
               (64, 16): (64, 16, 8), (64, 32): (32, 32, 8), (64, 64): (32, 64, 8)},
    "decode": {(16, 16): (16, 16, 8), (16, 32): (16, 32, 8), (16, 64): (16, 64, 8),
               (32, 16): (32, 16, 8), (32, 32): (32, 32, 8), (32, 64): (32, 64, 8),
               (64, 16): (64, 16, 4), (64, 32): (32, 32, 8), (64, 64): (32, 64, 8)},
}


def config(K: int, V: int) -> dict:
    """The tiles the dispatcher launches for head dims K, V (<= 256; a dim over 64 loops or
    spreads over the grid in tiles): {kernel: dict(BK, BV, num_warps)} from TILES (checked
    ahead of time for sm_80/sm_90 in the tests)."""
    key = (tile(K), tile(V))
    return {name: dict(zip(("BK", "BV", "num_warps"), table[key]))
            for name, table in TILES.items()}


# Length args (T, H, N, BHT; not the head dims K, V) are do_not_specialize: the JIT compiles one
# build per configuration, the one aot_configs() checks (no variant for T <= 64 with N == 1 a
# constexpr, or for T % 16 == 0).
@triton.jit(do_not_specialize=["T", "H", "N"])
def _fwd_h(k, v, gc, h0, hbuf, ht, T, H, K, V, N,
           BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
           USE_G: tl.constexpr, USE_H0: tl.constexpr):
    ik, iv, ibh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ibh = tl.cast(ibh, tl.int64)
    b, h = ibh // H, ibh % H
    ok = ik * BK + tl.arange(0, BK)
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    if USE_H0:
        acc = load_tile(h0 + ibh * K * V, ok, ov, V, K, V)                 # [BK, BV]
    else:
        acc = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(N):
        n = tl.cast(i, tl.int64)
        store_tile(hbuf + (ibh * N + n) * K * V, acc, ok, ov, V, K, V)
        t = n * BT + ot                                                      # [BT]
        kk = load_tile(k + (b * T * H + h) * K, t, ok, H * K, T, K)
        vv = load_tile(v + (b * T * H + h) * V, t, ov, H * V, T, V)
        if USE_G:
            bt = tl.load(gc + ibh * N * BT + n * BT + ot).to(tl.float32)     # [BT]
            bl = tl.load(gc + ibh * N * BT + n * BT + BT - 1).to(tl.float32)
            acc = acc * tl.exp(bl)
            kk = kk * tl.exp(bl - bt)[:, None]
        acc += tl.dot(tl.trans(kk), vv, input_precision=DOT_PREC)
    store_tile(ht + ibh * K * V, acc, ok, ov, V, K, V)


@triton.jit(do_not_specialize=["T", "H", "N"])
def _fwd_o(q, k, v, gc, hbuf, o, scale, T, H, K, V, N,
           BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
           USE_G: tl.constexpr):
    iv, n, ibh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ibh, n = tl.cast(ibh, tl.int64), tl.cast(n, tl.int64)
    b, h = ibh // H, ibh % H
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    t = n * BT + ot
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    A = tl.zeros([BT, BT], dtype=tl.float32)
    for ikb in range(tl.cdiv(K, BK)):
        ok = tl.cast(ikb, tl.int64) * BK + tl.arange(0, BK)
        qq = load_tile(q + (b * T * H + h) * K, t, ok, H * K, T, K)
        kk = load_tile(k + (b * T * H + h) * K, t, ok, H * K, T, K)
        hh = load_tile(hbuf + (ibh * N + n) * K * V, ok, ov, V, K, V)
        acc += tl.dot(qq, hh, input_precision=DOT_PREC)
        A += tl.dot(qq, tl.trans(kk), input_precision=DOT_PREC)
    causal = ot[:, None] >= ot[None, :]
    if USE_G:
        bt = tl.load(gc + ibh * N * BT + t).to(tl.float32)
        acc = acc * tl.exp(bt)[:, None]
        A = A * tl.exp(tl.where(causal, bt[:, None] - bt[None, :], 0.0))
    vv = load_tile(v + (b * T * H + h) * V, t, ov, H * V, T, V)
    # causality for non-finite input: select (never 0 * NaN); the dot runs on finite values
    # and a visible token whose value row (this V tile) is non-finite gets a NaN coefficient
    vfin = tl.abs(vv) < float("inf")                                     # False for inf, NaN
    vok = tl.min(tl.where(vfin, 1.0, 0.0), 1) > 0.0                      # [BT] row finite
    A = tl.where(causal, tl.where(vok[None, :], A, float("nan")), 0.0)
    vv = tl.where(vfin, vv, 0.0)
    acc = (acc + tl.dot(A, vv, input_precision=DOT_PREC)) * scale
    store_tile(o + (b * T * H + h) * V, acc, t, ov, H * V, T, V)


@triton.jit(do_not_specialize=["T", "H", "N"])
def _bwd_dh(q, do, gc, dht, dhbuf, dh0, scale, T, H, K, V, N,
            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
            USE_G: tl.constexpr, USE_DHT: tl.constexpr, USE_DH0: tl.constexpr):
    ik, iv, ibh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ibh = tl.cast(ibh, tl.int64)
    b, h = ibh // H, ibh % H
    ok = ik * BK + tl.arange(0, BK)
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    if USE_DHT:
        acc = load_tile(dht + ibh * K * V, ok, ov, V, K, V)
    else:
        acc = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(N):
        n = tl.cast(N - 1 - i, tl.int64)
        store_tile(dhbuf + (ibh * N + n) * K * V, acc, ok, ov, V, K, V)     # dH_{n+1}
        t = n * BT + ot
        qq = load_tile(q + (b * T * H + h) * K, t, ok, H * K, T, K)
        dd = load_tile(do + (b * T * H + h) * V, t, ov, H * V, T, V)
        if USE_G:
            bt = tl.load(gc + ibh * N * BT + n * BT + ot).to(tl.float32)
            bl = tl.load(gc + ibh * N * BT + n * BT + BT - 1).to(tl.float32)
            acc = acc * tl.exp(bl)
            qq = qq * tl.exp(bt)[:, None]
        acc += tl.dot(tl.trans(qq), dd, input_precision=DOT_PREC) * scale
    if USE_DH0:
        store_tile(dh0 + ibh * K * V, acc, ok, ov, V, K, V)


@triton.jit(do_not_specialize=["T", "H", "N", "BHT"])
def _bwd_dqk(q, k, v, do, gc, hbuf, dhbuf, dq, dk, dbp, scale, T, H, K, V, N, BHT,
             BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
             USE_G: tl.constexpr):
    ik, n, ibh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ibh, n = tl.cast(ibh, tl.int64), tl.cast(n, tl.int64)
    b, h = ibh // H, ibh % H
    ok = ik * BK + tl.arange(0, BK)
    ot = tl.arange(0, BT)
    t = n * BT + ot
    qq = load_tile(q + (b * T * H + h) * K, t, ok, H * K, T, K)
    kk = load_tile(k + (b * T * H + h) * K, t, ok, H * K, T, K)
    dov = tl.zeros([BT, BT], dtype=tl.float32)
    dqi = tl.zeros([BT, BK], dtype=tl.float32)
    dki = tl.zeros([BT, BK], dtype=tl.float32)
    for ivb in range(tl.cdiv(V, BV)):
        ov = tl.cast(ivb, tl.int64) * BV + tl.arange(0, BV)
        dd = load_tile(do + (b * T * H + h) * V, t, ov, H * V, T, V)
        vv = load_tile(v + (b * T * H + h) * V, t, ov, H * V, T, V)
        hh = load_tile(hbuf + (ibh * N + n) * K * V, ok, ov, V, K, V)
        dh = load_tile(dhbuf + (ibh * N + n) * K * V, ok, ov, V, K, V)
        dov += tl.dot(dd, tl.trans(vv), input_precision=DOT_PREC)
        dqi += tl.dot(dd, tl.trans(hh), input_precision=DOT_PREC)
        dki += tl.dot(vv, tl.trans(dh), input_precision=DOT_PREC)
    causal = ot[:, None] >= ot[None, :]
    if USE_G:
        bt = tl.load(gc + ibh * N * BT + t).to(tl.float32)
        bl = tl.load(gc + ibh * N * BT + n * BT + BT - 1).to(tl.float32)
        dqi = dqi * tl.exp(bt)[:, None]
        dki = dki * tl.exp(bl - bt)[:, None]
        dov = dov * tl.exp(tl.where(causal, bt[:, None] - bt[None, :], 0.0))
    ds = tl.where(causal, dov, 0.0) * scale                                  # [t, s]
    dqq = dqi * scale + tl.dot(ds, kk, input_precision=DOT_PREC)
    dkk = dki + tl.dot(tl.trans(ds), qq, input_precision=DOT_PREC)
    store_tile(dq + (b * T * H + h) * K, dqq, t, ok, H * K, T, K)
    store_tile(dk + (b * T * H + h) * K, dkk, t, ok, H * K, T, K)
    if USE_G:
        db = tl.sum(qq * dqq, 1) - tl.sum(kk * dkk, 1)                      # [BT]
        tl.store(dbp + tl.cast(ik, tl.int64) * BHT + ibh * N * BT + t, db)


@triton.jit(do_not_specialize=["T", "H", "N"])
def _bwd_dv(q, k, do, gc, dhbuf, dv, scale, T, H, K, V, N,
            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
            USE_G: tl.constexpr):
    iv, n, ibh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ibh, n = tl.cast(ibh, tl.int64), tl.cast(n, tl.int64)
    b, h = ibh // H, ibh % H
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    t = n * BT + ot
    A = tl.zeros([BT, BT], dtype=tl.float32)
    dvi = tl.zeros([BT, BV], dtype=tl.float32)
    for ikb in range(tl.cdiv(K, BK)):
        ok = tl.cast(ikb, tl.int64) * BK + tl.arange(0, BK)
        qq = load_tile(q + (b * T * H + h) * K, t, ok, H * K, T, K)
        kk = load_tile(k + (b * T * H + h) * K, t, ok, H * K, T, K)
        dh = load_tile(dhbuf + (ibh * N + n) * K * V, ok, ov, V, K, V)
        A += tl.dot(qq, tl.trans(kk), input_precision=DOT_PREC)
        dvi += tl.dot(kk, dh, input_precision=DOT_PREC)
    causal = ot[:, None] >= ot[None, :]
    if USE_G:
        bt = tl.load(gc + ibh * N * BT + t).to(tl.float32)
        bl = tl.load(gc + ibh * N * BT + n * BT + BT - 1).to(tl.float32)
        dvi = dvi * tl.exp(bl - bt)[:, None]
        A = A * tl.exp(tl.where(causal, bt[:, None] - bt[None, :], 0.0))
    A = tl.where(causal, A, 0.0) * scale
    dd = load_tile(do + (b * T * H + h) * V, t, ov, H * V, T, V)
    dvv = dvi + tl.dot(tl.trans(A), dd, input_precision=DOT_PREC)
    store_tile(dv + (b * T * H + h) * V, dvv, t, ov, H * V, T, V)


@triton.jit
def _decode(q, k, v, g, s_in, z_in, s_out, z_out, o, scale, eps, K, V,
            BK: tl.constexpr, BV: tl.constexpr, USE_G: tl.constexpr, USE_S0: tl.constexpr,
            USE_Z: tl.constexpr):
    """One token: S' = exp(g) S + k v^T, z' = exp(g) z + k, o = scale q S' [/ (scale q.z'+eps)]
    (no length args: K, V are head dims)."""
    iv, ibh = tl.program_id(0), tl.program_id(1)
    ibh = tl.cast(ibh, tl.int64)
    ov = iv * BV + tl.arange(0, BV)
    mv = ov < V
    vv = tl.load(v + ibh * V + ov, mask=mv, other=0.0).to(tl.float32)
    if USE_G:
        a = tl.exp(tl.load(g + ibh).to(tl.float32))
    num = tl.zeros([BV], dtype=tl.float32)
    den = tl.zeros([BK], dtype=tl.float32)
    for ikb in range(tl.cdiv(K, BK)):
        ok = tl.cast(ikb, tl.int64) * BK + tl.arange(0, BK)
        mk = ok < K
        qq = tl.load(q + ibh * K + ok, mask=mk, other=0.0).to(tl.float32)
        kk = tl.load(k + ibh * K + ok, mask=mk, other=0.0).to(tl.float32)
        if USE_S0:
            s = load_tile(s_in + ibh * K * V, ok, ov, V, K, V)
            if USE_G:
                s = s * a
            s = s + kk[:, None] * vv[None, :]
        else:
            s = kk[:, None] * vv[None, :]
        store_tile(s_out + ibh * K * V, s, ok, ov, V, K, V)
        num += tl.sum(qq[:, None] * s, 0)
        if USE_Z:
            if USE_S0:
                z = tl.load(z_in + ibh * K + ok, mask=mk, other=0.0).to(tl.float32)
                if USE_G:
                    z = z * a
                z = z + kk
            else:
                z = kk
            tl.store(z_out + ibh * K + ok, z, mask=mk & (iv == 0))
            den += qq * z
    out = num * scale
    if USE_Z:
        out = out / (tl.sum(den, 0) * scale + eps)
    tl.store(o + ibh * V + ov, out.to(o.dtype.element_ty), mask=mv)


def _launch(fn, grid, *args, c, **kw):
    """fn[grid](*args) with the kernel's tiles and warps ``c`` (a config() entry)."""
    fn[grid](*args, BK=c["BK"], BV=c["BV"], num_warps=c["num_warps"], **kw)


class _ChunkLinearAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, S0, scale, out_dtype):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, T, H, K = q.shape
        V = v.shape[-1]
        N = max(1, triton.cdiv(T, BT))
        cfg = config(K, V)
        gc = chunk_cumsum(g, N, BT) if g is not None else q.new_zeros(1, dtype=torch.float32)
        h0 = S0.float().contiguous() if S0 is not None else gc
        hbuf = q.new_empty(B, H, N, K, V, dtype=torch.float32)
        ht = q.new_empty(B, H, K, V, dtype=torch.float32)
        o = q.new_empty(B, T, H, V, dtype=out_dtype)
        meta = dict(BT=BT, DOT_PREC=dot_precision(q), USE_G=g is not None)
        c = cfg["fwd_h"]
        _launch(_fwd_h, (triton.cdiv(K, c["BK"]), triton.cdiv(V, c["BV"]), B * H),
                k, v, gc, h0, hbuf, ht, T, H, K, V, N, c=c, USE_H0=S0 is not None, **meta)
        c = cfg["fwd_o"]
        _launch(_fwd_o, (triton.cdiv(V, c["BV"]), N, B * H),
                q, k, v, gc, hbuf, o, scale, T, H, K, V, N, c=c, **meta)
        ctx.save_for_backward(q, k, v, gc, hbuf, ht)
        ctx.meta, ctx.cfg, ctx.scale = meta, cfg, scale
        ctx.has_g, ctx.has_s0 = g is not None, S0 is not None
        ctx.g_dtype = g.dtype if g is not None else None
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, gc, hbuf, ht = ctx.saved_tensors
        B, T, H, K = q.shape
        V = v.shape[-1]
        N = hbuf.shape[2]
        meta, scale, cfg = ctx.meta, ctx.scale, ctx.cfg
        do = do.contiguous()
        dhbuf = torch.empty_like(hbuf)
        dh0 = torch.empty_like(ht) if ctx.has_s0 else gc
        dht = dht.float().contiguous() if dht is not None else None
        c = cfg["bwd_dh"]
        _launch(_bwd_dh, (triton.cdiv(K, c["BK"]), triton.cdiv(V, c["BV"]), B * H),
                q, do, gc, dht if dht is not None else gc, dhbuf, dh0, scale, T, H, K, V, N,
                c=c, USE_DHT=dht is not None, USE_DH0=ctx.has_s0, **meta)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        c = cfg["bwd_dqk"]
        NK = triton.cdiv(K, c["BK"])
        dbp = q.new_zeros(NK, B, H, N * BT, dtype=torch.float32) if ctx.has_g else gc
        _launch(_bwd_dqk, (NK, N, B * H), q, k, v, do, gc, hbuf, dhbuf, dq, dk, dbp, scale,
                T, H, K, V, N, B * H * N * BT, c=c, **meta)
        c = cfg["bwd_dv"]
        _launch(_bwd_dv, (triton.cdiv(V, c["BV"]), N, B * H),
                q, k, do, gc, dhbuf, dv, scale, T, H, K, V, N, c=c, **meta)
        dg = None
        if ctx.has_g:
            db = dbp.sum(0).view(B, H, N, BT)
            h_next = torch.cat([hbuf[:, :, 1:], ht[:, :, None]], 2)          # H_{n+1}
            db[..., -1] += (dhbuf * h_next).sum((-1, -2))
            dg = db.flip(-1).cumsum(-1).flip(-1).view(B, H, N * BT)[:, :, :T]
            dg = dg.transpose(1, 2).to(ctx.g_dtype)                          # [B, T, H]
        return dq, dk, dv, dg, (dh0 if ctx.has_s0 else None), None, None


def _decode_step(q, k, v, g, scale, normalize, eps, S0, z0):
    global DECODE_CALLS
    DECODE_CALLS += 1
    B, _, H, K = q.shape
    V = v.shape[-1]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    S = q.new_empty(B, H, K, V, dtype=torch.float32)
    z = q.new_empty(B, H, K, dtype=torch.float32) if normalize else S
    o = q.new_empty(B, 1, H, V, dtype=v.dtype)
    s_in = S0.float().contiguous() if S0 is not None else S
    z_in = z0.float().contiguous() if (normalize and z0 is not None) else z
    gg = g.float().contiguous() if g is not None else S
    c = config(K, V)["decode"]
    _launch(_decode, (triton.cdiv(V, c["BV"]), B * H), q, k, v, gg, s_in, z_in, S, z, o, scale,
            eps, K, V, c=c, USE_G=g is not None, USE_S0=S0 is not None, USE_Z=normalize)
    return o, S, (z if normalize else None)


def _pad16(x: torch.Tensor, dims: int = 1) -> torch.Tensor:
    """x zero-padded in its last ``dims`` dims to multiples of 16 (x itself if they are)."""
    pad = [p for d in range(1, dims + 1) for p in (0, -x.shape[-d] % 16)]
    return F.pad(x, pad) if any(pad) else x


def linear_attn_triton(q, k, v, g, scale, normalize, eps, S0, z0):
    """Same contract as the naive/torch paths: returns o (v's dtype), S fp32, z fp32 | None."""
    T = q.shape[1]
    needs_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, g, S0, z0))
    if T == 1 and not needs_grad:
        return _decode_step(q, k, v, g, scale, normalize, eps, S0, z0)
    K, V, dt = q.shape[-1], v.shape[-1], v.dtype
    if normalize:  # z is the state of a column of ones appended to v
        v = torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], -1)
        S0 = torch.cat([S0.float(), z0.float()[..., None]], -1) if S0 is not None else None
    # The chunked kernels get K, V (and V + 1) zero-padded to multiples of 16: the padding is
    # what their masked loads read (the same results), and the JIT builds then have K, V
    # divisible by 16, the builds aot_configs() checks (with V = 65 they spill).
    o, S = _ChunkLinearAttn.apply(_pad16(q), _pad16(k), _pad16(v), g,
                                  _pad16(S0, 2) if S0 is not None else None, scale,
                                  torch.float32 if normalize else dt)
    S = S[:, :, :K]
    if normalize:
        o = o[..., :V] / (o[..., V:V + 1] + eps)
        return o.to(dt), S[..., :V], S[..., V]
    return (o[..., :V].contiguous() if V % 16 else o), S[..., :V], None


def aot_configs(full: bool = False):
    """Every (kernel, arg types, constexprs, num_warps) the dispatcher can launch, for the
    ahead-of-time compile test. ``full=False``: the K, V tiles 64 (the largest), with g and every
    optional input; ``full=True``: every K, V tile (16, 32, 64), with and without g, every flag
    (no initial state / state gradient, no normalisation)."""
    tiles = [16, 32, 64] if full else [64]
    both = (True, False) if full else (True,)
    for dt, kt, vt, use_g in ((dt, kt, vt, use_g) for dt in ("fp16", "bf16", "fp32")
                              for kt in tiles for vt in tiles for use_g in both):
        cfg = config(kt, vt)
        prec = "ieee" if dt == "fp32" else "tf32"
        x = f"*{dt}"
        types = dict(q=x, k=x, v=x, do=x, dq=x, dk=x, dv=x, o=x, gc="*fp32", h0="*fp32",
                     hbuf="*fp32", ht="*fp32", dhbuf="*fp32", dht="*fp32", dh0="*fp32",
                     dbp="*fp32", g="*fp32", s_in="*fp32", z_in="*fp32", s_out="*fp32",
                     z_out="*fp32", scale="fp32", eps="fp32", T="i32", H="i32", K="i32",
                     V="i32", N="i32", BHT="i32")
        flags = dict(USE_G=use_g, DOT_PREC=prec, BT=BT)
        tag = f"{dt} K{kt} V{vt} g={int(use_g)}"

        def build(name, fn, c, suffix="", ty=types, **cx):
            return (f"la.{name} {tag}{suffix}", fn, ty, dict(cx, BK=c["BK"], BV=c["BV"]),
                    c["num_warps"])

        for h0 in both:
            yield build("_fwd_h", _fwd_h, cfg["fwd_h"], "" if h0 else " h0=0", USE_H0=h0,
                        **flags)
        for dht, dh0 in ((a, b) for a in both for b in both):
            yield build("_bwd_dh", _bwd_dh, cfg["bwd_dh"],
                        ("" if dht else " dht=0") + ("" if dh0 else " dh0=0"),
                        USE_DHT=dht, USE_DH0=dh0, **flags)
        yield build("_fwd_o", _fwd_o, cfg["fwd_o"], **flags)
        if dt != "fp32":                  # normalise: o in fp32
            yield build("_fwd_o", _fwd_o, cfg["fwd_o"], " o=fp32", dict(types, o="*fp32"),
                        **flags)
        yield build("_bwd_dqk", _bwd_dqk, cfg["bwd_dqk"], **flags)
        yield build("_bwd_dv", _bwd_dv, cfg["bwd_dv"], **flags)
        for s0, z in ((a, b) for a in both for b in both):
            yield build("_decode", _decode, cfg["decode"],
                        ("" if s0 else " s0=0") + ("" if z else " z=0"),
                        USE_G=use_g, USE_S0=s0, USE_Z=z)
