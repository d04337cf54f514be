"""The compilation pipeline: graph IR -> passes -> fused kernels in loop IR -> LLVM -> object code."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

from ubique.codegen.backend import (Backend, BufferRef, GeneratedCode, KernelModule, ScheduleHints, Step,
                                    get_backend)
from ubique.codegen.externs import check_extern
from ubique.compiler import passes, tuning
from ubique.compiler.pass_manager import GRAPH_PASSES, PassRecord, passes_at, requested_dumps, run_custom
from ubique.compiler.fusion import fuse
from ubique.compiler.layout import block_channels, pack_matmul_rhs
from ubique.compiler.lower import LoweredKernel, lower_group
from ubique.compiler.memory_plan import MemoryPlan, plan_memory
from ubique.runtime.memory import DynamicMemory
from ubique.compiler.symbolic import DimContract, make_contract, specialize
from ubique.errors import PluginError, UbiqueError, UnsupportedOpError
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
    code: GeneratedCode               # what the target's backend generated
    timings: dict[str, float] = field(default_factory=dict)      # seconds per pass / stage
    contract: DimContract = field(default_factory=DimContract)
    dynamic_memory: DynamicMemory | None = None   # set when intermediate sizes are symbolic
    passes: list[PassRecord] = field(default_factory=list)       # the pipeline that ran
    dumps: dict[str, str] = field(default_factory=dict)          # pass name -> IR text after it

    @property
    def obj(self) -> bytes:
        """The object file a "cpu" device links."""
        return self.code.obj

    @property
    def source(self) -> str:
        """The backend's text form of the code (LLVM IR, C, PTX...)."""
        return self.code.source

    @property
    def llvm_ir(self) -> str:
        if self.code.language != "llvm":
            raise UnsupportedOpError(f"target {self.target.name} generates {self.code.language}, not LLVM IR; "
                                     "see Program.source")
        return self.code.source

    @property
    def graph_ir(self) -> str:
        return print_graph(self.graph)

    @property
    def loop_ir(self) -> str:
        return "\n\n".join(print_kernel(k.kernel) for k in self.kernels)

    @property
    def asm(self) -> str:
        return get_backend(self.target.codegen, self.target).assembly(self.code, self.target)

    @property
    def num_kernels(self) -> int:
        return len(self.kernels)


class _Pipeline:
    """Runs named steps, timing them (`timings`), recording them (`records`, for
    --print-passes) and keeping the IR text after the steps named in `dump_after`."""

    def __init__(self, timings: dict, dump_after=()):
        self.timings = timings
        self.records: list[PassRecord] = []
        self.dump_after = set(dump_after)
        self.dumps: dict[str, str] = {}

    def run(self, name: str, fn, ir, level: str = "graph", origin: str = "built-in"):
        t0 = time.perf_counter()
        out = fn(ir)
        seconds = time.perf_counter() - t0
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        self.records.append(PassRecord(name, level, origin, seconds))
        if name in self.dump_after:
            self.dumps[name] = print_graph(out) if level == "graph" else ""
        return out

    def note_kernels(self, name: str, kernels: list[L.Kernel], level: str, origin: str, seconds: float) -> None:
        self.records.append(PassRecord(name, level, origin, seconds))
        if name in self.dump_after:
            self.dumps[name] = "\n\n".join(print_kernel(k) for k in kernels)


def optimize_graph(g: Graph, fold: bool = True, timings: dict | None = None, lanes: int = 0,
                   target: Target | None = None, pipeline: "_Pipeline | None" = None) -> Graph:
    """The graph passes. `lanes` (the target's float32 vector width) enables the
    target-specific layout passes; custom graph passes run when a `target` is given.
    Without either the result is portable (what a .ubq file stores)."""
    pipe = pipeline or _Pipeline({} if timings is None else timings)
    builtin = {
        "decompose": passes.decompose,
        "fold_scale_into_conv": passes.fold_scale_into_conv,
        "block_channels": (lambda x: block_channels(x, lanes)) if lanes else None,
        "pack_matmul_rhs": (lambda x: pack_matmul_rhs(x, 4 * lanes)) if lanes else None,
        "fold_constants": (lambda x: passes.fold_constants(x, _evaluate_constant_graph)) if fold else None,
        "cse": passes.common_subexpression_elimination,
        "dce": passes.dead_code_elimination,
        "copy_outputs": passes.copy_aliased_outputs,
    }
    verify_graph(g)
    for name in GRAPH_PASSES:
        g = _run_custom(pipe, name, False, g, target)
        if builtin[name] is not None:
            g = pipe.run(name, builtin[name], g)
        g = _run_custom(pipe, name, True, g, target)
    g = _run_custom(pipe, "fuse", False, g, target)
    verify_graph(g)
    return g


def _run_custom(pipe: _Pipeline, anchor: str, after: bool, ir, target: Target | None):
    if target is None:
        return ir
    for p in passes_at(anchor, after, target):
        ir = pipe.run(p.name, lambda x, p=p: run_custom(p, x, target), ir, p.level, p.origin)
    return ir


def _evaluate_constant_graph(sub: Graph) -> list[np.ndarray]:
    from ubique.targets.registry import host_target
    from ubique.runtime.executable import load_program

    # folded values must not depend on plug-ins: no custom passes, no hand-written kernels
    return load_program(compile_graph(sub, host_target(), fold=False, hand_kernels=False, custom_passes=False)).run()


def compile_graph(graph: Graph, target: Target, *, fold: bool = True, name: str = "ubq",
                  threads: int = 0, dims: dict | None = None, knobs: dict | None = None,
                  dump_after=(), hand_kernels: bool = True, custom_passes: bool = True) -> Program:
    """Compiles `graph` for `target` with the target's backend (codegen/backend.py). `dims`
    declares symbolic dimensions: an int specialises one, a (lo, hi) pair bounds it (see
    compiler/symbolic.py). `knobs` (kernel signature -> compiler/tuning.TileKnobs) overrides the
    schedule choices and the tuning records (the tuner's candidates); by default recorded
    knobs are used where `ubique tune` stored some. `dump_after` names pipeline steps whose
    IR text is kept in `Program.dumps`. `hand_kernels=False` uses the generated kernel even
    where an op has a hand-written one for the target (to check one against the other);
    `custom_passes=False` runs the built-in pipeline only."""
    backend = get_backend(target.codegen, target)
    timings: dict[str, float] = {}
    pipe = _Pipeline(timings, set(dump_after) | requested_dumps())
    contract = make_contract(graph, dims)
    g = optimize_graph(specialize(graph, contract.specialized), fold, timings, lanes=backend.layout_lanes(target),
                       target=target if custom_passes else None, pipeline=pipe)
    symbols = [L.Var(s) for s in contract.symbols]  # every kernel reads the same dims array

    t0 = time.perf_counter()
    hand = find_hand_kernels(g, target, backend) if hand_kernels else {}
    groups = fuse(g, frozenset(hand))
    lowered = []
    for k, group in enumerate(groups):
        t_kernel = time.perf_counter()
        lk = lower_group(group, re.sub(r"\W", "_", f"{name}_k{k}_{group.name}")[:80])  # a C identifier
        lk.kernel.dims = symbols
        lk.seconds = time.perf_counter() - t_kernel
        lowered.append(lk)
    fuse_seconds = time.perf_counter() - t0
    pipe.note_kernels("fuse", [lk.kernel for lk in lowered], "kernels", "built-in", fuse_seconds)
    if custom_passes:
        _kernel_passes(pipe, "fuse", lowered, target)

    t0 = time.perf_counter()
    threads = threads or max(2, target.num_cores or 2)
    for lk in lowered:
        if id(lk.output.node) in hand:
            continue  # its hand-written kernel runs instead
        t_kernel = time.perf_counter()
        hints = ScheduleHints(lk.output.type.rank, lk.work,
                              max(1, target.vector_bits // widest_element_bits(lk.kernel.body)), threads,
                              target.vector_registers - 4,
                              knobs.get(tuning.kernel_signature(lk.kernel)) if knobs is not None
                              else tuning.lookup(target, lk.kernel))
        lk.kernel = _schedule(backend, lk.kernel, hints, target)
        lk.seconds += time.perf_counter() - t_kernel
    schedule_seconds = time.perf_counter() - t0
    pipe.note_kernels("schedule", [lk.kernel for lk in lowered], "kernels", f"backend {backend.name}",
                      schedule_seconds)
    if custom_passes:
        _kernel_passes(pipe, "schedule", lowered, target)
    timings["lower"] = fuse_seconds + schedule_seconds

    # what each kernel is called with: the lowered kernel's parameters, or for a hand-written
    # kernel exactly its node's inputs (in order, repeats and scalar constants included)
    call_inputs = [list(lk.output.node.inputs) if id(lk.output.node) in hand else lk.inputs for lk in lowered]
    # entry arguments: inputs, outputs, then weights (constants kernels read from memory)
    io: dict[int, int] = {v.id: k for k, v in enumerate(g.inputs)}
    for v in g.outputs:
        io[v.id] = len(io)
    weights: list[np.ndarray] = []
    for inputs in call_inputs:
        for v in inputs:
            if v.id not in io and v.node is not None and v.node.op == "constant":
                io[v.id] = len(io)
                weights.append(np.ascontiguousarray(v.node.attrs["value"]))
    steps = [([v.id for v in inputs], lk.output.id) for inputs, lk in zip(call_inputs, lowered)]
    sizes = {lk.output.id: D.mul(D.prod(lk.output.shape), lk.output.dtype.itemsize) for lk in lowered}
    dynamic = None
    if all(isinstance(n, int) for n in sizes.values()):
        memory = plan_memory(steps, sizes, set(io))
        ws_ref = lambda v: BufferRef("workspace", memory.offsets[v.id])  # noqa: E731
    else:  # offsets depend on the dims of each call: planned by the runtime, read from a table
        slots = sorted(v for v in sizes if v not in io)
        dynamic = DynamicMemory(steps, {v: sizes[v] for v in slots}, set(io), slots)
        memory = MemoryPlan({}, 0, 0)
        ws_ref = lambda v: BufferRef("table", slots.index(v.id))  # noqa: E731

    t0 = time.perf_counter()
    entry = f"{name}_run"
    externs = [hand[id(lk.output.node)](lk.kernel.name) for lk in lowered if id(lk.output.node) in hand]
    for ext in externs:
        check_extern(ext, target)
    module = KernelModule(
        name, entry, [lk.kernel for lk in lowered if id(lk.output.node) not in hand], externs,
        [Step(lk.kernel.name, tuple(BufferRef("arg", io[v.id]) if v.id in io else ws_ref(v)
                                    for v in inputs + [lk.output])) for inputs, lk in zip(call_inputs, lowered)],
        len(io))
    code = _generate(backend, module, target)
    timings["codegen"] = time.perf_counter() - t0
    pipe.records.append(PassRecord("codegen", "code", f"backend {backend.name}", timings["codegen"]))
    if "codegen" in pipe.dump_after:
        pipe.dumps["codegen"] = code.source

    sig = Signature([(v.name or f"arg{k}", v.type) for k, v in enumerate(g.inputs)], [v.type for v in g.outputs])
    return Program(name, target, sig, g, lowered, memory, weights, entry, code, timings, contract, dynamic,
                   pipe.records, pipe.dumps)


def _kernel_passes(pipe: _Pipeline, anchor: str, lowered: list[LoweredKernel], target: Target) -> None:
    for p in passes_at(anchor, True, target):
        t0 = time.perf_counter()
        for lk in lowered:
            lk.kernel = run_custom(p, lk.kernel, target)
        pipe.note_kernels(p.name, [lk.kernel for lk in lowered], "loop", p.origin, time.perf_counter() - t0)
        pipe.timings[p.name] = pipe.timings.get(p.name, 0.0) + time.perf_counter() - t0


def _schedule(backend: Backend, kernel: L.Kernel, hints: ScheduleHints, target: Target) -> L.Kernel:
    where = f"backend {backend.name!r} ({type(backend).__module__})"
    try:
        out = backend.schedule(kernel, hints, target)
    except UbiqueError:
        raise
    except Exception as e:  # noqa: BLE001 -- a plug-in's code: say whose
        raise PluginError(f"{where} failed scheduling kernel {kernel.name}: {type(e).__name__}: {e}") from e
    if not isinstance(out, L.Kernel):
        raise PluginError(f"{where}.schedule returned {type(out).__name__}, not a loop-IR Kernel")
    try:
        verify_kernel(out)
    except UbiqueError as e:
        raise PluginError(f"{where}.schedule produced invalid loop IR for {kernel.name}: {e}") from None
    return out


def _generate(backend: Backend, module: KernelModule, target: Target) -> GeneratedCode:
    try:
        code = backend.generate(module, target)
    except UbiqueError:
        raise
    except Exception as e:  # noqa: BLE001 -- a plug-in's code: say whose
        raise PluginError(f"backend {backend.name!r} ({type(backend).__module__}) failed generating code for "
                          f"target {target.name!r}: {type(e).__name__}: {e}") from e
    if not isinstance(code, GeneratedCode):
        raise PluginError(f"backend {backend.name!r} ({type(backend).__module__}).generate returned "
                          f"{type(code).__name__}, not a GeneratedCode")
    if target.device == "cpu" and not code.obj:
        raise PluginError(f"backend {backend.name!r} ({type(backend).__module__}) generated no object file "
                          f"(GeneratedCode.obj) for target {target.name!r}, whose device is 'cpu'")
    return code


def find_hand_kernels(g: Graph, target: Target, backend: Backend) -> dict:
    """Nodes whose op has a hand-written kernel for `target` in a language the backend
    takes, where the target's device runs them: id(node) -> fn(kernel name) -> ExternKernel."""
    from ubique.ir.registry import get_op
    from ubique.runtime.devices import get_device

    out = {}
    if target.device != "cpu" and not get_device(target.device, target).runs_hand_kernels:
        return out
    for n in g.nodes:
        kernels = getattr(get_op(n.op), "kernels", None)
        if kernels and len(n.outputs) == 1:
            make = kernels.for_node(n, target, backend.extern_languages)
            if make is not None:
                out[id(n)] = make
    return out
