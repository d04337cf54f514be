"""Reductions (sum, prod, max, min, argmax, argmin, mean) and matmul."""
from __future__ import annotations

from ubique.errors import ShapeError
from ubique.ir import dims as D
from ubique.ir import loop as L
from ubique.ir.dtypes import DType, promote, true_divide_result
from ubique.ir.graph import TensorType
from ubique.ir.registry import Attr, OpDef, broadcast_shapes, dim_expr, normalize_axis, register

_AXES = {"axes": Attr("ints", None), "keepdims": Attr("bool", False)}


def reduced_axes(op: str, rank: int, axes) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(rank))
    out = tuple(sorted({normalize_axis(op, a, rank) for a in axes}))
    if len(out) != len(axes):
        raise ShapeError(f"{op}: repeated axis in {tuple(axes)}")
    return out


def _reduced_shape(op, t: TensorType, axes, keepdims):
    ax = reduced_axes(op, t.rank, axes)
    return tuple(1 if k in ax else d for k, d in enumerate(t.shape) if keepdims or k not in ax), ax


def _sum_dtype(d: DType) -> DType:
    return DType.int64 if d.is_int or d.is_bool else d  # numpy: small ints accumulate to int64


def _reduce_op(name, kind, result):
    def infer(ts, attrs):
        shape, ax = _reduced_shape(name, ts[0], attrs["axes"], attrs["keepdims"])
        if kind in ("max", "min") and any(a < ts[0].rank and ts[0].shape[a] == 0 for a in ax):
            raise ShapeError(f"{name}: reduction over a zero-size axis has no identity (numpy raises too)")
        return [TensorType(shape, result(ts[0].dtype))]

    def compute(ctx, idx):
        t = ctx.in_types[0]
        ax = reduced_axes(name, t.rank, ctx.attrs["axes"])
        keep = ctx.attrs["keepdims"]
        rvars, in_idx, j = [], [], 0
        for k, d in enumerate(t.shape):
            if k in ax:
                v = ctx.fresh("r")
                rvars.append((v, dim_expr(d)))
                in_idx.append(v)
                j += keep
            else:
                in_idx.append(idx[j])
                j += 1
        acc = ctx.out_type.dtype
        return L.Reduce(kind, rvars, L.cast(acc, ctx.input(0, in_idx)), acc)

    register(OpDef(name, "reduce", infer, attrs=dict(_AXES), compute=compute,
                   doc=f"{kind} over `axes` (None: all), numpy semantics"))


_reduce_op("sum", "sum", _sum_dtype)
_reduce_op("prod", "prod", _sum_dtype)
_reduce_op("max", "max", lambda d: d)
_reduce_op("min", "min", lambda d: d)


def _arg_op(name, kind):
    def infer(ts, attrs):
        t, axis = ts[0], attrs["axis"]
        if axis is None:
            if t.size == 0:
                raise ShapeError(f"{name}: attempt to get {name} of an empty sequence")
            return [TensorType((1,) * t.rank if attrs["keepdims"] else (), DType.int64)]
        a = normalize_axis(name, axis, t.rank)
        if t.shape[a] == 0:
            raise ShapeError(f"{name}: axis {axis} has size 0")
        shape = tuple(1 if k == a else d for k, d in enumerate(t.shape) if attrs["keepdims"] or k != a)
        return [TensorType(shape, DType.int64)]

    def compute(ctx, idx):
        t, axis, keep = ctx.in_types[0], ctx.attrs["axis"], ctx.attrs["keepdims"]
        if axis is None:
            rvars = [(ctx.fresh("r"), dim_expr(d)) for d in t.shape]
            return L.Reduce(kind, rvars, ctx.input(0, [v for v, _ in rvars]))
        a = normalize_axis(name, axis, t.rank)
        r = ctx.fresh("r")
        out = list(idx)
        in_idx = out[:a] + [r] + out[a + (1 if keep else 0):]
        return L.Reduce(kind, [(r, dim_expr(t.shape[a]))], ctx.input(0, in_idx))

    register(OpDef(name, "reduce", infer, attrs={"axis": Attr("int_or_none", None), "keepdims": Attr("bool", False)},
                   compute=compute, doc=f"index of the first {kind[3:]} along `axis` (None: flattened); NaN wins"))


_arg_op("argmax", "argmax")
_arg_op("argmin", "argmin")


def _mean_decompose(g, inputs, attrs):
    x = inputs[0]
    ax = reduced_axes("mean", x.type.rank, attrs["axes"])
    count = D.prod(x.shape[a] for a in ax)
    # accumulate like numpy: integers in float64 (no wrap-around), half precision in float32
    acc = DType.float32 if x.dtype in (DType.float16, DType.bfloat16) else true_divide_result(x.dtype)
    if x.dtype is not acc:
        x = g.op("cast", x, dtype=acc)
    s = g.op("sum", x, axes=attrs["axes"], keepdims=attrs["keepdims"])
    if isinstance(count, int):
        n = g.constant(count, acc)
    else:  # a symbolic count (mean over the sequence): the sum of ones over the reduced axes
        n = g.op("sum", g.op("broadcast_to", g.constant(1, acc), shape=tuple(x.shape[a] for a in ax)))
    return [g.op("div", s, n)]


register(OpDef("mean", "composite",
               lambda ts, attrs: [TensorType(_reduced_shape("mean", ts[0], attrs["axes"], attrs["keepdims"])[0],
                                             true_divide_result(ts[0].dtype))],
               attrs=dict(_AXES), decompose=_mean_decompose, doc="sum / count (float64 for integer inputs)"))


# -- matmul --------------------------------------------------------------------------------
def _matmul_infer(ts, attrs):
    a, b = ts
    if a.rank == 0 or b.rank == 0:
        raise ShapeError("matmul: operands must have rank >= 1 (use mul for scalars)")
    d = promote(a.dtype, b.dtype)
    ka = a.shape[-1]
    kb = b.shape[0] if b.rank == 1 else b.shape[-2]
    if ka != kb:
        raise ShapeError(f"matmul: contraction sizes differ: a{tuple(a.shape)} has {ka} columns, "
                         f"b{tuple(b.shape)} has {kb} rows")
    batch = broadcast_shapes("matmul", a.shape[:-2], b.shape[:-2])
    shape = batch + (a.shape[-2:-1] if a.rank >= 2 else ()) + (b.shape[-1:] if b.rank >= 2 else ())
    return [TensorType(shape, d)]


def _matmul_compute(ctx, idx):
    a, b = ctx.in_types
    d = ctx.out_type.dtype
    idx = list(idx)
    j = [idx.pop()] if b.rank >= 2 else []
    i = [idx.pop()] if a.rank >= 2 else []
    batch = idx
    k = ctx.fresh("k")

    def bidx(shape):
        lead = len(batch) - len(shape)
        return [L.Const(0, L.I64) if s == 1 else batch[lead + n] for n, s in enumerate(shape)]

    ai = bidx(a.shape[:-2]) + i + [k]
    bi = bidx(b.shape[:-2]) + [k] + j if b.rank >= 2 else [k]
    x, y = L.cast(d, ctx.input(0, ai)), L.cast(d, ctx.input(1, bi))
    if d.is_bool:  # numpy: logical or over logical ands
        return L.Reduce("max", [(k, dim_expr(a.shape[-1]))], L.Binary("and", x, y), d)
    return L.Reduce("sum", [(k, dim_expr(a.shape[-1]))], x * y, d)


register(OpDef("matmul", "reduce", _matmul_infer, compute=_matmul_compute, num_inputs=2,
               doc="numpy.matmul: batched, broadcasting batch dims, 1-D operands promoted and squeezed; "
                   "bool matmul is any(a and b)"))
