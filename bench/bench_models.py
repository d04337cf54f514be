"""Whole models: ubique vs onnxruntime side by side in one process, alternating.

    python bench/bench_models.py [--threads 1,2] [--models resnet18,bert] [--quick]

Models come from tests/torch_models.py (torch, exported at opset 17 with a symbolic
batch): ResNet-18 and MobileNetV2 at 224x224, a 2-layer BERT-style encoder (hidden 256,
seq 128), an MLP 784-512-512-10 at batch 1 and 64, LeNet. Prints median latencies, the
ratio ubique_time / onnxruntime_time (< 1: ubique is faster), compile time, and the
geometric mean of the ratios per thread count. Timings drift on shared machines: read
the ratios. Needs `pip install -e '.[bench,test]'` (onnx, onnxruntime, torch).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from common import compare, table  # noqa: E402

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
    args = ap.parse_args()
    import onnxruntime as ort

    wanted = [m for m in args.models.split(",") if m]
    rows, ratios = [], {}
    for name, make, feeds in models(args.quick):
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        data = make()
        t0 = time.perf_counter()
        model = ub.compile(ub.import_onnx(data))
        compile_s = time.perf_counter() - t0
        for threads in (int(t) for t in args.threads.split(",")):
            ub.set_num_threads(threads)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
            ref, got = session.run(None, feeds), model.run(feeds)
            err = max(float(np.max(np.abs(r - g)) / max(np.max(np.abs(r)), 1e-30)) for r, g in zip(ref, got))
            t = compare({"ubique": lambda: model.run(feeds), "onnxruntime": lambda: session.run(None, feeds)},
                        rounds=3 if args.quick else 7)
            ratio = t["ubique"] / t["onnxruntime"]
            ratios.setdefault(threads, []).append(ratio)
            rows.append([name, threads, f"{t['ubique'] * 1e3:.2f}", f"{t['onnxruntime'] * 1e3:.2f}",
                         f"{ratio:.2f}", f"{compile_s:.1f}", f"{err:.1e}"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; ubique {ub.__version__}, "
          f"onnxruntime {ort.__version__}")
    print(table(rows, ["model", "threads", "ubique ms", "onnxruntime ms", "ubique/ort", "compile s", "max rel err"]))
    for threads, rs in sorted(ratios.items()):
        print(f"geometric mean ubique/ort at {threads} thread(s): {math.exp(sum(map(math.log, rs)) / len(rs)):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
