"""The machine's measured floating-point peak: float32 FMA throughput per core, in GFLOP/s.

    python bench/peak.py [--threads 1,2] [--asm]

A loop of independent vector FMAs (`acc_k = fma(acc_k, b, c)` over 12-16 accumulator chains,
enough to hide the FMA latency on every x86-64 and Arm core) is JIT-compiled with llvmlite
directly, not through ubique, at the host's widest vector width (512-bit with AVX-512,
256-bit with AVX/AVX2, 128-bit otherwise) and timed; each FMA counts as 2 FLOPs.

`measure_peak_gflops(threads)` runs the loop in `threads` OS threads at once (ctypes calls
release the GIL, so the threads really run in parallel) and returns their combined rate:
the best of a few trials, cached per process. The benchmarks compare against
`measure_peak_gflops(1) * threads` (per-core peak times the cores used); the measured
multi-thread figure is printed beside it, and on a shared machine it is the noisier one.
"""
from __future__ import annotations

import argparse
import ctypes
import functools
import threading
import time

import llvmlite.binding as llvm
import numpy as np

ROUNDS_PER_ITER = 4  # FMA rounds over all chains per loop iteration (amortises the loop's branch)


@functools.lru_cache(maxsize=None)
def vector_config() -> tuple[int, int, bool]:
    """(vector bits, accumulator chains, has FMA) for the host CPU, from llvmlite's feature list."""
    feats = {f[1:] for f in llvm.get_host_cpu_features().flatten().split(",") if f.startswith("+")}
    triple = llvm.get_process_triple()
    if "avx512f" in feats:
        return 512, 16, True          # 32 zmm registers: 16 accumulators + 2 operands
    if "avx" in feats:
        return 256, 12, "fma" in feats  # 16 ymm registers: 12 accumulators + 2 operands
    if triple.startswith(("aarch64", "arm64")):
        return 128, 16, True          # NEON: 32 v registers, fused multiply-add always present
    return 128, 12, False             # SSE: 16 xmm registers, no FMA (mul + add)


def kernel_ir(bits: int, chains: int, fma: bool) -> str:
    """LLVM IR for `void peak_fma(i64 iters, float* buf)`: buf holds b, c and the initial
    accumulators (vectors), and receives the final accumulators so nothing is dead code."""
    lanes = bits // 32
    vt = f"<{lanes} x float>"
    lines = [f"declare {vt} @llvm.fma.v{lanes}f32({vt}, {vt}, {vt})", "",
             "define void @peak_fma(i64 %iters, ptr %buf) #0 {", "entry:"]
    for name, k in (("b", 0), ("c", 1)):
        lines.append(f"  %{name}.p = getelementptr {vt}, ptr %buf, i64 {k}")
        lines.append(f"  %{name} = load {vt}, ptr %{name}.p, align 4")
    for j in range(chains):
        lines.append(f"  %p{j} = getelementptr {vt}, ptr %buf, i64 {2 + j}")
        lines.append(f"  %init{j} = load {vt}, ptr %p{j}, align 4")
    lines += ["  br label %loop", "loop:", "  %i = phi i64 [0, %entry], [%i.next, %loop]"]
    for j in range(chains):
        lines.append(f"  %a{j}.0 = phi {vt} [%init{j}, %entry], [%a{j}.{ROUNDS_PER_ITER}, %loop]")
    for r in range(ROUNDS_PER_ITER):
        for j in range(chains):
            src, dst = f"%a{j}.{r}", f"%a{j}.{r + 1}"
            if fma:
                lines.append(f"  {dst} = call {vt} @llvm.fma.v{lanes}f32({vt} {src}, {vt} %b, {vt} %c)")
            else:
                lines.append(f"  %m{j}.{r} = fmul {vt} {src}, %b")
                lines.append(f"  {dst} = fadd {vt} %m{j}.{r}, %c")
    lines += ["  %i.next = add i64 %i, 1", "  %more = icmp ult i64 %i.next, %iters",
              "  br i1 %more, label %loop, label %exit", "exit:"]
    for j in range(chains):
        lines.append(f"  store {vt} %a{j}.{ROUNDS_PER_ITER}, ptr %p{j}, align 4")
    lines += ["  ret void", "}", "",
              f'attributes #0 = {{ nounwind "min-legal-vector-width"="{bits}" "prefer-vector-width"="{bits}" }}']
    return "\n".join(lines) + "\n"


class _Kernel:
    def __init__(self):
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        self.bits, self.chains, self.fma = vector_config()
        self.lanes = self.bits // 32
        tm = llvm.Target.from_default_triple().create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=2)
        mod = llvm.parse_assembly(kernel_ir(self.bits, self.chains, self.fma))
        mod.verify()
        self.asm = tm.emit_assembly(mod)
        self.engine = llvm.create_mcjit_compiler(mod, tm)  # keeps tm and mod alive with itself
        self.engine.finalize_object()
        addr = self.engine.get_function_address("peak_fma")
        # CFUNCTYPE (not PYFUNCTYPE): ctypes releases the GIL for the call's duration
        self.fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_void_p)(addr)
        self.flops_per_iter = 2 * ROUNDS_PER_ITER * self.chains * self.lanes

    def buffer(self) -> np.ndarray:
        buf = np.empty((2 + self.chains, self.lanes), np.float32)
        buf[0], buf[1] = 0.999, 1e-3   # acc -> acc*0.999 + 0.001 converges to 1: no overflow, no denormals
        buf[2:] = np.linspace(0.5, 1.5, self.chains * self.lanes, dtype=np.float32).reshape(self.chains, -1)
        return buf

    def run(self, iters: int, buf: np.ndarray) -> None:
        self.fn(iters, buf.ctypes.data)


@functools.lru_cache(maxsize=None)
def _kernel() -> _Kernel:
    return _Kernel()


def _timed(k: _Kernel, iters: int, threads: int) -> float:
    """Wall seconds for `threads` threads each running `iters` iterations, started together."""
    bufs = [k.buffer() for _ in range(threads)]
    if threads == 1:
        t0 = time.perf_counter()
        k.run(iters, bufs[0])
        return time.perf_counter() - t0
    start = threading.Barrier(threads + 1)
    workers = [threading.Thread(target=lambda b=b: (start.wait(), k.run(iters, b))) for b in bufs]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    return time.perf_counter() - t0


@functools.lru_cache(maxsize=None)
def measure_peak_gflops(threads: int = 1, seconds: float = 0.1, trials: int = 7) -> float:
    """Measured float32 FMA peak in GFLOP/s of `threads` cores together (best of `trials`
    runs of ~`seconds` each); cached per process."""
    k = _kernel()
    iters = 1 << 10
    while _timed(k, iters, 1) < seconds / 4:  # calibrate on one thread (also warms the clocks up)
        iters *= 2
    iters = int(iters * 4)
    best = min(_timed(k, iters, threads) for _ in range(trials))
    return k.flops_per_iter * iters * threads / best / 1e9


def describe() -> str:
    k = _kernel()
    op = "FMA" if k.fma else "mul+add"
    return f"{llvm.get_host_cpu_name()}, {k.bits}-bit {op}, {k.chains} chains"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--asm", action="store_true", help="print the kernel's assembly")
    args = ap.parse_args()
    if args.asm:
        print(_kernel().asm)
    one = measure_peak_gflops(1)
    print(f"float32 peak ({describe()}):")
    print(f"  1 thread : {one:.1f} GFLOP/s per core")
    for t in (int(x) for x in args.threads.split(",")):
        if t == 1:
            continue
        got = measure_peak_gflops(t)
        print(f"  {t} threads: {got:.1f} GFLOP/s measured ({got / (one * t):.0%} of {t} x per-core = "
              f"{one * t:.1f}; the benchmarks use {t} x per-core)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
