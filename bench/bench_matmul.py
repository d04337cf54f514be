"""float32 square matmul: ubique @jit vs numpy's BLAS, side by side in one process, alternating.

    python bench/bench_matmul.py [--sizes 256,512,1024,2048] [--threads 1,2] [--quick]
                                 [--json PATH] [--strict]

For each size n and thread count: median ms of `a @ b` (n x n, float32) for ubique
(`ub.jit(lambda a, b: a @ b)`, pool set with `ub.set_num_threads`) and numpy (BLAS limited
to the same thread count with threadpoolctl), GFLOP/s (2 n^3 FLOPs), % of the machine's
measured FMA peak (bench/peak.py: per-core peak x threads), and ubique GFLOP/s / numpy
GFLOP/s against issue 5's target of >= 0.9x numpy at every size and thread count (PASS/FAIL).
`--strict` exits with status 1 when any row fails. Timings drift on shared machines: the
candidates alternate round by round so that noise hits both alike; read the ratios.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import blas_info, blas_limit, compare, fmt, geomean, load_note, table, write_json  # noqa: E402
from peak import describe as peak_describe, measure_peak_gflops  # noqa: E402

import ubique as ub  # noqa: E402

TARGET = 0.9  # issue 5: ubique >= 0.9x numpy's GFLOP/s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,512,1024,2048", help="comma-separated n (n x n @ n x n)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    ap.add_argument("--rounds", type=int, default=0, help="alternating rounds (default 7, 3 with --quick)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 unless every row meets the target")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    thread_counts = [int(t) for t in args.threads.split(",") if t]
    rounds = args.rounds or (3 if args.quick else 7)

    load_before = load_note()
    # the peak first, while nothing of ours is spinning
    peak1 = measure_peak_gflops(1)
    peak_measured = {t: measure_peak_gflops(t) for t in thread_counts}

    rng = np.random.default_rng(0)
    cases = []
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        fn = ub.jit(lambda p, q: p @ q)
        t0 = time.perf_counter()
        got = fn(a, b)
        compile_s = time.perf_counter() - t0
        want = a.astype(np.float64) @ b.astype(np.float64)
        err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
        if err > 1e-4:
            raise SystemExit(f"matmul {n}: ubique's result is wrong (max rel err {err:.1e})")
        cases.append((n, a, b, fn, compile_s, err))

    rows, results, limited = [], [], True
    for threads in thread_counts:
        ub.set_num_threads(threads)
        limit = blas_limit(threads)
        limited = limited and limit is not None
        try:
            for n, a, b, fn, compile_s, err in cases:
                t = compare({"ubique": lambda: fn(a, b), "numpy": lambda: a @ b}, rounds=rounds)
                flops = 2 * n ** 3
                gu, gn = flops / t["ubique"] / 1e9, flops / t["numpy"] / 1e9
                peak = peak1 * threads
                ratio = gu / gn
                ok = ratio >= TARGET
                results.append(dict(n=n, threads=threads, ubique_ms=t["ubique"] * 1e3, numpy_ms=t["numpy"] * 1e3,
                                    ubique_gflops=gu, numpy_gflops=gn, peak_gflops=peak,
                                    ubique_pct_peak=100 * gu / peak, numpy_pct_peak=100 * gn / peak,
                                    ratio=ratio, passed=ok, compile_s=compile_s, max_rel_err=err))
                rows.append([f"{n}^3", threads, f"{t['ubique'] * 1e3:.3f}", f"{t['numpy'] * 1e3:.3f}",
                             f"{gu:.1f}", f"{gn:.1f}", f"{100 * gu / peak:.0f}%", f"{100 * gn / peak:.0f}%",
                             f"{ratio:.2f}", "PASS" if ok else "FAIL"])
        finally:
            if limit is not None:
                limit.restore_original_limits()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; ubique {ub.__version__} target "
          f"{ub.targets.host_target().describe()}; numpy {np.__version__} with {blas_info()}")
    print(f"{load_before} at start, {load_note()} at end")
    print(f"measured float32 peak ({peak_describe()}): {peak1:.1f} GFLOP/s per core; "
          + ", ".join(f"{t} thread(s) together {v:.1f}" for t, v in peak_measured.items())
          + "; % of peak below is against per-core peak x threads")
    print(f"median of {rounds} alternating rounds; ratio = ubique GFLOP/s / numpy GFLOP/s "
          f"(> 1: ubique faster); target >= {TARGET}")
    print(table(rows, ["size", "threads", "ubique ms", "numpy ms", "ubique GFLOP/s", "numpy GFLOP/s",
                       "ubique % peak", "numpy % peak", "ubique/numpy", f">= {TARGET}"]))
    for threads in thread_counts:
        rs = [r["ratio"] for r in results if r["threads"] == threads]
        print(f"geometric mean ubique/numpy at {threads} thread(s): {fmt(geomean(rs), '.2f')}")
    failed = [r for r in results if not r["passed"]]
    print(f"{len(results) - len(failed)}/{len(results)} rows meet the target"
          + ("" if not failed else ": FAIL at " + ", ".join(f"{r['n']}^3 x{r['threads']}" for r in failed)))
    if not limited:
        print("threadpoolctl is not installed: numpy's BLAS used all cores in every row (pip install ubique[bench])")
    if args.json:
        write_json(args.json, dict(
            benchmark="matmul f32 square", machine=platform.machine(), cpus=os.cpu_count(),
            ubique_version=ub.__version__, ubique_target=ub.targets.host_target().describe(),
            numpy_version=np.__version__, blas=blas_info(), blas_limited=limited, rounds=rounds, target=TARGET,
            load_at_start=load_before, load_at_end=load_note(),
            peak_gflops_per_core=peak1, peak_gflops_measured={str(t): v for t, v in peak_measured.items()},
            peak_kernel=peak_describe(), results=results,
            geomean_ratio={str(t): geomean(r["ratio"] for r in results if r["threads"] == t) for t in thread_counts}))
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
