"""GPU schedules: loop IR kernels bound to the grid of an NVIDIA GPU (codegen/nvptx.py emits them).

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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ubique.compiler.schedule import static_extent
from ubique.ir import loop as L
from ubique.ir.loop_analysis import lane_coefficient, linear_index, reduction_update
from ubique.targets.target import Target

__all__ = ["gpu_schedule", "serial_form", "THREADS", "WARP"]

THREADS = 256          # threads per block of injective kernels and of contraction tiles
WARP = 32


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
    static = static_extent(n, 0)
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
    rows = math.prod(static_extent(f.extent, 1 << 16) for f in loops)
    red = _ThreadReductions(0)
    red.visit(inner)
    if red.ok and red.nests:
        reduce_len = max(math.prod(static_extent(f.extent, 4096) for f in nest) for nest, _ in red.nests)
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
        return math.prod(static_extent(f.extent, default) for f in loops)

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
