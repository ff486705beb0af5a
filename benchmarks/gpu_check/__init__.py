"""GPU check: memarch's Triton kernels on a CUDA device, against the naive fp32 reference and
against their peers.

    python3 -m pip install --no-deps --no-build-isolation -e . && make gpu-check
    python3 -m benchmarks.gpu_check [--quick | --full] [--out DIR] [--jobs N] [--wheels DIR]
    python3 -m benchmarks.gpu_check --dry-run --out /tmp/gpu_check    # CPU: every step, tiny

Modules: ``env`` (grids, log, preflight, meta), ``peers``, ``correctness``, ``impls`` (what
the benchmark times), ``speed`` (how), ``tasks`` (worker processes), ``report``, ``__main__``
(the command line). Steps:

1. ``env.preflight``: unsets TRITON_INTERPRET (``--dry-run``: sets it to 1) before anything
   imports triton, stops at once with what to do when torch has no CUDA device, then imports
   triton and memarch.kernels. Only torch, triton, memarch.kernels and the peers are imported.
2. ``peers.prepare_peers``: flash-linear-attention (``fla-core``), flash-attn and FlexAttention
   (part of torch). A missing peer is installed with pip (from PyPI, or from ``--wheels DIR``
   offline); when that fails the peer is skipped with the reason, never the whole check.
3. ``tasks.run_correctness`` / ``correctness.check_case``: for each op x dtype (fp32, fp16,
   bf16) x head dim, ``impl="triton"`` and ``impl="torch"`` on inputs in that dtype against
   ``impl="naive"`` on the same inputs up-cast to fp32 (TF32 off): outputs, final states and
   the gradients of every input (fixed random cotangents), prefill (T > 1), T = 1 with
   gradients, and decode (T = 1 without gradients: the fused decode kernels, whose launch is
   checked; sliding window: one query over a window of cached keys). Relative error =
   max |x - ref| / max(max |ref|, 1). Tolerances: fp32 <= 4e-4 (outputs) / 2e-3 (gradients); fp16
   and bf16 <= 2 x the torch path's error (same inputs, fp32 arithmetic) + a floor of 2e-3 /
   4e-3 (fp16) or 1e-2 / 2e-2 (bf16). Tasks run in ``--jobs`` parallel processes (Triton
   compiles dominate), together with warm-up tasks that compile the benchmark's kernels.
4. ``speed.run_benchmarks``: forward and forward+backward time (CUDA events, median of reps
   after warm-up) and peak extra memory of fwd+bwd, one op at a time, for triton, the torch
   path and the peers: fla's chunk_simple_gla (linear_attn with decay) and
   chunk_gated_delta_rule, FlexAttention with a sliding-window + sinks block mask (the same
   function as ours), flash-attn's ``flash_attn_func(..., window_size=(W-1, 0))`` (no sinks)
   and SDPA full causal attention (a reference for the cost of dense attention). Peers of
   the same function report their forward's relative difference from triton. fla refuses its
   gated backward on Hopper with Triton < 3.7.1 (its gradients come out wrong there, fla
   #640): that fwd+bwd is skipped with the reason (``--fla-bypass-hopper-check`` times it
   anyway, timing only).
5. ``report.write_report`` / ``report.print_tables``: ``<out>/gpu_check-<device>.json``
   (top-level ``meta``: device, torch, triton, cuda, date, command) and ``.log``; a
   correctness table and a benchmark table on stdout.

Grids: ``--quick`` (default; about 4 minutes on an H100/H200, mostly Triton compiles): D in
{64, 128}, T in {1, 65, 1000}; benchmark bf16, B=4, H=8, D in {64, 128}, T=16384, sliding
window W=512 with 4 sinks. ``--full``: D in {32, 64, 128, 256} (delta_rule <= 128), T in
{1, 63, 64, 65, 1000} plus variants without decay / initial state / sinks; benchmark T in
{4096, 16384, 65536}. ``--time-limit S`` stops correctness tasks 0.3 S (at least 30 s) before
the end and starts no benchmark case in the last 10 s, reporting what did not run.

``--dry-run``: D=16, T in {1, 40}, benchmark T=64 in fp32, on the CPU through the Triton
interpreter; in-process unless ``--jobs`` > 1; fla and flash-attn are skipped (CUDA only),
FlexAttention runs its eager forward (its backward is skipped, with the reason).

Exit status: 0 all correct; 1 a correctness case failed or did not run, or one of our kernels
failed in the benchmark (a peer's failure is reported, never fatal); 2 could not start (no
CUDA, no torch/triton, memarch not installed).
"""

from __future__ import annotations

from .report import render  # noqa: F401  (update_readme: the gpu_check_* blocks)
