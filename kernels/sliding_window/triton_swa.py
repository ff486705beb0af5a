"""Sliding-window attention with sinks in Triton: flash-style forward and backward.

Query i (absolute position p_i = q_offset + i) sees keys t with i + e - W < t <= i + e, where
e = Tk - Tq (bottom-right alignment), and sink s < S where s <= p_i - W. All scores of a row
share one online softmax (running max m, sum l):

    forward    s = scale q k^T (masked), m' = max(m, rowmax s), l' = l e^{m-m'} + rowsum e^{s-m'},
               acc' = acc e^{m-m'} + e^{s-m'} v;   o = acc / l,  lse = m + log l
    backward   p = e^{s - lse}, dp = do v^T, ds = p (dp - delta) with delta = rowsum(do * o),
               dq = scale ds k, dk = scale ds^T q, dv = p^T do    (same for the sink blocks)

Each program loops only over the key (or query) blocks its band touches: O(T W) work. GQA:
dk/dv are produced per query head in fp32 and summed over the group. Layout [B, T, H, D]
contiguous; lse, delta [B, H, Tq] fp32. Every load is up-cast to fp32.

Non-finite input (forward): masks select (hidden scores are -inf), never multiply; the
p @ v dot runs on values with non-finite entries set to 0, and a visible key whose score or
value row is non-finite gets the score NaN (see _mask_scores), so outputs that do not see it
are unchanged and outputs that see it are NaN. One |x| < inf test per tile, no libdevice.
The backward kernels make no such promise for non-finite inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._triton_common import dot_precision

BS = 16                       # sinks per block


def config(D: int, fp32: bool = False):
    """(BM, BN, BD, num_warps) the dispatcher launches for head dim D (checked AOT in tests).
    fp32 inputs take half-size tiles for D > 64 so shared memory fits sm_80 (164 KB)."""
    BD = max(16, triton.next_power_of_2(D))
    if BD <= 64:
        return 64, 64, BD, 4
    if fp32:
        return (32, 32, BD, 4) if BD <= 128 else (16, 16, BD, 4)
    if BD <= 128:
        return 64, 32, BD, 4
    return 32, 32, BD, 8


@triton.jit
def _softmax_step(s, vv, m, l, acc, DOT_PREC: tl.constexpr):
    m_new = tl.maximum(m, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(s - m_use[:, None])
    alpha = tl.exp(m - m_use)
    l = l * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p, vv, input_precision=DOT_PREC)
    return m_new, l, acc


@triton.jit
def _mask_scores(s, vv, vis):
    """Scores by selection: -inf where hidden, NaN where visible but s or the key's value row
    is non-finite; returns them with the values sanitised (non-finite -> 0) for the dot."""
    vfin = tl.abs(vv) < float("inf")                                     # False for inf, NaN
    vok = tl.min(tl.where(vfin, 1.0, 0.0), 1) > 0.0                      # [BN] row finite
    ok = (tl.abs(s) < float("inf")) & vok[None, :]
    s = tl.where(vis, tl.where(ok, s, float("nan")), float("-inf"))
    return s, tl.where(vfin, vv, 0.0)


@triton.jit
def _fwd(q, k, v, sq, sk, sv, o, lse, scale, Tq, Tk, H, Hkv, D, S, W, q_offset,
         BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BS: tl.constexpr,
         HAS_SINK: tl.constexpr, DOT_PREC: tl.constexpr):
    pid_m, ibh = tl.program_id(0), tl.program_id(1)
    ibh = tl.cast(ibh, tl.int64)
    b, h = ibh // H, ibh % H
    hk = h // (H // Hkv)
    e = Tk - Tq
    i = tl.cast(pid_m, tl.int64) * BM + tl.arange(0, BM)
    mi = i < Tq
    od = tl.arange(0, BD)
    md = od < D
    qoff = ((b * Tq + i[:, None]) * H + h) * D + od[None, :]
    qq = tl.load(q + qoff, mask=mi[:, None] & md[None, :], other=0.0).to(tl.float32)
    m = tl.full([BM], float("-inf"), tl.float32)
    l = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BD], dtype=tl.float32)
    if HAS_SINK:
        sqq = tl.load(sq + qoff, mask=mi[:, None] & md[None, :], other=0.0).to(tl.float32)
        for js in range(0, S, BS):
            j = tl.cast(js, tl.int64) + tl.arange(0, BS)
            koff = ((b * S + j[:, None]) * Hkv + hk) * D + od[None, :]
            mk = (j[:, None] < S) & md[None, :]
            kk = tl.load(sk + koff, mask=mk, other=0.0).to(tl.float32)
            vv = tl.load(sv + koff, mask=mk, other=0.0).to(tl.float32)
            s = tl.dot(sqq, tl.trans(kk), input_precision=DOT_PREC) * scale
            vis = mi[:, None] & (j[None, :] < S) & (j[None, :] <= (i + q_offset)[:, None] - W)
            s, vv = _mask_scores(s, vv, vis)
            m, l, acc = _softmax_step(s, vv, m, l, acc, DOT_PREC)
    lo = tl.maximum(pid_m * BM + e - W + 1, 0)
    hi = tl.minimum(pid_m * BM + BM + e, Tk)
    for ts in range(lo, hi, BN):
        t = tl.cast(ts, tl.int64) + tl.arange(0, BN)
        koff = ((b * Tk + t[:, None]) * Hkv + hk) * D + od[None, :]
        mk = (t[:, None] < Tk) & md[None, :]
        kk = tl.load(k + koff, mask=mk, other=0.0).to(tl.float32)
        vv = tl.load(v + koff, mask=mk, other=0.0).to(tl.float32)
        s = tl.dot(qq, tl.trans(kk), input_precision=DOT_PREC) * scale
        vis = (mi[:, None] & (t[None, :] < Tk) & (t[None, :] <= (i + e)[:, None])
               & (t[None, :] > (i + e - W)[:, None]))
        s, vv = _mask_scores(s, vv, vis)
        m, l, acc = _softmax_step(s, vv, m, l, acc, DOT_PREC)
    l = tl.where(l == 0.0, 1.0, l)
    tl.store(o + qoff, (acc / l[:, None]).to(o.dtype.element_ty), mask=mi[:, None] & md[None, :])
    tl.store(lse + ibh * Tq + i, m + tl.log(l), mask=mi)


@triton.jit
def _bwd_dq(q, k, v, sq, sk, sv, do, lse, delta, dq, dsq, scale, Tq, Tk, H, Hkv, D, S, W,
            q_offset, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BS: tl.constexpr,
            HAS_SINK: tl.constexpr, DOT_PREC: tl.constexpr):
    pid_m, ibh = tl.program_id(0), tl.program_id(1)
    ibh = tl.cast(ibh, tl.int64)
    b, h = ibh // H, ibh % H
    hk = h // (H // Hkv)
    e = Tk - Tq
    i = tl.cast(pid_m, tl.int64) * BM + tl.arange(0, BM)
    mi = i < Tq
    od = tl.arange(0, BD)
    md = od < D
    qoff = ((b * Tq + i[:, None]) * H + h) * D + od[None, :]
    mq = mi[:, None] & md[None, :]
    qq = tl.load(q + qoff, mask=mq, other=0.0).to(tl.float32)
    dd = tl.load(do + qoff, mask=mq, other=0.0).to(tl.float32)
    ls = tl.load(lse + ibh * Tq + i, mask=mi, other=0.0)
    dl = tl.load(delta + ibh * Tq + i, mask=mi, other=0.0)
    if HAS_SINK:
        sqq = tl.load(sq + qoff, mask=mq, other=0.0).to(tl.float32)
        dsacc = tl.zeros([BM, BD], dtype=tl.float32)
        for js in range(0, S, BS):
            j = tl.cast(js, tl.int64) + tl.arange(0, BS)
            koff = ((b * S + j[:, None]) * Hkv + hk) * D + od[None, :]
            mk = (j[:, None] < S) & md[None, :]
            kk = tl.load(sk + koff, mask=mk, other=0.0).to(tl.float32)
            vv = tl.load(sv + koff, mask=mk, other=0.0).to(tl.float32)
            s = tl.dot(sqq, tl.trans(kk), input_precision=DOT_PREC) * scale
            vis = mi[:, None] & (j[None, :] < S) & (j[None, :] <= (i + q_offset)[:, None] - W)
            p = tl.where(vis, tl.exp(s - ls[:, None]), 0.0)
            dp = tl.dot(dd, tl.trans(vv), input_precision=DOT_PREC)
            ds = p * (dp - dl[:, None])
            dsacc += tl.dot(ds, kk, input_precision=DOT_PREC) * scale
        tl.store(dsq + qoff, dsacc, mask=mq)
    acc = tl.zeros([BM, BD], dtype=tl.float32)
    lo = tl.maximum(pid_m * BM + e - W + 1, 0)
    hi = tl.minimum(pid_m * BM + BM + e, Tk)
    for ts in range(lo, hi, BN):
        t = tl.cast(ts, tl.int64) + tl.arange(0, BN)
        koff = ((b * Tk + t[:, None]) * Hkv + hk) * D + od[None, :]
        mk = (t[:, None] < Tk) & md[None, :]
        kk = tl.load(k + koff, mask=mk, other=0.0).to(tl.float32)
        vv = tl.load(v + koff, mask=mk, other=0.0).to(tl.float32)
        s = tl.dot(qq, tl.trans(kk), input_precision=DOT_PREC) * scale
        vis = (mi[:, None] & (t[None, :] < Tk) & (t[None, :] <= (i + e)[:, None])
               & (t[None, :] > (i + e - W)[:, None]))
        p = tl.where(vis, tl.exp(s - ls[:, None]), 0.0)
        dp = tl.dot(dd, tl.trans(vv), input_precision=DOT_PREC)
        ds = p * (dp - dl[:, None])
        acc += tl.dot(ds, kk, input_precision=DOT_PREC) * scale
    tl.store(dq + qoff, acc, mask=mq)


@triton.jit
def _bwd_dkv(q, k, v, do, lse, delta, dk, dv, scale, Tq, Tk, H, Hkv, D, W, q_offset,
             BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, SINK: tl.constexpr,
             DOT_PREC: tl.constexpr):
    """dk, dv per query head for a block of BN keys (band keys, or sinks when SINK)."""
    pid_n, ibh = tl.program_id(0), tl.program_id(1)
    ibh = tl.cast(ibh, tl.int64)
    b, h = ibh // H, ibh % H
    hk = h // (H // Hkv)
    e = Tk - Tq                                   # for sinks: Tk = S, and e is unused
    t = tl.cast(pid_n, tl.int64) * BN + tl.arange(0, BN)
    od = tl.arange(0, BD)
    md = od < D
    mk = (t[:, None] < Tk) & md[None, :]
    kk = tl.load(k + ((b * Tk + t[:, None]) * Hkv + hk) * D + od[None, :], mask=mk,
                 other=0.0).to(tl.float32)
    vv = tl.load(v + ((b * Tk + t[:, None]) * Hkv + hk) * D + od[None, :], mask=mk,
                 other=0.0).to(tl.float32)
    dka = tl.zeros([BN, BD], dtype=tl.float32)
    dva = tl.zeros([BN, BD], dtype=tl.float32)
    if SINK:        # queries with p_i - W >= 0 (earliest sink), to the end
        lo = tl.maximum(W - q_offset, 0)
        hi = Tq
    else:           # queries i with t - e <= i <= t - e + W - 1
        lo = tl.maximum(pid_n * BN - e, 0)
        hi = tl.minimum(pid_n * BN + BN - e + W - 1, Tq)
    for is_ in range(lo, hi, BM):
        i = tl.cast(is_, tl.int64) + tl.arange(0, BM)
        mi = i < Tq
        qoff = ((b * Tq + i[:, None]) * H + h) * D + od[None, :]
        mq = mi[:, None] & md[None, :]
        qq = tl.load(q + qoff, mask=mq, other=0.0).to(tl.float32)
        dd = tl.load(do + qoff, mask=mq, other=0.0).to(tl.float32)
        ls = tl.load(lse + ibh * Tq + i, mask=mi, other=0.0)
        dl = tl.load(delta + ibh * Tq + i, mask=mi, other=0.0)
        s = tl.dot(qq, tl.trans(kk), input_precision=DOT_PREC) * scale           # [BM, BN]
        if SINK:
            vis = mi[:, None] & (t[None, :] < Tk) & (t[None, :] <= (i + q_offset)[:, None] - W)
        else:
            vis = (mi[:, None] & (t[None, :] < Tk) & (t[None, :] <= (i + e)[:, None])
                   & (t[None, :] > (i + e - W)[:, None]))
        p = tl.where(vis, tl.exp(s - ls[:, None]), 0.0)
        dva += tl.dot(tl.trans(p), dd, input_precision=DOT_PREC)
        dp = tl.dot(dd, tl.trans(vv), input_precision=DOT_PREC)
        ds = p * (dp - dl[:, None])
        dka += tl.dot(tl.trans(ds), qq, input_precision=DOT_PREC) * scale
    ooff = ((b * Tk + t[:, None]) * H + h) * D + od[None, :]
    tl.store(dk + ooff, dka, mask=mk)
    tl.store(dv + ooff, dva, mask=mk)


def _group_sum(x, Hkv):
    """[B, T, H, D] per-query-head grads -> [B, T, Hkv, D] (sum over the GQA group)."""
    B, T, H, D = x.shape
    return x.view(B, T, Hkv, H // Hkv, D).sum(3)


class _SWA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, sq, sk, sv, window, q_offset, scale):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, Tq, H, D = q.shape
        Tk, Hkv = k.shape[1], k.shape[2]
        has_sink = sk is not None
        if has_sink:
            sq, sk, sv = sq.contiguous(), sk.contiguous(), sv.contiguous()
        S = sk.shape[1] if has_sink else 0
        BM, BN, BD, nw = config(D, q.dtype == torch.float32)
        o = torch.empty_like(q)
        lse = q.new_empty(B, H, Tq, dtype=torch.float32)
        _fwd[(triton.cdiv(Tq, BM), B * H)](
            q, k, v, sq if has_sink else q, sk if has_sink else k, sv if has_sink else v, o, lse,
            scale, Tq, Tk, H, Hkv, D, S, window, q_offset, BM=BM, BN=BN, BD=BD, BS=BS,
            HAS_SINK=has_sink, DOT_PREC=dot_precision(q), num_warps=nw)
        ctx.save_for_backward(q, k, v, sq, sk, sv, o, lse)
        ctx.args = (window, q_offset, scale, has_sink)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, sq, sk, sv, o, lse = ctx.saved_tensors
        window, q_offset, scale, has_sink = ctx.args
        B, Tq, H, D = q.shape
        Tk, Hkv = k.shape[1], k.shape[2]
        S = sk.shape[1] if has_sink else 0
        BM, BN, BD, nw = config(D, q.dtype == torch.float32)
        do = do.contiguous()
        delta = (do.float() * o.float()).sum(-1).transpose(1, 2).contiguous()   # [B, H, Tq]
        f32 = dict(dtype=torch.float32, device=q.device)
        dq = torch.empty(B, Tq, H, D, **f32)
        dsq = torch.empty(B, Tq, H, D, **f32) if has_sink else dq
        meta = dict(BD=BD, DOT_PREC=dot_precision(q), num_warps=nw)
        _bwd_dq[(triton.cdiv(Tq, BM), B * H)](
            q, k, v, sq if has_sink else q, sk if has_sink else k, sv if has_sink else v, do,
            lse, delta, dq, dsq, scale, Tq, Tk, H, Hkv, D, S, window, q_offset, BM=BM, BN=BN,
            BS=BS, HAS_SINK=has_sink, **meta)
        dk, dv = torch.empty(B, Tk, H, D, **f32), torch.empty(B, Tk, H, D, **f32)
        _bwd_dkv[(triton.cdiv(Tk, BN), B * H)](
            q, k, v, do, lse, delta, dk, dv, scale, Tq, Tk, H, Hkv, D, window, q_offset,
            BM=BM, BN=BN, SINK=False, **meta)
        grads = [dq.to(q.dtype), _group_sum(dk, Hkv).to(k.dtype), _group_sum(dv, Hkv).to(v.dtype)]
        if has_sink:
            dsk, dsv = torch.empty(B, S, H, D, **f32), torch.empty(B, S, H, D, **f32)
            _bwd_dkv[(triton.cdiv(S, BS), B * H)](
                sq, sk, sv, do, lse, delta, dsk, dsv, scale, Tq, S, H, Hkv, D, window, q_offset,
                BM=BM, BN=BS, SINK=True, **meta)
            grads += [dsq.to(sq.dtype), _group_sum(dsk, Hkv).to(sk.dtype),
                      _group_sum(dsv, Hkv).to(sv.dtype)]
        else:
            grads += [None, None, None]
        return (*grads, None, None, None)


def sliding_window_triton(q, k, v, window, q_offset, sink_k, sink_v, sink_q, scale):
    return _SWA.apply(q, k, v, sink_q, sink_k, sink_v, window, q_offset, scale)


def aot_configs(full: bool = False):
    """Every (kernel, arg types, constexprs, num_warps) the dispatcher can launch, for the
    ahead-of-time compile test. ``full=False``: one head dim per block configuration."""
    for dt in ("fp16", "bf16", "fp32"):
        for D in ([16, 32, 64, 128, 256] if full else [64, 128, 256]):
            for sink in ((True, False) if full else (True,)):
                BM, BN, BD, nw = config(D, dt == "fp32")
                x = f"*{dt}"
                types = dict(q=x, k=x, v=x, sq=x, sk=x, sv=x, o=x, do=x, lse="*fp32",
                             delta="*fp32", dq="*fp32", dsq="*fp32", dk="*fp32", dv="*fp32",
                             scale="fp32", Tq="i32", Tk="i32", H="i32", Hkv="i32", D="i32",
                             S="i32", W="i32", q_offset="i32")
                c = dict(BM=BM, BN=BN, BD=BD, BS=BS, HAS_SINK=sink,
                         DOT_PREC="ieee" if dt == "fp32" else "tf32")
                tag = f"{dt} D{BD} sink={int(sink)}"
                yield f"swa._fwd {tag}", _fwd, types, c, nw
                yield f"swa._bwd_dq {tag}", _bwd_dq, types, c, nw
                yield f"swa._bwd_dkv {tag}", _bwd_dkv, types, dict(c, SINK=False), nw
                if sink:
                    yield f"swa._bwd_dkv(sinks) {tag}", _bwd_dkv, types, dict(
                        c, BN=BS, SINK=True), nw
