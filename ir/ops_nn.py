"""Neural-network ops: conv2d, pooling, softmax, log_softmax, layer_norm, gelu."""
from __future__ import annotations

import math

from ubique.errors import ShapeError, UnsupportedOpError
from ubique.ir import dims as D
from ubique.ir import loop as L
from ubique.ir.dtypes import DType, float_result, promote
from ubique.ir.graph import TensorType
from ubique.ir.registry import Attr, OpDef, broadcast_shapes, dim_expr, normalize_axis, register

_WINDOW = {
    "stride": Attr("ints", (1, 1)),
    "padding": Attr("ints", (0, 0, 0, 0)),  # top, left, bottom, right (ONNX order)
    "dilation": Attr("ints", (1, 1)),
}


def _window_out(op, size, k, stride, pad_lo, pad_hi, dil, ceil_mode=False):
    span = dil * (k - 1) + 1
    total = size + pad_lo + pad_hi - span
    if total < 0:
        raise ShapeError(f"{op}: window of extent {span} does not fit input size {size} with padding "
                         f"({pad_lo}, {pad_hi})")
    n = (-(-total // stride) if ceil_mode else total // stride) + 1
    if ceil_mode and (n - 1) * stride >= size + pad_lo:  # last window must start inside input or left pad
        n -= 1
    return n


def _check_window(op, attrs):
    for name in ("stride", "dilation"):
        if len(attrs[name]) != 2 or min(attrs[name]) < 1:
            raise ShapeError(f"{op}: {name} must be two positive ints, got {attrs[name]}")
    if len(attrs["padding"]) != 4 or min(attrs["padding"]) < 0:
        raise ShapeError(f"{op}: padding must be four non-negative ints (top, left, bottom, right), "
                         f"got {attrs['padding']}")


def _window_reads(idx_h, idx_w, kh, kw, attrs, H, W):
    """Input coordinates of a window tap and whether they fall inside the input."""
    (sh, sw), (dh, dw), (pt, pl, _, _) = attrs["stride"], attrs["dilation"], attrs["padding"]
    h = idx_h * sh + kh * dh - pt
    w = idx_w * sw + kw * dw - pl
    if not (any(attrs["padding"]) or attrs.get("ceil_mode")):
        return h, w, L.Const(True, DType.bool)
    # taps outside the input are read with a mask (they touch no memory)
    return h, w, L.logical_and(L.logical_and(h.ge(0), h.lt(H)), L.logical_and(w.ge(0), w.lt(W)))


# -- conv2d -------------------------------------------------------------------------------
def _conv_infer(ts, attrs):
    x, w = ts
    _check_window("conv2d", attrs)
    if x.rank != 4 or w.rank != 4:
        raise ShapeError(f"conv2d: expects NCHW input and OIHW weight (rank 4), got ranks {x.rank} and {w.rank}")
    g = attrs["groups"]
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    if not all(D.is_static(d) for d in (c, h, wd, o, ci, kh, kw)):
        raise UnsupportedOpError(f"conv2d: the input's channels and spatial sizes {tuple(x.shape[1:])} and the "
                                 f"weight shape {tuple(w.shape)} must be static (only the batch may be symbolic)")
    if g < 1 or c % g or o % g:
        raise ShapeError(f"conv2d: groups={g} must divide input channels {c} and output channels {o}")
    if ci != c // g:
        raise ShapeError(f"conv2d: weight expects {ci} input channels per group, input has {c}/{g} = {c // g}")
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = attrs["stride"], attrs["dilation"], attrs["padding"]
    oh = _window_out("conv2d", h, kh, sh, pt, pb, dh)
    ow = _window_out("conv2d", wd, kw, sw, pl, pr, dw)
    return [TensorType((n, o, oh, ow), promote(x.dtype, w.dtype))]


def _conv_compute(ctx, idx):
    x, w = ctx.in_types
    d = ctx.out_type.dtype
    n, o, oh, ow = idx
    g = ctx.attrs["groups"]
    _, cpg, KH, KW = w.shape
    opg = w.shape[0] // g
    c, kh, kw = ctx.fresh("rc"), ctx.fresh("rh"), ctx.fresh("rw")
    ci = c if g == 1 else (o // opg) * cpg + c
    h, ww, inside = _window_reads(oh, ow, kh, kw, ctx.attrs, dim_expr(x.shape[2]), dim_expr(x.shape[3]))
    xv = L.cast(d, ctx.input_masked(0, (n, ci, h, ww), inside, 0))
    body = xv * L.cast(d, ctx.input(1, (o, c, kh, kw)))
    return L.Reduce("sum", [(c, dim_expr(cpg)), (kh, dim_expr(KH)), (kw, dim_expr(KW))], body, d)


register(OpDef("conv2d", "reduce", _conv_infer, attrs={**_WINDOW, "groups": Attr("int", 1)},
               compute=_conv_compute, num_inputs=2,
               doc="NCHW x OIHW cross-correlation (as in PyTorch/ONNX); bias is a separate add"))


# -- pooling ------------------------------------------------------------------------------
def _pool_infer(op):
    def infer(ts, attrs):
        x = ts[0]
        _check_window(op, attrs)
        rank = 5 if attrs["layout"] == "NCHWc" else 4
        if attrs["layout"] not in ("NCHW", "NCHWc"):
            raise ShapeError(f"{op}: layout must be NCHW or NCHWc, got {attrs['layout']!r}")
        if x.rank != rank:
            raise ShapeError(f"{op}: expects an {attrs['layout']} input (rank {rank}), got rank {x.rank}")
        if len(attrs["kernel"]) != 2 or min(attrs["kernel"]) < 1:
            raise ShapeError(f"{op}: kernel must be two positive ints, got {attrs['kernel']}")
        if not all(D.is_static(d) for d in x.shape[2:4]):
            raise UnsupportedOpError(f"{op}: the spatial sizes {tuple(x.shape[2:4])} must be static")
        (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = (attrs["kernel"], attrs["stride"], attrs["dilation"],
                                                          attrs["padding"])
        oh = _window_out(op, x.shape[2], kh, sh, pt, pb, dh, attrs["ceil_mode"])
        ow = _window_out(op, x.shape[3], kw, sw, pl, pr, dw, attrs["ceil_mode"])
        return [TensorType(tuple(x.shape[:2]) + (oh, ow) + tuple(x.shape[4:]), x.dtype)]
    return infer


def _pool_window(ctx, idx):
    x = ctx.in_types[0]
    n, c, oh, ow = idx[:4]  # (NCHWc: the lane index follows)
    kh, kw = ctx.fresh("rh"), ctx.fresh("rw")
    KH, KW = ctx.attrs["kernel"]
    h, w, inside = _window_reads(oh, ow, kh, kw, ctx.attrs, dim_expr(x.shape[2]), dim_expr(x.shape[3]))
    return [(kh, dim_expr(KH)), (kw, dim_expr(KW))], (n, c, h, w) + tuple(idx[4:]), inside, (kh, kw, oh, ow)


def _max_pool_compute(ctx, idx):
    axes, at, inside, _ = _pool_window(ctx, idx)
    d = ctx.out_type.dtype
    lowest = -math.inf if d.is_float else (0 if not d.is_signed else -(2 ** (d.bits - 1)))
    return L.Reduce("max", axes, ctx.input_masked(0, at, inside, lowest), d)


def _avg_pool_compute(ctx, idx):
    axes, at, inside, (kh, kw, oh, ow) = _pool_window(ctx, idx)
    d = ctx.out_type.dtype
    acc = float_result(d) if d is not DType.float16 and d is not DType.bfloat16 else DType.float32
    total = L.Reduce("sum", axes, L.cast(acc, ctx.input_masked(0, at, inside, 0)), acc)
    if ctx.attrs["count_include_pad"]:
        # taps inside input + padding count; taps beyond the padding (ceil_mode) do not
        x = ctx.in_types[0]
        (sh, sw), (dh, dw), (pt, pl, pb, pr) = ctx.attrs["stride"], ctx.attrs["dilation"], ctx.attrs["padding"]
        h = oh * sh + kh * dh - pt
        w = ow * sw + kw * dw - pl
        Hp, Wp = dim_expr(x.shape[2]) + pb, dim_expr(x.shape[3]) + pr
        counted = L.logical_and(h.lt(Hp), w.lt(Wp))
    else:
        counted = inside
    count = L.Reduce("sum", axes, L.select(counted, L.Const(1, acc), L.Const(0, acc)), acc)
    return L.cast(d, total / count)


for _name, _compute, _extra in (("max_pool2d", _max_pool_compute, {}),
                                ("avg_pool2d", _avg_pool_compute, {"count_include_pad": Attr("bool", True)})):
    register(OpDef(_name, "reduce", _pool_infer(_name),
                   attrs={"kernel": Attr("ints", required=True), **_WINDOW, "ceil_mode": Attr("bool", False),
                          "layout": Attr("str", "NCHW"), **_extra},
                   compute=_compute, doc=f"{_name} over NCHW (or channel-blocked NCHWc: [N, C/c, H, W, c]); "
                                         "stride defaults to 1"))


register(OpDef("global_avg_pool", "composite",
               lambda ts, attrs: [TensorType(tuple(ts[0].shape[:2]) + (1, 1), float_result(ts[0].dtype))],
               decompose=lambda g, ins, attrs: [g.op("mean", ins[0], axes=(2, 3), keepdims=True)],
               doc="mean over H and W, keeping them as size 1"))


# -- softmax family, layer_norm, gelu (composites) ------------------------------------------
def _softmax_parts(g, x, axis):
    if x.type.is_static and x.type.size == 0:  # nothing to normalise (max would have no identity)
        return x, x, g.op("add", x, g.constant(1.0, x.dtype))
    m = g.op("max", x, axes=(axis,), keepdims=True)
    shifted = g.op("sub", x, m)
    e = g.op("exp", shifted)
    s = g.op("sum", e, axes=(axis,), keepdims=True)
    return shifted, e, s


def _float_input(op):
    def infer(ts, attrs):
        t = ts[0]
        normalize_axis(op, attrs["axis"], t.rank)
        return [TensorType(t.shape, float_result(t.dtype))]
    return infer


def _as_float(g, x):
    """The input in the dtype a composite computes in: its float type, with float16 and
    bfloat16 widened to float32 (row sums and variances overflow float16); the decompose
    pass rounds the result back to the op's output dtype."""
    d = float_result(x.dtype)
    if d in (DType.float16, DType.bfloat16):
        d = DType.float32
    return x if x.dtype is d else g.op("cast", x, dtype=d)


register(OpDef("softmax", "composite", _float_input("softmax"), attrs={"axis": Attr("int", -1)},
               decompose=lambda g, ins, a: [g.op("div", *_softmax_parts(g, _as_float(g, ins[0]), a["axis"])[1:])],
               doc="exp(x - max) / sum(exp(x - max)) along axis"))


def _log_softmax(g, ins, attrs):
    shifted, _, s = _softmax_parts(g, _as_float(g, ins[0]), attrs["axis"])
    return [g.op("sub", shifted, g.op("log", s))]


register(OpDef("log_softmax", "composite", _float_input("log_softmax"), attrs={"axis": Attr("int", -1)},
               decompose=_log_softmax, doc="x - max - log(sum(exp(x - max))) along axis"))


def _ln_infer(ts, attrs):
    x = ts[0]
    axis = normalize_axis("layer_norm", attrs["axis"], x.rank)
    norm_shape = tuple(x.shape[axis:])
    for name, t in zip(("scale", "bias"), ts[1:]):
        if tuple(t.shape) != norm_shape and (len(t.shape) > len(norm_shape)
                                             or broadcast_shapes("layer_norm", t.shape, norm_shape) != norm_shape):
            raise ShapeError(f"layer_norm: {name} has shape {tuple(t.shape)}, expected {norm_shape}")
    return [TensorType(x.shape, float_result(x.dtype))]


def _ln_decompose(g, ins, attrs):
    x = _as_float(g, ins[0])
    axes = tuple(range(normalize_axis("layer_norm", attrs["axis"], x.type.rank), x.type.rank))
    mean = g.op("mean", x, axes=axes, keepdims=True)
    centred = g.op("sub", x, mean)
    var = g.op("mean", g.op("mul", centred, centred), axes=axes, keepdims=True)
    eps = g.constant(attrs["epsilon"], x.dtype)
    y = g.op("mul", centred, g.op("rsqrt", g.op("add", var, eps)))
    if len(ins) > 1:
        y = g.op("mul", y, ins[1])
    if len(ins) > 2:
        y = g.op("add", y, ins[2])
    return [y]


register(OpDef("layer_norm", "composite", _ln_infer, attrs={"axis": Attr("int", -1), "epsilon": Attr("float", 1e-5)},
               decompose=_ln_decompose, num_inputs=(1, 3),
               doc="normalises over axes [axis, rank); optional scale and bias inputs (ONNX LayerNormalization)"))


def _gelu_decompose(g, ins, attrs):
    x = _as_float(g, ins[0])
    c = lambda v: g.constant(v, x.dtype)  # noqa: E731
    if attrs["approximate"] == "tanh":
        inner = g.op("mul", c(math.sqrt(2 / math.pi)),
                     g.op("add", x, g.op("mul", c(0.044715), g.op("mul", x, g.op("mul", x, x)))))
        t = g.op("tanh", inner)
    else:
        t = g.op("erf", g.op("mul", x, c(1 / math.sqrt(2))))
    return [g.op("mul", g.op("mul", c(0.5), x), g.op("add", c(1.0), t))]


def _gelu_infer(ts, attrs):
    if attrs["approximate"] not in ("none", "tanh"):
        raise ShapeError(f"gelu: approximate must be 'none' or 'tanh', got {attrs['approximate']!r}")
    return [TensorType(ts[0].shape, float_result(ts[0].dtype))]


register(OpDef("gelu", "composite", _gelu_infer, attrs={"approximate": Attr("str", "none")},
               decompose=_gelu_decompose, doc="x * Phi(x), exact (erf) or tanh approximation"))
