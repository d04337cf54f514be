"""Schedule primitives on loop nests (split, fuse, reorder, vectorize, parallel, unroll)
and the default CPU schedule that lowering applies."""
from __future__ import annotations

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
        return L.For(n.var, n.extent, self.visit(n.body), n.kind)


def _replace_loop(s: L.Stmt, name: str, fn) -> L.Stmt:
    find_loop(s, name)
    return _Replace(name, fn).visit(s)


def set_kind(s: L.Stmt, name: str, kind: str) -> L.Stmt:
    return _replace_loop(s, name, lambda f: L.For(f.var, f.extent, f.body, kind))


def vectorize(s, name): return set_kind(s, name, "vectorized")
def parallel(s, name): return set_kind(s, name, "parallel")
def unroll(s, name): return set_kind(s, name, "unrolled")


def split(s: L.Stmt, name: str, factor: int) -> L.Stmt:
    """for v < n  ->  for v.o < ceil(n/f): for v.i < min(f, n - v.o*f): body[v := v.o*f + v.i]
    (the inner extent shrinks for the last block, so no guard is needed)."""
    def fn(f: L.For):
        outer, inner = L.Var(name + "_o"), L.Var(name + "_i")
        n = f.extent
        n_outer = (n + (factor - 1)) // factor
        if isinstance(n, L.Const) and n.value % factor == 0:
            inner_ext = L.Const(factor, L.I64)
        else:
            inner_ext = L.emin(factor, n - outer * factor)
        body = L.substitute(f.body, {f.var: outer * factor + inner})
        return L.For(outer, n_outer, L.For(inner, inner_ext, body, f.kind))
    return _replace_loop(s, name, fn)


def fuse(s: L.Stmt, outer_name: str, inner_name: str) -> L.Stmt:
    """Two perfectly nested loops -> one loop over the product of their extents."""
    def fn(f: L.For):
        inner = f.body
        if not (isinstance(inner, L.For) and inner.var.name == inner_name):
            raise VerifyError(f"schedule: fuse needs {inner_name!r} directly inside {outer_name!r}")
        fused = L.Var(f"{outer_name}_{inner_name}")
        body = L.substitute(inner.body, {f.var: fused // inner.extent, inner.var: fused % inner.extent})
        return L.For(fused, f.extent * inner.extent, body, f.kind)
    return _replace_loop(s, outer_name, fn)


def reorder(s: L.Stmt, outer_name: str, inner_name: str) -> L.Stmt:
    """Swaps two perfectly nested loops (the inner extent must not use the outer variable)."""
    def fn(f: L.For):
        inner = f.body
        if not (isinstance(inner, L.For) and inner.var.name == inner_name):
            raise VerifyError(f"schedule: reorder needs {inner_name!r} directly inside {outer_name!r}")
        if any(isinstance(v, L.Var) and v.name == outer_name for v in L.walk(inner.extent)):
            raise VerifyError(f"schedule: extent of {inner_name!r} depends on {outer_name!r}")
        return L.For(inner.var, inner.extent, L.For(f.var, f.extent, inner.body, f.kind), inner.kind)
    return _replace_loop(s, outer_name, fn)


def _static(e: L.Expr, default: int = 1 << 20) -> int:
    return e.value if isinstance(e, L.Const) else default


def default_schedule(kernel: L.Kernel, rank: int, work: int, lanes: int, threads: int) -> L.Kernel:
    """Vectorize the innermost output loop; run the outer output loops (fused) in parallel
    when there is enough work; a 1-D (or short-outer) kernel is split into parallel chunks."""
    body = kernel.body
    if rank == 0:
        return kernel
    names = [f"i{k}" for k in range(rank)]
    inner = find_loop(body, names[-1])
    vec = _static(inner.extent) > 1
    if vec:
        body = vectorize(body, names[-1])
    if work >= PARALLEL_MIN_WORK and threads > 1:
        outer_extent = 1
        for n in names[:-1]:
            outer_extent *= _static(find_loop(body, n).extent)
        if rank >= 2 and outer_extent >= threads:
            fused = names[0]
            for n in names[1:-1]:
                body = fuse(body, fused, n)
                fused = f"{fused}_{n}"
            body = parallel(body, fused)
        elif _static(inner.extent) >= 2 * lanes * threads:
            n = _static(inner.extent)
            chunk = -(-n // (threads * 4))
            chunk = max(lanes, -(-chunk // lanes) * lanes)
            body = split(body, names[-1], chunk)
            body = parallel(body, names[-1] + "_o")
    return L.Kernel(kernel.name, kernel.params, kernel.dims, body)
