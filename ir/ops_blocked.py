"""Ops over blocked layouts, the layouts CPU targets compute in: convolutions over
channel-blocked tensors (NCHWc), and matmul against a right-hand side packed in column panels.

A blocked activation has shape [N, C/c, H, W, c]: channel k lives at block k // c, lane
k % c. With c equal to the vector width, an output pixel's c channels are one vector, the
weights of one (input channel, tap) for c output channels are one contiguous vector, and
every input channel read is a scalar broadcast: a convolution becomes a register-blocked
outer product, like a matrix multiplication. The layout pass (compiler/layout.py) inserts
these ops and the transforms in and out of the layout; users never write them.

The dense convolution reads an input that is already padded (a separate `pad`), so its
compute-bound inner loops carry no bounds checks; the memory-bound depthwise one reads with
a mask instead, saving the padded copy.
"""
from __future__ import annotations

from ubique.errors import ShapeError
from ubique.ir import dims as D
from ubique.ir import loop as L
from ubique.ir.dtypes import promote
from ubique.ir.graph import TensorType
from ubique.ir.registry import Attr, OpDef, dim_expr, register

_ATTRS = {"stride": Attr("ints", (1, 1)), "dilation": Attr("ints", (1, 1))}


def _out_size(op, size, k, stride, dil):
    span = dil * (k - 1) + 1
    if size < span:
        raise ShapeError(f"{op}: window of extent {span} does not fit the padded input size {size}")
    return (size - span) // stride + 1


def _static_spatial(op, x):
    if not all(D.is_static(d) for d in x.shape[1:]):
        raise ShapeError(f"{op}: only the batch may be symbolic, got input shape {tuple(x.shape)}")


def _check_blocked(op, x, w, weight_layout: str, channel_axes: tuple[int, int]):
    """Ranks, static sizes, and the weight's channel blocking against the input's."""
    if x.rank != 5 or w.rank != len(weight_layout.split(",")):
        raise ShapeError(f"{op}: expects input [N, C/c, H, W, c] and weight [{weight_layout}], "
                         f"got ranks {x.rank} and {w.rank}")
    _static_spatial(op, x)
    blocks = tuple(w.shape[a] for a in channel_axes)
    if blocks != (x.shape[1], x.shape[4]):
        raise ShapeError(f"{op}: weight blocks {blocks[0]}x{blocks[1]} channels, the input has "
                         f"{x.shape[1]}x{x.shape[4]}")


def _conv_infer(ts, attrs):
    x, w = ts
    _check_blocked("conv2d_nchwc", x, w, "O/o, C/c, KH, KW, c, o", (1, 4))
    n, cb, h, wd, c = x.shape
    ob, wcb, kh, kw, wc, o = w.shape
    (sh, sw), (dh, dw) = attrs["stride"], attrs["dilation"]
    oh = _out_size("conv2d_nchwc", h, kh, sh, dh)
    ow = _out_size("conv2d_nchwc", wd, kw, sw, dw)
    return [TensorType((n, ob, oh, ow, o), promote(x.dtype, w.dtype))]


def _conv_compute(ctx, idx):
    x, w = ctx.in_types
    d = ctx.out_type.dtype
    n, ob, oh, ow, o = idx
    _, cb, KH, KW, c, _ = w.shape
    (sh, sw), (dh, dw) = ctx.attrs["stride"], ctx.attrs["dilation"]
    # input lanes innermost: c consecutive scalars of the input against c weight vectors
    rb, kh, kw, rc = ctx.fresh("rb"), ctx.fresh("rh"), ctx.fresh("rw"), ctx.fresh("rc")
    xv = L.cast(d, ctx.input(0, (n, rb, oh * sh + kh * dh, ow * sw + kw * dw, rc)))
    wv = L.cast(d, ctx.input(1, (ob, rb, kh, kw, rc, o)))
    return L.Reduce("sum", [(rb, dim_expr(cb)), (kh, dim_expr(KH)), (kw, dim_expr(KW)), (rc, dim_expr(c))],
                    xv * wv, d)


register(OpDef("conv2d_nchwc", "reduce", _conv_infer, attrs=dict(_ATTRS), compute=_conv_compute, num_inputs=2,
               doc="convolution of a padded channel-blocked input [N, C/c, H, W, c] with weights "
                   "[O/o, C/c, KH, KW, c, o] into [N, O/o, OH, OW, o]"))


def _depthwise_infer(ts, attrs):
    x, w = ts
    _check_blocked("depthwise_conv2d_nchwc", x, w, "C/c, KH, KW, c", (0, 3))
    n, cb, h, wd, c = x.shape
    _, kh, kw, _ = w.shape
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = attrs["stride"], attrs["dilation"], attrs["padding"]
    if len(attrs["padding"]) != 4 or min(attrs["padding"]) < 0:
        raise ShapeError(f"depthwise_conv2d_nchwc: padding must be four non-negative ints, got {attrs['padding']}")
    oh = _out_size("depthwise_conv2d_nchwc", h + pt + pb, kh, sh, dh)
    ow = _out_size("depthwise_conv2d_nchwc", wd + pl + pr, kw, sw, dw)
    return [TensorType((n, cb, oh, ow, c), promote(x.dtype, w.dtype))]


def _depthwise_compute(ctx, idx):
    _, w = ctx.in_types
    d = ctx.out_type.dtype
    n, b, oh, ow, c = idx
    _, KH, KW, _ = w.shape
    (sh, sw), (dh, dw), (pt, pl, _, _) = ctx.attrs["stride"], ctx.attrs["dilation"], ctx.attrs["padding"]
    kh, kw = ctx.fresh("rh"), ctx.fresh("rw")
    h, w = oh * sh + kh * dh - pt, ow * sw + kw * dw - pl
    if any(ctx.attrs["padding"]):
        # a pixel's lanes share the condition: one masked vector load, no padded copy
        H, W = dim_expr(ctx.in_types[0].shape[2]), dim_expr(ctx.in_types[0].shape[3])
        inside = L.logical_and(L.logical_and(h.ge(0), h.lt(H)), L.logical_and(w.ge(0), w.lt(W)))
        xv = L.cast(d, ctx.input_masked(0, (n, b, h, w, c), inside, 0))
    else:
        xv = L.cast(d, ctx.input(0, (n, b, h, w, c)))
    wv = L.cast(d, ctx.input(1, (b, kh, kw, c)))
    return L.Reduce("sum", [(kh, dim_expr(KH)), (kw, dim_expr(KW))], xv * wv, d)


register(OpDef("depthwise_conv2d_nchwc", "reduce", _depthwise_infer,
               attrs={**_ATTRS, "padding": Attr("ints", (0, 0, 0, 0))},
               compute=_depthwise_compute, num_inputs=2,
               doc="one filter per channel over a channel-blocked input [N, C/c, H, W, c] (zero padding: "
                   "top, left, bottom, right), weights [C/c, KH, KW, c]"))


def _matmul_packed_infer(ts, attrs):
    a, b = ts
    if a.rank < 1 or b.rank != 3:
        raise ShapeError(f"matmul_packed: expects a[..., K] and packed b [N/nb, K, nb], got ranks {a.rank} and {b.rank}")
    panels, k, width = b.shape
    if a.shape[-1] != k:
        raise ShapeError(f"matmul_packed: contraction sizes differ: a{tuple(a.shape)} vs packed b{tuple(b.shape)}")
    n = attrs["n"]
    if not (panels - 1) * width < n <= panels * width:
        raise ShapeError(f"matmul_packed: {n} columns do not fill {panels} panels of {width}")
    return [TensorType(tuple(a.shape[:-1]) + (n,), promote(a.dtype, b.dtype))]


def _matmul_packed_compute(ctx, idx):
    a, b = ctx.in_types
    d = ctx.out_type.dtype
    width = b.shape[2]
    *rest, j = idx
    k = ctx.fresh("k")
    x = L.cast(d, ctx.input(0, tuple(rest) + (k,)))
    y = L.cast(d, ctx.input(1, (j // width, k, j % width)))
    return L.Reduce("sum", [(k, dim_expr(a.shape[-1]))], x * y, d)


register(OpDef("matmul_packed", "reduce", _matmul_packed_infer, attrs={"n": Attr("int", required=True)},
               compute=_matmul_packed_compute, num_inputs=2,
               doc="a @ b with b [K, N] packed into column panels [N/nb, K, nb] (zero-padded): each panel "
                   "is contiguous, so a register tile streams it without strides"))
