"""ubique's GPU target ("cuda") against PyTorch on the same GPU.

    python bench/gpu/bench_gpu.py [--quick] [--only matmul,resnet18] [--json PATH]

Cases: float32 matmul 4096^3 (PyTorch with TF32 off, i.e. cuBLAS SGEMM; also 1024^3 and
2048^3), ResNet-18 at batch 32 (224x224, float32, eval mode; PyTorch with cuDNN autotuning),
and, unless --quick, the other test models of tests/torch_models.py (BERT-style encoder
b8 s128, MobileNetV2 b32, MLP b256). Both sides are timed on the device alone (inputs
already on the GPU) with CUDA events around repeated runs: ubique replays its CUDA graph
(`CudaProgram.launch`), PyTorch runs the module (`torch.cuda.Event`). Reported: median ms,
TFLOP/s (multiply-adds x 2 of matmul/conv nodes, bench/flops.py), ubique/PyTorch time ratio
(< 1: ubique is faster), the share of PyTorch's speed (issue 7 target: >= 50% for the
4096^3 matmul), compile time, and whether the outputs agree.

Exits 0 with a message where there is no GPU, no CUDA driver or no CUDA build of PyTorch.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests"))

import ubique as ub  # noqa: E402


def _skip(why: str) -> None:
    print(f"bench_gpu: skipped: {why}")
    sys.exit(0)


def _setup():
    from ubique.runtime import cuda

    info = cuda.probe_device()
    if info is None:
        try:
            cuda.driver()
        except ub.RuntimeFailure as e:
            _skip(str(e))
        _skip("no CUDA GPU found")
    try:
        import torch
    except ImportError:
        _skip("PyTorch is not installed (the reference); pip install torch with CUDA")
    if not torch.cuda.is_available():
        _skip(f"this PyTorch ({torch.__version__}) has no CUDA support or sees no GPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 on both sides (cuBLAS SGEMM)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    _register_targets()
    return info, torch


def _register_targets():
    # the backend and the devices register on import (for when the built-in registries do not load them)
    import ubique.codegen.nvptx  # noqa: F401
    import ubique.runtime.cuda  # noqa: F401
    from ubique.targets import gpu, registry

    for name, factory in (("cuda", gpu.cuda_target),):
        try:
            registry.get_target(name)
        except ub.UnsupportedOpError:
            registry.register(name, factory, "built-in")


def _time_torch(torch, fn, repeat: int, rounds: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / repeat)
    return statistics.median(samples)


def _time_ubique(program, inputs, repeat: int, rounds: int) -> float:
    plan = program.upload(*inputs)
    for _ in range(3):
        program.launch(plan)
    return statistics.median(program.time_launches(plan, repeat) for _ in range(rounds))


def _compile(graph, dims=None):
    from ubique.compiler.pipeline import compile_graph
    from ubique.runtime.cuda import CudaDevice
    from ubique.targets.registry import get_target

    t0 = time.perf_counter()
    program = compile_graph(graph, get_target("cuda"), dims=dims)
    return CudaDevice().load(program), time.perf_counter() - t0


def bench_matmul(torch, n: int, repeat: int, rounds: int) -> dict:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    graph, _ = ub.jit(lambda a, b: a @ b).trace(a, b)
    program, seconds = _compile(graph)
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    t_torch = _time_torch(torch, lambda: torch.mm(ta, tb), repeat, rounds)
    t_ub = _time_ubique(program, [a, b], repeat, rounds)
    got = program.run(a, b)[0]
    want = torch.mm(ta, tb).cpu().numpy()
    ok = np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
    return {"case": f"matmul {n}^3 f32", "flops": 2 * n ** 3, "ubique_s": t_ub, "torch_s": t_torch,
            "compile_s": seconds, "agree": bool(ok)}


def _model_cases(torch, quick: bool):
    from torch_models import BertEncoder, MLP, MobileNetV2, ResNet18, export, randomize_batchnorm

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    batch = {"input": {0: "batch"}, "logits": {0: "batch"}}
    image = torch.randn(1, 3, 224, 224)
    resnet = randomize_batchnorm(ResNet18())
    yield ("resnet18 b32", resnet, lambda: export(resnet, (image,), ["input"], ["logits"], batch),
           {"input": rng.standard_normal((32, 3, 224, 224), np.float32)})
    if quick:
        return
    mobilenet = randomize_batchnorm(MobileNetV2())
    yield ("mobilenet_v2 b32", mobilenet, lambda: export(mobilenet, (image,), ["input"], ["logits"], batch),
           {"input": rng.standard_normal((32, 3, 224, 224), np.float32)})
    bert = BertEncoder().eval()
    ids = torch.randint(0, 1000, (1, 128))
    yield ("bert-2L-256 b8 s128", bert,
           lambda: export(bert, (ids, torch.ones(1, 128, dtype=torch.int64)), ["ids", "mask"], ["hidden", "pooled"],
                          {n: {0: "batch"} for n in ("ids", "mask", "hidden", "pooled")}),
           {"ids": rng.integers(0, 1000, (8, 128)).astype(np.int64), "mask": np.ones((8, 128), np.int64)})
    mlp = MLP().eval()
    yield ("mlp b256", mlp, lambda: export(mlp, (torch.randn(1, 784),), ["x"], ["y"], {"x": {0: "batch"},
                                                                                     "y": {0: "batch"}}),
           {"x": rng.standard_normal((256, 784), np.float32)})


def bench_model(torch, name, module, make_onnx, feeds, repeat: int, rounds: int) -> dict:
    from flops import count_flops

    graph = ub.import_onnx(make_onnx())
    dims = {"batch": next(iter(feeds.values())).shape[0]}
    program, seconds = _compile(graph, dims)
    names = [s[0] for s in program.signature.inputs]
    inputs = [feeds[n] for n in names]
    module = module.cuda().eval()
    tensors = [torch.from_numpy(feeds[n]).cuda() for n in names]
    with torch.no_grad():
        t_torch = _time_torch(torch, lambda: module(*tensors), repeat, rounds)
        want = module(*tensors)
    want = [w.cpu().numpy() for w in (want if isinstance(want, (tuple, list)) else [want])]
    t_ub = _time_ubique(program, inputs, repeat, rounds)
    got = program.run(*inputs)
    ok = all(np.abs(g - w).max() <= 1e-3 * max(np.abs(w).max(), 1e-30) for g, w in zip(got, want))
    try:
        flops = count_flops(graph, feeds)[0]
    except Exception:  # noqa: BLE001 -- the count is informative only
        flops = None
    return {"case": name, "flops": flops, "ubique_s": t_ub, "torch_s": t_torch, "compile_s": seconds,
            "agree": bool(ok)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="matmul 4096^3 and ResNet-18 b32 only")
    p.add_argument("--only", default="", help="comma-separated case name prefixes (matmul, resnet18, ...)")
    p.add_argument("--json", default="", help="also write the rows to this JSON file")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    info, torch = _setup()
    only = [o for o in args.only.split(",") if o]
    wanted = lambda name: not only or any(name.startswith(o) for o in only)  # noqa: E731
    print(f"GPU: {info.name} (sm_{info.compute_capability[0]}{info.compute_capability[1]}, "
          f"{info.multiprocessors} SMs); PyTorch {torch.__version__}, TF32 off")
    rows = []
    for n in ((4096,) if args.quick else (1024, 2048, 4096)):
        if wanted("matmul"):
            rows.append(bench_matmul(torch, n, repeat=10 if n == 4096 else 50, rounds=args.rounds))
            _print_row(rows[-1])
    for name, module, make, feeds in _model_cases(torch, args.quick):
        if wanted(name):
            rows.append(bench_model(torch, name, module, make, feeds, repeat=10, rounds=args.rounds))
            _print_row(rows[-1])
    print()
    print(_table(rows))
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"gpu": info.name, "rows": rows}, f, indent=1)
    return 0


def _print_row(r):
    print(f"  {r['case']}: ubique {r['ubique_s'] * 1e3:.3f} ms, torch {r['torch_s'] * 1e3:.3f} ms "
          f"({r['torch_s'] / r['ubique_s']:.0%} of torch's speed), compile {r['compile_s']:.1f} s, "
          f"outputs {'agree' if r['agree'] else 'DIFFER'}", flush=True)


def _table(rows) -> str:
    from common import table

    out = []
    for r in rows:
        tf = (lambda s: f"{r['flops'] / s / 1e12:.1f}") if r["flops"] else (lambda s: "-")
        out.append([r["case"], f"{r['ubique_s'] * 1e3:.3f}", f"{r['torch_s'] * 1e3:.3f}", tf(r["ubique_s"]),
                    tf(r["torch_s"]), f"{r['ubique_s'] / r['torch_s']:.2f}", f"{r['torch_s'] / r['ubique_s']:.0%}",
                    f"{r['compile_s']:.1f}", "yes" if r["agree"] else "NO"])
    return table(out, ["case", "ubique ms", "torch ms", "ubique TFLOP/s", "torch TFLOP/s", "ubique/torch",
                       "% of torch speed", "compile s", "agree"])


if __name__ == "__main__":
    sys.exit(main())
