"""Whole models: ubique vs onnxruntime side by side in one process, alternating.

    python bench/bench_models.py [--threads 1,2] [--models resnet18,bert] [--quick] [--json PATH]

Models come from tests/torch_models.py (torch, exported at opset 17 with a symbolic
batch): ResNet-18 and MobileNetV2 at 224x224, a 2-layer BERT-style encoder (hidden 256,
seq 128), an MLP 784-512-512-10 at batch 1 and 64, LeNet. Prints median latencies, the
ratio ubique_time / onnxruntime_time (< 1: ubique is faster), GFLOP/s of both and their
% of the machine's measured FMA peak (bench/peak.py; per-core peak x threads), compile
time, and the geometric mean of the ratios per thread count. FLOPs are the multiply-adds
of conv2d / conv_transpose2d / matmul nodes x 2, counted on the imported graph for the
actual input shapes (bench/flops.py). Timings drift on shared machines: read the ratios.
Needs `pip install -e '.[bench,test]'` (onnx, onnxruntime, torch).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from common import compare, fmt, geomean, load_note, table, write_json  # noqa: E402
from flops import count_flops  # noqa: E402
from peak import describe as peak_describe, measure_peak_gflops  # noqa: E402

import ubique as ub  # noqa: E402


def models(quick: bool):
    import torch

    from torch_models import BertEncoder, LeNet, MLP, MobileNetV2, ResNet18, export, randomize_batchnorm

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    batch = {"input": {0: "batch"}, "logits": {0: "batch"}}
    image = torch.randn(1, 3, 224, 224)
    yield "resnet18 b1", lambda: export(randomize_batchnorm(ResNet18()), (image,), ["input"], ["logits"], batch), \
        {"input": rng.standard_normal((1, 3, 224, 224), np.float32)}
    yield "mobilenet_v2 b1", lambda: export(randomize_batchnorm(MobileNetV2()), (image,), ["input"], ["logits"],
                                            batch), {"input": rng.standard_normal((1, 3, 224, 224), np.float32)}
    ids = torch.randint(0, 1000, (1, 128))
    yield "bert-2L-256 b1 s128", lambda: export(BertEncoder(), (ids, torch.ones(1, 128, dtype=torch.int64)),
                                                ["ids", "mask"], ["hidden", "pooled"],
                                                {"ids": {0: "batch"}, "mask": {0: "batch"}}), \
        {"ids": rng.integers(0, 1000, (1, 128)), "mask": np.ones((1, 128), np.int64)}
    mlp = {"x": {0: "batch"}, "y": {0: "batch"}}
    for b in (1, 64):
        yield f"mlp b{b}", lambda: export(MLP(), (torch.randn(1, 784),), ["x"], ["y"], mlp), \
            {"x": rng.standard_normal((b, 784), np.float32)}
    yield "lenet b1", lambda: export(LeNet(), (torch.randn(1, 1, 28, 28),), ["x"], ["y"], mlp), \
        {"x": rng.standard_normal((1, 1, 28, 28), np.float32)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--models", default="", help="comma-separated name prefixes")
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()
    import onnxruntime as ort

    thread_counts = [int(t) for t in args.threads.split(",") if t]
    rounds = 3 if args.quick else 7
    load_before = load_note()
    peak1 = measure_peak_gflops(1)  # first, while nothing of ours is spinning
    wanted = [m for m in args.models.split(",") if m]
    rows, results = [], []
    for name, make, feeds in models(args.quick):
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        data = make()
        t0 = time.perf_counter()
        graph = ub.import_onnx(data)
        flops, flops_per_op, uncounted = count_flops(graph, feeds)
        model = ub.compile(graph)
        compile_s = time.perf_counter() - t0
        for threads in thread_counts:
            ub.set_num_threads(threads)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
            ref, got = session.run(None, feeds), model.run(feeds)
            err = max(float(np.max(np.abs(r - g)) / max(np.max(np.abs(r)), 1e-30)) for r, g in zip(ref, got))
            t = compare({"ubique": lambda: model.run(feeds), "onnxruntime": lambda: session.run(None, feeds)},
                        rounds=rounds)
            ratio = t["ubique"] / t["onnxruntime"]
            peak = peak1 * threads
            gu, go = flops / t["ubique"] / 1e9, flops / t["onnxruntime"] / 1e9
            results.append(dict(model=name, threads=threads, ubique_ms=t["ubique"] * 1e3,
                                onnxruntime_ms=t["onnxruntime"] * 1e3, ratio=ratio, flops=flops,
                                flops_per_op=flops_per_op, uncounted_ops=dict(uncounted),
                                ubique_gflops=gu, onnxruntime_gflops=go, peak_gflops=peak,
                                ubique_pct_peak=100 * gu / peak, onnxruntime_pct_peak=100 * go / peak,
                                compile_s=compile_s, max_rel_err=err))
            rows.append([name, f"{flops / 1e9:.4g}", threads, f"{t['ubique'] * 1e3:.2f}",
                         f"{t['onnxruntime'] * 1e3:.2f}", f"{ratio:.2f}", f"{gu:.1f}", f"{go:.1f}",
                         f"{100 * gu / peak:.0f}%", f"{100 * go / peak:.0f}%", f"{compile_s:.1f}", f"{err:.1e}"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; ubique {ub.__version__}, "
          f"onnxruntime {ort.__version__}; {load_before} at start, {load_note()} at end")
    print(f"measured float32 peak ({peak_describe()}): {peak1:.1f} GFLOP/s per core; % of peak is against "
          f"per-core peak x threads; median of {rounds} alternating rounds")
    print(table(rows, ["model", "GFLOP", "threads", "ubique ms", "onnxruntime ms", "ubique/ort",
                       "ubique GFLOP/s", "ort GFLOP/s", "ubique % peak", "ort % peak", "compile s", "max rel err"]))
    geo = {}
    for threads in thread_counts:
        rs = [r["ratio"] for r in results if r["threads"] == threads]
        if rs:
            geo[str(threads)] = geomean(rs)
            print(f"geometric mean ubique/ort at {threads} thread(s): {fmt(geo[str(threads)], '.2f')}")
    for r in results:
        if r["uncounted_ops"] and r["threads"] == thread_counts[0]:
            print(f"note: {r['model']}: FLOPs of {r['uncounted_ops']} are not counted")
    if args.json:
        write_json(args.json, dict(
            benchmark="models vs onnxruntime", machine=platform.machine(), cpus=os.cpu_count(),
            ubique_version=ub.__version__, onnxruntime_version=ort.__version__, rounds=rounds,
            peak_gflops_per_core=peak1, peak_kernel=peak_describe(), load_at_start=load_before,
            load_at_end=load_note(), results=results, geomean_ratio_ubique_over_ort=geo))
    return 0

if __name__ == "__main__":
    sys.exit(main())
