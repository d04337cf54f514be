"""NVIDIA GPU backend ("nvptx"): GPU-scheduled loop IR -> LLVM IR with NVPTX conventions ->
PTX text through LLVM's NVPTX backend (no CUDA C, no NVRTC). runtime/cuda.py runs it.

The schedules (block and thread loops, shared and per-thread scratch) come from
compiler/gpu_schedule.py; this module emits them. Code generation reuses the CPU emitter's
expressions (codegen/llvm_emit.FunctionEmitter): a kernel is a `ptx_kernel` function of its
buffers (device pointers, `noalias`) and the model's symbolic sizes (int64 values); blocks
and threads come from %ctaid.x / %tid.x; uniform code (in a block loop, outside thread
loops) runs in every thread of the block; barriers separate thread loops where the kernel
shares memory between threads; float math calls libdevice (`__nv_expf`...), linked from the
CUDA toolkit's libdevice.10.bc (found by codegen/cuda_toolkit.py).

`generate` returns GeneratedCode(language="ptx", source=PTX text, obj=b"", extras) with
extras["launches"]: one entry per kernel call of the model, in order:

    {"kernel": name, "buffers": [[kind, index], ...], "grid": extent, "block": threads,
     "dims": number of int64 size parameters after the buffers}

`buffers` are the step's BufferRefs (codegen/backend.py: "arg", "workspace", "table"),
`grid` the block loop's extent as a JSON expression of the symbolic sizes (an int, a
size name, or [op, a, b] with op in add sub mul floordiv mod max min; the launcher caps it
at MAX_GRID: the block loop strides over the rest). That table is the model entry: the
runtime launches it (as one CUDA graph) with device pointers.

Hand-written PTX kernels of custom ops (`ExternKernel`, language "ptx") are PTX modules of
their own: extras["modules"] lists them ({"kernel", "origin", "ptx"}), and their launches
carry "module": the 1-based index into that list (0, or no key: the generated module). Their
grid is the kernel's own (not capped), and they take no size parameters (static shapes).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import llvmlite.binding as llvm
import llvmlite.ir as ir

from ubique.codegen import llvm_emit as E
from ubique.codegen.backend import Backend, GeneratedCode, KernelModule, ScheduleHints, register_backend
from ubique.codegen.cuda_toolkit import find_libdevice, libdevice_bytes
from ubique.compiler.gpu_schedule import WARP, gpu_schedule
from ubique.compiler.schedule import static_extent
from ubique.errors import UnsupportedOpError
from ubique.ir import loop as L
from ubique.ir.dtypes import DType
from ubique.ir.loop_analysis import int_bounds, reduction_identity, reduction_update
from ubique.targets.target import Target

__all__ = ["NVPTXBackend", "compile_ptx", "evaluate_size", "ptx_listing", "MAX_GRID"]

MAX_GRID = 1 << 20     # blocks launched at most; block loops stride over the rest
MAX_UNROLL = 64        # the emitter unrolls "unrolled" loops up to this constant extent


# float functions libdevice provides as __nv_<name>f (float32) and __nv_<name> (float64)
_LIBDEVICE = {"exp", "log", "sin", "cos", "tanh", "erf", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh",
              "acosh", "atanh", "log1p", "expm1"}
_SREG = "llvm.nvvm.read.ptx.sreg."


@dataclass
class _LaunchShape:
    block: int                    # threads per block
    grid: L.Expr                  # blocks (the block loop's extent)


def _launch_shape(kernel: L.Kernel) -> _LaunchShape:
    threads = {f.lanes for f in L.walk(kernel.body) if isinstance(f, L.For) and f.kind == "thread"}
    if len(threads) > 1:
        raise UnsupportedOpError(f"nvptx: kernel {kernel.name} has thread loops for different block sizes "
                                 f"({sorted(threads)}); one kernel runs with one block size")
    block = threads.pop() if threads else 1
    if block > 1024:
        raise UnsupportedOpError(f"nvptx: kernel {kernel.name} asks for {block} threads per block (at most 1024)")
    loops = [f for f in L.walk(kernel.body) if isinstance(f, L.For) and f.kind == "block"]
    return _LaunchShape(block, loops[0].extent if loops else L.Const(1, L.I64))


class _GPUEmitter(E.FunctionEmitter):
    """Emits one kernel as a `ptx_kernel` function (see the module docstring)."""

    def __init__(self, module: E.ModuleEmitter, func: ir.Function, kernel: L.Kernel, shape: _LaunchShape):
        self.m, self.func, self.kernel, self.shape = module, func, kernel, shape
        self.alloca_block = func.append_basic_block("allocas")
        self.b = ir.IRBuilder(func.append_basic_block("body"))
        self.args_ptr = self.dims_ptr = self.ctx_ptr = None
        self.env: dict[str, object] = {}
        self.lanes, self.vec_var, self.vec_base, self.contract = 0, None, None, False
        self.buffers = {}
        for arg, buf in zip(func.args, kernel.params):
            arg.name = buf.name
            self.buffers[buf.name] = arg
        for arg, v in zip(func.args[len(kernel.params):], kernel.dims):
            arg.name = v.name
            self.env[v.name] = arg
        self.tid = self.b.zext(self.sreg("tid.x"), E.I64, name="tid")
        self.thread_depth = 0
        self.local: dict[str, L.Buffer] = {}      # per-thread scratch: the buffer without its thread axis
        self.shared: set[str] = set()
        stored = {n.buffer.name for n in L.walk(kernel.body) if isinstance(n, L.Store)}
        loaded = {n.buffer.name for n in L.walk(kernel.body) if isinstance(n, L.Load)}
        # a store in uniform code writes the same value from every thread: thread 0 alone does
        # it, unless the kernel reads that buffer back (then each thread sees its own write)
        self.guarded = {b.name for b in kernel.params} - loaded
        # barriers after thread loops: when threads exchange data through memory
        self.barriers = any(isinstance(n, L.Scratch) and n.scope == "shared" for n in L.walk(kernel.body)) \
            or bool(stored & loaded)
        self._exchange = None

    # -- helpers ---------------------------------------------------------------------------
    def sreg(self, name: str):
        fn = self.m.declare(_SREG + name, ir.FunctionType(E.I32, []), pure=True)
        return self.b.call(fn, [])

    def barrier(self):
        self.b.call(self.m.declare("llvm.nvvm.barrier0", ir.FunctionType(ir.VoidType(), [])), [])

    def strided_loop(self, name: str, start, stop, step, body):
        """for (v = start; v < stop; v += step) body(), all int64 values."""
        b = self.b
        pre = b.block
        head, loop, exit_ = (b.append_basic_block(f"{name}.{x}") for x in ("head", "body", "exit"))
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(E.I64, name=name)
        i.add_incoming(start, pre)
        b.cbranch(b.icmp_signed("<", i, stop), loop, exit_)
        b.position_at_end(loop)
        self.env[name] = i
        body()
        i.add_incoming(b.add(i, step), b.block)
        b.branch(head)
        b.position_at_end(exit_)
        self.env.pop(name, None)

    def finish(self):
        ir.IRBuilder(self.alloca_block).branch(self.func.blocks[1])

    # -- statements ------------------------------------------------------------------------
    def s_For(self, s: L.For):
        if s.kind == "block":
            return self.block_loop(s)
        if s.kind == "thread":
            return self.thread_loop(s)
        if s.kind == "parallel":
            raise UnsupportedOpError(f"nvptx: kernel {self.kernel.name} has a CPU parallel loop ({s.var.name})")
        if s.kind == "vectorized":
            s = L.For(s.var, s.extent, s.body)
        return super().s_For(s)

    def block_loop(self, s: L.For):
        static = static_extent(s.extent, 0)
        if 0 < static <= MAX_GRID:  # the launch has exactly one block per iteration
            self.env[s.var.name] = self.b.zext(self.sreg("ctaid.x"), E.I64)
            self.stmt(s.body)
            del self.env[s.var.name]
            return
        start = self.b.zext(self.sreg("ctaid.x"), E.I64)
        step = self.b.zext(self.sreg("nctaid.x"), E.I64)
        self.strided_loop(s.var.name, start, self.expr(s.extent), step, lambda: self.stmt(s.body))

    def distribute(self, s: L.For, body):
        """Iterations of `s` over the block's threads: thread t runs t, t + block, ..."""
        block = self.shape.block
        bounds = int_bounds(s.extent, {})
        self.thread_depth += 1
        try:
            if isinstance(s.extent, L.Const) and s.extent.value == block:
                self.env[s.var.name] = self.tid
                body()
                del self.env[s.var.name]
            elif bounds is not None and bounds[1] <= block:
                with self.b.if_then(self.b.icmp_signed("<", self.tid, self.expr(s.extent))):
                    self.env[s.var.name] = self.tid
                    body()
                    del self.env[s.var.name]
            else:
                self.strided_loop(s.var.name, self.tid, self.expr(s.extent), ir.Constant(E.I64, block), body)
        finally:
            self.thread_depth -= 1

    def thread_loop(self, s: L.For):
        if self.thread_depth:
            raise UnsupportedOpError(f"nvptx: thread loop {s.var.name} is nested in another thread loop")
        update = reduction_update(s)
        if update is None:
            if any(b.name in self.local for b in _scratch_uses(s)) and not (
                    isinstance(s.extent, L.Const) and s.extent.value == self.shape.block):
                raise UnsupportedOpError(f"nvptx: thread loop {s.var.name} uses per-thread scratch but does not "
                                         f"run exactly {self.shape.block} iterations (one per thread)")
            self.distribute(s, lambda: self.stmt(s.body))
            if self.barriers:
                self.barrier()
            return
        acc, op = update
        outer = self.env[acc.name]
        vt = E.value_type(acc.dtype)
        partial = E._Local(self.alloca(vt, acc.name + ".part"), 0)
        self.b.store(self.e_Const(reduction_identity(op, acc.dtype)), partial.ptr)
        self.env[acc.name] = partial
        try:
            self.distribute(s, lambda: self.stmt(s.body))
        finally:
            self.env[acc.name] = outer
        total = self.block_reduce(self.b.load(partial.ptr), op, acc.dtype)
        self.b.store(self.binop(op, self.b.load(outer.ptr), total, acc.dtype), outer.ptr)

    def shuffle(self, v, offset: int, mask: int):
        """__shfl_xor_sync(mask, v, offset) for a register value of any width up to 64 bits."""
        b = self.b
        fn = self.m.declare("llvm.nvvm.shfl.sync.bfly.i32", ir.FunctionType(E.I32, [E.I32, E.I32, E.I32, E.I32]))
        args = lambda x: [ir.Constant(E.I32, mask), x, ir.Constant(E.I32, offset), ir.Constant(E.I32, 0x1F)]  # noqa: E731
        t = v.type
        bits = E._bits(t) if t != E.I1 else 1
        if bits == 64:
            raw = b.bitcast(v, E.I64) if t == E.F64 else v
            lo = b.call(fn, args(b.trunc(raw, E.I32)))
            hi = b.call(fn, args(b.trunc(b.lshr(raw, ir.Constant(E.I64, 32)), E.I32)))
            out = b.or_(b.zext(lo, E.I64), b.shl(b.zext(hi, E.I64), ir.Constant(E.I64, 32)))
            return b.bitcast(out, E.F64) if t == E.F64 else out
        if t == E.F32:
            return b.bitcast(b.call(fn, args(b.bitcast(v, E.I32))), E.F32)
        if bits < 32:
            return b.trunc(b.call(fn, args(b.zext(v, E.I32))), t)
        return b.call(fn, args(v))

    def block_reduce(self, v, op: str, dt: DType):
        """The `op` of `v` over all threads of the block, in every thread (uniform code)."""
        block = self.shape.block
        if block & (block - 1):
            raise UnsupportedOpError(f"nvptx: a cross-thread reduction needs a power-of-two block size, not {block}")
        width = min(block, WARP)
        mask = (1 << width) - 1 if width < WARP else 0xFFFFFFFF
        mask = mask - (1 << 32) if mask >= 1 << 31 else mask
        offset = width // 2
        while offset:
            v = self.binop(op, v, self.shuffle(v, offset, mask), dt)
            offset //= 2
        if block <= WARP:
            return v
        b = self.b
        slots = self.exchange_buffer()
        vt = v.type
        ptr = b.bitcast(slots, vt.as_pointer(3))
        warp = b.lshr(self.tid, ir.Constant(E.I64, 5))
        lane = b.and_(self.tid, ir.Constant(E.I64, WARP - 1))
        self.barrier()  # readers of the previous exchange are done
        with b.if_then(b.icmp_unsigned("==", lane, ir.Constant(E.I64, 0))):
            b.store(v, b.gep(ptr, [warp]))
        self.barrier()
        total = b.load(b.gep(ptr, [ir.Constant(E.I64, 0)]))
        for w in range(1, block // WARP):
            total = self.binop(op, total, b.load(b.gep(ptr, [ir.Constant(E.I64, w)])), dt)
        return total

    def exchange_buffer(self):
        """32 slots of 8 bytes in shared memory for the partial results of the warps."""
        if self._exchange is None:
            t = ir.ArrayType(E.I64, WARP)
            g = ir.GlobalVariable(self.m.module, t, f"{self.kernel.name}_exchange", addrspace=3)
            g.linkage, g.align, g.initializer = "internal", 16, ir.Constant(t, ir.Undefined)
            self._exchange = g
        return self._exchange

    def s_Scratch(self, s: L.Scratch):
        buf = s.buffer
        st = E.storage_type(buf.dtype)
        if s.scope == "shared":
            n = math.prod(d.value for d in buf.shape)
            t = ir.ArrayType(st, n)
            g = ir.GlobalVariable(self.m.module, t, f"{self.kernel.name}_{buf.name}", addrspace=3)
            g.linkage, g.align, g.initializer = "internal", 16, ir.Constant(t, ir.Undefined)
            self.buffers[buf.name] = g.bitcast(st.as_pointer(3))
            self.shared.add(buf.name)
        else:
            reduced = L.Buffer(buf.name, buf.dtype, buf.shape[1:])
            n = math.prod(d.value for d in reduced.shape)
            with self.b.goto_block(self.alloca_block):
                arr = self.b.alloca(ir.ArrayType(st, n), name=buf.name)
                self.buffers[buf.name] = self.b.bitcast(arr, st.as_pointer())
            self.local[buf.name] = reduced
        try:
            self.stmt(s.body)
        finally:
            self.buffers.pop(buf.name, None)
            self.local.pop(buf.name, None)
            self.shared.discard(buf.name)

    def e_Load(self, e: L.Load):
        if e.buffer.name in self.local:
            e = L.Load(self.local[e.buffer.name], e.indices[1:], e.mask, e.other)
        return super().e_Load(e)

    def s_Store(self, s: L.Store):
        name = s.buffer.name
        if name in self.local:
            self.contract = True  # accumulation into registers: fused multiply-adds
            try:
                return super().s_Store(L.Store(self.local[name], s.indices[1:], s.value))
            finally:
                self.contract = False
        if self.thread_depth == 0 and name in self.guarded:
            with self.b.if_then(self.b.icmp_unsigned("==", self.tid, ir.Constant(E.I64, 0))):
                return super().s_Store(s)
        return super().s_Store(s)

    # -- math ------------------------------------------------------------------------------
    def libdevice(self, name: str, args):
        t = args[0].type
        symbol = f"__nv_{name}{'f' if t == E.F32 else ''}"
        return self.b.call(self.m.declare(symbol, ir.FunctionType(t, [a.type for a in args]), pure=True), args)

    def e_Call(self, e: L.Call):
        if e.name in _LIBDEVICE and e.args[0].dtype.is_float:
            return self.libdevice(e.name, [self.expr(e.args[0])])
        return super().e_Call(e)

    def binop(self, op, a, b, dt):
        if op == "pow" and dt.is_float:
            return self.libdevice("pow", [a, b])
        return super().binop(op, a, b, dt)


def _scratch_uses(s: L.Stmt) -> list[L.Buffer]:
    return [n.buffer for n in L.walk(s) if isinstance(n, (L.Load, L.Store))]


def ptx_name(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return clean if clean[:1].isalpha() or clean[:1] == "_" else "k_" + clean


def _expr_json(e: L.Expr):
    """A launch-time size expression as JSON (see the module docstring)."""
    if isinstance(e, L.Const) and isinstance(e.value, int) and not isinstance(e.value, bool):
        return e.value
    if isinstance(e, L.Var):
        return e.name
    if isinstance(e, L.Binary) and e.op in ("add", "sub", "mul", "floordiv", "mod", "max", "min"):
        return [e.op, _expr_json(e.a), _expr_json(e.b)]
    raise UnsupportedOpError(f"nvptx: cannot compute the grid size {e!r} at launch time")


def evaluate_size(expr, env: dict[str, int]) -> int:
    """The value of a JSON size expression (see `_expr_json`) for symbol values `env`."""
    if isinstance(expr, int):
        return expr
    if isinstance(expr, str):
        return int(env[expr])
    op, a, b = expr
    a, b = evaluate_size(a, env), evaluate_size(b, env)
    return {"add": a + b, "sub": a - b, "mul": a * b, "floordiv": a // b if b else 0, "mod": a % b if b else 0,
            "max": max(a, b), "min": min(a, b)}[op]


class _Module:
    """One LLVM module of NVPTX kernels."""

    def __init__(self, name: str, target: Target):
        self.target = target
        self.emitter = E.ModuleEmitter(name, 32, target.triple)
        self.kernels: dict[str, tuple[str, _LaunchShape]] = {}
        self.attributes: dict[str, int] = {}

    def add_kernel(self, kernel: L.Kernel) -> tuple[str, _LaunchShape]:
        shape = _launch_shape(kernel)
        name = ptx_name(kernel.name)
        types = [E.storage_type(b.dtype).as_pointer() for b in kernel.params] + [E.I64] * len(kernel.dims)
        func = ir.Function(self.emitter.module, ir.FunctionType(ir.VoidType(), types), name)
        func.calling_convention = "ptx_kernel"
        for arg in func.args[:len(kernel.params)]:
            arg.add_attribute("noalias")
        em = _GPUEmitter(self.emitter, func, kernel, shape)
        em.stmt(kernel.body)
        em.b.ret_void()
        em.finish()
        self.attributes[name] = shape.block
        self.kernels[kernel.name] = (name, shape)
        return name, shape

    def text(self) -> str:
        """The module's LLVM IR, with each kernel's launch bound (nvvm.maxntid) attached."""
        def bound(m):
            block = self.attributes.get(m.group(2))
            return m.group(0) if block is None else f'{m.group(0)} "nvvm.maxntid"="{block}"'

        return re.sub(r'^define ptx_kernel void @("?)([A-Za-z0-9_]+)\1\(.*\)$', bound, str(self.emitter.module),
                      flags=re.M)


def compile_ptx(text: str, target: Target) -> tuple[str, str]:
    """Parses and optimises (O3) NVPTX LLVM IR, links libdevice where math functions need it,
    and emits PTX: (optimised LLVM IR, PTX text)."""
    from ubique.codegen.cpu import target_machine

    tm = target_machine(target)
    mod = llvm.parse_assembly(text)
    mod.triple = target.triple
    mod.data_layout = str(tm.target_data)
    needed = sorted({f.name for f in mod.functions if f.is_declaration and f.name.startswith("__nv_")})
    if needed:
        path = find_libdevice()
        if path is None:
            raise UnsupportedOpError(
                f"target {target.name}: the kernels call {', '.join(needed)}, which come from libdevice "
                "(libdevice.10.bc, part of the CUDA toolkit), not found here. Install the CUDA toolkit or "
                "`pip install nvidia-cuda-nvcc`, or set UBIQUE_LIBDEVICE to the file")
        lib = llvm.parse_bitcode(libdevice_bytes(path))
        lib.triple, lib.data_layout = mod.triple, mod.data_layout
        mod.link_in(lib)
        for f in mod.functions:  # what the kernels do not call is dropped by the optimiser
            if not f.is_declaration and f.name.startswith("__nv"):
                f.linkage = "internal"
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return str(mod), tm.emit_assembly(mod)


class NVPTXBackend(Backend):
    """NVIDIA GPUs: GPU schedules, LLVM IR with NVPTX conventions, PTX text (see the module
    docstring). Runs on device "cuda" (runtime/cuda.py)."""

    name = "nvptx"
    extern_languages = ("ptx",)

    def schedule(self, kernel: L.Kernel, hints: ScheduleHints, target: Target) -> L.Kernel:
        return gpu_schedule(kernel, hints.out_rank, target)

    def layout_lanes(self, target: Target) -> int:
        return 0  # no CPU SIMD layouts (channel blocking, packed matmul operands)

    def generate(self, module: KernelModule, target: Target) -> GeneratedCode:
        wrong = [e.name for e in module.externs if e.language != "ptx"]
        if wrong:
            raise UnsupportedOpError(f"target {target.name}: hand-written kernels {', '.join(wrong)} are not PTX")
        mod = _Module(module.name, target)
        for k in module.kernels:
            mod.add_kernel(k)
        hand = {e.name: (k + 1, e) for k, e in enumerate(module.externs)}
        launches = []
        for step in module.steps:
            buffers = [[b.kind, b.index] for b in step.buffers]
            if step.kernel in hand:
                index, ext = hand[step.kernel]
                launches.append({"kernel": ext.name, "buffers": buffers, "grid": ext.grid, "block": ext.block,
                                 "dims": 0, "module": index})
                continue
            name, shape = mod.kernels[step.kernel]
            kernel = next(k for k in module.kernels if k.name == step.kernel)
            launches.append({"kernel": name, "buffers": buffers, "grid": _expr_json(shape.grid),
                             "block": shape.block, "dims": len(kernel.dims)})
        _, ptx = compile_ptx(mod.text(), target)
        extras = {"launches": launches, "arch": target.cpu, "ptx_isa": target.features.lstrip("+"),
                  "num_args": module.num_args, "max_grid": MAX_GRID, "entry": module.entry,
                  "modules": [{"kernel": e.name, "origin": e.origin, "ptx": e.source} for e in module.externs]}
        return GeneratedCode("ptx", ptx, b"", extras)

    def assembly(self, code: GeneratedCode, target: Target) -> str:
        # PTX is the GPU's assembly language (the driver compiles it for the device)
        return ptx_listing(code.source, code.extras.get("modules", []))


def ptx_listing(ptx: str, modules: list[dict]) -> str:
    """The generated PTX, then each hand-written kernel's module under a comment naming it."""
    return ptx + "".join(f"\n// ---- hand-written kernel {m['kernel']}: {m['origin']}\n{m['ptx']}" for m in modules)


register_backend(NVPTXBackend, "built-in")
