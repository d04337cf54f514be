"""The compilation pipeline: graph IR -> passes -> fused kernels in loop IR -> LLVM -> object code."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ubique.compiler import passes, tuning
from ubique.compiler.fusion import fuse
from ubique.compiler.layout import block_channels, pack_matmul_rhs
from ubique.compiler.lower import LoweredKernel, lower_group
from ubique.compiler.memory_plan import MemoryPlan, plan_memory
from ubique.runtime.memory import DynamicMemory
from ubique.compiler.symbolic import DimContract, make_contract, specialize
from ubique.compiler.schedule import default_schedule
from ubique.errors import UnsupportedOpError
from ubique.ir import dims as D
from ubique.ir import loop as L
from ubique.ir.graph import Graph, TensorType
from ubique.ir.loop_analysis import widest_element_bits
from ubique.ir.loop_printer import print_kernel
from ubique.ir.loop_verify import verify_kernel
from ubique.ir.printer import print_graph
from ubique.ir.verify import verify_graph
from ubique.targets.target import Target

# Bump when generated code changes meaning or layout: it is part of every cache key.
COMPILER_REVISION = "2"


@dataclass
class Signature:
    inputs: list[tuple[str, TensorType]]
    outputs: list[TensorType]

    def to_json(self) -> dict:
        return {"inputs": [{"name": n, "shape": list(t.shape), "dtype": t.dtype.short} for n, t in self.inputs],
                "outputs": [{"shape": list(t.shape), "dtype": t.dtype.short} for t in self.outputs]}

    @staticmethod
    def from_json(d: dict) -> "Signature":
        return Signature([(x["name"], TensorType(tuple(x["shape"]), x["dtype"])) for x in d["inputs"]],
                         [TensorType(tuple(x["shape"]), x["dtype"]) for x in d["outputs"]])


@dataclass
class Program:
    """Everything the compiler made for one graph and target."""
    name: str
    target: Target
    signature: Signature
    graph: Graph                      # after the graph passes
    kernels: list[LoweredKernel]
    memory: MemoryPlan
    weights: list[np.ndarray]         # entry args after inputs and outputs, in order
    entry: str
    llvm_ir: str
    obj: bytes
    timings: dict[str, float] = field(default_factory=dict)      # seconds per pass / stage
    contract: DimContract = field(default_factory=DimContract)
    dynamic_memory: DynamicMemory | None = None   # set when intermediate sizes are symbolic

    @property
    def graph_ir(self) -> str:
        return print_graph(self.graph)

    @property
    def loop_ir(self) -> str:
        return "\n\n".join(print_kernel(k.kernel) for k in self.kernels)

    @property
    def asm(self) -> str:
        from ubique.codegen.cpu import emit_assembly

        return emit_assembly(self.llvm_ir, self.target)

    @property
    def num_kernels(self) -> int:
        return len(self.kernels)


def optimize_graph(g: Graph, fold: bool = True, timings: dict | None = None, lanes: int = 0) -> Graph:
    """The graph passes. `lanes` (the target's float32 vector width) enables the
    target-specific layout pass; without it the result is portable."""
    timings = {} if timings is None else timings

    def run(name, fn, graph):
        t0 = time.perf_counter()
        out = fn(graph)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        return out

    verify_graph(g)
    g = run("decompose", passes.decompose, g)
    g = run("fold_scale_into_conv", passes.fold_scale_into_conv, g)
    if lanes:
        g = run("block_channels", lambda x: block_channels(x, lanes), g)
        g = run("pack_matmul_rhs", lambda x: pack_matmul_rhs(x, 4 * lanes), g)
    if fold:
        g = run("fold_constants", lambda x: passes.fold_constants(x, _evaluate_constant_graph), g)
    g = run("cse", passes.common_subexpression_elimination, g)
    g = run("dce", passes.dead_code_elimination, g)
    g = run("copy_outputs", passes.copy_aliased_outputs, g)
    verify_graph(g)
    return g


def _evaluate_constant_graph(sub: Graph) -> list[np.ndarray]:
    from ubique.targets.registry import host_target
    from ubique.runtime.executable import load_program

    return load_program(compile_graph(sub, host_target(), fold=False)).run()


def compile_graph(graph: Graph, target: Target, *, fold: bool = True, name: str = "ubq",
                  threads: int = 0, dims: dict | None = None, knobs: dict | None = None) -> Program:
    """Compiles `graph` for `target`. `dims` declares symbolic dimensions: an int
    specialises one, a (lo, hi) pair bounds it (see compiler/symbolic.py). `knobs` (kernel
    signature, see compiler/tuning.py -> TileKnobs) overrides the schedule choices and the tuning records (the tuner's
    candidates); by default recorded knobs are used where `ubique tune` stored some."""
    from ubique.codegen.cpu import compile_llvm_ir
    from ubique.codegen.llvm_emit import ModuleEmitter

    if target.codegen != "llvm-cpu":
        raise UnsupportedOpError(f"target {target.name} uses codegen {target.codegen!r}, which is not available")
    timings: dict[str, float] = {}
    contract = make_contract(graph, dims)
    g = optimize_graph(specialize(graph, contract.specialized), fold, timings, lanes=target.vector_bits // 32)
    symbols = [L.Var(s) for s in contract.symbols]  # every kernel reads the same dims array

    t0 = time.perf_counter()
    threads = threads or max(2, target.num_cores or 2)
    lowered = []
    for k, group in enumerate(fuse(g)):
        t_kernel = time.perf_counter()
        lk = lower_group(group, f"{name}_k{k}_{group.name}"[:80])
        lanes = max(1, target.vector_bits // widest_element_bits(lk.kernel.body))
        lk.kernel.dims = symbols
        lk.kernel = default_schedule(lk.kernel, lk.output.type.rank, lk.work, lanes, threads,
                                     accumulators=target.vector_registers - 4,
                                     knobs=knobs.get(tuning.kernel_signature(lk.kernel)) if knobs is not None
                                     else tuning.lookup(target, lk.kernel))
        verify_kernel(lk.kernel)
        lk.seconds = time.perf_counter() - t_kernel
        lowered.append(lk)
    timings["lower"] = time.perf_counter() - t0

    # entry arguments: inputs, outputs, then weights (non-scalar constants kernels read)
    io: dict[int, int] = {v.id: k for k, v in enumerate(g.inputs)}
    for v in g.outputs:
        io[v.id] = len(io)
    weights: list[np.ndarray] = []
    for lk in lowered:
        for v in lk.inputs:
            if v.id not in io and v.node is not None and v.node.op == "constant":
                io[v.id] = len(io)
                weights.append(np.ascontiguousarray(v.node.attrs["value"]))
    steps = [([v.id for v in lk.inputs], lk.output.id) for lk in lowered]
    sizes = {lk.output.id: D.mul(D.prod(lk.output.shape), lk.output.dtype.itemsize) for lk in lowered}
    dynamic = None
    if all(isinstance(n, int) for n in sizes.values()):
        memory = plan_memory(steps, sizes, set(io))
        ws_ref = lambda v: ("ws", memory.offsets[v.id])  # noqa: E731
    else:  # offsets depend on the dims of each call: planned by the runtime, read from a table
        slots = sorted(v for v in sizes if v not in io)
        dynamic = DynamicMemory(steps, {v: sizes[v] for v in slots}, set(io), slots)
        memory = MemoryPlan({}, 0, 0)
        ws_ref = lambda v: ("wsdyn", slots.index(v.id))  # noqa: E731

    t0 = time.perf_counter()
    mod = ModuleEmitter(name, target.vector_bits, target.triple, vector_math=target.vector_math)
    entry_steps = []
    for lk in lowered:
        t_kernel = time.perf_counter()
        fn = mod.add_kernel(lk.kernel)
        lk.seconds += time.perf_counter() - t_kernel
        refs = [("io", io[v.id]) if v.id in io else ws_ref(v) for v in lk.inputs + [lk.output]]
        entry_steps.append((fn, refs))
    entry = f"{name}_run"
    mod.add_entry(entry, entry_steps, len(io))
    timings["emit_llvm"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    code = compile_llvm_ir(str(mod.module), target)
    timings["llvm"] = time.perf_counter() - t0

    sig = Signature([(v.name or f"arg{k}", v.type) for k, v in enumerate(g.inputs)], [v.type for v in g.outputs])
    return Program(name, target, sig, g, lowered, memory, weights, entry, code.llvm_ir, code.obj, timings,
                   contract, dynamic)
