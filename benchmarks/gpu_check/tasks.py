"""The task runner of the GPU check: correctness and warm-up tasks, in this process or in
``--jobs`` worker processes (``python benchmarks/gpu_check --worker TASK``)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .correctness import run_corr_task
from .env import DTYPES, log
from .impls import bench_ops, max_triton_dim
from .speed import run_warm_task


# ----------------------------------------------------------------------------- task runner
def corr_tasks(grid: dict, ops, dtypes) -> list[dict]:
    """(op, dtype, D) tasks, slowest first (sliding window, fp32, wide heads compile longest)."""
    tasks = [dict(kind="corr", op=op, dtype=dt, D=D) for op in ops for dt in dtypes
             for D in grid["Ds"] if D <= max_triton_dim(op)]
    cost = {"sliding_window_attn": 0, "linear_attn": 1, "delta_rule": 2}
    return sorted(tasks, key=lambda t: (cost[t["op"]], DTYPES.index(t["dtype"]), -t["D"]))


def warm_tasks(grid: dict, ops) -> list[dict]:
    return [dict(kind="warm", op=op, D=D) for D in grid["bench"]["Ds"] for op in ops
            if op in bench_ops(D)]


def run_task(task: dict, grid: dict, peers: dict, args) -> dict:
    if task["kind"] == "corr":
        return run_corr_task(task["op"], task["dtype"], task["D"], grid)
    return run_warm_task(task["op"], task["D"], grid["bench"], peers, args)


def task_name(task: dict) -> str:
    return " ".join(str(task[k]) for k in ("kind", "op", "dtype", "D") if k in task)


def run_tasks(tasks: list[dict], grid: dict, peers: dict, args,
              deadline: float | None) -> list[tuple[dict, dict]]:
    """Run tasks in this process (jobs <= 1) or in `jobs` worker processes of this script
    (Triton compiles one kernel at a time per process: parallel processes compile in
    parallel). A task that would start or run past `deadline` is not run / stopped there."""
    def time_left():
        return args.task_timeout if deadline is None else min(args.task_timeout,
                                                              deadline - time.time())

    def in_process(task):
        if time_left() <= 5:
            return dict(error="not run: --time-limit reached", timeout=True)
        try:
            return run_task(task, grid, peers, args)
        except Exception as e:   # noqa: BLE001
            return dict(error=f"{type(e).__name__}: {e}", log_tail=traceback.format_exc())

    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", TORCHINDUCTOR_COMPILE_THREADS="1")

    def in_worker(task, i):
        out, errlog = tmp / f"task{i}.json", tmp / f"task{i}.log"
        limit = time_left()
        if limit <= 5:
            return dict(error="not run: --time-limit reached", timeout=True)
        cmd = [sys.executable, str(Path(__file__).resolve().parent), *args.worker_flags,
               "--worker", json.dumps(task), "--worker-out", str(out)]
        with open(errlog, "w") as f:
            try:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                    timeout=limit).returncode
            except subprocess.TimeoutExpired:
                return dict(error=f"stopped after {limit:.0f} s (time limit)", timeout=True,
                            log_tail=errlog.read_text()[-1500:])
        if rc == 0 and out.exists():
            return json.loads(out.read_text())
        return dict(error=f"worker exit status {rc}", log_tail=errlog.read_text()[-3000:])

    def run_one(i, task):
        t0 = time.time()
        res = in_worker(task, i) if args.jobs > 1 else in_process(task)
        log(f"  task {task_name(task)}: {time.time() - t0:.1f} s"
            + (f" ({res['error']})" if "error" in res else ""))
        return task, res

    if args.jobs <= 1:
        return [run_one(i, t) for i, t in enumerate(tasks)]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        return list(pool.map(run_one, range(len(tasks)), tasks))


def run_correctness(grid: dict, peers: dict, args, report: dict) -> None:
    """Correctness tasks (and the benchmark's warm-up compiles) into report['correctness']."""
    tasks = corr_tasks(grid, args.ops, args.dtypes)
    if not args.no_bench and args.jobs > 1:     # compile the benchmark's kernels meanwhile
        tasks = warm_tasks(grid, args.ops) + tasks          # the longest (fla's compiles) first
    deadline = None
    if args.time_limit:
        reserve = 5 if args.no_bench else max(30, 0.3 * args.time_limit)   # for the benchmark
        deadline = args.t_start + args.time_limit - reserve
    n_corr = sum(t["kind"] == "corr" for t in tasks)
    log(f"correctness: {n_corr} tasks (op x dtype x D)"
        + (" and benchmark warm-up compiles" if len(tasks) > n_corr else "")
        + f", {args.jobs} at a time")
    cases, kernels, warm, not_run = [], {}, [], []
    for task, res in run_tasks(tasks, grid, peers, args, deadline):
        if "error" in res:
            if res.get("log_tail"):
                log(f"  task {task_name(task)} failed: {res['error']}; its log ends:\n"
                    + res["log_tail"][-1500:])
            if task["kind"] == "corr":
                (not_run if res.get("timeout") else cases).append(dict(
                    op=task["op"], dtype=task["dtype"], D=task["D"], T=None,
                    variant="(whole task)", ok=False, failures=[res["error"]],
                    log_tail=res.get("log_tail", "")[-2000:]))
            continue
        cases += res.get("cases", [])
        warm += [dict(op=task["op"], D=task["D"], **w) for w in res.get("warm", [])]
        for k in res.get("kernels", []):
            kernels[json.dumps(k, sort_keys=True)] = k
    report["correctness"] = dict(
        summary=dict(cases=len(cases), passed=sum(c["ok"] for c in cases),
                     failed=[f"{c['op']} {c['dtype']} D={c['D']} T={c['T']} {c['variant']}: "
                             + "; ".join(c["failures"]) for c in cases if not c["ok"]],
                     not_run=[f"{t['op']} {t['dtype']} D={t['D']}: {t['failures'][0]}"
                              for t in not_run]),
        cases=cases)
    report["kernels"] = dict(
        builds=len(kernels), spilling=sorted({k["kernel"] for k in kernels.values()
                                              if k.get("n_spills")}),
        rows=sorted(kernels.values(), key=lambda k: k["kernel"]))
    report["warmup"] = warm
