"""Gated delta rule in Triton: chunked WY/UT forward/backward kernels and a fused one-token decode.

Chunks of BT = 32 tokens (at 64 the per-chunk kernels' [BT, BT] fp32 matrices spill registers).
In chunk n: b_t = chunk-local cumsum of g, S_n = the state before it, Q, K, V, beta, b the
chunk's rows (memarch orientation: S [K, V], read q^T S, write k u^T), C its last row:

  forward
    A[s, r] = beta_s exp(b_s - b_r) k_s.k_r (r < s),  Tm = (I + A)^-1                 (_fwd_wu)
    W = Tm diag(beta exp(b)) K,  U = Tm diag(beta) V                                   (_fwd_wu)
    u = U - W S_n,  S_{n+1} = exp(b_C) S_n + (K o exp(b_C - b))^T u                     (_fwd_h)
    o = scale [diag(exp(b)) Q S_n + P u],  P = Q K^T o D,  D[t, s] = exp(b_t - b_s), s <= t
                                                                                         (_fwd_o)
  backward
    du = scale P^T dO + (K o exp(b_C - b)) dS_{n+1}
    dS_n = scale (Q o exp(b))^T dO + exp(b_C) dS_{n+1} - W^T du                        (_bwd_dh)
    u = Tm R with R = diag(beta) V - diag(beta exp(b)) K S_n = (I + A) u, hence
    dR = Tm^T du,  dA = -dR u^T (strictly lower; -Tm^T dTm Tm^T collapses since
    (I + A) Tm = I),  dv = beta o dR                                                   (_bwd_dv)
    M = scale (dO u^T) o D (s <= t),  G = dA o exp(b_s - b_r),  G_b = diag(beta) G,
    dk_R = -beta exp(b) o dR S_n^T:
    dq = scale exp(b) o dO S_n^T + M K
    dk = M^T Q + exp(b_C - b) o u dS_{n+1}^T + dk_R + G_b K + G_b^T K
    dbeta = rowsum(dR o V) - exp(b) o rowsum(dR S_n^T o K) + rowsum(G K o K)
    d b = rowsum(dq o Q) - rowsum(K o (M^T Q + exp(b_C - b) u dS_{n+1}^T - dk_R
          - G_b K + G_b^T K)) (+ sum(dS_{n+1} o S_{n+1}) at t = C)                    (_bwd_dqk)
    dg_t = sum_{t' >= t in chunk} d b_t'  (torch, like the partial sums over V/K tiles)

Tm is found in-kernel by forward substitution over its rows (tl.where/tl.sum; no powers of A,
which overflow). The state kernels (_fwd_h, _bwd_dh, _decode) hold the whole K (padded to a
power of two, K <= 128) in one tile, since u = U - W S contracts over K; _fwd_h and _bwd_dh
walk a chunk in row blocks of BS = 16 (every block reads the chunk's initial state, the update
is summed and applied at the end), which keeps their [rows, K] operands small. _fwd_o also
stores P (only when a gradient is needed) for _bwd_dh. States and all intermediate buffers
are fp32; every load is up-cast to fp32; tl.dot runs in "ieee" fp32 for fp32 inputs and tf32
otherwise. q, k [B, T, H, K], v [B, T, H, V] contiguous; gc, bc [B, H, N*BT] fp32 (chunk
cumsum of g, and beta; zero-padded, so padding is a no-op write); tm, aqk [B, H, N, BT, BT];
w [B, H, N*BT, K]; U, u, du, dR [B, H, N*BT, V]; hbuf/dhbuf [B, H, N, K, V].

Non-finite input: the op (``delta_rule``) replaces tokens with a non-finite k, v, beta or g by
a no-op write and poisons the outputs from there on, so these kernels only see finite k, v,
beta, g. A non-finite q_t only reaches o_t: q enters the forward only as rows of q S_n and
q K^T (masks select with tl.where, never multiply). The backward makes no promise for
non-finite input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .._triton_common import chunk_cumsum, chunked, dot_precision, load_tile, store_tile, tile

BT = 32
BS = 16                   # row block of a chunk in the state kernels
DECODE_CALLS = 0          # counts decode-kernel launches (tests check the path is taken)


def _full(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def config(K: int, V: int) -> dict:
    """Tiles the dispatcher launches (checked ahead of time for sm_80/sm_90 in the tests):
    the state kernels (_fwd_h, _bwd_dh) keep the whole K (BKF, <= 128) by a narrow V tile (more
    programs for the sequential loop, fewer registers): [BKF, 16], _bwd_dh [BKF, BVD] with
    BVD = 32 at BKF = 16 (ptxas spills 16 bytes of [16, 16] at some flags); the per-chunk
    kernels use BK, BV <= 32 tiles, _bwd_dqk BKD = 16 (it holds five fp32 [BT, BT|BK]
    accumulators; at BK = 32 it spills). 8 warps; every kernel spill-free (aot_configs(True)).
    _decode: the whole K by a V tile <= 32, 4 warps (8 at [128, 16]); spill-free also for K
    and/or V not multiples of 16 (it runs on the caller's head dims; the chunked kernels get
    them padded, see delta_rule_triton)."""
    BKF, BV = _full(K), min(32, tile(V))
    return dict(BKF=BKF, BVS=16, BVD=32 if BKF == 16 else 16, BK=min(32, tile(K)), BKD=16,
                BV=BV, num_warps=8,
                decode=dict(BK=BKF, BV=BV, num_warps=8 if (BKF, BV) == (128, 16) else 4))


# Length args (T, H, N, BHT; not the head dims K, V) are do_not_specialize: the JIT compiles one
# build per configuration, the one aot_configs() checks (no variant for T <= BT with N == 1 a
# constexpr, or for T % 16 == 0).


@triton.jit
def _load_rows(ptr, rows, cols, row_stride, n_cols):
    """fp32 tile ``ptr[rows[:, None] * row_stride + cols[None, :]]``, 0 where ``cols >= n_cols``:
    the chunked buffers (w, U, u, du, dR) are padded to N*BT rows, so no row mask."""
    return tl.load(ptr + rows[:, None] * row_stride + cols[None, :], mask=cols[None, :] < n_cols,
                   other=0.0).to(tl.float32)


@triton.jit
def _store_rows(ptr, x, rows, cols, row_stride, n_cols):
    """Store tile ``x`` (cast to ``ptr``'s dtype) where ``cols < n_cols`` (every row: padded)."""
    tl.store(ptr + rows[:, None] * row_stride + cols[None, :], x.to(ptr.dtype.element_ty),
             mask=cols[None, :] < n_cols)


@triton.jit(do_not_specialize=["T", "H", "N"])
def _fwd_wu(k, v, bc, gc, tm, w, uu, T, H, K, V, N,
            BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
            USE_G: tl.constexpr):
    n, ibh = tl.program_id(0), tl.program_id(1)
    ibh, n = tl.cast(ibh, tl.int64), tl.cast(n, tl.int64)
    b, h = ibh // H, ibh % H
    ot = tl.arange(0, BT)
    t = n * BT + ot
    bet = tl.load(bc + ibh * N * BT + t).to(tl.float32)                  # [BT], 0 on padding
    KK = tl.zeros([BT, BT], dtype=tl.float32)
    for ikb in range(tl.cdiv(K, BK)):
        ok = tl.cast(ikb, tl.int64) * BK + tl.arange(0, BK)
        kk = load_tile(k + (b * T * H + h) * K, t, ok, H * K, T, K)
        KK += tl.dot(kk, tl.trans(kk), input_precision=DOT_PREC)
    strict = ot[:, None] > ot[None, :]
    xk = bet
    if USE_G:
        bt = tl.load(gc + ibh * N * BT + t).to(tl.float32)
        KK = KK * tl.exp(tl.where(strict, bt[:, None] - bt[None, :], 0.0))
        xk = bet * tl.exp(bt)
    A = tl.where(strict, KK * bet[:, None], 0.0)                          # [s, r], r < s
    # Tm = (I + A)^-1, unit lower triangular: row i = e_i - sum_{j<i} A[i, j] Tm[j, :]
    At = tl.trans(A)
    Tm = tl.where(ot[:, None] == ot[None, :], 1.0, 0.0)
    for i in range(1, BT):
        a = tl.sum(tl.where(ot[None, :] == i, At, 0.0), 1)                 # A[i, j], j on axis 0
        row = tl.sum(a[:, None] * Tm, 0)                                   # sum_j A[i, j] Tm[j, :]
        Tm = Tm - tl.where(ot[:, None] == i, row[None, :], 0.0)
    tl.store(tm + (ibh * N + n) * BT * BT + ot[:, None] * BT + ot[None, :], Tm)
    for ikb in range(tl.cdiv(K, BK)):
        ok = tl.cast(ikb, tl.int64) * BK + tl.arange(0, BK)
        kk = load_tile(k + (b * T * H + h) * K, t, ok, H * K, T, K)
        ww = tl.dot(Tm, kk * xk[:, None], input_precision=DOT_PREC)
        _store_rows(w + ibh * N * BT * K, ww, t, ok, K, K)
    for ivb in range(tl.cdiv(V, BV)):
        ov = tl.cast(ivb, tl.int64) * BV + tl.arange(0, BV)
        vv = load_tile(v + (b * T * H + h) * V, t, ov, H * V, T, V)
        u0 = tl.dot(Tm, vv * bet[:, None], input_precision=DOT_PREC)
        _store_rows(uu + ibh * N * BT * V, u0, t, ov, V, V)


@triton.jit(do_not_specialize=["T", "H", "N"])
def _fwd_h(k, w, uu, un, gc, h0, hbuf, ht, T, H, K, V, N,
           BT: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
           DOT_PREC: tl.constexpr, USE_G: tl.constexpr, USE_H0: tl.constexpr):
    """S_n -> S_{n+1}, a chunk in row blocks of BS (all read S_n: u = U - W S_n)."""
    iv, ibh = tl.program_id(0), tl.program_id(1)
    ibh = tl.cast(ibh, tl.int64)
    b, h = ibh // H, ibh % H
    ok = tl.arange(0, BK)                                                  # the whole K
    ov = iv * BV + tl.arange(0, BV)
    os_ = tl.arange(0, BS)
    if USE_H0:
        acc = load_tile(h0 + ibh * K * V, ok, ov, V, K, V)                 # [BK, BV]
    else:
        acc = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(N):
        n = tl.cast(i, tl.int64)
        store_tile(hbuf + (ibh * N + n) * K * V, acc, ok, ov, V, K, V)
        upd = tl.zeros([BK, BV], dtype=tl.float32)
        if USE_G:
            bl = tl.load(gc + ibh * N * BT + n * BT + BT - 1).to(tl.float32)
        for j in range(BT // BS):
            t = n * BT + tl.cast(j, tl.int64) * BS + os_                   # [BS]
            kk = load_tile(k + (b * T * H + h) * K, t, ok, H * K, T, K)
            ww = _load_rows(w + ibh * N * BT * K, t, ok, K, K)
            u0 = _load_rows(uu + ibh * N * BT * V, t, ov, V, V)
            u1 = u0 - tl.dot(ww, acc, input_precision=DOT_PREC)             # u = U - W S_n
            _store_rows(un + ibh * N * BT * V, u1, t, ov, V, V)
            if USE_G:
                bt = tl.load(gc + ibh * N * BT + t).to(tl.float32)
                kk = kk * tl.exp(bl - bt)[:, None]
            upd += tl.dot(tl.trans(kk), u1, input_precision=DOT_PREC)
        if USE_G:
            acc = acc * tl.exp(bl)
        acc += upd
    store_tile(ht + ibh * K * V, acc, ok, ov, V, K, V)


@triton.jit(do_not_specialize=["T", "H", "N"])
def _fwd_o(q, k, un, gc, hbuf, o, aqk, scale, T, H, K, V, N,
           BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr,
           USE_G: tl.constexpr, STORE_A: tl.constexpr):
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
    A = tl.where(causal, A, 0.0)              # a non-finite q_t stays in row t (select)
    if STORE_A:                               # Q K^T o D for _bwd_dh (one V tile writes it)
        tl.store(aqk + (ibh * N + n) * BT * BT + ot[:, None] * BT + ot[None, :], A,
                 mask=(ot[:, None] < BT) & (iv == 0))
    u1 = _load_rows(un + ibh * N * BT * V, t, ov, V, V)
    acc = (acc + tl.dot(A, u1, input_precision=DOT_PREC)) * scale
    store_tile(o + (b * T * H + h) * V, acc, t, ov, H * V, T, V)


@triton.jit(do_not_specialize=["T", "H", "N"])
def _bwd_dh(q, k, w, do, aqk, gc, dht, dhbuf, du, dh0, scale, T, H, K, V, N,
            BT: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
            DOT_PREC: tl.constexpr, USE_G: tl.constexpr, USE_DHT: tl.constexpr,
            USE_DH0: tl.constexpr):
    """dS_{n+1} -> dS_n and du, a chunk in row blocks of BS (all read dS_{n+1})."""
    iv, ibh = tl.program_id(0), tl.program_id(1)
    ibh = tl.cast(ibh, tl.int64)
    b, h = ibh // H, ibh % H
    ok = tl.arange(0, BK)                                                  # the whole K
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    os_ = tl.arange(0, BS)
    if USE_DHT:
        acc = load_tile(dht + ibh * K * V, ok, ov, V, K, V)
    else:
        acc = tl.zeros([BK, BV], dtype=tl.float32)
    for i in range(N):
        n = tl.cast(N - 1 - i, tl.int64)
        store_tile(dhbuf + (ibh * N + n) * K * V, acc, ok, ov, V, K, V)     # dS_{n+1}
        ta = n * BT + ot
        dall = load_tile(do + (b * T * H + h) * V, ta, ov, H * V, T, V)
        upd = tl.zeros([BK, BV], dtype=tl.float32)
        if USE_G:
            bl = tl.load(gc + ibh * N * BT + n * BT + BT - 1).to(tl.float32)
        for j in range(BT // BS):
            js = tl.cast(j, tl.int64) * BS + os_                            # rows in chunk
            t = n * BT + js
            qq = load_tile(q + (b * T * H + h) * K, t, ok, H * K, T, K)
            kk = load_tile(k + (b * T * H + h) * K, t, ok, H * K, T, K)
            ww = _load_rows(w + ibh * N * BT * K, t, ok, K, K)
            dd = load_tile(do + (b * T * H + h) * V, t, ov, H * V, T, V)
            P = tl.load(aqk + (ibh * N + n) * BT * BT + ot[:, None] * BT + js[None, :])  # [t, s]
            if USE_G:
                bt = tl.load(gc + ibh * N * BT + t).to(tl.float32)
                kk = kk * tl.exp(bl - bt)[:, None]
                qq = qq * tl.exp(bt)[:, None]
            d1 = tl.dot(tl.trans(P), dall, input_precision=DOT_PREC) * scale + tl.dot(
                kk, acc, input_precision=DOT_PREC)                              # du [BS, BV]
            _store_rows(du + ibh * N * BT * V, d1, t, ov, V, V)
            upd += tl.dot(tl.trans(qq), dd, input_precision=DOT_PREC) * scale
            upd -= tl.dot(tl.trans(ww), d1, input_precision=DOT_PREC)
        if USE_G:
            acc = acc * tl.exp(bl)
        acc += upd
    if USE_DH0:
        store_tile(dh0 + ibh * K * V, acc, ok, ov, V, K, V)


@triton.jit(do_not_specialize=["T", "H", "N", "BHT"])
def _bwd_dv(tm, du, v, bc, dr, dv, dbv, T, H, K, V, N, BHT,
            BT: tl.constexpr, BV: tl.constexpr, DOT_PREC: tl.constexpr):
    iv, n, ibh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ibh, n = tl.cast(ibh, tl.int64), tl.cast(n, tl.int64)
    b, h = ibh // H, ibh % H
    ov = iv * BV + tl.arange(0, BV)
    ot = tl.arange(0, BT)
    t = n * BT + ot
    Tm = tl.load(tm + (ibh * N + n) * BT * BT + ot[:, None] * BT + ot[None, :])
    d1 = _load_rows(du + ibh * N * BT * V, t, ov, V, V)
    dR = tl.dot(tl.trans(Tm), d1, input_precision=DOT_PREC)                 # Tm^T du
    _store_rows(dr + ibh * N * BT * V, dR, t, ov, V, V)
    vv = load_tile(v + (b * T * H + h) * V, t, ov, H * V, T, V)
    bet = tl.load(bc + ibh * N * BT + t).to(tl.float32)
    store_tile(dv + (b * T * H + h) * V, dR * bet[:, None], t, ov, H * V, T, V)
    tl.store(dbv + tl.cast(iv, tl.int64) * BHT + ibh * N * BT + t, tl.sum(dR * vv, 1))


@triton.jit(do_not_specialize=["T", "H", "N", "BHT"])
def _bwd_dqk(q, k, do, un, dr, gc, bc, hbuf, dhbuf, dq, dk, dbk, dbp, scale, T, H, K, V, N,
             BHT, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
             DOT_PREC: tl.constexpr, USE_G: tl.constexpr):
    ik, n, ibh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ibh, n = tl.cast(ibh, tl.int64), tl.cast(n, tl.int64)
    b, h = ibh // H, ibh % H
    ok = ik * BK + tl.arange(0, BK)
    ot = tl.arange(0, BT)
    t = n * BT + ot
    dPu = tl.zeros([BT, BT], dtype=tl.float32)        # dO u^T
    dAu = tl.zeros([BT, BT], dtype=tl.float32)        # dR u^T
    dq1 = tl.zeros([BT, BK], dtype=tl.float32)        # dO S_n^T
    dks = tl.zeros([BT, BK], dtype=tl.float32)        # u dS_{n+1}^T
    dkr = tl.zeros([BT, BK], dtype=tl.float32)        # dR S_n^T
    for ivb in range(tl.cdiv(V, BV)):
        ov = tl.cast(ivb, tl.int64) * BV + tl.arange(0, BV)
        dd = load_tile(do + (b * T * H + h) * V, t, ov, H * V, T, V)
        u1 = _load_rows(un + ibh * N * BT * V, t, ov, V, V)
        rr = _load_rows(dr + ibh * N * BT * V, t, ov, V, V)
        hh = load_tile(hbuf + (ibh * N + n) * K * V, ok, ov, V, K, V)
        dh = load_tile(dhbuf + (ibh * N + n) * K * V, ok, ov, V, K, V)
        dPu += tl.dot(dd, tl.trans(u1), input_precision=DOT_PREC)
        dAu += tl.dot(rr, tl.trans(u1), input_precision=DOT_PREC)
        dq1 += tl.dot(dd, tl.trans(hh), input_precision=DOT_PREC)
        dks += tl.dot(u1, tl.trans(dh), input_precision=DOT_PREC)
        dkr += tl.dot(rr, tl.trans(hh), input_precision=DOT_PREC)
    causal = ot[:, None] >= ot[None, :]
    strict = ot[:, None] > ot[None, :]
    bet = tl.load(bc + ibh * N * BT + t).to(tl.float32)
    if USE_G:
        bt = tl.load(gc + ibh * N * BT + t).to(tl.float32)
        bl = tl.load(gc + ibh * N * BT + n * BT + BT - 1).to(tl.float32)
        dq1 = dq1 * tl.exp(bt)[:, None]
        dks = dks * tl.exp(bl - bt)[:, None]
        dkr = dkr * tl.exp(bt)[:, None]
        diff = bt[:, None] - bt[None, :]
        dPu = dPu * tl.exp(tl.where(causal, diff, 0.0))
        dAu = dAu * tl.exp(tl.where(strict, diff, 0.0))
    M = tl.where(causal, dPu, 0.0) * scale                    # d(o)/d(scores) o D
    G = tl.where(strict, -dAu, 0.0)                            # dA o exp(b_s - b_r)
    qq = load_tile(q + (b * T * H + h) * K, t, ok, H * K, T, K)
    kk = load_tile(k + (b * T * H + h) * K, t, ok, H * K, T, K)
    dqq = dq1 * scale + tl.dot(M, kk, input_precision=DOT_PREC)
    mtq = tl.dot(tl.trans(M), qq, input_precision=DOT_PREC)
    gk = tl.dot(G, kk, input_precision=DOT_PREC)
    gbk = gk * bet[:, None]
    gbtk = tl.dot(tl.trans(G * bet[:, None]), kk, input_precision=DOT_PREC)
    dkR = dkr * bet[:, None]                                   # -(dk through R)
    dkk = mtq + dks - dkR + gbk + gbtk
    store_tile(dq + (b * T * H + h) * K, dqq, t, ok, H * K, T, K)
    store_tile(dk + (b * T * H + h) * K, dkk, t, ok, H * K, T, K)
    tl.store(dbk + tl.cast(ik, tl.int64) * BHT + ibh * N * BT + t, tl.sum(kk * (gk - dkr), 1))
    if USE_G:
        db = tl.sum(qq * dqq, 1) - tl.sum(kk * (mtq + dks + dkR - gbk + gbtk), 1)
        tl.store(dbp + tl.cast(ik, tl.int64) * BHT + ibh * N * BT + t, db)


@triton.jit
def _decode(q, k, v, beta, g, s_in, s_out, o, scale, K, V,
            BK: tl.constexpr, BV: tl.constexpr, USE_G: tl.constexpr, USE_S0: tl.constexpr):
    """One token: S' = exp(g) S; u = beta (v - k^T S'); S' += k u^T; o = scale q^T S'
    (no length args: K, V are head dims)."""
    iv, ibh = tl.program_id(0), tl.program_id(1)
    ibh = tl.cast(ibh, tl.int64)
    ok = tl.arange(0, BK)                                                  # the whole K
    ov = iv * BV + tl.arange(0, BV)
    mk, mv = ok < K, ov < V
    qq = tl.load(q + ibh * K + ok, mask=mk, other=0.0).to(tl.float32)
    kk = tl.load(k + ibh * K + ok, mask=mk, other=0.0).to(tl.float32)
    vv = tl.load(v + ibh * V + ov, mask=mv, other=0.0).to(tl.float32)
    bet = tl.load(beta + ibh).to(tl.float32)
    if USE_S0:
        s = load_tile(s_in + ibh * K * V, ok, ov, V, K, V)
        if USE_G:
            s = s * tl.exp(tl.load(g + ibh).to(tl.float32))
        u1 = bet * (vv - tl.sum(kk[:, None] * s, 0))
        s = s + kk[:, None] * u1[None, :]
    else:
        s = kk[:, None] * (bet * vv)[None, :]
    store_tile(s_out + ibh * K * V, s, ok, ov, V, K, V)
    out = tl.sum(qq[:, None] * s, 0) * scale
    tl.store(o + ibh * V + ov, out.to(o.dtype.element_ty), mask=mv)


class _ChunkDeltaRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, g, S0, scale):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, T, H, K = q.shape
        V = v.shape[-1]
        N = max(1, triton.cdiv(T, BT))
        cfg = config(K, V)
        BKF, BVS, BK, BV, nw = cfg["BKF"], cfg["BVS"], cfg["BK"], cfg["BV"], cfg["num_warps"]
        bc = chunked(beta, N, BT)
        gc = chunk_cumsum(g, N, BT) if g is not None else bc
        h0 = S0.float().contiguous() if S0 is not None else bc
        f32 = dict(device=q.device, dtype=torch.float32)
        tm = torch.empty(B, H, N, BT, BT, **f32)
        w = torch.empty(B, H, N * BT, K, **f32)
        uu = torch.empty(B, H, N * BT, V, **f32)
        un = torch.empty(B, H, N * BT, V, **f32)
        hbuf = torch.empty(B, H, N, K, V, **f32)
        ht = torch.empty(B, H, K, V, **f32)
        o = q.new_empty(B, T, H, V, dtype=v.dtype)
        meta = dict(BT=BT, DOT_PREC=dot_precision(q), USE_G=g is not None, num_warps=nw)
        _fwd_wu[(N, B * H)](k, v, bc, gc, tm, w, uu, T, H, K, V, N, BK=BK, BV=BV, **meta)
        _fwd_h[(triton.cdiv(V, BVS), B * H)](k, w, uu, un, gc, h0, hbuf, ht, T, H, K, V, N,
                                            BS=BS, BK=BKF, BV=BVS, USE_H0=S0 is not None,
                                            **meta)
        grad = any(ctx.needs_input_grad)
        aqk = torch.empty(B, H, N, BT, BT, **f32) if grad else bc
        _fwd_o[(triton.cdiv(V, BV), N, B * H)](q, k, un, gc, hbuf, o, aqk, scale, T, H, K, V, N,
                                               BK=BK, BV=BV, STORE_A=grad, **meta)
        ctx.save_for_backward(q, k, v, bc, gc, tm, w, un, hbuf, ht, aqk)
        ctx.meta, ctx.cfg, ctx.scale = meta, cfg, scale
        ctx.has_g, ctx.has_s0 = g is not None, S0 is not None
        ctx.dtypes = (beta.dtype, g.dtype if g is not None else None,
                      S0.dtype if S0 is not None else None)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, bc, gc, tm, w, un, hbuf, ht, aqk = ctx.saved_tensors
        B, T, H, K = q.shape
        V = v.shape[-1]
        N = hbuf.shape[2]
        meta, scale, cfg = ctx.meta, ctx.scale, ctx.cfg
        BKF, BVD, BV = cfg["BKF"], cfg["BVD"], cfg["BV"]
        do = do.contiguous() if do is not None else torch.zeros_like(v)
        dhbuf = torch.empty_like(hbuf)
        dh0 = torch.empty_like(ht) if ctx.has_s0 else bc
        dht = dht.float().contiguous() if dht is not None else None
        du = torch.empty_like(un)
        _bwd_dh[(triton.cdiv(V, BVD), B * H)](
            q, k, w, do, aqk, gc, dht if dht is not None else bc, dhbuf, du, dh0, scale, T, H, K, V,
            N, BS=BS, BK=BKF, BV=BVD, USE_DHT=dht is not None, USE_DH0=ctx.has_s0, **meta)
        NV, NK, BHT = triton.cdiv(V, BV), triton.cdiv(K, cfg["BKD"]), B * H * N * BT
        dr = torch.empty_like(un)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dbv = bc.new_empty(NV, B, H, N * BT)
        _bwd_dv[(NV, N, B * H)](tm, du, v, bc, dr, dv, dbv, T, H, K, V, N, BHT, BT=BT, BV=BV,
                                DOT_PREC=meta["DOT_PREC"], num_warps=meta["num_warps"])
        dbk = bc.new_empty(NK, B, H, N * BT)
        dbp = bc.new_empty(NK, B, H, N * BT) if ctx.has_g else bc
        _bwd_dqk[(NK, N, B * H)](q, k, do, un, dr, gc, bc, hbuf, dhbuf, dq, dk, dbk, dbp, scale,
                                 T, H, K, V, N, BHT, BK=cfg["BKD"], BV=BV, **meta)
        beta_dt, g_dt, s0_dt = ctx.dtypes
        dbeta = (dbv.sum(0) + dbk.sum(0))[:, :, :T].transpose(1, 2).to(beta_dt)
        dg = None
        if ctx.has_g:
            db = dbp.sum(0).view(B, H, N, BT)
            h_next = torch.cat([hbuf[:, :, 1:], ht[:, :, None]], 2)          # S_{n+1}
            db[..., -1] += (dhbuf * h_next).sum((-1, -2))
            dg = db.flip(-1).cumsum(-1).flip(-1).view(B, H, N * BT)[:, :, :T]
            dg = dg.transpose(1, 2).to(g_dt)                                 # [B, T, H]
        dS0 = dh0.to(s0_dt) if ctx.has_s0 else None
        return dq, dk, dv, dbeta, dg, dS0, None


def _decode_step(q, k, v, beta, g, scale, S0):
    global DECODE_CALLS
    DECODE_CALLS += 1
    B, _, H, K = q.shape
    V = v.shape[-1]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    bb = beta.float().contiguous()
    S = q.new_empty(B, H, K, V, dtype=torch.float32)
    o = q.new_empty(B, 1, H, V, dtype=v.dtype)
    s_in = S0.float().contiguous() if S0 is not None else S
    gg = g.float().contiguous() if g is not None else bb
    c = config(K, V)["decode"]
    _decode[(triton.cdiv(V, c["BV"]), B * H)](q, k, v, bb, gg, s_in, S, o, scale, K, V,
                                              USE_G=g is not None, USE_S0=S0 is not None, **c)
    return o, S


def _pad16(x: torch.Tensor, dims: int = 1) -> torch.Tensor:
    """x zero-padded in its last ``dims`` dims to multiples of 16 (x itself if they are)."""
    pad = [p for d in range(1, dims + 1) for p in (0, -x.shape[-d] % 16)]
    return F.pad(x, pad) if any(pad) else x


def delta_rule_triton(q, k, v, beta, g, scale, S0):
    """Same contract as the naive/torch paths: returns o (v's dtype) and S [B, H, K, V] fp32."""
    T = q.shape[1]
    needs_grad = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, beta, g, S0))
    if T == 1 and not needs_grad:
        return _decode_step(q, k, v, beta, g, scale, S0)
    K, V = q.shape[-1], v.shape[-1]
    # The chunked kernels get K, V zero-padded to multiples of 16: the padding is what their
    # masked loads read (the same results), and the JIT builds then have K, V divisible by 16,
    # the builds aot_configs() checks.
    o, S = _ChunkDeltaRule.apply(_pad16(q), _pad16(k), _pad16(v), beta, g,
                                 _pad16(S0, 2) if S0 is not None else None, scale)
    return (o[..., :V].contiguous() if V % 16 else o), S[:, :, :K, :V]


def aot_configs(full: bool = False):
    """Every (kernel, arg types, constexprs, num_warps) the dispatcher can launch, for the
    ahead-of-time compile test. ``full=False``: the largest tiles only (the spill risk), with g;
    ``full=True``: K, V in {16, 32, 64, 128} (every tile), with and without g, and every flag
    (inference: no P stored, no initial state; no state gradients)."""
    dims = [16, 32, 64, 128] if full else [128]
    for dt, kd, vd, use_g in ((dt, kd, vd, use_g) for dt in ("fp16", "bf16", "fp32")
                              for kd in dims for vd in dims for use_g in (True, False)
                              if full or use_g):
        cfg = config(kd, vd)
        prec = "ieee" if dt == "fp32" else "tf32"
        x = f"*{dt}"
        f = "*fp32"
        types = dict(q=x, k=x, v=x, do=x, dq=x, dk=x, dv=x, o=x, beta=f, g=f, bc=f, gc=f, tm=f,
                     aqk=f, w=f, uu=f, un=f, du=f, dr=f, h0=f, hbuf=f, ht=f, dht=f, dhbuf=f,
                     dh0=f, dbv=f, dbk=f, dbp=f, s_in=f, s_out=f, scale="fp32", T="i32",
                     H="i32", K="i32", V="i32", N="i32", BHT="i32")
        flags = dict(USE_G=use_g, USE_H0=True, USE_DHT=True, USE_DH0=True, STORE_A=True,
                     DOT_PREC=prec, BT=BT)
        nw = cfg["num_warps"]
        tag = f"{dt} K{kd} V{vd} g={int(use_g)}"
        state = dict(flags, BS=BS, BK=cfg["BKF"], BV=cfg["BVS"])
        state_dh = dict(state, BV=cfg["BVD"])
        chunk = dict(flags, BK=cfg["BK"], BV=cfg["BV"])
        yield f"dr._fwd_wu {tag}", _fwd_wu, types, chunk, nw
        yield f"dr._fwd_h {tag}", _fwd_h, types, state, nw
        yield f"dr._fwd_o {tag}", _fwd_o, types, chunk, nw
        yield f"dr._bwd_dh {tag}", _bwd_dh, types, state_dh, nw
        yield f"dr._bwd_dv {tag}", _bwd_dv, types, chunk, nw
        yield f"dr._bwd_dqk {tag}", _bwd_dqk, types, dict(chunk, BK=cfg["BKD"]), nw
        dc = cfg["decode"]
        dec = dict(BK=dc["BK"], BV=dc["BV"], USE_G=use_g, USE_S0=True)
        yield f"dr._decode {tag}", _decode, types, dec, dc["num_warps"]
        if full:    # inference: no P for the backward; no initial state / state gradient
            yield f"dr._fwd_o {tag} no-grad", _fwd_o, types, dict(chunk, STORE_A=False), nw
            yield (f"dr._decode {tag} S0=0", _decode, types, dict(dec, USE_S0=False),
                   dc["num_warps"])
            yield f"dr._fwd_h {tag} h0=0", _fwd_h, types, dict(state, USE_H0=False), nw
            for dht, dh0 in ((True, False), (False, True), (False, False)):
                yield (f"dr._bwd_dh {tag}" + ("" if dht else " dht=0") + ("" if dh0 else " dh0=0"),
                       _bwd_dh, types, dict(state_dh, USE_DHT=dht, USE_DH0=dh0), nw)
