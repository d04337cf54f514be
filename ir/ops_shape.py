"""Data movement ops: reshape, transpose, broadcast_to, concat, slice, pad."""
from __future__ import annotations

import math

import numpy as np

from ubique.errors import DTypeError, ShapeError
from ubique.ir import dims as D
from ubique.ir import loop as L
from ubique.ir.dtypes import promote
from ubique.ir.graph import TensorType
from ubique.ir.registry import Attr, OpDef, broadcast_shapes, dim_expr, normalize_axis, register

_ZERO = L.Const(0, L.I64)


def _linear(index, shape) -> L.Expr:
    flat = _ZERO
    for i, d in zip(index, shape):
        flat = flat * dim_expr(d) + i
    return flat


def _delinear(flat: L.Expr, shape) -> list:
    out = []
    for d in reversed(shape):
        out.append(flat % dim_expr(d) if d != 1 else _ZERO)
        flat = flat // dim_expr(d)
    return out[::-1]


# -- reshape ------------------------------------------------------------------------------
def _reshape_infer(ts, attrs):
    t, shape = ts[0], attrs["shape"]
    if D.prod(t.shape) != D.prod(shape):
        raise ShapeError(f"reshape: cannot reshape {tuple(t.shape)} ({D.prod(t.shape)} elements) "
                         f"into {tuple(shape)} ({D.prod(shape)} elements)")
    return [TensorType(shape, t.dtype)]


def axis_groups(src, dst):
    """Splits two shapes of one element count into runs of axes with equal products, in
    order: [((src axes), (dst axes)), ...], so that a reshape maps each run on its own
    (NCHW -> [N, C/c, c, H, W] touches only the channel axis). None when the runs do not
    line up (a symbolic size merged with others)."""
    groups, i, j = [], 0, 0
    while i < len(src) and j < len(dst):
        a, b, pa, pb = [i], [j], src[i], dst[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if not (isinstance(pa, int) and isinstance(pb, int)):
                return None
            if pa < pb and i < len(src) and isinstance(src[i], int):
                a.append(i)
                pa, i = pa * src[i], i + 1
            elif pb < pa and j < len(dst) and isinstance(dst[j], int):
                b.append(j)
                pb, j = pb * dst[j], j + 1
            else:
                return None
        groups.append((a, b))
    rest_a, rest_b = list(range(i, len(src))), list(range(j, len(dst)))
    if any(src[k] != 1 for k in rest_a) or any(dst[k] != 1 for k in rest_b):
        return None
    if not groups:
        return [(rest_a, rest_b)]
    groups[-1] = (groups[-1][0] + rest_a, groups[-1][1] + rest_b)
    return groups


def _reshape_compute(ctx, idx):
    src, dst = ctx.in_types[0].shape, ctx.out_type.shape
    if tuple(src) == tuple(dst):
        return ctx.input(0, idx)
    groups = axis_groups(src, dst)
    if groups is None:
        return ctx.input(0, _delinear(_linear(idx, dst), src))
    in_idx = []
    for a, b in groups:
        if len(a) == 1 and len(b) == 1:
            in_idx.append(idx[b[0]])
        else:
            in_idx += _delinear(_linear([idx[k] for k in b], [dst[k] for k in b]), [src[k] for k in a])
    return ctx.input(0, in_idx)


register(OpDef("reshape", "injective", _reshape_infer, attrs={"shape": Attr("dims", required=True)},
               compute=_reshape_compute, doc="row-major reshape; the shape is fully resolved (no -1)"))


# -- transpose ----------------------------------------------------------------------------
def _transpose_infer(ts, attrs):
    t, perm = ts[0], attrs["perm"]
    perm = tuple(reversed(range(t.rank))) if perm is None else perm
    if sorted(perm) != list(range(t.rank)):
        raise ShapeError(f"transpose: perm {tuple(perm)} is not a permutation of the {t.rank} axes")
    return [TensorType(tuple(t.shape[p] for p in perm), t.dtype)]


def _transpose_compute(ctx, idx):
    rank = ctx.in_types[0].rank
    perm = ctx.attrs["perm"] or tuple(reversed(range(rank)))
    in_idx = [None] * rank
    for out_axis, p in enumerate(perm):
        in_idx[p] = idx[out_axis]
    return ctx.input(0, in_idx)


register(OpDef("transpose", "injective", _transpose_infer, attrs={"perm": Attr("ints", None)},
               compute=_transpose_compute, doc="numpy.transpose; perm None reverses the axes"))


# -- broadcast_to -------------------------------------------------------------------------
def _bcast_infer(ts, attrs):
    shape = attrs["shape"]
    if broadcast_shapes("broadcast_to", ts[0].shape, shape) != tuple(shape):
        raise ShapeError(f"broadcast_to: cannot broadcast {tuple(ts[0].shape)} to {tuple(shape)}")
    return [TensorType(shape, ts[0].dtype)]


register(OpDef("broadcast_to", "injective", _bcast_infer, attrs={"shape": Attr("dims", required=True)},
               compute=lambda ctx, idx: ctx.input_bcast(0, idx), doc="numpy.broadcast_to"))


# -- concat -------------------------------------------------------------------------------
def _concat_infer(ts, attrs):
    first = ts[0]
    axis = normalize_axis("concat", attrs["axis"], first.rank)
    dtype = first.dtype
    for n, t in enumerate(ts[1:], 1):
        if t.rank != first.rank or any(a != b for k, (a, b) in enumerate(zip(t.shape, first.shape)) if k != axis):
            raise ShapeError(f"concat: input {n} has shape {tuple(t.shape)}, which does not match input 0 "
                             f"{tuple(first.shape)} outside axis {axis}")
        dtype = promote(dtype, t.dtype)
    size = 0
    for t in ts:
        size = D.add(size, t.shape[axis])
    return [TensorType(first.shape[:axis] + (size,) + first.shape[axis + 1:], dtype)]


def _concat_compute(ctx, idx):
    axis = normalize_axis("concat", ctx.attrs["axis"], ctx.out_type.rank)
    d = ctx.out_type.dtype
    parts, offset = [], 0
    for n, t in enumerate(ctx.in_types):
        size = t.shape[axis]
        if size == 0:
            continue
        # each part is read only where it is selected
        lo, hi = dim_expr(offset), dim_expr(D.add(offset, size))
        where = L.logical_and(idx[axis].ge(lo), idx[axis].lt(hi))
        read = L.cast(d, ctx.input_masked(n, tuple(idx[:axis]) + (idx[axis] - lo,) + tuple(idx[axis + 1:]), where, 0))
        parts.append((hi, read))
        offset = D.add(offset, size)
    if not parts:  # every part is empty, and so is the output
        return L.Const(0, d)
    expr = parts[-1][1]
    for end, read in reversed(parts[:-1]):
        expr = L.select(idx[axis].lt(end), read, expr)
    return expr


register(OpDef("concat", "injective", _concat_infer, attrs={"axis": Attr("int", 0)}, compute=_concat_compute,
               num_inputs=(1, -1), doc="numpy.concatenate along `axis`"))


# -- slice --------------------------------------------------------------------------------
def slice_extent(begin, end, step: int):
    """Number of elements of range(begin, end, step) (begin/end already clamped as numpy does).
    Symbolic begin/end (dimensions) are taken to be in order: the extent is their difference."""
    if not (isinstance(begin, int) and isinstance(end, int)):
        if step == 1:
            return D.sub(end, begin)
        if step == -1:
            return D.sub(begin, end)
        raise ShapeError(f"slice: a step of {step} over a symbolic range ({begin} to {end}) is not supported")
    if step > 0:
        return max(0, (end - begin + step - 1) // step)
    return max(0, (begin - end - step - 1) // (-step))


def _slice_infer(ts, attrs):
    t = ts[0]
    begin, end, step = attrs["begin"], attrs["end"], attrs["step"]
    if not len(begin) == len(end) == len(step) == t.rank:
        raise ShapeError(f"slice: begin/end/step need one entry per axis ({t.rank}), got "
                         f"{len(begin)}/{len(end)}/{len(step)}")
    if 0 in step:
        raise ShapeError("slice: step must not be zero")
    return [TensorType(tuple(slice_extent(b, e, s) for b, e, s in zip(begin, end, step)), t.dtype)]


register(OpDef("slice", "injective", _slice_infer,
               attrs={"begin": Attr("dims", required=True), "end": Attr("dims", required=True),
                      "step": Attr("ints", required=True)},
               compute=lambda ctx, idx: ctx.input(0, [i * s + dim_expr(b) for i, b, s in zip(idx, ctx.attrs["begin"],
                                                                                            ctx.attrs["step"])]),
               doc="per-axis begin/end/step, already normalised like Python's slice.indices()"))


# -- pad ----------------------------------------------------------------------------------
def _pad_infer(ts, attrs):
    t, pads = ts[0], attrs["pads"]
    if len(pads) != 2 * t.rank or min(pads, default=0) < 0:
        raise ShapeError(f"pad: pads must hold {2 * t.rank} non-negative ints (before..., after...), got {pads}")
    if attrs["mode"] not in ("constant", "edge", "reflect", "wrap"):
        raise ShapeError(f"pad: mode {attrs['mode']!r} is not one of constant, edge, reflect, wrap")
    if attrs["mode"] == "constant" and not t.dtype.is_float:
        v, np_dtype = attrs["value"], t.dtype.to_numpy()
        lo, hi = (0, 1) if np_dtype == bool else (np.iinfo(np_dtype).min, np.iinfo(np_dtype).max)
        if not math.isfinite(v) or not lo <= v <= hi:
            raise DTypeError(f"pad: the value {v} cannot be stored in a {t.dtype.name} tensor")
    r = t.rank
    shape = tuple(D.add(d, pads[k] + pads[r + k]) for k, d in enumerate(t.shape))
    if attrs["mode"] != "constant" and any(d == 0 and (pads[k] or pads[r + k]) for k, d in enumerate(t.shape)):
        raise ShapeError(f"pad: mode {attrs['mode']} cannot pad an empty axis")
    return [TensorType(shape, t.dtype)]


def _pad_compute(ctx, idx):
    t, pads, mode = ctx.in_types[0], ctx.attrs["pads"], ctx.attrs["mode"]
    r = t.rank
    inside, in_idx = L.Const(True, L.DType.bool), []
    for k, d in enumerate(t.shape):
        i = idx[k] - pads[k]
        n = dim_expr(d)
        if pads[k] == 0 and pads[r + k] == 0:
            in_idx.append(idx[k])
            continue
        if mode == "constant":
            inside = L.logical_and(inside, L.logical_and(i.ge(0), i.lt(n)))
            in_idx.append(i)
        elif mode == "edge":
            in_idx.append(L.emin(L.emax(i, 0), n - 1))
        elif mode == "wrap":  # periodic: numpy's "wrap", ONNX's "wrap"
            in_idx.append((i % n + n) % n)
        else:  # reflect without repeating the edge: period 2(n-1)
            if d == 1:
                in_idx.append(_ZERO)
                continue
            period = 2 * (n - 1)
            m = (i % period + period) % period
            in_idx.append(L.emin(m, period - m))
    if mode != "constant":
        return ctx.input(0, in_idx)
    return ctx.input_masked(0, in_idx, inside, L.Const(ctx.attrs["value"], t.dtype))


register(OpDef("pad", "injective", _pad_infer,
               attrs={"pads": Attr("ints", required=True), "mode": Attr("str", "constant"),
                      "value": Attr("float", 0.0)},
               compute=_pad_compute, doc="pads = (before_0..before_{r-1}, after_0..after_{r-1}), ONNX order"))


# -- constant -------------------------------------------------------------------------------
def _constant_infer(ts, attrs):
    from ubique.ir.dtypes import dtype_of

    v = attrs["value"]
    return [TensorType(v.shape, dtype_of(v.dtype))]


register(OpDef("constant", "source", _constant_infer, attrs={"value": Attr("array", required=True)},
               num_inputs=0, doc="a tensor known at compile time"))
