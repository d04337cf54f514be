"""Schedule primitives on loop nests (split, fuse, reorder, vectorize, parallel, unroll)
and the default CPU schedule that lowering applies."""
from __future__ import annotations

from dataclasses import dataclass

from ubique.errors import VerifyError
from ubique.ir import loop as L

# Below this many scalar operations a kernel runs on one thread: waking the pool costs more.
PARALLEL_MIN_WORK = 1 << 15


def find_loop(s: L.Stmt, name: str) -> L.For:
    for n in L.walk(s):
        if isinstance(n, L.For) and n.var.name == name:
            return n
    raise VerifyError(f"schedule: no loop named {name!r}")


class _Replace(L.Mutator):
    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def visit_For(self, n: L.For):
        if n.var.name == self.name:
            return self.fn(n)
        return L.For(n.var, n.extent, self.visit(n.body), n.kind, n.lanes)


def _replace_loop(s: L.Stmt, name: str, fn) -> L.Stmt:
    find_loop(s, name)
    return _Replace(name, fn).visit(s)


def set_kind(s: L.Stmt, name: str, kind: str, lanes: int = 0) -> L.Stmt:
    return _replace_loop(s, name, lambda f: L.For(f.var, f.extent, f.body, kind, lanes))


def vectorize(s, name, lanes: int = 0):
    """Marks a loop vectorized; `lanes` above the register width gives several independent
    vector accumulators per iteration (LLVM splits the wide vector into registers)."""
    if lanes and (lanes < 2 or lanes & (lanes - 1)):
        raise VerifyError(f"schedule: vector width must be a power of two >= 2 (or 0 for the target's), got {lanes}")
    return set_kind(s, name, "vectorized", lanes)
def parallel(s, name): return set_kind(s, name, "parallel")
def unroll(s, name): return set_kind(s, name, "unrolled")


def split(s: L.Stmt, name: str, factor: int) -> L.Stmt:
    """for v < n  ->  for v.o < ceil(n/f): for v.i < min(f, n - v.o*f): body[v := v.o*f + v.i]
    (the inner extent shrinks for the last block, so no guard is needed)."""
    if not isinstance(factor, int) or factor < 1:
        raise VerifyError(f"schedule: split factor must be a positive int, got {factor!r}")

    def fn(f: L.For):
        outer, inner = L.Var(name + "_o"), L.Var(name + "_i")
        n = f.extent
        n_outer = (n + (factor - 1)) // factor
        if isinstance(n, L.Const) and n.value % factor == 0:
            inner_ext = L.Const(factor, L.I64)
        else:
            inner_ext = L.emin(factor, n - outer * factor)
        body = L.substitute(f.body, {f.var: outer * factor + inner})
        return L.For(outer, n_outer, L.For(inner, inner_ext, body, f.kind, f.lanes))
    return _replace_loop(s, name, fn)


def fuse(s: L.Stmt, outer_name: str, inner_name: str) -> L.Stmt:
    """Two perfectly nested loops -> one loop over the product of their extents."""
    def fn(f: L.For):
        inner = f.body
        if not (isinstance(inner, L.For) and inner.var.name == inner_name):
            raise VerifyError(f"schedule: fuse needs {inner_name!r} directly inside {outer_name!r}")
        if any(isinstance(v, L.Var) and v.name == outer_name for v in L.walk(inner.extent)):
            raise VerifyError(f"schedule: cannot fuse: the extent of {inner_name!r} depends on {outer_name!r}")
        fused = L.Var(f"{outer_name}_{inner_name}")
        body = L.substitute(inner.body, {f.var: fused // inner.extent, inner.var: fused % inner.extent})
        return L.For(fused, f.extent * inner.extent, body, f.kind, f.lanes)
    return _replace_loop(s, outer_name, fn)


def reorder(s: L.Stmt, outer_name: str, inner_name: str) -> L.Stmt:
    """Swaps two perfectly nested loops (the inner extent must not use the outer variable)."""
    def fn(f: L.For):
        inner = f.body
        if not (isinstance(inner, L.For) and inner.var.name == inner_name):
            raise VerifyError(f"schedule: reorder needs {inner_name!r} directly inside {outer_name!r}")
        if any(isinstance(v, L.Var) and v.name == outer_name for v in L.walk(inner.extent)):
            raise VerifyError(f"schedule: extent of {inner_name!r} depends on {outer_name!r}")
        return L.For(inner.var, inner.extent, L.For(f.var, f.extent, inner.body, f.kind, f.lanes),
                     inner.kind, inner.lanes)
    return _replace_loop(s, outer_name, fn)


def static_extent(e: L.Expr, default: int = 1 << 20) -> int:
    """A loop extent's value if it is a constant, else `default` (a symbolic size: taken as large)."""
    return e.value if isinstance(e, L.Const) else default


# Register tile of contraction kernels: at least ROWS output rows x (up to 4 x vector width)
# columns; with narrower columns (a channel-blocked convolution: one vector per row) more rows,
# up to the target's accumulator budget.
ROWS = 4


def tile_rows(extent: int, vectors_per_row: int, accumulators: int) -> int:
    """Rows of a register tile: as many as the accumulator budget allows, preferring a
    count that divides the row extent (no tail), never fewer than ROWS."""
    budget = max(ROWS, accumulators // vectors_per_row)
    if extent <= budget:
        return extent
    for rows in range(budget, max(ROWS, budget // 2) - 1, -1):
        if extent % rows == 0:
            return rows
    return budget


@dataclass(frozen=True)
class TileKnobs:
    """Tunable register-tile parameters of a contraction kernel (compiler/tuning.py searches
    them); None keeps the default choice."""
    rows: int | None = None      # output rows unrolled and jammed
    vectors: int | None = None   # tile width in vectors: 1, 2 or 4

    def to_json(self) -> dict:
        return {"rows": self.rows, "vectors": self.vectors}


def default_schedule(kernel: L.Kernel, rank: int, work: int, lanes: int, threads: int,
                     accumulators: int = 16, knobs: TileKnobs | None = None) -> L.Kernel:
    """Vectorize the innermost output loop; run the outer output loops (fused) in parallel
    when there is enough work; a 1-D (or short-outer) kernel is split into parallel chunks.
    Kernels with a reduction inside (matmul, conv, pooling) get a register tile: several
    rows unrolled and jammed around a wide vector of columns."""
    body = kernel.body
    if rank == 0:
        return L.Kernel(kernel.name, kernel.params, kernel.dims, _vectorize_contiguous_reductions(body, lanes))
    names = [f"i{k}" for k in range(rank)]
    inner = find_loop(body, names[-1])
    cols = static_extent(inner.extent)
    reduces = any(isinstance(n, L.For) for n in L.walk(inner.body))
    if reduces and not (cols > 1 and _contiguous(inner, names[-1])):
        # the output's last axis reads memory with a stride: vectorize the reduction instead
        vectorized = _vectorize_contiguous_reductions(body, lanes)
        if vectorized is not body:
            body, cols, reduces = vectorized, 1, False
    parallel_ok = work >= PARALLEL_MIN_WORK and threads > 1
    # (a symbolic row count, such as a batch, is taken to be large)
    if cols > 1 and reduces and rank >= 2 and static_extent(find_loop(body, names[-2]).extent) >= ROWS \
            and cols >= lanes:
        return L.Kernel(kernel.name, kernel.params, kernel.dims,
                        simplify_indices(_register_tile(body, names, cols, lanes, threads, parallel_ok,
                                                        accumulators, knobs or TileKnobs())))
    if cols > 1:
        # with a reduction loop inside, a 4x wider vector gives 4 independent accumulator
        # chains, hiding FMA latency (LLVM splits the wide vector into registers)
        wide = 4 * lanes if reduces and cols >= 4 * lanes else 0
        body = vectorize(body, names[-1], wide)
    if parallel_ok:
        serial_names = names[:-1] if cols > 1 else names  # a vectorized last loop stays inside
        outer_extent = 1
        for n in serial_names:
            outer_extent *= static_extent(find_loop(body, n).extent)
        if serial_names and outer_extent >= threads:
            body = _parallel_fused(body, serial_names)
        elif cols >= 2 * lanes * threads:
            chunk = -(-cols // (threads * 4))
            chunk = max(lanes, -(-chunk // lanes) * lanes)
            body = split(body, names[-1], chunk)
            body = parallel(body, names[-1] + "_o")
    return L.Kernel(kernel.name, kernel.params, kernel.dims, simplify_indices(body))


def _vectorize_contiguous_reductions(body: L.Stmt, lanes: int) -> L.Stmt:
    """Vectorizes innermost reduction loops `acc = acc op f(x[..., r])` that read memory
    contiguously along r (sum/max over the last axis, softmax, layer_norm) when the
    output itself is not vectorized along its last axis."""
    from ubique.ir.loop_analysis import lane_coefficient, linear_index, reduction_update

    for f in list(L.walk(body)):
        if not (isinstance(f, L.For) and reduction_update(f) is not None):
            continue
        upd = f.body.value
        coeffs = {lane_coefficient(linear_index(n.buffer, n.indices), f.var.name, set())
                  for n in L.walk(upd.b) if isinstance(n, L.Load)}
        if 1 in coeffs and coeffs <= {0, 1} and static_extent(f.extent) >= lanes:
            body = vectorize(body, f.var.name, 4 * lanes if static_extent(f.extent) >= 8 * lanes else 0)
    return body


def _contiguous(loop: L.For, var: str) -> bool:
    """Every load and store in `loop` moves by 0 or 1 element per step of `var`."""
    from ubique.ir.loop_analysis import lane_coefficient, linear_index

    return all(lane_coefficient(linear_index(n.buffer, n.indices), var, set()) in (0, 1)
               for n in L.walk(loop) if isinstance(n, (L.Load, L.Store)))


def _parallel_fused(body: L.Stmt, names: list[str]) -> L.Stmt:
    fused = names[0]
    for n in names[1:]:
        body = fuse(body, fused, n)
        fused = f"{fused}_{n}"
    return parallel(body, fused)


def _register_tile(body, names, cols, lanes, threads, parallel_ok, accumulators, knobs: TileKnobs):
    """Column panels of one wide vector outermost (the panel of the right-hand operand,
    reduction length x panel width, stays in L2 while every row block uses it), then
    blocks of rows unrolled and jammed around the panel's accumulators."""
    row, col = names[-2], names[-1]
    vectors = knobs.vectors or (4 if cols >= 4 * lanes else 1)
    width = vectors * lanes if vectors * lanes <= cols else lanes
    body = split(body, col, width)
    col_o, col_i = col + "_o", col + "_i"
    body = reorder(body, row, col_o)
    body = vectorize(body, col_i, width if width > lanes else 0)
    extent = static_extent(find_loop(body, row).extent)
    rows = knobs.rows or (tile_rows(extent, width // lanes, accumulators) if width == lanes else ROWS)
    body = peel(body, row, max(1, min(rows, extent)))
    body = reorder(body, row + "_i", col_i)
    body = unroll_jam(body, row + "_i")
    if parallel_ok:
        batch = 1
        for n in names[:-2]:
            batch *= static_extent(find_loop(body, n).extent)
        if names[:-2] and batch >= threads:
            body = _parallel_fused(body, names[:-2])
        else:  # threads share each panel (each keeps a copy in its L2) and split its rows
            body = parallel(body, row + "_o")
    return body


def peel(s: L.Stmt, name: str, factor: int) -> L.Stmt:
    """for v < n  ->  for v_o < n//f: for v_i < f: body[v := v_o*f + v_i]
    followed by  for v_r < n%f: body[v := (n//f)*f + v_r]  (every inner extent is constant;
    for a symbolic n the tail loop is always there and runs n%f times)."""
    if not isinstance(factor, int) or factor < 1:
        raise VerifyError(f"schedule: peel factor must be a positive int, got {factor!r}")

    def fn(f: L.For):
        outer, inner, rest = L.Var(name + "_o"), L.Var(name + "_i"), L.Var(name + "_r")
        if not isinstance(f.extent, L.Const):
            n = f.extent
            main = L.For(outer, n // factor, L.For(inner, factor, L.substitute(f.body, {f.var: outer * factor + inner}),
                                                   f.kind, f.lanes))
            tail = L.For(rest, n % factor, L.substitute(f.body, {f.var: (n // factor) * factor + rest}),
                         f.kind, f.lanes)
            return L.Seq([main, tail])
        n = f.extent.value
        main = L.For(outer, n // factor, L.For(inner, factor, L.substitute(f.body, {f.var: outer * factor + inner}),
                                               f.kind, f.lanes))
        if n % factor == 0:
            return main
        tail = L.For(rest, n % factor, L.substitute(f.body, {f.var: (n // factor) * factor + rest}), f.kind, f.lanes)
        return L.Seq([main, tail])
    return _replace_loop(s, name, fn)


class _RenameLocals(L.Mutator):
    """Gives every local (var / let) a suffix, so unrolled copies do not share registers."""

    def __init__(self, suffix: str):
        self.suffix, self.names = suffix, {}

    def var(self, v: L.Var) -> L.Var:
        return L.Var(v.name + self.suffix, v.dtype)

    def visit_Var(self, v):
        return self.var(v) if v.name in self.names else v

    def visit_Alloc(self, n):
        self.names[n.var.name] = True
        return L.Alloc(self.var(n.var), self.visit(n.init), self.visit(n.body))

    def visit_Let(self, n):
        value = self.visit(n.value)
        self.names[n.var.name] = True
        return L.Let(self.var(n.var), value, self.visit(n.body))

    def visit_Assign(self, n):
        return L.Assign(self.visit(n.var), self.visit(n.value))


def _jam(copies: list) -> L.Stmt:
    """Merges structurally identical statements: shared loops, nested locals, sequenced leaves."""
    first = copies[0]
    if all(isinstance(c, L.Alloc) for c in copies):
        body = _jam([c.body for c in copies])
        for c in reversed(copies):
            body = L.Alloc(c.var, c.init, body)
        return body
    if all(isinstance(c, L.Seq) and len(c.stmts) == len(first.stmts) for c in copies):
        return L.Seq([_jam(list(parts)) for parts in zip(*(c.stmts for c in copies))])
    if all(isinstance(c, L.For) and (c.var, c.extent, c.kind) == (first.var, first.extent, first.kind)
           for c in copies):
        return L.For(first.var, first.extent, _jam([c.body for c in copies]), first.kind, first.lanes)
    return L.Seq(copies)


def unroll_jam(s: L.Stmt, name: str) -> L.Stmt:
    """Unrolls a constant-extent loop and fuses the copies' inner loops (register tiling):
    each copy keeps its own accumulators while they share the reduction loops."""
    def fn(f: L.For):
        if not isinstance(f.extent, L.Const):
            raise VerifyError(f"schedule: unroll_jam needs a constant extent for {name!r}")
        copies = [_RenameLocals(f"_{j}").visit(L.substitute(f.body, {f.var: L.Const(j, L.I64)}))
                  for j in range(f.extent.value)]
        return _jam(copies)
    return _replace_loop(s, name, fn)


class _SimplifyIndices(L.Mutator):
    """(x*c + y) // c -> x and (x*c + y) % c -> y where 0 <= y < c is known from loop
    bounds: a split loop over a packed or reshaped axis then indexes memory affinely
    (contiguous vector loads instead of gathers)."""

    def __init__(self):
        self.ranges: dict[str, tuple[int, int]] = {}

    def visit_For(self, n: L.For):
        from ubique.ir.loop_analysis import int_bounds

        hi = int_bounds(n.extent, self.ranges)
        if hi is not None and hi[1] >= 1:
            self.ranges[n.var.name] = (0, hi[1] - 1)
        body = self.visit(n.body)
        self.ranges.pop(n.var.name, None)
        return L.For(n.var, n.extent, body, n.kind, n.lanes)

    def visit_Binary(self, n: L.Binary):
        from ubique.ir.loop_analysis import int_bounds

        a, b = self.visit(n.a), self.visit(n.b)
        if n.op in ("floordiv", "mod") and isinstance(b, L.Const) and isinstance(b.value, int) and b.value > 0 \
                and isinstance(a, L.Binary) and a.op == "add":
            c = b.value
            for high, low in ((a.a, a.b), (a.b, a.a)):
                quotient = _multiple_of(high, c)
                bounds = int_bounds(low, self.ranges)
                if quotient is not None and bounds is not None and 0 <= bounds[0] and bounds[1] < c:
                    return quotient if n.op == "floordiv" else low
        return L.binary(n.op, a, b)


def _multiple_of(e: L.Expr, c: int):
    """q with e == q * c, for e = q * c or c * q; else None."""
    if isinstance(e, L.Binary) and e.op == "mul":
        for q, k in ((e.a, e.b), (e.b, e.a)):
            if isinstance(k, L.Const) and k.value == c:
                return q
    return None


def simplify_indices(body: L.Stmt) -> L.Stmt:
    return _SimplifyIndices().visit(body)
