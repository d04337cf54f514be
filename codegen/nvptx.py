"""NVIDIA GPU backend ("nvptx"): loop IR -> GPU schedules -> LLVM IR with NVPTX conventions ->
PTX text through LLVM's NVPTX backend (no CUDA C, no NVRTC). runtime/cuda.py runs it.

Schedules (`gpu_schedule`) bind loops to the grid with the GPU loop kinds of the loop IR
(ir/loop.py): a "block" loop spreads its iterations over thread blocks, "thread" loops over
the threads of a block, and `Scratch` buffers live in shared memory or per-thread registers.
Every schedule keeps the meaning of the serial loop nest, so `serial_form` turns a GPU
kernel back into a CPU kernel that gives the same results (the "cuda-emulator" device runs
whole models that way, to check the schedules on a machine without a GPU):

* injective kernels (elementwise, transposes, pads...): all output loops fused into one,
  a block of 256 threads per 256 consecutive outputs, a grid-stride loop beyond the grid;
* reductions whose reads are contiguous along the reduced axis, or with few outputs: one
  block per output, each thread accumulating a strided share, combined by warp shuffles
  and, across warps, through shared memory; other reductions: one thread per output;
* contractions `out[...] = f(sum_r x(...) * y(...))` (matmul, batched matmul, dense,
  convolution as an implicit GEMM) with enough work: 2-D output tiles of up to 128x128 per
  block, staged through shared memory in steps of 8 along the reduction, each of the 256
  threads accumulating an up to 8x8 register tile; the epilogue (bias, activation,
  residual) is fused into the store.

Code generation reuses the CPU emitter's expressions (codegen/llvm_emit.FunctionEmitter):
a kernel is a `ptx_kernel` function of its buffers (device pointers, `noalias`) and the
model's symbolic sizes (int64 values); blocks and threads come from %ctaid.x / %tid.x;
uniform code (in a block loop, outside thread loops) runs in every thread of the block;
barriers separate thread loops where the kernel shares memory between threads; float
math calls libdevice (`__nv_expf`...), linked from the CUDA toolkit's libdevice.10.bc.

`generate` returns GeneratedCode(language="ptx", source=PTX text, obj=b"", extras) with
extras["launches"]: one entry per kernel call of the model, in order:

    {"kernel": name, "buffers": [[kind, index], ...], "grid": extent, "block": threads,
     "dims": number of int64 size parameters after the buffers}

`buffers` are the step's BufferRefs (codegen/backend.py: "arg", "workspace", "table"),
`grid` the block loop's extent as a JSON expression of the symbolic sizes (an int, a
size name, or [op, a, b] with op in add sub mul floordiv mod max min; the launcher caps it
at MAX_GRID: the block loop strides over the rest). That table is the model entry: the
runtime launches it (as one CUDA graph) with device pointers.
"""
from __future__ import annotations

import functools
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import llvmlite.binding as llvm
import llvmlite.ir as ir

from ubique.codegen import llvm_emit as E
from ubique.codegen.backend import Backend, GeneratedCode, KernelModule, ScheduleHints, register_backend
from ubique.errors import ToolchainError, UnsupportedOpError
from ubique.ir import loop as L
from ubique.ir.dtypes import DType
from ubique.ir.loop_analysis import int_bounds, lane_coefficient, linear_index, reduction_identity, reduction_update
from ubique.targets.target import Target

__all__ = ["NVPTXBackend", "gpu_schedule", "serial_form", "find_libdevice", "find_ptxas", "ptxas_check",
           "MAX_GRID", "THREADS"]

THREADS = 256          # threads per block of injective kernels and of contraction tiles
MAX_GRID = 1 << 20     # blocks launched at most; block loops stride over the rest
WARP = 32
MAX_UNROLL = 64        # the emitter unrolls "unrolled" loops up to this constant extent


# =============================================================================================
# Schedules
# =============================================================================================
def _static(e: L.Expr, default: int) -> int:
    return e.value if isinstance(e, L.Const) else default


def _vars(e: L.Node) -> set[str]:
    return {n.name for n in L.walk(e) if isinstance(n, L.Var)}


class _SubstVars(L.Mutator):
    """Replaces variables by name (L.substitute hashes every sub-expression: slow on big kernels)."""

    def __init__(self, mapping: dict):
        self.mapping = {(k.name if isinstance(k, L.Var) else k): v for k, v in mapping.items()}

    def visit_Var(self, n: L.Var):
        return self.mapping.get(n.name, n)


def _subst(n: L.Node, mapping: dict) -> L.Node:
    return _SubstVars(mapping).visit(n) if mapping else n


def _prod(exprs) -> L.Expr:
    out: L.Expr = L.Const(1, L.I64)
    for e in exprs:
        out = out * e
    return out


def _ceil_div(a: L.Expr, b: int) -> L.Expr:
    return (a + (b - 1)) // b


def _decompose(v: L.Expr, axes: list[tuple[L.Var, L.Expr]]) -> dict:
    """Row-major decomposition of a flat index over (variable, extent) axes, outer first."""
    out = {}
    for j, (var, ext) in enumerate(axes):
        inner = _prod(e for _, e in axes[j + 1:])
        q = v // inner
        out[var] = q if j == 0 else q % ext
    return out


def _output_loops(body: L.Stmt, rank: int):
    """The perfectly nested output loops i0..i{rank-1} of a lowered kernel, or None."""
    loops, s = [], body
    for k in range(rank):
        if not (isinstance(s, L.For) and s.var.name == f"i{k}" and s.kind == "serial"):
            return None
        loops.append(s)
        s = s.body
    names = {f.var.name for f in loops}
    if any(_vars(f.extent) & names for f in loops):
        return None
    return loops


def _loads(e: L.Node) -> list[L.Load]:
    return [n for n in L.walk(e) if isinstance(n, L.Load)]


def _contiguous(e: L.Node, var: str) -> bool:
    """Every load in `e` moves by 0 or 1 element per step of `var`, and one by 1."""
    coeffs = {lane_coefficient(linear_index(n.buffer, n.indices), var, set()) for n in _loads(e)}
    return 1 in coeffs and coeffs <= {0, 1}


def _fuse_nest(nest: list[L.For], body: L.Stmt, name: str, kind: str = "serial", lanes: int = 0) -> L.For:
    """One loop over the product of a perfect nest's extents (none may use a nest variable)."""
    v = L.Var(name)
    axes = [(f.var, f.extent) for f in nest]
    return L.For(v, _prod(e for _, e in axes), _subst(body, _decompose(v, axes)), kind, lanes)


def _reduction_nest(f: L.For):
    """(loops, leaf body) if `f` is a perfect nest of serial loops ending in `acc = acc op v`
    whose extents use no nest variable; else None."""
    nest, s = [f], f.body
    while isinstance(s, L.For):
        nest.append(s)
        s = s.body
    if any(g.kind != "serial" for g in nest) or not (isinstance(s, L.Assign) and reduction_update(
            L.For(nest[-1].var, nest[-1].extent, s)) is not None):
        return None
    names = {g.var.name for g in nest}
    if any(_vars(g.extent) & names for g in nest):
        return None
    return nest, s


class _ThreadReductions(L.Mutator):
    """Turns every reduction loop nest into one cross-thread reduction loop; `ok` turns False
    when another kind of loop is found (its work would be repeated by every thread)."""

    def __init__(self, lanes: int):
        self.lanes, self.ok, self.nests = lanes, True, []

    def visit_For(self, n: L.For):
        found = _reduction_nest(n)
        if found is None:
            self.ok = False
            return n
        nest, leaf = found
        self.nests.append((nest, leaf))
        return _fuse_nest(nest, leaf, "_".join(f.var.name for f in nest), "thread", self.lanes)


def _block_threads(reduce_len: int) -> int:
    for limit, threads in ((256, 32), (1024, 64), (4096, 128)):
        if reduce_len <= limit:
            return threads
    return 256


def _wrap(kernel: L.Kernel, body: L.Stmt) -> L.Kernel:
    return L.Kernel(kernel.name, kernel.params, kernel.dims, body)


def _spread(kernel: L.Kernel, loops: list[L.For], threads: int = THREADS) -> L.Kernel:
    """One thread per iteration of the (fused) output loops; blocks of `threads`."""
    fused = _fuse_nest(loops, loops[-1].body, "gi")
    n = fused.extent
    static = _static(n, 0)
    if 0 < static < threads:
        threads = max(WARP, -(-static // WARP) * WARP)
    o, t = L.Var("gb"), L.Var("gt")
    idx = o * threads + t
    body = _subst(fused.body, {fused.var: idx})
    if not (static and static % threads == 0):
        body = L.If(idx.lt(n), body)
    return _wrap(kernel, L.For(o, _ceil_div(n, threads), L.For(t, threads, body, "thread", threads), "block"))


def _single_block(kernel: L.Kernel) -> L.Kernel:
    """A kernel without output loops (a scalar result): one block; its reductions spread over
    the block's threads when every loop of it is a reduction."""
    red = _ThreadReductions(1024)
    body = red.visit(kernel.body)
    if not red.ok or not red.nests:
        body = kernel.body  # (uniform code, one thread)
    return _wrap(kernel, L.For(L.Var("gb"), 1, body, "block"))


def gpu_schedule(kernel: L.Kernel, rank: int, target: Target | None = None) -> L.Kernel:
    """The GPU schedule of a lowered kernel whose output loops are i0..i{rank-1} (see the module
    docstring). Kernels of another shape run in one block."""
    sms = (target.num_cores if target is not None else 0) or 108
    loops = _output_loops(kernel.body, rank) if rank else None
    if loops is None:
        return _single_block(kernel)
    inner = loops[-1].body
    contraction = _match_contraction(loops)
    if contraction is not None and contraction.worth_tiling():
        return _gemm_schedule(kernel, contraction, sms)
    if not any(isinstance(n, L.For) for n in L.walk(inner)):
        return _spread(kernel, loops)
    rows = math.prod(_static(f.extent, 1 << 16) for f in loops)
    red = _ThreadReductions(0)
    red.visit(inner)
    if red.ok and red.nests:
        reduce_len = max(math.prod(_static(f.extent, 4096) for f in nest) for nest, _ in red.nests)
        along_out = all(_contiguous(leaf.value, loops[-1].var.name) for _, leaf in red.nests)
        few_rows = rows < 8 * sms * WARP  # a thread per output would leave the GPU idle
        if reduce_len >= WARP and (few_rows or not along_out):
            threads = _block_threads(reduce_len)
            red = _ThreadReductions(threads)
            body = red.visit(inner)
            fused = _fuse_nest(loops, body, "gb", "block")
            return _wrap(kernel, fused)
    return _spread(kernel, loops)


# ---- contractions: shared-memory tiles and register blocking --------------------------------
@dataclass
class _Term:
    """One accumulator of a contraction: `acc = init; acc += p * q` over the reduction `nest`."""
    acc: L.Var
    init: L.Expr
    nest: list[L.For]            # reduction loops, outer first
    p: L.Expr                    # the factor of the row axes (staged into the "a" tile)
    q: L.Expr                    # the factor of the column axes (the "b" tile)


@dataclass
class _Contraction:
    loops: list[L.For]           # output loops
    terms: list[_Term]           # one or more (a 3x3 convolution fused with a 1x1 shortcut: two)
    store: L.Store
    rows: list[L.For]
    cols: list[L.For]
    batch: list[L.For]

    def size(self, loops, default=256) -> int:
        return math.prod(_static(f.extent, default) for f in loops)

    def worth_tiling(self) -> bool:
        m, n = self.size(self.rows), self.size(self.cols)
        k = sum(self.size(t.nest) for t in self.terms)
        return m >= 16 and n >= 16 and k >= 8 and m * n * k >= 1 << 18


MAX_TERMS = 2


def _match_term(acc: L.Var, init: L.Expr, red: L.Stmt, last: str):
    if not isinstance(red, L.For) or acc.dtype.is_bool:
        return None
    found = _reduction_nest(red)
    if found is None:
        return None
    nest, leaf = found
    upd = leaf.value
    if not (leaf.var == acc and upd.op == "add" and isinstance(upd.b, L.Binary) and upd.b.op == "mul"):
        return None
    x, y = upd.b.a, upd.b.b
    if x.dtype is not acc.dtype or y.dtype is not acc.dtype or acc.name in _vars(x) | _vars(y):
        return None
    vx, vy = _vars(x), _vars(y)
    p, q = (y, x) if (last in vx and last not in vy) else (x, y)
    return _Term(acc, init, nest, p, q)


def _match_contraction(loops: list[L.For]) -> _Contraction | None:
    """`out[i] = f(acc...)` with each `acc = init; acc += x * y` over a reduction nest, where x
    and y each miss some output axis: a (batched) matrix product in disguise."""
    s, accs = loops[-1].body, []
    while isinstance(s, L.Alloc):
        accs.append((s.var, s.init))
        s = s.body
    if not (accs and isinstance(s, L.Seq) and len(s.stmts) == len(accs) + 1 and len(accs) <= MAX_TERMS):
        return None
    store = s.stmts[-1]
    out_vars = [f.var for f in loops]
    if not isinstance(store, L.Store) or list(store.indices) != out_vars:
        return None
    last = out_vars[-1].name
    terms = []
    for (acc, init), red in zip(accs, s.stmts[:-1]):
        term = _match_term(acc, init, red, last)
        if term is None or _vars(init) or any(_vars(f.extent) & {a.name for a, _ in accs} for f in term.nest):
            return None
        terms.append(term)
    layouts = set()
    for t in terms:
        vp, vq = _vars(t.p), _vars(t.q)
        rows = tuple(f.var.name for f in loops if f.var.name in vp and f.var.name not in vq)
        cols = tuple(f.var.name for f in loops if f.var.name in vq and f.var.name not in vp)
        layouts.add((rows, cols))
    if len(layouts) != 1:
        return None
    rows, cols = layouts.pop()
    if not rows or not cols:
        return None
    return _Contraction(loops, terms, store, [f for f in loops if f.var.name in rows],
                        [f for f in loops if f.var.name in cols],
                        [f for f in loops if f.var.name not in rows and f.var.name not in cols])


def _tile_sizes(m: int, n: int, tiles_other: int, sms: int, terms: int) -> tuple[int, int]:
    def pick(x):
        return 128 if x >= 128 else 64 if x >= 64 else 32
    bm, bn = pick(m), pick(n)
    while (bm > 32 or bn > 32) and (tiles_other * -(-m // bm) * -(-n // bn) < sms
                                    or terms * (bm // 16) * (bn // 16) > 64):
        if bm >= bn:
            bm //= 2
        else:
            bn //= 2
    return bm, bn


def _gemm_schedule(kernel: L.Kernel, c: _Contraction, sms: int) -> L.Kernel:
    """The tiled contraction: see the module docstring. Per block an output tile of bm x bn
    (rows x columns), staged in steps of BK reduction elements; thread t of the 16 x 16
    thread grid owns tm x tn outputs (interleaved in groups of 4 when the tile is 8 wide,
    so shared-memory reads and global stores of a warp are contiguous). A contraction with
    several accumulators runs one reduction after the other into separate registers."""
    dt = c.terms[0].acc.dtype
    if any(t.acc.dtype is not dt for t in c.terms):
        return _spread(kernel, c.loops)
    bk, threads, side = 8, THREADS, 16
    m_ext, n_ext = _prod(f.extent for f in c.rows), _prod(f.extent for f in c.cols)
    batch_ext = _prod(f.extent for f in c.batch)
    bm, bn = _tile_sizes(c.size(c.rows), c.size(c.cols), c.size(c.batch, 1), sms, len(c.terms))
    tm, tn = bm // side, bn // side
    tiles_m, tiles_n = _ceil_div(m_ext, bm), _ceil_div(n_ext, bn)
    row_axes = [(f.var, f.extent) for f in c.rows]
    col_axes = [(f.var, f.extent) for f in c.cols]
    batch_axes = [(f.var, f.extent) for f in c.batch]
    acc = L.Buffer("gemm_acc", dt, [threads, len(c.terms), tm, tn])
    gb, gbatch, gm0, gn0 = L.Var("gb"), L.Var("g_batch"), L.Var("g_m0"), L.Var("g_n0")
    zero = L.Const(0, dt)
    scratch = []

    def offset(thread_coord: L.Expr, j: L.Expr, per: int, tile: int) -> L.Expr:
        if per == 8:  # two groups of 4, half a tile apart
            return (j // 4) * (tile // 2) + thread_coord * 4 + j % 4
        return thread_coord * per + j

    def thread_coords(t: L.Var, tag: str, body_fn):
        ty, tx = L.Var(f"g_ty{tag}"), L.Var(f"g_tx{tag}")
        return L.Let(ty, t // side, L.Let(tx, t % side, body_fn(ty, tx)))

    def reduction(j: int, term: _Term) -> L.Stmt:
        """Stage both tiles of term j step by step along its reduction, multiply them."""
        red_axes = [(f.var, f.extent) for f in term.nest]
        k_ext = _prod(e for _, e in red_axes)
        gk = L.Var(f"g_k{j}")
        k_inner = term.nest[-1].var.name

        def stage(operand: L.Expr, axes, base: L.Var, extent: L.Expr, width: int, tag: str):
            # stage along k (consecutive threads read consecutive k) where the operand is contiguous in k
            kmajor = _contiguous(operand, k_inner) and not _contiguous(operand, axes[-1][0].name)
            tile = L.Buffer(f"gemm_{tag}{j}", dt, [bk, width + (4 if kmajor else 0)])
            scratch.append(tile)
            t, e = L.Var(f"g_t{tag}{j}"), L.Var(f"g_e{tag}{j}")
            kv, xv = L.Var(f"g_k{tag}{j}"), L.Var(f"g_x{tag}{j}")
            idx = e * threads + t
            kk, xx = (idx % bk, idx // bk) if kmajor else (idx // width, idx % width)
            gx, gkk = base + xv, gk * bk + kv
            mapping = {**_decompose(gx, axes), **_decompose(gkk, red_axes), **_decompose(gbatch, batch_axes)}
            cond = L.logical_and(gx.lt(extent), gkk.lt(k_ext))
            body = L.Let(kv, kk, L.Let(xv, xx, L.If(cond, L.Store(tile, [kv, xv], _subst(operand, mapping)),
                                                    L.Store(tile, [kv, xv], zero))))
            loop = L.For(t, threads, L.For(e, width * bk // threads, body, "unrolled"), "thread", threads)
            return tile, loop

        a_tile, stage_a = stage(term.p, row_axes, gm0, m_ext, bm, "a")
        b_tile, stage_b = stage(term.q, col_axes, gn0, n_ext, bn, "b")
        t2, kk2, a2, c2 = L.Var(f"g_t2{j}"), L.Var(f"g_kk{j}"), L.Var(f"g_i2{j}"), L.Var(f"g_j2{j}")

        def compute(ty, tx):
            a_val = L.Load(a_tile, [kk2, offset(ty, a2, tm, bm)])
            b_val = L.Load(b_tile, [kk2, offset(tx, c2, tn, bn)])
            upd = L.Store(acc, [t2, j, a2, c2], L.Load(acc, [t2, j, a2, c2]) + a_val * b_val)
            return L.For(kk2, bk, L.For(a2, tm, L.For(c2, tn, upd, "unrolled"), "unrolled"))

        multiply = L.For(t2, threads, thread_coords(t2, f"2{j}", compute), "thread", threads)
        return L.For(gk, _ceil_div(k_ext, bk), L.Seq([stage_a, stage_b, multiply]))

    # accumulators
    t0, a0, c0 = L.Var("g_t0"), L.Var("g_i0"), L.Var("g_j0")
    init = L.For(t0, threads, L.Seq([
        L.For(a0, tm, L.For(c0, tn, L.Store(acc, [t0, j, a0, c0], term.init), "unrolled"), "unrolled")
        for j, term in enumerate(c.terms)]), "thread", threads)
    steps = [reduction(j, term) for j, term in enumerate(c.terms)]
    # epilogue: the kernel's own store, at each output of the thread's tile
    t3, a3, c3 = L.Var("g_t3"), L.Var("g_i3"), L.Var("g_j3")
    gm, gn = L.Var("g_m"), L.Var("g_n")

    def epilogue(ty, tx):
        mapping = {**_decompose(gm, row_axes), **_decompose(gn, col_axes), **_decompose(gbatch, batch_axes)}
        mapping.update({term.acc: L.Load(acc, [t3, j, a3, c3]) for j, term in enumerate(c.terms)})
        guarded = L.If(L.logical_and(gm.lt(m_ext), gn.lt(n_ext)), _subst(c.store, mapping))
        return L.For(a3, tm, L.For(c3, tn, L.Let(gm, gm0 + offset(ty, a3, tm, bm),
                                                 L.Let(gn, gn0 + offset(tx, c3, tn, bn), guarded)), "unrolled"),
                     "unrolled")

    finish = L.For(t3, threads, thread_coords(t3, "3", epilogue), "thread", threads)
    tiles = tiles_m * tiles_n
    block_body = L.Let(gbatch, gb // tiles, L.Let(gm0, (gb // tiles_n % tiles_m) * bm, L.Let(
        gn0, gb % tiles_n * bn, L.Seq([init, *steps, finish]))))
    body = L.Scratch(acc, "local", L.For(gb, batch_ext * tiles, block_body, "block"))
    for tile in reversed(scratch):
        body = L.Scratch(tile, "shared", body)
    return _wrap(kernel, body)


def serial_form(kernel: L.Kernel) -> tuple[L.Kernel, list[L.Buffer]]:
    """The GPU kernel as a CPU kernel with the same results: block and thread loops serial, and
    each Scratch buffer an extra parameter after the kernel's own (returned, in order)."""
    scratch: list[L.Buffer] = []

    class _Serial(L.Mutator):
        def visit_For(self, n: L.For):
            gpu = n.kind in ("block", "thread")
            return L.For(n.var, self.visit(n.extent), self.visit(n.body), "serial" if gpu else n.kind,
                         0 if gpu else n.lanes)

        def visit_Scratch(self, n: L.Scratch):
            scratch.append(n.buffer)
            return self.visit(n.body)

    body = _Serial().visit(kernel.body)
    return L.Kernel(kernel.name, list(kernel.params) + scratch, kernel.dims, body), scratch


# =============================================================================================
# Code generation
# =============================================================================================
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
        static = _static(s.extent, 0)
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


def _ptx_name(name: str) -> str:
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
        name = _ptx_name(kernel.name)
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


# ---- libdevice and ptxas ----------------------------------------------------------------------
def _libdevice_candidates():
    env = os.environ.get("UBIQUE_LIBDEVICE")
    if env:
        yield Path(env)
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            yield Path(os.environ[var]) / "nvvm" / "libdevice" / "libdevice.10.bc"
    yield Path("/usr/local/cuda/nvvm/libdevice/libdevice.10.bc")
    yield from sorted(Path("/usr/local").glob("cuda-*/nvvm/libdevice/libdevice.10.bc"), reverse=True)
    yield Path("/usr/lib/nvidia-cuda-toolkit/libdevice/libdevice.10.bc")
    ptxas = shutil.which("ptxas")
    if ptxas:
        yield Path(ptxas).resolve().parent.parent / "nvvm" / "libdevice" / "libdevice.10.bc"
    try:  # Python packages that ship it: nvidia-cuda-nvcc, triton
        import importlib.util

        for pkg, rel in (("nvidia.cuda_nvcc", "nvvm/libdevice/libdevice.10.bc"),
                         ("nvidia.cu13", "nvvm/libdevice/libdevice.10.bc"),
                         ("triton", "backends/nvidia/lib/libdevice.10.bc")):
            spec = importlib.util.find_spec(pkg)
            for loc in (spec.submodule_search_locations or []) if spec else []:
                yield Path(loc) / rel
    except (ImportError, ValueError):
        pass


@functools.lru_cache(maxsize=None)
def find_libdevice() -> Path | None:
    """libdevice.10.bc (the CUDA toolkit's math library as LLVM bitcode): $UBIQUE_LIBDEVICE,
    $CUDA_HOME, /usr/local/cuda*, next to ptxas, or a Python package that ships it."""
    for p in _libdevice_candidates():
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=1)
def _libdevice_bytes(path: Path) -> bytes:
    return path.read_bytes()


def find_ptxas() -> str | None:
    """The ptxas executable ($UBIQUE_PTXAS, PATH, $CUDA_HOME/bin, /usr/local/cuda/bin), or None."""
    env = os.environ.get("UBIQUE_PTXAS")
    if env:
        return env if Path(env).is_file() else None
    found = shutil.which("ptxas")
    if found:
        return found
    for base in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if base and (Path(base) / "bin" / "ptxas").is_file():
            return str(Path(base) / "bin" / "ptxas")
    return None


def ptxas_check(ptx: str, arch: str, ptxas: str | None = None) -> str:
    """Assembles PTX text for `arch` ("sm_80") with ptxas; returns its messages (warnings).

    Raises:
        ToolchainError: ptxas is not installed, or rejects the PTX (with its messages).
    """
    ptxas = ptxas or find_ptxas()
    if ptxas is None:
        raise ToolchainError("ptxas not found: install the CUDA toolkit (or pip install nvidia-cuda-nvcc) "
                             "or set UBIQUE_PTXAS")
    with tempfile.TemporaryDirectory(prefix="ubique-ptx-") as tmp:
        src = Path(tmp) / "module.ptx"
        src.write_text(ptx)
        proc = subprocess.run([ptxas, f"-arch={arch}", "-o", str(Path(tmp) / "module.cubin"), str(src)],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"ptxas -arch={arch} rejected the PTX:\n{(proc.stderr or proc.stdout).strip()}")
    return (proc.stderr + proc.stdout).strip()


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
        lib = llvm.parse_bitcode(_libdevice_bytes(path))
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
    extern_languages = ()

    def schedule(self, kernel: L.Kernel, hints: ScheduleHints, target: Target) -> L.Kernel:
        return gpu_schedule(kernel, hints.out_rank, target)

    def layout_lanes(self, target: Target) -> int:
        return 0  # no CPU SIMD layouts (channel blocking, packed matmul operands)

    def generate(self, module: KernelModule, target: Target) -> GeneratedCode:
        if module.externs:
            raise UnsupportedOpError(f"target {target.name}: hand-written kernels "
                                     f"({', '.join(e.name for e in module.externs)}) are not supported on GPUs yet")
        mod = _Module(module.name, target)
        for k in module.kernels:
            mod.add_kernel(k)
        launches = []
        for step in module.steps:
            name, shape = mod.kernels[step.kernel]
            kernel = next(k for k in module.kernels if k.name == step.kernel)
            launches.append({"kernel": name, "buffers": [[b.kind, b.index] for b in step.buffers],
                             "grid": _expr_json(shape.grid), "block": shape.block, "dims": len(kernel.dims)})
        _, ptx = compile_ptx(mod.text(), target)
        extras = {"launches": launches, "arch": target.cpu, "ptx_isa": target.features.lstrip("+"),
                  "num_args": module.num_args, "max_grid": MAX_GRID, "entry": module.entry}
        return GeneratedCode("ptx", ptx, b"", extras)

    def assembly(self, code: GeneratedCode, target: Target) -> str:
        return code.source  # PTX is the GPU's assembly language (the driver compiles it for the device)


register_backend(NVPTXBackend, "built-in")
