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

Tiles: each of the four launches (forward, dq, band dk/dv, sink dk/dv) takes its own block
sizes and num_warps from TILES (``config``), per dtype class and head-dim block BD <= 256;
every entry compiles with no register spill and within shared memory for sm_80 and sm_90
(``python -m memarch.kernels.aot``). No cell falls back: the fp32 dk/dv kernels at BD 256,
which spill with any pipelined tile, run their query loop unpipelined (STAGES = 1). The
int arguments other than the head dim D are ``do_not_specialize``: one compiled variant per
configuration, the one the AOT check compiles.

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

from .._triton_common import dot_precision, load_tile, store_tile

BS = 16                       # sinks per block of the forward / dq sink loops

# (BM, BN, num_warps[, STAGES]) each kernel launches, per dtype class ("half": fp16 and bf16,
# "fp32") and BD (head dim D rounded up to a power of two >= 16). BM: query block, BN: key
# block ("bwd_dkv_sink": the sink block). STAGES: the dk/dv query loop's pipelining depth
# (absent: the launch's num_stages). Found by a search that compiles each kernel ahead of
# time for sm_80 and sm_90 (fp16 and bf16, with and without sinks) and keeps the first
# candidate with no register spill (cuobjdump STACK 0, LOCAL 0) within shared memory, bigger
# tiles (BM BN) first, num_warps 4 before 8, STAGES = 1 only where no pipelined tile fits;
# `python -m memarch.kernels.aot` checks every entry (tests/kernels/test_kernel_aot.py).
TILES = {
    "fwd": {
        "half": {16: (128, 128, 8), 32: (128, 64, 8), 64: (64, 64, 8), 128: (64, 32, 8),
                 256: (32, 32, 8)},
        "fp32": {16: (128, 64, 8), 32: (32, 128, 8), 64: (128, 32, 8), 128: (64, 32, 8),
                 256: (32, 16, 8)},
    },
    "bwd_dq": {
        "half": {16: (128, 128, 8), 32: (128, 64, 8), 64: (128, 32, 8), 128: (64, 32, 8),
                 256: (32, 32, 8)},
        "fp32": {16: (64, 64, 8), 32: (32, 128, 8), 64: (32, 64, 8), 128: (64, 32, 8),
                 256: (32, 16, 8)},
    },
    "bwd_dkv": {
        "half": {16: (128, 64, 8), 32: (64, 64, 4), 64: (64, 32, 4), 128: (32, 64, 8),
                 256: (16, 32, 8)},
        "fp32": {16: (64, 128, 8), 32: (64, 64, 8), 64: (32, 32, 8), 128: (16, 16, 8),
                 256: (16, 32, 8, 1)},
    },
    "bwd_dkv_sink": {
        "half": {16: (128, 16, 4), 32: (128, 16, 4), 64: (64, 16, 4), 128: (64, 16, 8),
                 256: (32, 16, 8)},
        "fp32": {16: (128, 16, 4), 32: (128, 16, 8), 64: (64, 16, 8), 128: (16, 16, 8),
                 256: (16, 16, 4, 1)},
    },
}


def config(kernel: str, D: int, fp32: bool = False) -> dict:
    """Launch parameters of ``kernel`` ("fwd", "bwd_dq", "bwd_dkv", "bwd_dkv_sink") for head
    dim D: the constexprs BM, BN, BD (and STAGES for the dk/dv kernels) and num_warps, from
    TILES. Every entry compiles spill-free for sm_80 and sm_90 (checked ahead of time); the
    fp32 dk/dv kernels at BD 256 only with an unpipelined query loop (STAGES = 1). D > 256
    has no entry: the dispatcher refuses impl='triton' there (MAX_TRITON_DIM)."""
    BD = max(16, triton.next_power_of_2(D))
    table = TILES[kernel]["fp32" if fp32 else "half"]
    if BD not in table:
        raise ValueError(f"sliding_window triton: no tile configuration for head dim {D} "
                         f"(BD {BD}; supported D <= {max(table)})")
    BM, BN, nw, *stages = table[BD]
    c = dict(BM=BM, BN=BN, BD=BD, num_warps=nw)
    if kernel.startswith("bwd_dkv"):
        c["STAGES"] = stages[0] if stages else None
    return c


@triton.jit
def _softmax_step(s, vv, m, lsum, acc, DOT_PREC: tl.constexpr):
    m_new = tl.maximum(m, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(s - m_use[:, None])
    alpha = tl.exp(m - m_use)
    lsum = lsum * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p, vv, input_precision=DOT_PREC)
    return m_new, lsum, acc


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
def _visible(i, t, Tq, Tk, e, W, q_offset, SINK: tl.constexpr):
    """[BM, BN] visibility of key t to query i (both in range): the band i + e - W < t <=
    i + e, or for SINK the sinks t <= p_i - W (p_i = q_offset + i)."""
    vis = (i[:, None] < Tq) & (t[None, :] < Tk)
    if SINK:
        vis = vis & (t[None, :] <= (i + q_offset)[:, None] - W)
    else:
        vis = vis & (t[None, :] <= (i + e)[:, None]) & (t[None, :] > (i + e - W)[:, None])
    return vis


@triton.jit(do_not_specialize=["Tq", "Tk", "H", "Hkv", "S", "W", "q_offset"])
def _fwd(q, k, v, sq, sk, sv, o, lse, scale, Tq, Tk, H, Hkv, D, S, W, q_offset,
         BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, BS: tl.constexpr,
         HAS_SINK: tl.constexpr, DOT_PREC: tl.constexpr):
    pid_m, ibh = tl.program_id(0), tl.program_id(1)
    ibh = tl.cast(ibh, tl.int64)
    b, h = ibh // H, ibh % H
    hk = h // (H // Hkv)
    e = Tk - Tq
    i = tl.cast(pid_m, tl.int64) * BM + tl.arange(0, BM)
    od = tl.arange(0, BD)
    qb = (b * Tq * H + h) * D                     # [B, Tq, H, D] rows of (b, h): stride H D
    qq = load_tile(q + qb, i, od, H * D, Tq, D)
    m = tl.full([BM], float("-inf"), tl.float32)
    lsum = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, BD], dtype=tl.float32)
    if HAS_SINK:
        sqq = load_tile(sq + qb, i, od, H * D, Tq, D)
        sb = (b * S * Hkv + hk) * D
        for js in range(0, S, BS):
            j = tl.cast(js, tl.int64) + tl.arange(0, BS)
            kk = load_tile(sk + sb, j, od, Hkv * D, S, D)
            vv = load_tile(sv + sb, j, od, Hkv * D, S, D)
            s = tl.dot(sqq, tl.trans(kk), input_precision=DOT_PREC) * scale
            s, vv = _mask_scores(s, vv, _visible(i, j, Tq, S, e, W, q_offset, True))
            m, lsum, acc = _softmax_step(s, vv, m, lsum, acc, DOT_PREC)
    kb = (b * Tk * Hkv + hk) * D
    lo = tl.maximum(pid_m * BM + e - W + 1, 0)
    hi = tl.minimum(pid_m * BM + BM + e, Tk)
    for ts in range(lo, hi, BN):
        t = tl.cast(ts, tl.int64) + tl.arange(0, BN)
        kk = load_tile(k + kb, t, od, Hkv * D, Tk, D)
        vv = load_tile(v + kb, t, od, Hkv * D, Tk, D)
        s = tl.dot(qq, tl.trans(kk), input_precision=DOT_PREC) * scale
        s, vv = _mask_scores(s, vv, _visible(i, t, Tq, Tk, e, W, q_offset, False))
        m, lsum, acc = _softmax_step(s, vv, m, lsum, acc, DOT_PREC)
    lsum = tl.where(lsum == 0.0, 1.0, lsum)
    store_tile(o + qb, acc / lsum[:, None], i, od, H * D, Tq, D)
    tl.store(lse + ibh * Tq + i, m + tl.log(lsum), mask=i < Tq)


@triton.jit
def _bwd_block(qq, dd, kk, vv, ls, dl, vis, scale, DOT_PREC: tl.constexpr):
    """p = e^{s - lse} (0 where hidden) and ds = p (dp - delta) of one [BM, BN] block."""
    s = tl.dot(qq, tl.trans(kk), input_precision=DOT_PREC) * scale
    p = tl.where(vis, tl.exp(s - ls[:, None]), 0.0)
    dp = tl.dot(dd, tl.trans(vv), input_precision=DOT_PREC)
    return p, p * (dp - dl[:, None])


@triton.jit(do_not_specialize=["Tq", "Tk", "H", "Hkv", "S", "W", "q_offset"])
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
    qb = (b * Tq * H + h) * D
    qq = load_tile(q + qb, i, od, H * D, Tq, D)
    dd = load_tile(do + qb, i, od, H * D, Tq, D)
    ls = tl.load(lse + ibh * Tq + i, mask=mi, other=0.0)
    dl = tl.load(delta + ibh * Tq + i, mask=mi, other=0.0)
    if HAS_SINK:
        sqq = load_tile(sq + qb, i, od, H * D, Tq, D)
        dsacc = tl.zeros([BM, BD], dtype=tl.float32)
        sb = (b * S * Hkv + hk) * D
        for js in range(0, S, BS):
            j = tl.cast(js, tl.int64) + tl.arange(0, BS)
            kk = load_tile(sk + sb, j, od, Hkv * D, S, D)
            vv = load_tile(sv + sb, j, od, Hkv * D, S, D)
            p, ds = _bwd_block(sqq, dd, kk, vv, ls, dl,
                               _visible(i, j, Tq, S, e, W, q_offset, True), scale, DOT_PREC)
            dsacc += tl.dot(ds, kk, input_precision=DOT_PREC) * scale
        store_tile(dsq + qb, dsacc, i, od, H * D, Tq, D)
    acc = tl.zeros([BM, BD], dtype=tl.float32)
    kb = (b * Tk * Hkv + hk) * D
    lo = tl.maximum(pid_m * BM + e - W + 1, 0)
    hi = tl.minimum(pid_m * BM + BM + e, Tk)
    for ts in range(lo, hi, BN):
        t = tl.cast(ts, tl.int64) + tl.arange(0, BN)
        kk = load_tile(k + kb, t, od, Hkv * D, Tk, D)
        vv = load_tile(v + kb, t, od, Hkv * D, Tk, D)
        p, ds = _bwd_block(qq, dd, kk, vv, ls, dl, _visible(i, t, Tq, Tk, e, W, q_offset, False),
                           scale, DOT_PREC)
        acc += tl.dot(ds, kk, input_precision=DOT_PREC) * scale
    store_tile(dq + qb, acc, i, od, H * D, Tq, D)


@triton.jit(do_not_specialize=["Tq", "Tk", "H", "Hkv", "W", "q_offset"])
def _bwd_dkv(q, k, v, do, lse, delta, dk, dv, scale, Tq, Tk, H, Hkv, D, W, q_offset,
             BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, SINK: tl.constexpr,
             DOT_PREC: tl.constexpr, STAGES: tl.constexpr):
    """dk, dv per query head for a block of BN keys (band keys, or sinks when SINK). STAGES:
    the query loop's software-pipelining depth (None: the launch's num_stages)."""
    pid_n, ibh = tl.program_id(0), tl.program_id(1)
    ibh = tl.cast(ibh, tl.int64)
    b, h = ibh // H, ibh % H
    hk = h // (H // Hkv)
    e = Tk - Tq                                   # for sinks: Tk = S, and e is unused
    t = tl.cast(pid_n, tl.int64) * BN + tl.arange(0, BN)
    od = tl.arange(0, BD)
    kb = (b * Tk * Hkv + hk) * D
    kk = load_tile(k + kb, t, od, Hkv * D, Tk, D)
    vv = load_tile(v + kb, t, od, Hkv * D, Tk, D)
    dka = tl.zeros([BN, BD], dtype=tl.float32)
    dva = tl.zeros([BN, BD], dtype=tl.float32)
    if SINK:        # queries with p_i - W >= 0 (earliest sink), to the end
        lo = tl.maximum(W - q_offset, 0)
        hi = Tq
    else:           # queries i with t - e <= i <= t - e + W - 1
        lo = tl.maximum(pid_n * BN - e, 0)
        hi = tl.minimum(pid_n * BN + BN - e + W - 1, Tq)
    qb = (b * Tq * H + h) * D
    for is_ in tl.range(lo, hi, BM, num_stages=STAGES):
        i = tl.cast(is_, tl.int64) + tl.arange(0, BM)
        mi = i < Tq
        qq = load_tile(q + qb, i, od, H * D, Tq, D)
        dd = load_tile(do + qb, i, od, H * D, Tq, D)
        ls = tl.load(lse + ibh * Tq + i, mask=mi, other=0.0)
        dl = tl.load(delta + ibh * Tq + i, mask=mi, other=0.0)
        p, ds = _bwd_block(qq, dd, kk, vv, ls, dl, _visible(i, t, Tq, Tk, e, W, q_offset, SINK),
                           scale, DOT_PREC)
        dva += tl.dot(tl.trans(p), dd, input_precision=DOT_PREC)
        dka += tl.dot(tl.trans(ds), qq, input_precision=DOT_PREC) * scale
    ob = (b * Tk * H + h) * D                     # dk, dv per query head: [B, Tk, H, D]
    store_tile(dk + ob, dka, t, od, H * D, Tk, D)
    store_tile(dv + ob, dva, t, od, H * D, Tk, D)


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
        c = config("fwd", D, q.dtype == torch.float32)
        o = torch.empty_like(q)
        lse = q.new_empty(B, H, Tq, dtype=torch.float32)
        _fwd[(triton.cdiv(Tq, c["BM"]), B * H)](
            q, k, v, sq if has_sink else q, sk if has_sink else k, sv if has_sink else v, o, lse,
            scale, Tq, Tk, H, Hkv, D, S, window, q_offset, BS=BS, HAS_SINK=has_sink,
            DOT_PREC=dot_precision(q), **c)
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
        fp32, prec = q.dtype == torch.float32, dot_precision(q)
        do = do.contiguous()
        delta = (do.float() * o.float()).sum(-1).transpose(1, 2).contiguous()   # [B, H, Tq]
        f32 = dict(dtype=torch.float32, device=q.device)
        dq = torch.empty(B, Tq, H, D, **f32)
        dsq = torch.empty(B, Tq, H, D, **f32) if has_sink else dq
        c = config("bwd_dq", D, fp32)
        _bwd_dq[(triton.cdiv(Tq, c["BM"]), B * H)](
            q, k, v, sq if has_sink else q, sk if has_sink else k, sv if has_sink else v, do,
            lse, delta, dq, dsq, scale, Tq, Tk, H, Hkv, D, S, window, q_offset, BS=BS,
            HAS_SINK=has_sink, DOT_PREC=prec, **c)
        dk, dv = torch.empty(B, Tk, H, D, **f32), torch.empty(B, Tk, H, D, **f32)
        c = config("bwd_dkv", D, fp32)
        _bwd_dkv[(triton.cdiv(Tk, c["BN"]), B * H)](
            q, k, v, do, lse, delta, dk, dv, scale, Tq, Tk, H, Hkv, D, window, q_offset,
            SINK=False, DOT_PREC=prec, **c)
        grads = [dq.to(q.dtype), _group_sum(dk, Hkv).to(k.dtype), _group_sum(dv, Hkv).to(v.dtype)]
        if has_sink:
            dsk, dsv = torch.empty(B, S, H, D, **f32), torch.empty(B, S, H, D, **f32)
            c = config("bwd_dkv_sink", D, fp32)
            _bwd_dkv[(triton.cdiv(S, c["BN"]), B * H)](
                sq, sk, sv, do, lse, delta, dsk, dsv, scale, Tq, S, H, Hkv, D, window, q_offset,
                SINK=True, DOT_PREC=prec, **c)
            grads += [dsq.to(sq.dtype), _group_sum(dsk, Hkv).to(sk.dtype),
                      _group_sum(dsv, Hkv).to(sv.dtype)]
        else:
            grads += [None, None, None]
        return (*grads, None, None, None)


def sliding_window_triton(q, k, v, window, q_offset, sink_k, sink_v, sink_q, scale):
    return _SWA.apply(q, k, v, sink_q, sink_k, sink_v, window, q_offset, scale)


def aot_configs(full: bool = False):
    """Every (kernel, arg types, constexprs, num_warps) the dispatcher can launch, for the
    ahead-of-time compile test: each kernel at its TILES entry for every dtype and BD.
    ``full=False``: BD 32..256 with sinks; ``full``: also BD 16 and the forward / dq without
    sinks (the band dk/dv kernel does not depend on sinks)."""
    for dt in ("fp16", "bf16", "fp32"):
        x, fp32 = f"*{dt}", dt == "fp32"
        types = dict(q=x, k=x, v=x, sq=x, sk=x, sv=x, o=x, do=x, lse="*fp32", delta="*fp32",
                     dq="*fp32", dsq="*fp32", dk="*fp32", dv="*fp32", scale="fp32", Tq="i32",
                     Tk="i32", H="i32", Hkv="i32", D="i32", S="i32", W="i32", q_offset="i32")
        prec = "ieee" if fp32 else "tf32"
        for BD in ([16, 32, 64, 128, 256] if full else [32, 64, 128, 256]):
            for sink in ((True, False) if full else (True,)):
                tag = f"{dt} D{BD} sink={int(sink)}"
                for name, fn in (("fwd", _fwd), ("bwd_dq", _bwd_dq)):
                    c = config(name, BD, fp32)
                    nw = c.pop("num_warps")
                    yield (f"swa._{name} {tag}", fn, types,
                           dict(c, BS=BS, HAS_SINK=sink, DOT_PREC=prec), nw)
                if not sink:
                    continue
                for name, is_sink in (("bwd_dkv", False), ("bwd_dkv_sink", True)):
                    c = config(name, BD, fp32)
                    nw = c.pop("num_warps")
                    label = "swa._bwd_dkv(sinks)" if is_sink else "swa._bwd_dkv"
                    yield (f"{label} {dt} D{BD}", _bwd_dkv, types,
                           dict(c, SINK=is_sink, DOT_PREC=prec), nw)
