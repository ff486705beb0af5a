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

K and V are tiled (see config(); K, V <= 256). States are fp32; every load is up-cast to
fp32; tl.dot runs in "ieee" fp32 for fp32 inputs and tf32 (no less precise than fp16/bf16)
otherwise. Normalisation (z) runs as one extra column of ones in v (see __init__). q, k
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
import triton
import triton.language as tl

from .._triton_common import chunk_cumsum, dot_precision, tile

BT = 64
DECODE_CALLS = 0          # counts decode-kernel launches (tests check the path is taken)


def config(K: int, V: int) -> dict:
    """Tiles the dispatcher launches (checked ahead of time for sm_80/sm_90 in the tests):
    state kernels (_fwd_h, _bwd_dh) use [BKS, BV] tiles, the per-chunk kernels BK <= 32 (at
    BK = 64 the fp32 accumulators spill); 8 warps keep every kernel spill-free."""
    return dict(BKS=tile(K), BK=min(32, tile(K)), BV=tile(V), num_warps=8)


@triton.jit
def _fwd_h(k, v, gc, h0, hbuf, ht, T, H, K, V, N,
           BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
           USE_G: tl.constexpr, USE_H0: tl.constexpr):
    ik, iv, ibh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ibh = tl.cast(ibh, tl.int64)
    b, h = ibh // H, ibh % H
    ok = ik * BK + tl.arange(0, BK)
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    mkv = (ok[:, None] < K) & (ov[None, :] < V)
    hoff = ok[:, None] * V + ov[None, :]                                     # [BK, BV]
    if USE_H0:
        acc = tl.load(h0 + ibh * K * V + hoff, mask=mkv, other=0.0).to(tl.float32)
    else:
        acc = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(N):
        n = tl.cast(i, tl.int64)
        tl.store(hbuf + (ibh * N + n) * K * V + hoff, acc, mask=mkv)
        t = n * BT + ot                                                      # [BT]
        mt = t < T
        kk = tl.load(k + ((b * T + t[:, None]) * H + h) * K + ok[None, :],
                     mask=mt[:, None] & (ok[None, :] < K), other=0.0).to(tl.float32)
        vv = tl.load(v + ((b * T + t[:, None]) * H + h) * V + ov[None, :],
                     mask=mt[:, None] & (ov[None, :] < V), other=0.0).to(tl.float32)
        if USE_G:
            bt = tl.load(gc + ibh * N * BT + n * BT + ot).to(tl.float32)     # [BT]
            bl = tl.load(gc + ibh * N * BT + n * BT + BT - 1).to(tl.float32)
            acc = acc * tl.exp(bl)
            kk = kk * tl.exp(bl - bt)[:, None]
        acc += tl.dot(tl.trans(kk), vv, input_precision=DOT_PREC)
    tl.store(ht + ibh * K * V + hoff, acc, mask=mkv)


@triton.jit
def _fwd_o(q, k, v, gc, hbuf, o, scale, T, H, K, V, N,
           BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
           USE_G: tl.constexpr):
    iv, n, ibh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ibh, n = tl.cast(ibh, tl.int64), tl.cast(n, tl.int64)
    b, h = ibh // H, ibh % H
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    t = n * BT + ot
    mt = t < T
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    A = tl.zeros([BT, BT], dtype=tl.float32)
    for ikb in range(tl.cdiv(K, BK)):
        ok = tl.cast(ikb, tl.int64) * BK + tl.arange(0, BK)
        mk = mt[:, None] & (ok[None, :] < K)
        qq = tl.load(q + ((b * T + t[:, None]) * H + h) * K + ok[None, :], mask=mk,
                     other=0.0).to(tl.float32)
        kk = tl.load(k + ((b * T + t[:, None]) * H + h) * K + ok[None, :], mask=mk,
                     other=0.0).to(tl.float32)
        hh = tl.load(hbuf + (ibh * N + n) * K * V + ok[:, None] * V + ov[None, :],
                     mask=(ok[:, None] < K) & (ov[None, :] < V), other=0.0).to(tl.float32)
        acc += tl.dot(qq, hh, input_precision=DOT_PREC)
        A += tl.dot(qq, tl.trans(kk), input_precision=DOT_PREC)
    causal = ot[:, None] >= ot[None, :]
    if USE_G:
        bt = tl.load(gc + ibh * N * BT + t).to(tl.float32)
        acc = acc * tl.exp(bt)[:, None]
        A = A * tl.exp(tl.where(causal, bt[:, None] - bt[None, :], 0.0))
    vv = tl.load(v + ((b * T + t[:, None]) * H + h) * V + ov[None, :],
                 mask=mt[:, None] & (ov[None, :] < V), other=0.0).to(tl.float32)
    # causality for non-finite input: select (never 0 * NaN); the dot runs on finite values
    # and a visible token whose value row (this V tile) is non-finite gets a NaN coefficient
    vfin = tl.abs(vv) < float("inf")                                     # False for inf, NaN
    vok = tl.min(tl.where(vfin, 1.0, 0.0), 1) > 0.0                      # [BT] row finite
    A = tl.where(causal, tl.where(vok[None, :], A, float("nan")), 0.0)
    vv = tl.where(vfin, vv, 0.0)
    acc = (acc + tl.dot(A, vv, input_precision=DOT_PREC)) * scale
    tl.store(o + ((b * T + t[:, None]) * H + h) * V + ov[None, :],
             acc.to(o.dtype.element_ty), mask=mt[:, None] & (ov[None, :] < V))


@triton.jit
def _bwd_dh(q, do, gc, dht, dhbuf, dh0, scale, T, H, K, V, N,
            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
            USE_G: tl.constexpr, USE_DHT: tl.constexpr, USE_DH0: tl.constexpr):
    ik, iv, ibh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ibh = tl.cast(ibh, tl.int64)
    b, h = ibh // H, ibh % H
    ok = ik * BK + tl.arange(0, BK)
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    mkv = (ok[:, None] < K) & (ov[None, :] < V)
    hoff = ok[:, None] * V + ov[None, :]
    if USE_DHT:
        acc = tl.load(dht + ibh * K * V + hoff, mask=mkv, other=0.0).to(tl.float32)
    else:
        acc = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(N):
        n = tl.cast(N - 1 - i, tl.int64)
        tl.store(dhbuf + (ibh * N + n) * K * V + hoff, acc, mask=mkv)        # dH_{n+1}
        t = n * BT + ot
        mt = t < T
        qq = tl.load(q + ((b * T + t[:, None]) * H + h) * K + ok[None, :],
                     mask=mt[:, None] & (ok[None, :] < K), other=0.0).to(tl.float32)
        dd = tl.load(do + ((b * T + t[:, None]) * H + h) * V + ov[None, :],
                     mask=mt[:, None] & (ov[None, :] < V), other=0.0).to(tl.float32)
        if USE_G:
            bt = tl.load(gc + ibh * N * BT + n * BT + ot).to(tl.float32)
            bl = tl.load(gc + ibh * N * BT + n * BT + BT - 1).to(tl.float32)
            acc = acc * tl.exp(bl)
            qq = qq * tl.exp(bt)[:, None]
        acc += tl.dot(tl.trans(qq), dd, input_precision=DOT_PREC) * scale
    if USE_DH0:
        tl.store(dh0 + ibh * K * V + hoff, acc, mask=mkv)


@triton.jit
def _bwd_dqk(q, k, v, do, gc, hbuf, dhbuf, dq, dk, dbp, scale, T, H, K, V, N, BHT,
             BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
             USE_G: tl.constexpr):
    ik, n, ibh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ibh, n = tl.cast(ibh, tl.int64), tl.cast(n, tl.int64)
    b, h = ibh // H, ibh % H
    ok = ik * BK + tl.arange(0, BK)
    ot = tl.arange(0, BT)
    t = n * BT + ot
    mt = t < T
    mk = mt[:, None] & (ok[None, :] < K)
    qk_off = ((b * T + t[:, None]) * H + h) * K + ok[None, :]
    qq = tl.load(q + qk_off, mask=mk, other=0.0).to(tl.float32)
    kk = tl.load(k + qk_off, mask=mk, other=0.0).to(tl.float32)
    dov = tl.zeros([BT, BT], dtype=tl.float32)
    dqi = tl.zeros([BT, BK], dtype=tl.float32)
    dki = tl.zeros([BT, BK], dtype=tl.float32)
    for ivb in range(tl.cdiv(V, BV)):
        ov = tl.cast(ivb, tl.int64) * BV + tl.arange(0, BV)
        mv = mt[:, None] & (ov[None, :] < V)
        vd_off = ((b * T + t[:, None]) * H + h) * V + ov[None, :]
        dd = tl.load(do + vd_off, mask=mv, other=0.0).to(tl.float32)
        vv = tl.load(v + vd_off, mask=mv, other=0.0).to(tl.float32)
        mkv = (ok[:, None] < K) & (ov[None, :] < V)
        s_off = (ibh * N + n) * K * V + ok[:, None] * V + ov[None, :]
        hh = tl.load(hbuf + s_off, mask=mkv, other=0.0).to(tl.float32)
        dh = tl.load(dhbuf + s_off, mask=mkv, other=0.0).to(tl.float32)
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
    tl.store(dq + qk_off, dqq.to(dq.dtype.element_ty), mask=mk)
    tl.store(dk + qk_off, dkk.to(dk.dtype.element_ty), mask=mk)
    if USE_G:
        db = tl.sum(qq * dqq, 1) - tl.sum(kk * dkk, 1)                      # [BT]
        tl.store(dbp + ik * BHT + ibh * N * BT + t, db)


@triton.jit
def _bwd_dv(q, k, do, gc, dhbuf, dv, scale, T, H, K, V, N,
            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
            USE_G: tl.constexpr):
    iv, n, ibh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ibh, n = tl.cast(ibh, tl.int64), tl.cast(n, tl.int64)
    b, h = ibh // H, ibh % H
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    t = n * BT + ot
    mt = t < T
    A = tl.zeros([BT, BT], dtype=tl.float32)
    dvi = tl.zeros([BT, BV], dtype=tl.float32)
    for ikb in range(tl.cdiv(K, BK)):
        ok = tl.cast(ikb, tl.int64) * BK + tl.arange(0, BK)
        mk = mt[:, None] & (ok[None, :] < K)
        qq = tl.load(q + ((b * T + t[:, None]) * H + h) * K + ok[None, :], mask=mk,
                     other=0.0).to(tl.float32)
        kk = tl.load(k + ((b * T + t[:, None]) * H + h) * K + ok[None, :], mask=mk,
                     other=0.0).to(tl.float32)
        dh = tl.load(dhbuf + (ibh * N + n) * K * V + ok[:, None] * V + ov[None, :],
                     mask=(ok[:, None] < K) & (ov[None, :] < V), other=0.0).to(tl.float32)
        A += tl.dot(qq, tl.trans(kk), input_precision=DOT_PREC)
        dvi += tl.dot(kk, dh, input_precision=DOT_PREC)
    causal = ot[:, None] >= ot[None, :]
    if USE_G:
        bt = tl.load(gc + ibh * N * BT + t).to(tl.float32)
        bl = tl.load(gc + ibh * N * BT + n * BT + BT - 1).to(tl.float32)
        dvi = dvi * tl.exp(bl - bt)[:, None]
        A = A * tl.exp(tl.where(causal, bt[:, None] - bt[None, :], 0.0))
    A = tl.where(causal, A, 0.0) * scale
    vd_off = ((b * T + t[:, None]) * H + h) * V + ov[None, :]
    mv = mt[:, None] & (ov[None, :] < V)
    dd = tl.load(do + vd_off, mask=mv, other=0.0).to(tl.float32)
    dvv = dvi + tl.dot(tl.trans(A), dd, input_precision=DOT_PREC)
    tl.store(dv + vd_off, dvv.to(dv.dtype.element_ty), mask=mv)


@triton.jit
def _decode(q, k, v, g, s_in, z_in, s_out, z_out, o, scale, eps, K, V,
            BK: tl.constexpr, BV: tl.constexpr, USE_G: tl.constexpr, USE_S0: tl.constexpr,
            USE_Z: tl.constexpr):
    """One token: S' = exp(g) S + k v^T, z' = exp(g) z + k, o = scale q S' [/ (scale q.z'+eps)]."""
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
        soff = ibh * K * V + ok[:, None] * V + ov[None, :]
        msk = mk[:, None] & mv[None, :]
        if USE_S0:
            s = tl.load(s_in + soff, mask=msk, other=0.0).to(tl.float32)
            if USE_G:
                s = s * a
            s = s + kk[:, None] * vv[None, :]
        else:
            s = kk[:, None] * vv[None, :]
        tl.store(s_out + soff, s, mask=msk)
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


class _ChunkLinearAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, S0, scale, out_dtype):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, T, H, K = q.shape
        V = v.shape[-1]
        N = max(1, triton.cdiv(T, BT))
        cfg = config(K, V)
        BKS, BK, BV = cfg["BKS"], cfg["BK"], cfg["BV"]
        gc = chunk_cumsum(g, N, BT) if g is not None else q.new_zeros(1, dtype=torch.float32)
        h0 = S0.float().contiguous() if S0 is not None else gc
        hbuf = q.new_empty(B, H, N, K, V, dtype=torch.float32)
        ht = q.new_empty(B, H, K, V, dtype=torch.float32)
        o = q.new_empty(B, T, H, V, dtype=out_dtype)
        meta = dict(BT=BT, BV=BV, DOT_PREC=dot_precision(q), USE_G=g is not None,
                    num_warps=cfg["num_warps"])
        _fwd_h[(triton.cdiv(K, BKS), triton.cdiv(V, BV), B * H)](
            k, v, gc, h0, hbuf, ht, T, H, K, V, N, BK=BKS, USE_H0=S0 is not None, **meta)
        _fwd_o[(triton.cdiv(V, BV), N, B * H)](q, k, v, gc, hbuf, o, scale, T, H, K, V, N, BK=BK,
                                               **meta)
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
        meta, scale = ctx.meta, ctx.scale
        BKS, BK, BV = ctx.cfg["BKS"], ctx.cfg["BK"], ctx.cfg["BV"]
        do = do.contiguous()
        dhbuf = torch.empty_like(hbuf)
        dh0 = torch.empty_like(ht) if ctx.has_s0 else gc
        dht = dht.float().contiguous() if dht is not None else None
        _bwd_dh[(triton.cdiv(K, BKS), triton.cdiv(V, BV), B * H)](
            q, do, gc, dht if dht is not None else gc, dhbuf, dh0, scale, T, H, K, V, N, BK=BKS,
            USE_DHT=dht is not None, USE_DH0=ctx.has_s0, **meta)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        NK = triton.cdiv(K, BK)
        dbp = q.new_zeros(NK, B, H, N * BT, dtype=torch.float32) if ctx.has_g else gc
        _bwd_dqk[(NK, N, B * H)](q, k, v, do, gc, hbuf, dhbuf, dq, dk, dbp, scale, T, H, K, V,
                                 N, B * H * N * BT, BK=BK, **meta)
        _bwd_dv[(triton.cdiv(V, BV), N, B * H)](q, k, do, gc, dhbuf, dv, scale, T, H, K, V, N,
                                                BK=BK, **meta)
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
    BK, BV = tile(K), tile(V)
    _decode[(triton.cdiv(V, BV), B * H)](q, k, v, gg, s_in, z_in, S, z, o, scale, eps, K, V,
                                         BK=BK, BV=BV, USE_G=g is not None,
                                         USE_S0=S0 is not None, USE_Z=normalize)
    return o, S, (z if normalize else None)


def linear_attn_triton(q, k, v, g, scale, normalize, eps, S0, z0):
    """Same contract as the naive/torch paths: returns o (v's dtype), S fp32, z fp32 | None."""
    T = q.shape[1]
    needs_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, g, S0, z0))
    if T == 1 and not needs_grad:
        return _decode_step(q, k, v, g, scale, normalize, eps, S0, z0)
    if normalize:  # z is the state of a column of ones appended to v
        v_aug = torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], -1)
        S0a = torch.cat([S0.float(), z0.float()[..., None]], -1) if S0 is not None else None
        o, S = _ChunkLinearAttn.apply(q, k, v_aug, g, S0a, scale, torch.float32)
        o = o[..., :-1] / (o[..., -1:] + eps)
        return o.to(v.dtype), S[..., :-1], S[..., -1]
    o, S = _ChunkLinearAttn.apply(q, k, v, g, S0, scale, v.dtype)
    return o, S, None


def aot_configs(full: bool = False):
    """Every (kernel, arg types, constexprs, num_warps) the dispatcher can launch, for the
    ahead-of-time compile test. ``full=False``: the largest tiles only (the spill risk)."""
    tiles = [16, 32, 64] if full else [64]
    for dt, kt, vt, use_g in ((dt, kt, vt, use_g) for dt in ("fp16", "bf16", "fp32")
                              for kt in tiles for vt in tiles for use_g in (True, False)
                              if full or use_g):
        cfg = config(kt, vt)
        prec = "ieee" if dt == "fp32" else "tf32"
        x = f"*{dt}"
        types = dict(q=x, k=x, v=x, do=x, dq=x, dk=x, dv=x, o=x, gc="*fp32", h0="*fp32",
                     hbuf="*fp32", ht="*fp32", dhbuf="*fp32", dht="*fp32", dh0="*fp32",
                     dbp="*fp32", g="*fp32", s_in="*fp32", z_in="*fp32", s_out="*fp32",
                     z_out="*fp32", scale="fp32", eps="fp32", T="i32", H="i32", K="i32",
                     V="i32", N="i32", BHT="i32")
        flags = dict(USE_G=use_g, USE_H0=True, USE_DHT=True, USE_DH0=True, DOT_PREC=prec,
                     BT=BT, BV=cfg["BV"])
        nw = cfg["num_warps"]
        tag = f"{dt} K{kt} V{vt} g={int(use_g)}"
        yield f"la._fwd_h {tag}", _fwd_h, types, dict(flags, BK=cfg["BKS"]), nw
        yield f"la._bwd_dh {tag}", _bwd_dh, types, dict(flags, BK=cfg["BKS"]), nw
        for name, fn in (("_fwd_o", _fwd_o), ("_bwd_dqk", _bwd_dqk), ("_bwd_dv", _bwd_dv)):
            yield f"la.{name} {tag}", fn, types, dict(flags, BK=cfg["BK"]), nw
        if vt == tiles[-1] or full:   # normalise: o in fp32
            yield f"la._fwd_o {tag} o=fp32", _fwd_o, dict(types, o="*fp32"), dict(
                flags, BK=cfg["BK"]), nw
        yield f"la._decode {tag}", _decode, types, dict(
            BK=tile(kt), BV=tile(vt), USE_G=use_g, USE_S0=True, USE_Z=True), 4
