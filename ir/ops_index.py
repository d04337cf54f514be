"""Indexing and rearranging ops with ONNX semantics: gather, gather_elements, cumsum,
topk, tile, trilu, depth_to_space, space_to_depth.

Index inputs are int32 or int64; negative indices count from the end. An index still
out of range after that is clamped to the axis (ONNX calls it an error; clamping
keeps every read in bounds and costs no check at run time).
"""
from __future__ import annotations

from ubique.errors import DTypeError, ShapeError, VerifyError
from ubique.ir import loop as L
from ubique.ir.dtypes import DType
from ubique.ir.graph import TensorType
from ubique.ir.registry import Attr, OpDef, dim_expr, normalize_axis, register

_I64 = L.I64
_INDEX_DTYPES = (DType.int32, DType.int64)


def _axis(op: str, axis: int, t: TensorType) -> int:
    if t.rank == 0:
        raise ShapeError(f"{op}: the input must have rank >= 1, got a scalar")
    return normalize_axis(op, axis, t.rank)


def _check_indices(op: str, t: TensorType):
    if t.dtype not in _INDEX_DTYPES:
        raise DTypeError(f"{op}: indices must be int32 or int64, got {t.dtype.name}")


def _mul(op: str, d, f: int):
    """d * f for a static dim; a symbolic dim only passes through unchanged (f == 1)."""
    if f == 1:
        return d
    if isinstance(d, str):
        raise ShapeError(f"{op}: symbolic dimension {d!r} would need arithmetic; only static dims are supported")
    return d * f


def _div(op: str, d, f: int, what: str):
    if f == 1:
        return d
    if isinstance(d, str):
        raise ShapeError(f"{op}: symbolic dimension {d!r} would need arithmetic; only static dims are supported")
    if d % f:
        raise ShapeError(f"{op}: {what} {d} is not divisible by {f}")
    return d // f


def _read_indexed(ctx, index, axis: int, raw: L.Expr) -> L.Expr:
    """Input 0 at `index` with position `axis` replaced by the index value `raw`, made
    non-negative and clamped into the axis."""
    d = ctx.in_types[0].shape[axis]
    n = dim_expr(d)
    i = L.cast(_I64, raw)
    i = L.emin(L.emax(L.select(i.lt(0), i + n, i), 0), n - 1)
    index = tuple(index[:axis]) + (i,) + tuple(index[axis + 1:])
    if isinstance(d, str):  # an empty axis (known only at run time) must not be read
        return ctx.input_masked(0, index, n.gt(0), 0)
    return ctx.input(0, index)


def _check_axis_nonempty(op: str, data: TensorType, axis: int, out_shape):
    if data.shape[axis] == 0 and not any(d == 0 for d in out_shape):
        raise ShapeError(f"{op}: cannot gather from axis {axis} of size 0 (every index is out of range)")


# -- gather (ONNX Gather) -------------------------------------------------------------------
def _gather_infer(ts, attrs):
    data, ind = ts
    a = _axis("gather", attrs["axis"], data)
    _check_indices("gather", ind)
    shape = data.shape[:a] + ind.shape + data.shape[a + 1:]
    _check_axis_nonempty("gather", data, a, shape)
    return [TensorType(shape, data.dtype)]


def _gather_compute(ctx, idx):
    a = normalize_axis("gather", ctx.attrs["axis"], ctx.in_types[0].rank)
    q = ctx.in_types[1].rank
    raw = ctx.input(1, idx[a:a + q])
    return _read_indexed(ctx, idx[:a] + (None,) + idx[a + q:], a, raw)


register(OpDef("gather", "injective", _gather_infer, attrs={"axis": Attr("int", 0)}, compute=_gather_compute,
               num_inputs=2, doc="ONNX Gather (numpy.take along `axis`): out shape data[:axis] + indices + "
                                 "data[axis+1:]; int32/int64 indices, negative ones from the end, "
                                 "out-of-range ones clamped"))


# -- gather_elements (ONNX GatherElements) ------------------------------------------------
def _gather_elements_infer(ts, attrs):
    data, ind = ts
    a = _axis("gather_elements", attrs["axis"], data)
    _check_indices("gather_elements", ind)
    if ind.rank != data.rank:
        raise ShapeError(f"gather_elements: indices must have the rank of data ({data.rank}), got {ind.rank}")
    for k, (di, dd) in enumerate(zip(ind.shape, data.shape)):
        if k == a:
            continue
        fits = di <= dd if isinstance(di, int) and isinstance(dd, int) else di == dd
        if not fits:  # a larger indices dim would read past data on that axis
            raise ShapeError(f"gather_elements: indices {tuple(ind.shape)} exceed data {tuple(data.shape)} "
                             f"on axis {k} (only axis {a} may differ)")
    _check_axis_nonempty("gather_elements", data, a, ind.shape)
    return [TensorType(ind.shape, data.dtype)]


def _gather_elements_compute(ctx, idx):
    a = normalize_axis("gather_elements", ctx.attrs["axis"], ctx.in_types[0].rank)
    return _read_indexed(ctx, idx, a, ctx.input(1, idx))


register(OpDef("gather_elements", "injective", _gather_elements_infer, attrs={"axis": Attr("int", 0)},
               compute=_gather_elements_compute, num_inputs=2,
               doc="ONNX GatherElements (numpy.take_along_axis): out shape = indices shape, which may be "
                   "smaller than data's off the axis; index rules as gather (negative from the end, clamped)"))


# -- cumsum (ONNX CumSum) -------------------------------------------------------------------
def _cumsum_infer(ts, attrs):
    t = ts[0]
    _axis("cumsum", attrs["axis"], t)
    if t.dtype.is_bool:
        raise DTypeError("cumsum: bool input is not supported; cast it to an integer type first")
    return [t]


def _cumsum_compute(ctx, idx):
    t = ctx.in_types[0]
    a = normalize_axis("cumsum", ctx.attrs["axis"], t.rank)
    j, i = ctx.fresh("r"), idx[a]
    rev, excl = ctx.attrs["reverse"], ctx.attrs["exclusive"]
    take = {(False, False): j.le(i), (False, True): j.lt(i), (True, False): j.ge(i), (True, True): j.gt(i)}[rev, excl]
    x = ctx.input(0, idx[:a] + (j,) + idx[a + 1:])
    return L.Reduce("sum", [(j, dim_expr(t.shape[a]))], L.select(take, x, L.Const(0, t.dtype)), t.dtype)


register(OpDef("cumsum", "reduce", _cumsum_infer,
               attrs={"axis": Attr("int", required=True), "exclusive": Attr("bool", False),
                      "reverse": Attr("bool", False)},
               compute=_cumsum_compute,
               doc="ONNX CumSum along `axis` (an attribute here), accumulated in the input dtype "
                   "(integers wrap); O(n^2) per axis"))


# -- topk (ONNX TopK) -----------------------------------------------------------------------
# Sort order: x[j] comes before x[i] when it is larger (largest) or smaller (smallest); equal
# values keep index order; NaN counts as greater than every number (numpy's sort order):
# first for largest, last for smallest. -0.0 equals 0.0.
def _comes_before(xj, xi, j, i, largest: bool) -> L.Expr:
    first = xj.gt(xi) if largest else xj.lt(xi)
    tie = L.logical_and(xj.eq(xi), j.lt(i))
    before = L.Binary("or", first, tie)
    if xj.dtype.is_float:
        nj, ni = L.call("isnan", xj), L.call("isnan", xi)
        nan_first = L.logical_and(nj, L.call("not", ni)) if largest else L.logical_and(ni, L.call("not", nj))
        both = L.logical_and(L.logical_and(nj, ni), j.lt(i))
        before = L.Binary("or", before, L.Binary("or", nan_first, both))
    return before


def _topk_rank_infer(ts, attrs):
    _axis("topk_rank", attrs["axis"], ts[0])
    return [TensorType(ts[0].shape, DType.int64)]


def _topk_rank_compute(ctx, idx):
    t = ctx.in_types[0]
    a = normalize_axis("topk_rank", ctx.attrs["axis"], t.rank)
    j, i = ctx.fresh("r"), idx[a]
    xj, xi = ctx.input(0, idx[:a] + (j,) + idx[a + 1:]), ctx.input(0, idx)
    before = _comes_before(xj, xi, j, i, ctx.attrs["largest"])
    return L.Reduce("sum", [(j, dim_expr(t.shape[a]))], L.select(before, L.Const(1, _I64), L.Const(0, _I64)), _I64)


register(OpDef("topk_rank", "reduce", _topk_rank_infer,
               attrs={"axis": Attr("int", -1), "largest": Attr("bool", True)}, compute=_topk_rank_compute,
               doc="(topk helper) position of each element along `axis` in topk's sort order: a permutation "
                   "of 0..n-1 (int64)"))


def _topk_select_infer(ts, attrs):
    t = ts[0]
    a = _axis("topk_select", attrs["axis"], t)
    return [TensorType(t.shape[:a] + (attrs["k"],) + t.shape[a + 1:], DType.int64)]


def _topk_select_compute(ctx, idx):
    t = ctx.in_types[0]
    a = normalize_axis("topk_select", ctx.attrs["axis"], t.rank)
    i = ctx.fresh("r")
    hit = ctx.input(0, idx[:a] + (i,) + idx[a + 1:]).eq(idx[a])
    # ranks are a permutation, so exactly one i matches (none if k > n at run time: 0)
    return L.Reduce("sum", [(i, dim_expr(t.shape[a]))], L.select(hit, i, L.Const(0, _I64)), _I64)


register(OpDef("topk_select", "reduce", _topk_select_infer,
               attrs={"axis": Attr("int", -1), "k": Attr("int", required=True)}, compute=_topk_select_compute,
               doc="(topk helper) for out position j < k along `axis`, the index whose topk_rank is j"))


def _topk_infer(ts, attrs):
    t, k = ts[0], attrs["k"]
    a = _axis("topk", attrs["axis"], t)
    if t.dtype.is_bool:
        raise DTypeError("topk: bool input is not supported (ONNX TopK takes numeric types)")
    if k < 0:
        raise VerifyError(f"topk: k must be >= 0, got {k}")
    n = t.shape[a]
    if isinstance(n, int) and k > n:
        raise ShapeError(f"topk: k={k} is larger than axis {a} of {tuple(t.shape)} ({n} elements)")
    shape = t.shape[:a] + (k,) + t.shape[a + 1:]
    return [TensorType(shape, t.dtype), TensorType(shape, DType.int64)]


def _topk_decompose(g, inputs, attrs):
    x, axis = inputs[0], attrs["axis"]
    rank = g.op("topk_rank", x, axis=axis, largest=attrs["largest"])
    indices = g.op("topk_select", rank, axis=axis, k=attrs["k"])
    return [g.op("gather_elements", x, indices, axis=axis), indices]


register(OpDef("topk", "composite", _topk_infer,
               attrs={"k": Attr("int", required=True), "axis": Attr("int", -1), "largest": Attr("bool", True),
                      "sorted": Attr("bool", True)},
               decompose=_topk_decompose,
               doc="ONNX TopK: outputs (values, int64 indices) of the k largest (or smallest) elements "
                   "along `axis`, always sorted (sorted=False is allowed to, and does, sort too); equal "
                   "values: lower index first; NaN is greater than every number (numpy's order). "
                   "O(n^2) per axis. With a symbolic axis and k > n at run time, extra slots hold index 0"))


# -- tile (ONNX Tile) -----------------------------------------------------------------------
def _tile_infer(ts, attrs):
    t, reps = ts[0], attrs["repeats"]
    if len(reps) != t.rank:
        raise ShapeError(f"tile: repeats {reps} must have one entry per axis ({t.rank})")
    if any(r < 0 for r in reps):
        raise VerifyError(f"tile: repeats must be >= 0, got {reps}")
    return [TensorType(tuple(_mul("tile", d, r) for d, r in zip(t.shape, reps)), t.dtype)]


def _tile_compute(ctx, idx):
    shape, reps = ctx.in_types[0].shape, ctx.attrs["repeats"]
    # d == 0: the output is empty and the index never used (and no modulo by zero is emitted)
    return ctx.input(0, [i if r == 1 or d == 0 else i % d for i, d, r in zip(idx, shape, reps)])


register(OpDef("tile", "injective", _tile_infer, attrs={"repeats": Attr("ints", required=True)},
               compute=_tile_compute, doc="ONNX Tile (numpy.tile with one repeat per axis)"))


# -- trilu (ONNX Trilu) ---------------------------------------------------------------------
def _trilu_infer(ts, attrs):
    if ts[0].rank < 2:
        raise ShapeError(f"trilu: the input must have rank >= 2, got {tuple(ts[0].shape)}")
    return [ts[0]]


def _trilu_compute(ctx, idx):
    diag = idx[-1] - idx[-2]
    keep = diag.ge(ctx.attrs["k"]) if ctx.attrs["upper"] else diag.le(ctx.attrs["k"])
    return L.select(keep, ctx.input(0, idx), L.Const(0, ctx.out_type.dtype))


register(OpDef("trilu", "injective", _trilu_infer, attrs={"upper": Attr("bool", True), "k": Attr("int", 0)},
               compute=_trilu_compute,
               doc="ONNX Trilu on the last two axes: upper keeps j - i >= k (numpy.triu), lower keeps "
                   "j - i <= k (numpy.tril); the rest is zero"))


# -- depth_to_space / space_to_depth (ONNX, NCHW) ---------------------------------------------
def _nchw(op: str, t: TensorType, b: int):
    if t.rank != 4:
        raise ShapeError(f"{op}: the input must be NCHW (rank 4), got {tuple(t.shape)}")
    if b < 1:
        raise VerifyError(f"{op}: blocksize must be >= 1, got {b}")
    return t.shape


def _d2s_infer(ts, attrs):
    b, mode = attrs["blocksize"], attrs["mode"]
    if mode not in ("DCR", "CRD"):
        raise VerifyError(f"depth_to_space: mode must be 'DCR' or 'CRD', got {mode!r}")
    n, c, h, w = _nchw("depth_to_space", ts[0], b)
    c = _div("depth_to_space", c, b * b, "channel count")
    return [TensorType((n, c, _mul("depth_to_space", h, b), _mul("depth_to_space", w, b)), ts[0].dtype)]


def _d2s_compute(ctx, idx):
    b = ctx.attrs["blocksize"]
    if b == 1:
        return ctx.input(0, idx)
    n, c, oh, ow = idx
    i, j = oh % b, ow % b
    if ctx.attrs["mode"] == "DCR":  # channels are (block row, block col, c)
        ch = (i * b + j) * ctx.out_type.shape[1] + c
    else:  # CRD: (c, block row, block col)
        ch = c * (b * b) + i * b + j
    return ctx.input(0, (n, ch, oh // b, ow // b))


register(OpDef("depth_to_space", "injective", _d2s_infer,
               attrs={"blocksize": Attr("int", required=True), "mode": Attr("str", "DCR")}, compute=_d2s_compute,
               doc="ONNX DepthToSpace on NCHW: (N, C, H, W) -> (N, C/b^2, H*b, W*b), mode DCR or CRD"))


def _s2d_infer(ts, attrs):
    b = attrs["blocksize"]
    n, c, h, w = _nchw("space_to_depth", ts[0], b)
    return [TensorType((n, _mul("space_to_depth", c, b * b), _div("space_to_depth", h, b, "height"),
                        _div("space_to_depth", w, b, "width")), ts[0].dtype)]


def _s2d_compute(ctx, idx):
    b, c_in = ctx.attrs["blocksize"], ctx.in_types[0].shape[1]
    n, oc, h, w = idx
    if b == 1:
        return ctx.input(0, idx)
    blk = oc // c_in  # output channels are (block row, block col, c)
    return ctx.input(0, (n, oc % c_in, h * b + blk // b, w * b + blk % b))


register(OpDef("space_to_depth", "injective", _s2d_infer, attrs={"blocksize": Attr("int", required=True)},
               compute=_s2d_compute,
               doc="ONNX SpaceToDepth on NCHW: (N, C, H, W) -> (N, C*b^2, H/b, W/b)"))
