"""Lowering: a fused group of graph nodes -> one loop-IR kernel.

The root's compute is evaluated at the output index; reads of inlined members
call their computes, reads of scalar constants become literals, other reads
become loads of kernel parameters. Reductions in the resulting expression are
then materialised as accumulators with serial loops, and the loop nest over the
output is scheduled (compiler/schedule.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ubique.compiler.fusion import Group
from ubique.errors import VerifyError
from ubique.ir import loop as L
from ubique.ir.dtypes import DType
from ubique.ir.graph import Value
from ubique.ir.loop_analysis import int_bounds, reduction_identity
from ubique.ir.registry import ComputeContext, dim_expr, get_op


@dataclass
class LoweredKernel:
    kernel: L.Kernel
    inputs: list[Value]   # graph values bound to kernel.params[:-1], in order
    output: Value         # bound to kernel.params[-1]
    work: int             # estimated scalar operations (for scheduling and reports)
    seconds: float = 0.0  # time spent lowering, scheduling and emitting it (LLVM's share is per module)


class _Names:
    def __init__(self):
        self.counts: dict[str, int] = {}

    def fresh(self, prefix: str) -> L.Var:
        k = self.counts.get(prefix, 0)
        self.counts[prefix] = k + 1
        return L.Var(f"{prefix}{k}")


def _is_scalar_constant(v: Value) -> bool:
    return v.node is not None and v.node.op == "constant" and v.type.size == 1


def lower_group(group: Group, name: str) -> LoweredKernel:
    members = {id(n) for n in group.members}
    names = _Names()
    params: dict[int, L.Buffer] = {}
    inputs: list[Value] = []
    symbols: set[str] = set()

    def buffer_for(v: Value) -> L.Buffer:
        if v.id not in params:
            symbols.update(d for d in v.shape if isinstance(d, str))
            params[v.id] = L.Buffer(f"in{len(inputs)}" if v.name is None else _ident(v.name), v.dtype,
                                    [dim_expr(d) for d in v.shape])
            inputs.append(v)
        return params[v.id]

    def read(v: Value, index, mask=None, other=None) -> L.Expr:
        if len(index) != v.type.rank:
            raise VerifyError(f"lowering {name}: {v} read with {len(index)} indices")
        if _is_scalar_constant(v):
            value = L.Const(v.node.attrs["value"].reshape(-1)[0].item(), v.dtype)
        elif v.node is not None and id(v.node) in members:
            if mask is not None:  # an inlined producer must only see in-range indices
                index = [i if _in_range(i, d) else L.emin(L.emax(i, 0), dim_expr(d) - 1)
                         for i, d in zip(index, v.shape)]
            value = compute(v.node, index)
        else:
            return L.Load(buffer_for(v), index, mask, other)
        return value if mask is None else L.select(mask, value, other)

    def compute(node, index) -> L.Expr:
        opdef = get_op(node.op)
        ctx = ComputeContext([v.type for v in node.inputs], node.output.type, node.attrs,
                             lambda i, ix, mask, other: read(node.inputs[i], ix, mask, other), names.fresh)
        return opdef.compute(ctx, tuple(index))

    out_v = group.root.output
    out_vars = [L.Var(f"i{k}") for k in range(out_v.type.rank)]
    out_extent = {v.name: d for v, d in zip(out_vars, out_v.shape)}
    ranges = {v.name: (0, d - 1) for v, d in zip(out_vars, out_v.shape) if isinstance(d, int) and d > 0}

    def _in_range(i: L.Expr, d) -> bool:
        """Whether index `i` of an axis of size `d` is in range wherever the kernel evaluates it."""
        if isinstance(i, L.Var) and out_extent.get(i.name) == d:
            return True  # (also for symbolic sizes)
        b = int_bounds(i, ranges)
        return b is not None and isinstance(d, int) and 0 <= b[0] and b[1] < d

    value = compute(group.root, out_vars)
    symbols.update(d for d in out_v.shape if isinstance(d, str))
    out_buf = L.Buffer("out", out_v.dtype, [dim_expr(d) for d in out_v.shape])

    body, reduce_work = materialize_reductions(L.Store(out_buf, out_vars, value), value, names)
    for var, d in reversed(list(zip(out_vars, out_v.shape))):
        body = L.For(var, dim_expr(d), body)
    out_elems = math.prod(d if isinstance(d, int) else 64 for d in out_v.shape)
    kernel = L.Kernel(name, list(params.values()) + [out_buf], [L.Var(s) for s in sorted(symbols)], body)
    return LoweredKernel(kernel, inputs, out_v, out_elems * max(1, reduce_work))


def _ident(name: str) -> str:
    clean = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return clean if clean and not clean[0].isdigit() else "v_" + clean


# -- reductions -------------------------------------------------------------------------------
def materialize_reductions(store: L.Stmt, value: L.Expr, names: _Names) -> tuple[L.Stmt, int]:
    """Wraps `store` with one accumulator (and reduction loops) per distinct Reduce in
    `value`, replacing the Reduce by the accumulator. Returns the statement and the
    number of reduction iterations per output element."""
    reduces = []
    for n in L.walk(value):
        if isinstance(n, L.Reduce) and n not in reduces:
            reduces.append(n)
    if not reduces:
        return store, 1
    mapping, prologue, wrappers, work = {}, [], [], 0
    for r in reduces:
        if any(isinstance(x, L.Reduce) for x in L.walk(r.body)):
            raise VerifyError("lowering: a reduction inside a reduction is not supported")
        extent_work = math.prod(e.value if isinstance(e, L.Const) else 64 for _, e in r.axes)
        work += extent_work
        if r.kind in ("argmax", "argmin"):
            acc_v, acc_i = names.fresh("best"), names.fresh("arg")
            acc_v = L.Var(acc_v.name, r.body.dtype)
            v, flat = names.fresh("v"), L.Const(0, L.I64)
            v = L.Var(v.name, r.body.dtype)
            for var, ext in r.axes:
                flat = flat * ext + var
            better = v.gt(acc_v) if r.kind == "argmax" else v.lt(acc_v)
            if r.body.dtype.is_float:  # the first NaN wins, as in numpy
                better = L.Binary("or", better, L.Binary("and", L.call("isnan", v), L.call("not", L.call("isnan", acc_v))))
            upd = L.Var(names.fresh("upd").name, DType.bool)
            update = L.Let(v, r.body, L.Let(upd, better, L.Seq([
                L.Assign(acc_i, L.select(upd, flat, acc_i)),
                L.Assign(acc_v, L.select(upd, v, acc_v))])))
            loops = _nest(r.axes, update)
            wrappers.append(lambda body, a=acc_v, i=acc_i, k=r.kind, d=r.body.dtype:
                            L.Alloc(a, reduction_identity(k, d), L.Alloc(i, L.Const(0, L.I64), body)))
            mapping[r] = acc_i
        else:
            acc = L.Var(names.fresh("acc").name, r.dtype)
            combine = {"sum": lambda a, b: a + b, "prod": lambda a, b: a * b,
                       "max": L.emax, "min": L.emin}[r.kind]
            loops = _nest(r.axes, L.Assign(acc, combine(acc, r.body)))
            wrappers.append(lambda body, a=acc, k=r.kind, d=r.dtype: L.Alloc(a, reduction_identity(k, d), body))
            mapping[r] = acc
        prologue.append(loops)
    body = L.Seq(prologue + [L.substitute(store, mapping)])
    for wrap in reversed(wrappers):
        body = wrap(body)
    return body, work


def _nest(axes, body: L.Stmt) -> L.Stmt:
    for var, ext in reversed(axes):
        body = L.For(var, ext, body)
    return body
