"""Resampling and normalisation ops with ONNX semantics: conv_transpose2d, resize,
batch_norm, instance_norm (einsum lives in ops_einsum.py, imported at the end).

Shapes of the resampled axes must be static: their coordinate arithmetic is done at
compile time. Batch and channel dimensions may be symbolic.
"""
from __future__ import annotations

import math

from ubique.errors import DTypeError, ShapeError, UnsupportedOpError
from ubique.ir import dims as D
from ubique.ir import loop as L
from ubique.ir.dtypes import DType, float_result, promote
from ubique.ir.graph import TensorType
from ubique.ir.registry import Attr, OpDef, dim_expr, register

F64 = DType.float64


def _acc_dtype(d: DType) -> DType:
    """Where a weighted sum of elements of dtype `d` accumulates."""
    if d is DType.float64 or not d.is_float:
        return F64
    return DType.float32


# -- conv_transpose2d ---------------------------------------------------------------------------
def _convt_infer(ts, attrs):
    op = "conv_transpose2d"
    x, w = ts
    if x.rank != 4 or w.rank != 4:
        raise ShapeError(f"{op}: expects an NCHW input and a (C, M/groups, kh, kw) weight (rank 4), "
                         f"got ranks {x.rank} and {w.rank}")
    for name, n in (("stride", 2), ("dilation", 2)):
        if len(attrs[name]) != n or min(attrs[name]) < 1:
            raise ShapeError(f"{op}: {name} must be {n} positive ints, got {attrs[name]}")
    # negative pads are allowed: they extend the output with rows/columns nothing lands on (zeros),
    # which is how ONNX's output_shape can ask for more than the full extent
    if len(attrs["padding"]) != 4:
        raise ShapeError(f"{op}: padding must be four ints (top, left, bottom, right), got {attrs['padding']}")
    if len(attrs["output_padding"]) != 2 or min(attrs["output_padding"]) < 0:
        raise ShapeError(f"{op}: output_padding must be two non-negative ints, got {attrs['output_padding']}")
    g = attrs["groups"]
    n, c, h, wd = x.shape
    cw, mg, kh, kw = w.shape
    if not all(D.is_static(d) for d in (cw, mg, kh, kw)):
        raise ShapeError(f"{op}: the weight shape {tuple(w.shape)} must be static")
    if c != cw:
        raise ShapeError(f"{op}: input has {c} channels but the weight expects {cw} (weight is (C, M/groups, kh, kw))")
    if g < 1 or c % g:  # (c equals the weight's static channel count)
        raise ShapeError(f"{op}: groups={g} must divide the input channels {c}")
    (sh, sw), (dh, dw), (pt, pl, pb, pr), (oph, opw) = (attrs["stride"], attrs["dilation"], attrs["padding"],
                                                        attrs["output_padding"])
    out = []
    for size, s, k, d, p0, p1, op_ in ((h, sh, kh, dh, pt, pb, oph), (wd, sw, kw, dw, pl, pr, opw)):
        # stride*(size-1) + output_padding + (k-1)*dil + 1 - pads
        o = D.add(D.mul(D.sub(size, 1), s), op_ + (k - 1) * d + 1 - p0 - p1)
        if D.is_static(o) and (o < 0 or size == 0):
            raise ShapeError(f"{op}: input size {size} with kernel {k}, stride {s}, dilation {d}, pads ({p0}, {p1}) "
                             f"and output_padding {op_} gives output size {o}")
        out.append(o)
    return [TensorType((n, mg * g) + tuple(out), promote(x.dtype, w.dtype))]


def _convt_compute(ctx, idx):
    x, w = ctx.in_types
    d = ctx.out_type.dtype
    n, m, oh, ow = idx
    g = ctx.attrs["groups"]
    _, mg, KH, KW = w.shape
    cg = x.shape[1] // g
    (sh, sw), (dh, dw), (pt, pl, _, _) = ctx.attrs["stride"], ctx.attrs["dilation"], ctx.attrs["padding"]
    c, kh, kw = ctx.fresh("rc"), ctx.fresh("rh"), ctx.fresh("rw")
    ci = c if g == 1 else (m // mg) * cg + c
    mm = m if g == 1 else m % mg

    # Gather form: output row oh receives input row ih from tap kh when
    # ih*stride + kh*dil - pad == oh, i.e. (oh + pad - kh*dil) is a non-negative multiple of stride.
    def source(o, k, s, dl, p, size):
        t = o + p - k * dl
        i = t if s == 1 else t // s
        ok = L.logical_and(t.ge(0), i.lt(dim_expr(size)))
        if s != 1:
            ok = L.logical_and(ok, (t % s).eq(0))
        return i, ok

    ih, okh = source(oh, kh, sh, dh, pt, x.shape[2])
    iw, okw = source(ow, kw, sw, dw, pl, x.shape[3])
    xv = L.cast(d, ctx.input_masked(0, (n, ci, ih, iw), L.logical_and(okh, okw), 0))
    body = xv * L.cast(d, ctx.input(1, (ci, mm, kh, kw)))
    return L.Reduce("sum", [(c, dim_expr(cg)), (kh, dim_expr(KH)), (kw, dim_expr(KW))], body, d)


register(OpDef("conv_transpose2d", "reduce", _convt_infer,
               attrs={"stride": Attr("ints", (1, 1)), "padding": Attr("ints", (0, 0, 0, 0)),
                      "dilation": Attr("ints", (1, 1)), "output_padding": Attr("ints", (0, 0)),
                      "groups": Attr("int", 1)},
               compute=_convt_compute, num_inputs=2,
               doc="ONNX ConvTranspose / PyTorch conv_transpose2d: x (N, C, H, W), w (C, M/groups, kh, kw) -> "
                   "(N, M, Hout, Wout), Hout = stride*(H-1) + output_padding + (kh-1)*dilation + 1 - pad_top "
                   "- pad_bottom; padding = (top, left, bottom, right), negative pads add zero rows/columns; no bias "
                   "(add it separately)"))


# -- resize -------------------------------------------------------------------------------------
_RESIZE_MODES = ("nearest", "linear", "cubic")
_COORD_MODES = ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "tf_half_pixel_for_nn",
                "half_pixel_symmetric")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _resize_plan(x: TensorType, attrs) -> list:
    """Per axis: None when the axis is copied, else (in_size, out_size, scale). Validates attrs."""
    op = "resize"
    if attrs["mode"] not in _RESIZE_MODES:
        raise UnsupportedOpError(f"{op}: mode {attrs['mode']!r} is not one of {', '.join(_RESIZE_MODES)}")
    ctm = attrs["coordinate_transformation_mode"]
    if ctm not in _COORD_MODES:
        hint = " (it needs an roi input, which is not supported)" if ctm == "tf_crop_and_resize" else ""
        raise UnsupportedOpError(f"{op}: coordinate_transformation_mode {ctm!r} is not supported{hint}; "
                                 f"supported: {', '.join(_COORD_MODES)}")
    if attrs["nearest_mode"] not in _NEAREST_MODES:
        raise UnsupportedOpError(f"{op}: nearest_mode {attrs['nearest_mode']!r} is not one of "
                                 f"{', '.join(_NEAREST_MODES)}")
    sizes = _resize_sizes(attrs["sizes"], x.rank)
    scales = attrs["scales"]
    if scales is not None:
        try:
            scales = tuple(float(s) for s in scales)
        except (TypeError, ValueError):
            raise ShapeError(f"{op}: scales must be a sequence of floats or None, got {scales!r}") from None
        if len(scales) != x.rank or not all(s > 0 and math.isfinite(s) for s in scales):
            raise ShapeError(f"{op}: scales must hold {x.rank} positive finite floats (one per axis), got {scales}")
    plan = []
    for k, (i, o) in enumerate(zip(x.shape, sizes)):
        scale = None if scales is None else scales[k]
        if o == i and (scale is None or math.isclose(scale, 1.0)):
            plan.append(None)  # identity along this axis (as in the ONNX reference)
            continue
        if not (D.is_static(i) and D.is_static(o)):
            raise ShapeError(f"{op}: axis {k} is resized from {i} to {o}; resized axes must have static sizes")
        if i == 0 and o > 0:
            raise ShapeError(f"{op}: axis {k} is empty and cannot be resized to {o}")
        plan.append((i, o, scale if scale is not None else (o / i if i else 1.0)))
    return plan


def _resize_sizes(sizes, rank):
    try:
        out = tuple(D.norm(s) for s in sizes)
    except (TypeError, ValueError, ShapeError):
        raise ShapeError(f"resize: sizes must be a sequence of dimensions, got {sizes!r}") from None
    if len(out) != rank or any(D.is_static(s) and s < 0 for s in out):
        raise ShapeError(f"resize: sizes must hold {rank} non-negative sizes (one per axis), got {sizes!r}")
    return out


def _resize_infer(ts, attrs):
    x = ts[0]
    _resize_plan(x, attrs)
    if attrs["mode"] != "nearest" and x.dtype.is_bool:
        raise DTypeError(f"resize: mode {attrs['mode']} is not defined for bool tensors; cast first")
    return [TensorType(_resize_sizes(attrs["sizes"], x.rank), x.dtype)]


def _source_coord(o: L.Expr, size_in: int, size_out: int, scale: float, ctm: str) -> L.Expr:
    """ONNX's x_original for output index `o` along one axis, in float64 (the same
    operations in the same order as the ONNX reference, so ties round alike)."""
    y = L.cast(F64, o)
    if ctm == "asymmetric":
        return y / scale
    if ctm == "align_corners":
        # the reference uses the fractional output width scale*in (equal to size_out unless
        # the model gave scales that do not divide evenly)
        width = scale * size_in
        return L.Const(0.0, F64) if width == 1 else y * float(size_in - 1) / (width - 1)
    if ctm == "pytorch_half_pixel" and size_out <= 1:
        return L.Const(0.0, F64)  # the spec's "0 if length_resized == 1"
    if ctm == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale
    if ctm == "half_pixel_symmetric":
        offset = (size_in / 2) * (1 - size_out / (scale * size_in))
        return offset + (y + 0.5) / scale - 0.5
    return (y + 0.5) / scale - 0.5


def _cubic_weights(r: L.Expr, a: float) -> list:
    """Keys cubic convolution weights of taps floor-1 .. floor+2 for fraction `r` (ONNX's formulas)."""
    s, t = r + 1.0, 1.0 - r
    u = t + 1.0
    return [((a * s - 5 * a) * s + 8 * a) * s - 4 * a,
            ((a + 2) * r - (a + 3)) * r * r + 1.0,
            ((a + 2) * t - (a + 3)) * t * t + 1.0,
            ((a * u - 5 * a) * u + 8 * a) * u - 4 * a]


def _resize_compute(ctx, idx):
    x = ctx.in_types[0]
    a = ctx.attrs
    plan = _resize_plan(x, a)
    out_d = ctx.out_type.dtype
    mode = a["mode"]
    # per axis: a list of taps (index expression, weight expression or None)
    axis_taps = []
    for k, p in enumerate(plan):
        if p is None:
            axis_taps.append([(idx[k], None)])
            continue
        size_in, size_out, scale = p
        xo = _source_coord(idx[k], size_in, size_out, scale, a["coordinate_transformation_mode"])
        f = L.call("floor", xo)
        r = xo - f
        fi = L.cast(L.I64, f)
        clamp = lambda i, n=size_in: L.emin(L.emax(i, 0), n - 1)  # noqa: E731  (edge padding)
        if mode == "nearest":
            nm = a["nearest_mode"]
            if nm == "floor":
                take_next = None
            elif nm == "ceil":
                take_next = r.gt(0.0)
            elif nm == "round_prefer_floor":
                take_next = r.gt(0.5)
            else:
                take_next = r.ge(0.5)
            i = fi if take_next is None else L.select(take_next, fi + 1, fi)
            axis_taps.append([(clamp(i), None)])
            continue
        if mode == "linear":
            first, weights = fi, [1.0 - r, r]
        else:
            first, weights = fi - 1, _cubic_weights(r, a["cubic_coeff_a"])
        taps = [first + j for j in range(len(weights))]
        if a["exclude_outside"]:  # taps outside the input get weight 0, the rest renormalised
            weights = [L.select(L.logical_and(t.ge(0), t.lt(size_in)), w, L.Const(0.0, F64))
                       for t, w in zip(taps, weights)]
            total = weights[0]
            for w in weights[1:]:
                total = total + w
            total = L.select(total.eq(0.0), L.Const(1.0, F64), total)
            weights = [w / total for w in weights]
        axis_taps.append([(clamp(t), w) for t, w in zip(taps, weights)])

    if mode == "nearest":
        return ctx.input(0, [taps[0][0] for taps in axis_taps])

    acc = _acc_dtype(x.dtype)
    terms = [((), None)]  # (index, weight) over the cartesian product of the axes' taps
    for taps in axis_taps:
        new = []
        for index, weight in terms:
            for i, w in taps:
                w = w if w is None else L.cast(acc, w)
                new.append((index + (i,), w if weight is None else (weight if w is None else weight * w)))
        terms = new
    total = None
    for index, weight in terms:
        term = L.cast(acc, ctx.input(0, index))
        term = term if weight is None else term * weight
        total = term if total is None else total + term
    if out_d.is_float:
        return L.cast(out_d, total)
    # the reference rounds half to even, then saturates (one intrinsic: the sum is not repeated)
    return L.cast(out_d, L.call("roundeven", total))


register(OpDef("resize", "reduce", _resize_infer,
               attrs={"sizes": Attr("any", required=True), "mode": Attr("str", "nearest"),
                      "coordinate_transformation_mode": Attr("str", "half_pixel"),
                      "nearest_mode": Attr("str", "round_prefer_floor"), "cubic_coeff_a": Attr("float", -0.75),
                      "exclude_outside": Attr("bool", False), "extrapolation_value": Attr("float", 0.0),
                      "scales": Attr("any", None)},
               compute=_resize_compute, num_inputs=1,
               doc="ONNX Resize (opset 11-19, no roi/antialias): output shape = sizes (ints, or the input's own "
                   "symbolic dim on axes that are not resized); axes whose size differs (or whose scale is not 1) "
                   "are resampled with nearest / N-linear / N-cubic interpolation, edge-clamped. `scales` (one "
                   "float per axis, or None) is what the model gave, used in the coordinate transform instead "
                   "of sizes/input. Integer inputs are rounded half to even and saturated, as in the reference. "
                   "extrapolation_value is accepted for ONNX compatibility; it only matters for "
                   "tf_crop_and_resize, which is not supported."))


# -- batch_norm / instance_norm (composites) ------------------------------------------------------
def _compute_dtype(d: DType) -> DType:
    d = float_result(d)
    return DType.float32 if d in (DType.float16, DType.bfloat16) else d


def _as(g, v, d):
    return v if v.dtype is d else g.op("cast", v, dtype=d)


def _check_channel_params(op, x, params, names):
    if x.rank < 2:
        raise ShapeError(f"{op}: input must have rank >= 2 (N, C, ...), got shape {tuple(x.shape)}")
    for name, t in zip(names, params):
        if tuple(t.shape) != (x.shape[1],):
            raise ShapeError(f"{op}: {name} must have shape ({x.shape[1]},) (one value per channel), "
                             f"got {tuple(t.shape)}")
        if t.dtype.is_bool:
            raise DTypeError(f"{op}: {name} must be numeric, got bool")


def _per_channel(g, v, rank):
    """(C,) -> (C, 1, ..., 1) so it broadcasts against (N, C, D1, ...)."""
    return v if rank == 2 else g.op("reshape", v, shape=(v.shape[0],) + (1,) * (rank - 2))


def _bn_infer(ts, attrs):
    x = ts[0]
    _check_channel_params("batch_norm", x, ts[1:], ("scale", "bias", "mean", "var"))
    return [TensorType(x.shape, float_result(x.dtype))]


def _bn_decompose(g, ins, attrs):
    x = ins[0]
    d = _compute_dtype(x.dtype)
    scale, bias, mean, var = (_as(g, v, d) for v in ins[1:])
    # y = x * a + b with a = scale / sqrt(var + eps) and b = bias - mean * a: with constant
    # parameters, folding leaves one per-channel multiply and add
    a = g.op("mul", scale, g.op("rsqrt", g.op("add", var, g.constant(attrs["epsilon"], d))))
    b = g.op("sub", bias, g.op("mul", mean, a))
    y = g.op("mul", _as(g, x, d), _per_channel(g, a, x.type.rank))
    return [g.op("add", y, _per_channel(g, b, x.type.rank))]


register(OpDef("batch_norm", "composite", _bn_infer, attrs={"epsilon": Attr("float", 1e-5)},
               decompose=_bn_decompose, num_inputs=5,
               doc="inference BatchNormalization over axis 1: (x - mean) / sqrt(var + eps) * scale + bias; "
                   "inputs x, scale, bias, mean, var (per-channel, shape (C,))"))


def _in_infer(ts, attrs):
    x = ts[0]
    _check_channel_params("instance_norm", x, ts[1:], ("scale", "bias"))
    if x.rank < 3:
        raise ShapeError(f"instance_norm: input must have rank >= 3 (N, C, D1, ...), got shape {tuple(x.shape)}")
    return [TensorType(x.shape, float_result(x.dtype))]


def _in_decompose(g, ins, attrs):
    x = ins[0]
    d = _compute_dtype(x.dtype)
    x = _as(g, x, d)
    axes = tuple(range(2, x.type.rank))
    mean = g.op("mean", x, axes=axes, keepdims=True)
    centred = g.op("sub", x, mean)
    var = g.op("mean", g.op("mul", centred, centred), axes=axes, keepdims=True)
    inv = g.op("rsqrt", g.op("add", var, g.constant(attrs["epsilon"], d)))
    scale, bias = (_per_channel(g, _as(g, v, d), x.type.rank) for v in ins[1:])
    return [g.op("add", g.op("mul", centred, g.op("mul", inv, scale)), bias)]


register(OpDef("instance_norm", "composite", _in_infer, attrs={"epsilon": Attr("float", 1e-5)},
               decompose=_in_decompose, num_inputs=3,
               doc="ONNX InstanceNormalization: per (n, c), normalise over the spatial axes, then "
                   "* scale[c] + bias[c]"))


from ubique.ir import ops_einsum  # noqa: E402,F401  (registers einsum)
