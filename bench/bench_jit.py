"""ubique @jit vs numpy, side by side in one process: elementwise chains, reductions, matmul.

    python bench/bench_jit.py [--threads 1,2] [--quick]

Prints median latencies and the ratio numpy_time / ubique_time (> 1: ubique is faster),
plus GFLOP/s for matmul. numpy's BLAS runs with its own threads (all cores); ubique's
pool is set per row. Timings drift on shared machines: read the ratios.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import compare, table  # noqa: E402

import ubique as ub  # noqa: E402


def cases(quick: bool):
    rng = np.random.default_rng(0)
    n = 1 << (18 if quick else 22)
    x = rng.standard_normal(n).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    yield ("elementwise x*2+y (1 op chain)", f"{n} f32",
           ub.jit(lambda a, b: a * 2.0 + b), lambda a, b: a * 2.0 + b, (x, y), None)
    yield ("chain relu(x*y+1)*tanh(x)", f"{n} f32",
           ub.jit(lambda a, b: ub.relu(a * b + 1.0) * ub.tanh(a)),
           lambda a, b: np.maximum(a * b + 1.0, 0) * np.tanh(a), (x, y), None)
    yield ("gelu (erf form)", f"{n} f32", ub.jit(lambda a: ub.gelu(a)),
           lambda a: 0.5 * a * (1 + _erf(a / np.sqrt(2, dtype=np.float32))), (x,), None)
    m = rng.standard_normal((1024, 1024)).astype(np.float32)
    yield ("softmax rows", "1024x1024 f32", ub.jit(lambda a: ub.softmax(a)), _softmax, (m,), None)
    yield ("sum over last axis", "1024x1024 f32", ub.jit(lambda a: a.sum(axis=-1)), lambda a: a.sum(-1), (m,), None)
    for k in ((256, 512) if quick else (256, 512, 1024, 2048)):
        a = rng.standard_normal((k, k)).astype(np.float32)
        b = rng.standard_normal((k, k)).astype(np.float32)
        yield ("matmul", f"{k}^3 f32", ub.jit(lambda p, q: p @ q), lambda p, q: p @ q, (a, b), 2 * k ** 3)


def _erf(a):
    try:
        from scipy.special import erf
    except ImportError:
        import math
        erf = np.vectorize(math.erf, otypes=[np.float32])
    return erf(a)


def _softmax(a):
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = ap.parse_args()
    rows = []
    all_cases = list(cases(args.quick))
    for threads in [int(t) for t in args.threads.split(",")]:
        ub.set_num_threads(threads)
        blas_limited = _limit_blas(threads)
        for name, size, ufn, nfn, inputs, flops in all_cases:
            got, want = ufn(*inputs), nfn(*inputs)
            np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * float(np.abs(want).max()))
            t = compare({"ubique": lambda: ufn(*inputs), "numpy": lambda: nfn(*inputs)},
                        rounds=3 if args.quick else 7)
            gf = lambda s: f"{flops / s / 1e9:.1f}" if flops else "-"  # noqa: E731
            rows.append([name, size, threads, f"{t['ubique'] * 1e3:.3f}", f"{t['numpy'] * 1e3:.3f}",
                         f"{t['numpy'] / t['ubique']:.2f}", gf(t["ubique"]), gf(t["numpy"])])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, ubique target "
          f"{ub.targets.host_target().describe()}")
    print(table(rows, ["case", "size", "ubique threads", "ubique ms", "numpy ms", "speedup (numpy/ubique)",
                       "ubique GFLOP/s", "numpy GFLOP/s"]))
    print("numpy's BLAS threads were limited to ubique's count in each row" if blas_limited else
          "threadpoolctl is not installed: numpy's BLAS used all cores in every row (pip install ubique[bench])")


_BLAS_LIMIT = None


def _limit_blas(threads: int) -> bool:
    """Gives numpy's BLAS the same thread count as ubique's pool, so rows compare like with like."""
    global _BLAS_LIMIT
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    _BLAS_LIMIT = threadpool_limits(limits=threads, user_api="blas")
    return True


if __name__ == "__main__":
    main()
