"""ONNX op handlers: each translates one ONNX op onto ops of the graph-IR registry.

A handler takes a NodeContext and returns one entry per ONNX output: a graph Value,
or a numpy array when the result is known at import time (shape arithmetic).
Semantics follow the ONNX operator specification; opset differences (attributes that
became inputs, Softmax's axis meaning before opset 13) are handled here.
"""
from __future__ import annotations

import numpy as np

from ubique.errors import DTypeError, ModelError, ShapeError, UnsupportedOpError
from ubique.ir import dims as D
from ubique.ir.dims import Sym
from ubique.ir.dtypes import DType
from ubique.ir.registry import broadcast_shapes
from ubique.compiler.onnx_frontend.importer import dims_of, symbolic
from ubique.compiler.onnx_frontend.loader import onnx_dtype

HANDLERS: dict = {}
INT_MAX = 2 ** 62  # ONNX uses INT64_MAX / INT32_MAX for "to the end"


def handles(*names):
    def deco(fn):
        for n in names:
            HANDLERS[n] = fn
        return fn
    return deco


def handler_for(node):
    """The handler of an ONNX node: a built-in op's, or for another domain the custom op
    registered for it (ub.op.define(..., onnx="domain::OpType"))."""
    if node.domain in ("", "ai.onnx"):
        return HANDLERS[node.op_type]
    return _custom_op


def _custom_op(ctx):
    from ubique.custom_ops import lookup_onnx

    name = lookup_onnx(ctx.node.domain, ctx.node.op_type)
    inputs = [ctx.value(i) for i in range(ctx.num_inputs) if ctx.has(i)]
    return ctx.node_op(name, inputs, **ctx.attrs)


def check_supported(model, opset: int) -> None:
    """One error naming every unsupported op type and its nodes."""
    from ubique.custom_ops import lookup_onnx

    missing: dict[str, list[str]] = {}
    for k, n in enumerate(model.graph.node):
        if n.domain not in ("", "ai.onnx") and lookup_onnx(n.domain, n.op_type) is not None:
            continue
        if n.domain not in ("", "ai.onnx") or n.op_type not in HANDLERS:
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
            missing.setdefault(key, []).append(n.name or f"#{k}")
    if missing:
        parts = [f"{op} (nodes: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''})"
                 for op, names in sorted(missing.items())]
        custom = any("::" in op for op in missing)
        raise UnsupportedOpError(f"the model uses {len(missing)} op type(s) ubique does not support: "
                                 + "; ".join(parts)
                                 + ("; ops of other domains are custom ops: define them with ub.op.define(..., "
                                    "onnx=\"domain::OpType\")" if custom else ""))


def _all_known(ctx) -> bool:
    return all(ctx.const(i) is not None for i in range(ctx.num_inputs) if ctx.has(i))


# -- elementwise --------------------------------------------------------------------------------
_UNARY = {"Abs": "abs", "Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Relu": "relu",
          "Sigmoid": "sigmoid", "Tanh": "tanh", "Erf": "erf", "Sin": "sin", "Cos": "cos", "Tan": "tan",
          "Asin": "asin", "Acos": "acos", "Atan": "atan", "Sinh": "sinh", "Cosh": "cosh", "Asinh": "asinh",
          "Acosh": "acosh", "Atanh": "atanh", "Floor": "floor", "Ceil": "ceil", "Round": "round",
          "Sign": "sign", "Reciprocal": "reciprocal", "IsNaN": "isnan", "Not": "logical_not",
          "Softsign": "softsign", "Mish": "mish", "HardSwish": "hard_swish", "Softplus": "softplus",
          "BitwiseNot": "bitwise_not"}
_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Pow": "pow", "Equal": "equal", "Less": "less",
           "Greater": "greater", "LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal",
           "And": "logical_and", "Or": "logical_or", "Xor": "logical_xor", "BitwiseAnd": "bitwise_and",
           "BitwiseOr": "bitwise_or", "BitwiseXor": "bitwise_xor", "PRelu": "prelu"}
_NUMPY_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal}


@handles(*_UNARY)
def _unary(ctx):
    if ctx.node.op_type == "Neg" and _all_known(ctx):
        return [-ctx.const(0)]
    return [ctx.op(_UNARY[ctx.node.op_type], ctx.value(0))]


# tensors computed at import time stay numpy arrays up to this many elements
FOLD_LIMIT = 1 << 16


def _known_shapes_broadcast(ctx):
    """Shape arithmetic folded with numpy: the operands must broadcast (ONNX rules)."""
    return broadcast_shapes(ctx.node.op_type, *(ctx.const(i).shape for i in range(ctx.num_inputs)))


@handles(*_BINARY)
def _binary(ctx):
    op = ctx.node.op_type
    if op in _NUMPY_BINARY and _all_known(ctx) and (ctx.const(0).dtype == object or ctx.const(1).dtype == object
                                                  or ctx.const(0).size <= 64):
        _known_shapes_broadcast(ctx)
        return [_NUMPY_BINARY[op](ctx.const(0), ctx.const(1))]
    a, b = ctx.value(0), ctx.value(1)
    if op == "Pow" and a.dtype.is_float and b.dtype != a.dtype:  # ONNX: the result has the base's type
        b = ctx.op("cast", b, dtype=a.dtype)
    out = ctx.op(_BINARY[op], a, b)
    if op == "Pow" and out.dtype != a.dtype:  # an integer base with a float exponent
        out = ctx.op("cast", out, dtype=a.dtype)
    return [out]


@handles("Div")
def _div(ctx):
    if _all_known(ctx) and (ctx.const(0).dtype == object or ctx.const(0).size <= 64):
        a, b = ctx.const(0), ctx.const(1)
        _known_shapes_broadcast(ctx)
        if b.dtype.kind in "iuO" and any(not isinstance(y, Sym) and y == 0 for y in b.reshape(-1)):
            ctx.invalid(f"integer division by zero in shape arithmetic (divisor {b.tolist()})")
        if a.dtype == object or b.dtype == object:  # sizes: exact floor division of dimensions
            a, b = np.broadcast_arrays(a, b)
            return [np.array([Sym.of(x) // y for x, y in zip(a.reshape(-1), b.reshape(-1))],
                             dtype=object).reshape(a.shape)]
        if a.dtype.kind in "iu":  # integer division truncates toward zero
            return [(np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(a.dtype)]
        return [(a / b).astype(a.dtype)]
    a, b = ctx.value(0), ctx.value(1)
    out = ctx.op("div", a, b)
    if not a.dtype.is_float:  # integer division truncates toward zero (C semantics, as the reference)
        out = ctx.op("cast", out, dtype=a.dtype)
    return [out]


@handles("Mod")
def _mod(ctx):
    return [ctx.op("mod", ctx.value(0), ctx.value(1), fmod=int(ctx.attr("fmod", 0)))]


@handles("Max", "Min", "Sum", "Mean")
def _variadic(ctx):
    op = {"Max": "maximum", "Min": "minimum", "Sum": "add", "Mean": "add"}[ctx.node.op_type]
    out = ctx.value(0)
    for i in range(1, ctx.num_inputs):
        out = ctx.op(op, out, ctx.value(i))
    if ctx.node.op_type == "Mean":
        out = ctx.op("div", out, ctx.constant(ctx.num_inputs, out.dtype))
    return [out]


@handles("Where")
def _where(ctx):
    return [ctx.op("where", ctx.value(0), ctx.value(1), ctx.value(2))]


@handles("IsInf")
def _isinf(ctx):
    return [ctx.op("isinf", ctx.value(0), detect_positive=bool(ctx.attr("detect_positive", 1)),
                   detect_negative=bool(ctx.attr("detect_negative", 1)))]


_ACTIVATIONS = {  # ONNX op -> (ubique op, {ONNX attribute: (ubique attribute, ONNX default)})
    "LeakyRelu": ("leaky_relu", {"alpha": ("alpha", 0.01)}),
    "Elu": ("elu", {"alpha": ("alpha", 1.0)}),
    "Celu": ("celu", {"alpha": ("alpha", 1.0)}),
    "Selu": ("selu", {"alpha": ("alpha", 1.67326319217681884765625), "gamma": ("gamma", 1.05070102214813232421875)}),
    "HardSigmoid": ("hard_sigmoid", {"alpha": ("alpha", 0.2), "beta": ("beta", 0.5)}),
    "ThresholdedRelu": ("thresholded_relu", {"alpha": ("alpha", 1.0)}),
    "Shrink": ("shrink", {"bias": ("bias", 0.0), "lambd": ("lambd", 0.5)}),
}


@handles(*_ACTIVATIONS)
def _activation(ctx):
    op, spec = _ACTIVATIONS[ctx.node.op_type]
    return [ctx.op(op, ctx.value(0), **{ours: float(ctx.attr(k, d)) for k, (ours, d) in spec.items()})]


@handles("Gelu")
def _gelu(ctx):
    return [ctx.op("gelu", ctx.value(0), approximate=ctx.attr("approximate", "none"))]


@handles("Clip")
def _clip(ctx):
    x = ctx.value(0)
    if ctx.opset < 11:
        return [ctx.op("clip", x, min=ctx.attr("min", None), max=ctx.attr("max", None))]
    bounds = {}
    for i, name in ((1, "min"), (2, "max")):
        if ctx.has(i):
            c = ctx.const(i)
            if c is None:
                bounds[name] = ctx.value(i)
            elif np.asarray(c).size != 1:
                ctx.invalid(f"{name} must be a scalar, got shape {np.asarray(c).shape}")
            else:
                bounds[name] = float(np.asarray(c).reshape(-1)[0])
    if any(not isinstance(b, float) for b in bounds.values()):  # tensor bounds
        out = x
        if "min" in bounds:
            out = ctx.op("maximum", out, _as_value(ctx, bounds["min"], x.dtype))
        if "max" in bounds:
            out = ctx.op("minimum", out, _as_value(ctx, bounds["max"], x.dtype))
        return [out]
    return [ctx.op("clip", x, **bounds)]


def _as_value(ctx, b, dtype):
    return ctx.constant(b, dtype) if isinstance(b, float) else b


@handles("Cast")
def _cast(ctx):
    to = onnx_dtype(ctx.attr("to"), f"Cast node {ctx.name!r}")
    c = ctx.const(0)
    if c is not None and c.dtype == object:
        if any(isinstance(x, Sym) and not x.is_const for x in c.reshape(-1)):
            return [c]  # symbolic sizes stay sizes (shape arithmetic casts them back and forth)
        c = np.array([int(x) for x in c.reshape(-1)], np.int64).reshape(c.shape)
    if c is not None and c.size <= 1024 and to is not DType.bfloat16:
        return [c.astype(to.to_numpy())]
    return [ctx.op("cast", ctx.value(0), dtype=to)]


@handles("CastLike")
def _cast_like(ctx):
    return [ctx.op("cast", ctx.value(0), dtype=ctx.dtype(1))]


@handles("Identity", "Dropout")
def _identity(ctx):
    c = ctx.const(0)
    out = c if c is not None else ctx.value(0)
    if ctx.node.op_type == "Dropout":
        if ctx.has(2) and ctx.scalar_int(2, "training_mode"):
            ctx.unsupported("training_mode=True is not supported (inference only)")
        mask = None
        if len(ctx.node.output) > 1 and ctx.node.output[1]:
            shape = tuple(ctx.shape(0))
            if all(isinstance(d, int) for d in shape) and D.prod(shape) <= FOLD_LIMIT:
                mask = np.ones(shape, bool)
            else:
                mask = ctx.op("broadcast_to", ctx.constant(True, DType.bool), shape=shape)
        return [out, mask]
    return [out]


# -- matmul, gemm, conv, norms ------------------------------------------------------------------
@handles("MatMul")
def _matmul(ctx):
    return [ctx.op("matmul", ctx.value(0), ctx.value(1))]


@handles("Gemm")
def _gemm(ctx):
    a, b = ctx.value(0), ctx.value(1)
    if a.type.rank != 2 or b.type.rank != 2:
        ctx.invalid(f"A and B must be matrices (rank 2), got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if ctx.attr("transA", 0):
        a = ctx.op("transpose", a, perm=(1, 0))
    if ctx.attr("transB", 0):
        b = ctx.op("transpose", b, perm=(1, 0))
    y = ctx.op("matmul", a, b)
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    if alpha != 1.0:
        y = ctx.op("mul", y, ctx.constant(alpha, y.dtype))
    if ctx.has(2) and beta != 0.0:
        c = ctx.value(2)
        if broadcast_shapes("Gemm", y.shape, c.shape) != tuple(y.shape):
            ctx.invalid(f"C has shape {tuple(c.shape)}, which does not broadcast to the result {tuple(y.shape)}")
        if beta != 1.0:
            c = ctx.op("mul", c, ctx.constant(beta, c.dtype))
        y = ctx.op("add", y, c)
    return [y]


def _spatial_pads(ctx, in_spatial, kernel, strides, dilations):
    """ONNX pads/auto_pad -> (begin..., end...) for the spatial axes."""
    n = len(kernel)
    auto = ctx.attr("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        pads = list(ctx.attr("pads", [0] * (2 * n)))
        if len(pads) != 2 * n:
            ctx.invalid(f"pads must have {2 * n} entries, got {pads}")
        return pads
    if auto == "VALID":
        return [0] * (2 * n)
    begin, end = [], []
    for size, k, s, d in zip(in_spatial, kernel, strides, dilations):
        if not isinstance(size, int):
            ctx.unsupported("auto_pad SAME needs static spatial sizes")
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begin.append(lo)
        end.append(total - lo)
    return begin + end


def _as_2d(ctx, x, rank):
    """1-D spatial ops run as 2-D ones with a unit height."""
    if rank == 3:
        n, c, w = x.shape
        return ctx.op("reshape", x, shape=(n, c, 1, w))
    if rank != 4:
        ctx.unsupported(f"only 1-D and 2-D spatial inputs are supported, got rank {rank}")
    return x


def _from_2d(ctx, y, rank):
    if rank == 3:
        n, c, _, w = y.shape
        return ctx.op("reshape", y, shape=(n, c, w))
    return y


def _window_attrs(ctx, x_shape, kernel):
    n = len(kernel)
    if n != len(x_shape) - 2:
        ctx.invalid(f"kernel_shape {kernel} must have one entry per spatial axis of the input "
                    f"{tuple(x_shape)} ({len(x_shape) - 2})")
    strides = list(ctx.attr("strides", [1] * n))
    dilations = list(ctx.attr("dilations", [1] * n))
    for name, vals in (("strides", strides), ("dilations", dilations)):
        if len(vals) != n or any(v < 1 for v in vals):
            ctx.invalid(f"{name} {vals} must be {n} positive ints (one per spatial axis)")
    pads = _spatial_pads(ctx, x_shape[2:], kernel, strides, dilations)
    if n == 1:
        return (1, strides[0]), (1, dilations[0]), (0, pads[0], 0, pads[1]), (1, kernel[0])
    return tuple(strides), tuple(dilations), (pads[0], pads[1], pads[2], pads[3]), tuple(kernel)


def _spatial_ranks(ctx, x, w):
    """Conv-like ops: x is (N, C, spatial...) and w has the same rank."""
    rank = x.type.rank
    if rank < 3:
        ctx.invalid(f"the input must have rank >= 3 (N, C, spatial...), got shape {tuple(x.shape)}")
    if w.type.rank != rank:
        ctx.invalid(f"the weight {tuple(w.shape)} must have the input's rank {rank} (input {tuple(x.shape)})")
    kernel = list(ctx.attr("kernel_shape", w.shape[2:]))
    if len(kernel) != rank - 2 or tuple(kernel) != tuple(w.shape[2:]):
        ctx.invalid(f"kernel_shape {kernel} does not match the weight's spatial shape {tuple(w.shape[2:])}")
    return rank, kernel


@handles("Conv")
def _conv(ctx):
    x, w = ctx.value(0), ctx.value(1)
    rank, kernel = _spatial_ranks(ctx, x, w)
    stride, dil, pads, _ = _window_attrs(ctx, x.shape, kernel)
    y = ctx.op("conv2d", _as_2d(ctx, x, rank), _as_2d(ctx, w, rank), stride=stride, padding=pads,
               dilation=dil, groups=int(ctx.attr("group", 1)))
    if ctx.has(2):
        y = ctx.op("add", y, ctx.op("reshape", _bias(ctx, y.shape[1]), shape=(y.shape[1], 1, 1)))
    return [_from_2d(ctx, y, rank)]


def _bias(ctx, channels):
    b = ctx.value(2)
    if tuple(b.shape) != (channels,):
        ctx.invalid(f"the bias B has shape {tuple(b.shape)}; it must be ({channels},), one per output channel")
    return b


@handles("ConvTranspose")
def _conv_transpose(ctx):
    x, w = ctx.value(0), ctx.value(1)
    rank, kernel = _spatial_ranks(ctx, x, w)
    n = len(kernel)
    strides = list(ctx.attr("strides", [1] * n))
    dil = list(ctx.attr("dilations", [1] * n))
    out_pad = list(ctx.attr("output_padding", [0] * n))
    for name, vals in (("strides", strides), ("dilations", dil), ("output_padding", out_pad)):
        if len(vals) != n or any(v < (0 if name == "output_padding" else 1) for v in vals):
            ctx.invalid(f"{name} {vals} must be {n} {'non-negative' if name == 'output_padding' else 'positive'} "
                        "ints (one per spatial axis)")
    group = int(ctx.attr("group", 1))
    spatial = x.shape[2:]
    if ctx.attr("output_shape") is not None or ctx.attr("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        if not all(isinstance(i, int) for i in list(spatial) + kernel):
            ctx.unsupported("output_shape and auto_pad SAME need static spatial sizes and kernel")
        full = [s * (i - 1) + op + (k - 1) * d + 1 for s, i, op, k, d in zip(strides, spatial, out_pad, kernel, dil)]
    if ctx.attr("output_shape") is not None:
        want = list(ctx.attr("output_shape"))[-n:]
        total = [f - o for f, o in zip(full, want)]
        upper = ctx.attr("auto_pad", "NOTSET") == "SAME_UPPER"  # (the ONNX spec's split of the padding)
        lo = [t // 2 if upper else t - t // 2 for t in total]
        pads = lo + [t - b for t, b in zip(total, lo)]
    elif ctx.attr("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        total = [f - i * s for f, i, s in zip(full, spatial, strides)]
        upper = ctx.attr("auto_pad") == "SAME_UPPER"
        lo = [t // 2 if upper else t - t // 2 for t in total]
        pads = lo + [t - b for t, b in zip(total, lo)]
    else:
        pads = list(ctx.attr("pads", [0] * (2 * n)))
        if len(pads) != 2 * n:
            ctx.invalid(f"pads must have {2 * n} entries, got {pads}")
    if n == 1:
        strides, dil, out_pad, pads = [1] + strides, [1] + dil, [0] + out_pad, [0, pads[0], 0, pads[1]]
    y = ctx.op("conv_transpose2d", _as_2d(ctx, x, rank), _as_2d(ctx, w, rank), stride=tuple(strides),
               padding=tuple(pads), dilation=tuple(dil), output_padding=tuple(out_pad), groups=group)
    if ctx.has(2):
        y = ctx.op("add", y, ctx.op("reshape", _bias(ctx, y.shape[1]), shape=(y.shape[1], 1, 1)))
    return [_from_2d(ctx, y, rank)]


@handles("BatchNormalization")
def _batch_norm(ctx):
    if ctx.attr("training_mode", 0):
        ctx.unsupported("training_mode=1 is not supported (inference only)")
    x = ctx.value(0)
    y = ctx.op("batch_norm", x, *(ctx.value(i) for i in range(1, 5)), epsilon=float(ctx.attr("epsilon", 1e-5)))
    return [y]


@handles("InstanceNormalization")
def _instance_norm(ctx):
    return [ctx.op("instance_norm", ctx.value(0), ctx.value(1), ctx.value(2),
                   epsilon=float(ctx.attr("epsilon", 1e-5)))]


@handles("LayerNormalization")
def _layer_norm(ctx):
    ins = [ctx.value(i) for i in range(ctx.num_inputs) if ctx.has(i)]
    x = ins[0]
    axis, eps = ctx.axis(int(ctx.attr("axis", -1)), x.type.rank), \
        float(ctx.attr("epsilon", 1e-5))
    y = ctx.op("layer_norm", *ins, axis=axis, epsilon=eps)
    if len(ctx.node.output) == 1:
        return [y]
    # the optional Mean and InvStdDev outputs (computed in float32, the default stash_type)
    axes = tuple(range(axis, x.type.rank))
    xf = ctx.op("cast", x, dtype=DType.float32)
    mean = ctx.op("mean", xf, axes=axes, keepdims=True)
    centred = ctx.op("sub", xf, mean)
    var = ctx.op("mean", ctx.op("mul", centred, centred), axes=axes, keepdims=True)
    inv = ctx.op("rsqrt", ctx.op("add", var, ctx.constant(eps, DType.float32)))
    return [y, mean, inv]


@handles("Softmax", "LogSoftmax")
def _softmax(ctx):
    op = "softmax" if ctx.node.op_type == "Softmax" else "log_softmax"
    x = ctx.value(0)
    if ctx.opset >= 13:
        return [ctx.op(op, x, axis=int(ctx.attr("axis", -1)))]
    # before opset 13 the input is coerced to 2-D at `axis` (default 1)
    axis = ctx.axis(int(ctx.attr("axis", 1)), x.type.rank)
    flat = ctx.op("reshape", x, shape=(D.prod(x.shape[:axis]), D.prod(x.shape[axis:])))
    return [ctx.op("reshape", ctx.op(op, flat, axis=1), shape=x.shape)]


# -- pooling ------------------------------------------------------------------------------------
@handles("MaxPool", "AveragePool")
def _pool(ctx):
    x = ctx.value(0)
    rank = x.type.rank
    if len([o for o in ctx.node.output if o]) > 1:
        ctx.unsupported("the Indices output of MaxPool is not supported")
    if ctx.attr("storage_order", 0):
        ctx.unsupported("storage_order=1 is not supported")
    kernel = list(ctx.attr("kernel_shape"))
    stride, dil, pads, kernel = _window_attrs(ctx, x.shape, kernel)
    attrs = dict(kernel=kernel, stride=stride, padding=pads, dilation=dil, ceil_mode=bool(ctx.attr("ceil_mode", 0)))
    if ctx.node.op_type == "AveragePool":
        attrs["count_include_pad"] = bool(ctx.attr("count_include_pad", 0))
        y = ctx.op("avg_pool2d", _as_2d(ctx, x, rank), **attrs)
    else:
        y = ctx.op("max_pool2d", _as_2d(ctx, x, rank), **attrs)
    return [_from_2d(ctx, y, rank)]


@handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx):
    x = ctx.value(0)
    axes = tuple(range(2, x.type.rank))
    op = "mean" if ctx.node.op_type == "GlobalAveragePool" else "max"
    return [ctx.op(op, x, axes=axes, keepdims=True)]


# -- reductions ---------------------------------------------------------------------------------
def _reduce_axes(ctx):
    """(axes or None for all, keepdims); None axes with noop_with_empty_axes -> 'noop'."""
    keep = bool(ctx.attr("keepdims", 1))
    axes = ctx.attr("axes")
    if axes is None and ctx.has(1):
        axes = ctx.ints(1, "axes")
    if axes is not None and len(axes) == 0:
        axes = None
    if axes is None and ctx.attr("noop_with_empty_axes", 0):
        return "noop", keep
    if axes is None:
        return None, keep
    rank = len(ctx.shape(0))
    axes = tuple(ctx.axis(int(a), rank) for a in axes)
    if len(set(axes)) != len(axes):
        ctx.invalid(f"axes {list(axes)} repeat an axis")
    return axes, keep


@handles("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
         "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
def _reduce(ctx):
    x = ctx.value(0)
    axes, keep = _reduce_axes(ctx)
    if axes == "noop":
        return [x]
    op = ctx.node.op_type
    r = dict(axes=axes, keepdims=keep)
    if op == "ReduceL1":
        return [ctx.op("sum", ctx.op("abs", x), **r)]
    if op == "ReduceSumSquare":
        return [ctx.op("sum", ctx.op("mul", x, x), **r)]
    if op == "ReduceL2":
        return [ctx.op("sqrt", ctx.op("sum", ctx.op("mul", x, x), **r))]
    if op == "ReduceLogSum":
        return [ctx.op("log", ctx.op("sum", x, **r))]
    if op == "ReduceLogSumExp":  # max + log(sum(exp(x - max))), finite for large inputs
        m = ctx.op("max", x, axes=axes, keepdims=True)
        m = ctx.op("where", ctx.op("isinf", m), ctx.constant(0, m.dtype), m)
        s = ctx.op("log", ctx.op("sum", ctx.op("exp", ctx.op("sub", x, m)), **r))
        return [ctx.op("add", s, m if keep else ctx.op("reshape", m, shape=s.shape))]
    ours = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min",
            "ReduceProd": "prod"}[op]
    if ours == "prod" and _all_known(ctx):
        a = ctx.const(0)
        return [np.prod(a, axis=axes, keepdims=keep, dtype=object if a.dtype == object else None)]
    return [ctx.op(ours, x, **r)]


@handles("ArgMax", "ArgMin")
def _arg(ctx):
    op = "argmax" if ctx.node.op_type == "ArgMax" else "argmin"
    x = ctx.value(0)
    axis = ctx.axis(int(ctx.attr("axis", 0)), x.type.rank)
    keep = bool(ctx.attr("keepdims", 1))
    if not ctx.attr("select_last_index", 0):
        return [ctx.op(op, x, axis=axis, keepdims=keep)]
    # the last extreme index: the first one along the reversed axis, mirrored back
    n = x.shape[axis]
    if not isinstance(n, int):
        ctx.unsupported("select_last_index=1 over a symbolic axis is not supported")
    begin, end, step = [0] * x.type.rank, list(x.shape), [1] * x.type.rank
    begin[axis], end[axis], step[axis] = n - 1, -1, -1
    first = ctx.op(op, ctx.op("slice", x, begin=tuple(begin), end=tuple(end), step=tuple(step)),
                   axis=axis, keepdims=keep)
    return [ctx.op("sub", ctx.constant(n - 1, DType.int64), first)]


# -- shapes ---------------------------------------------------------------------------------------
@handles("Shape")
def _shape(ctx):
    shape = list(ctx.shape(0))
    start, end = ctx.attr("start", 0), ctx.attr("end", None)
    return [symbolic(shape[slice(start, end)])]


@handles("Size")
def _size(ctx):
    return [symbolic([D.prod(ctx.shape(0))]).reshape(())]


@handles("Constant")
def _constant(ctx):
    a = ctx.attrs
    if "value" in a:
        return [a["value"]]
    for name, dt in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                     ("value_ints", np.int64)):
        if name in a:
            return [np.array(a[name], dt)]
    if not a:
        ctx.invalid("it has no value attribute (value, value_float(s), value_int(s)...)", ModelError)
    ctx.unsupported(f"constant attribute {sorted(a)} is not supported")


@handles("ConstantOfShape")
def _constant_of_shape(ctx):
    shape = ctx.ints(0, "shape")
    if ctx.known_input(0, "shape").ndim != 1:
        ctx.invalid(f"the shape input must be a 1-D tensor, got shape {ctx.known_input(0, 'shape').shape}")
    if any(isinstance(d, int) and d < 0 for d in shape):
        ctx.invalid(f"the shape {shape} has a negative size")
    value = ctx.attr("value")
    if value is not None and np.asarray(value).size != 1:
        ctx.invalid(f"the value attribute must hold one element, got {np.asarray(value).size}")
    fill = np.zeros((), np.float32) if value is None else np.asarray(value).reshape(())
    if all(isinstance(d, int) for d in shape) and D.prod(shape) <= FOLD_LIMIT:
        return [np.full(shape, fill, fill.dtype)]
    return [ctx.op("broadcast_to", ctx.constant(fill), shape=dims_of(shape))]


@handles("Range")
def _range(ctx):
    parts = [ctx.known_input(i, name) for i, name in enumerate(("start", "limit", "delta"))]
    for a, name in zip(parts, ("start", "limit", "delta")):
        if a.size != 1:
            ctx.invalid(f"{name} must be a scalar, got shape {a.shape}")
    start, limit, delta = (a.reshape(()) for a in parts)
    if any(a.dtype == object for a in (start, limit, delta)):
        ctx.unsupported("a range over a symbolic size is not supported; give that size statically with dims=")
    if delta == 0:
        ctx.invalid("delta must not be zero")
    n = np.ceil((limit.astype(np.float64) - start) / delta)
    if not np.isfinite(n):
        ctx.invalid(f"start {start}, limit {limit} and delta {delta} do not make a finite range")
    n = max(int(n), 0)
    if n > FOLD_LIMIT * 256:
        ctx.unsupported(f"a range of {n} elements is too large to build at import time")
    return [(start + np.arange(n) * delta).astype(start.dtype)]


def _reshape_target(ctx, in_shape, target, allowzero):
    out = []
    for k, d in enumerate(target):
        if not isinstance(d, Sym) and d < -1:
            ctx.invalid(f"reshape target {tuple(target)} holds the size {d} (sizes are >= 0, or -1 to infer one)")
        if not isinstance(d, Sym) and d == 0 and not allowzero:
            if k >= len(in_shape):
                ctx.invalid(f"reshape target {tuple(target)}: the 0 at position {k} copies a dimension the "
                            f"input {tuple(in_shape)} does not have")
            d = in_shape[k]
        out.append(d)
    if sum(1 for d in out if not isinstance(d, Sym) and d == -1) > 1:
        ctx.unsupported("reshape target has more than one -1")
    if any(not isinstance(d, Sym) and d == -1 for d in out):
        known = D.prod([d for d in out if isinstance(d, Sym) or d != -1])
        total = D.prod(in_shape)
        if known == 0:
            ctx.unsupported("cannot infer -1 next to a zero-size dimension")
        rest = D.floordiv(total, known)
        if D.mul(rest, known) != D.norm(total):
            raise ShapeError(f"reshape: {tuple(in_shape)} cannot be reshaped into {tuple(target)}")
        out = [rest if not isinstance(d, Sym) and d == -1 else d for d in out]
    out = dims_of(out)
    if D.norm(D.prod(out)) != D.norm(D.prod(in_shape)):
        raise ShapeError(f"reshape: {tuple(in_shape)} cannot be reshaped into {tuple(target)}")
    return out


@handles("Reshape")
def _reshape(ctx):
    if ctx.opset >= 5:
        if ctx.known_input(1, "shape").ndim != 1:
            ctx.invalid(f"the shape input must be a 1-D tensor, got shape {ctx.known_input(1, 'shape').shape}")
        target = ctx.ints(1, "shape")
    else:
        target = list(ctx.attr("shape", []))
    shape = _reshape_target(ctx, ctx.shape(0), target, ctx.attr("allowzero", 0))
    c = ctx.const(0)
    if c is not None and all(isinstance(d, int) for d in shape) and (c.dtype == object or c.size <= 1024):
        return [c.reshape(shape)]
    return [ctx.op("reshape", ctx.value(0), shape=shape)]


@handles("Flatten")
def _flatten(ctx):
    shape = ctx.shape(0)
    axis = ctx.attr("axis", 1)
    if not -len(shape) <= axis <= len(shape):
        ctx.invalid(f"axis {axis} is out of range for a tensor of rank {len(shape)} (it may be {-len(shape)} "
                    f"to {len(shape)})")
    axis = axis + len(shape) if axis < 0 else axis
    return [ctx.op("reshape", ctx.value(0), shape=(D.prod(shape[:axis]), D.prod(shape[axis:])))]


@handles("Transpose")
def _transpose(ctx):
    perm = ctx.attr("perm")
    rank = len(ctx.shape(0))
    if perm is not None and sorted(perm) != list(range(rank)):
        ctx.invalid(f"perm {tuple(perm)} is not a permutation of the {rank} axes of the input")
    c = ctx.const(0)
    if c is not None and c.size <= 64:
        return [np.transpose(c, perm)]
    return [ctx.op("transpose", ctx.value(0), perm=None if perm is None else tuple(perm))]


def _axes_arg(ctx, attr_opset):
    if ctx.opset < attr_opset:
        return ctx.attr("axes")
    return ctx.ints(1, "axes") if ctx.has(1) else None


@handles("Unsqueeze")
def _unsqueeze(ctx):
    shape = list(ctx.shape(0))
    axes = _axes_arg(ctx, 13)
    if axes is None:
        ctx.invalid("axes are missing", ModelError)
    rank = len(shape) + len(axes)
    axes = [ctx.axis(int(a), rank) for a in axes]
    if len(set(axes)) != len(axes):
        ctx.invalid(f"axes {axes} repeat an axis")
    for a in sorted(axes):
        shape.insert(a, 1)
    c = ctx.const(0)
    if c is not None and c.size <= 1024:
        return [c.reshape([int(d) for d in shape]) if c.dtype != object else c.reshape(shape)]
    return [ctx.op("reshape", ctx.value(0), shape=tuple(shape))]


@handles("Squeeze")
def _squeeze(ctx):
    shape = list(ctx.shape(0))
    axes = _axes_arg(ctx, 13)
    if axes is None:
        axes = [k for k, d in enumerate(shape) if d == 1]
    axes = {ctx.axis(int(a), len(shape)) for a in axes}
    for a in axes:
        if shape[a] != 1:
            raise ShapeError(f"Squeeze: axis {a} has size {shape[a]}, not 1")
    new = tuple(d for k, d in enumerate(shape) if k not in axes)
    c = ctx.const(0)
    if c is not None and c.size <= 1024:
        return [c.reshape(new)]
    return [ctx.op("reshape", ctx.value(0), shape=new)]


@handles("Concat")
def _concat(ctx):
    axis = int(ctx.attr("axis", 1))  # (required since opset 4; 1 before)
    ins = [i for i in range(ctx.num_inputs) if ctx.has(i)]
    if not ins:
        ctx.invalid("it has no inputs", ModelError)
    shapes = [ctx.shape(i) for i in ins]
    axis = ctx.axis(axis, len(shapes[0]))
    for i, sh in zip(ins[1:], shapes[1:]):
        if len(sh) != len(shapes[0]) or any(a != b for k, (a, b) in enumerate(zip(sh, shapes[0])) if k != axis):
            ctx.invalid(f"input {i} has shape {tuple(sh)} (rank {len(sh)}), which does not match input 0 "
                        f"{tuple(shapes[0])} (rank {len(shapes[0])}) outside axis {axis}")
    if all(ctx.const(i) is not None for i in ins):
        parts = [ctx.const(i) for i in ins]
        if any(p.dtype == object for p in parts) or sum(p.size for p in parts) <= 1024:
            if any(p.dtype == object for p in parts):
                parts = [p.astype(object) for p in parts]
            return [np.concatenate(parts, axis=axis)]
    vals = [ctx.value(i) for i in ins]
    nonempty = [v for v in vals if v.shape[axis] != 0] or vals[:1]
    return [ctx.op("concat", *nonempty, axis=axis)]


def _normalized_slice(dim, start, end, step):
    """Python slice.indices() for a static size; for a symbolic size, symbolic bounds
    (the size is assumed large enough for the constant offsets)."""
    if isinstance(dim, int) and not isinstance(start, Sym) and not isinstance(end, Sym):
        return slice(int(start), int(end), int(step)).indices(dim)
    sd = Sym.of(dim)

    def bound(v, default_hi):
        if isinstance(v, Sym):
            return v
        if v >= INT_MAX // 2:
            return sd if default_hi else Sym.of(-1)
        if v <= -INT_MAX // 2:
            return Sym.of(-1) if step < 0 else Sym.of(0)
        return sd + v if v < 0 else Sym.of(v)
    b = bound(start, step < 0)
    if step < 0 and not isinstance(start, Sym) and start >= INT_MAX // 2:
        b = sd - 1
    e = bound(end, step > 0)
    return b.dim(), e.dim(), step


@handles("Slice")
def _slice(ctx):
    shape = ctx.shape(0)
    rank = len(shape)
    if ctx.opset < 10:
        starts, ends = list(ctx.attr("starts")), list(ctx.attr("ends"))
        axes = list(ctx.attr("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = ctx.ints(1, "starts"), ctx.ints(2, "ends")
        axes = ctx.ints(3, "axes") if ctx.has(3) else list(range(len(starts)))
        steps = ctx.ints(4, "steps") if ctx.has(4) else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        ctx.invalid(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} must have the same length")
    axes = [ctx.axis(int(a), rank) for a in axes]
    if len(set(axes)) != len(axes):
        ctx.invalid(f"axes {axes} repeat an axis")
    begin, end, step = [0] * rank, list(shape), [1] * rank
    for a, s, e, st in zip(axes, starts, ends, steps):
        if st == 0:
            raise ShapeError("Slice: step must not be zero")
        begin[a], end[a], step[a] = _normalized_slice(shape[a], s, e, int(st))
    c = ctx.const(0)
    if c is not None and all(isinstance(x, int) for x in begin + end):
        return [c[tuple(slice(b, e if e >= 0 else None, s) for b, e, s in zip(begin, end, step))]]
    return [ctx.op("slice", ctx.value(0), begin=tuple(begin), end=tuple(end), step=tuple(step))]


@handles("Split")
def _split(ctx):
    shape = ctx.shape(0)
    axis = ctx.axis(int(ctx.attr("axis", 0)), len(shape))
    n_out = len(ctx.node.output)
    sizes = ctx.attr("split") if ctx.opset < 13 else (ctx.ints(1, "split") if ctx.has(1) else None)
    dim = shape[axis]
    if sizes is None:
        if not isinstance(dim, int):
            ctx.unsupported("splitting a symbolic axis needs explicit split sizes")
        n = ctx.attr("num_outputs", n_out)
        if n < 1 or n != n_out:
            ctx.invalid(f"num_outputs={n} must be >= 1 and match the node's {n_out} outputs")
        chunk = -(-dim // n)
        sizes = [max(min(chunk, dim - k * chunk), 0) for k in range(n)]
    sizes = list(sizes)
    if len(sizes) != n_out:
        ctx.invalid(f"split sizes {sizes} give {len(sizes)} parts, but the node has {n_out} outputs")
    if any(not isinstance(d, Sym) and d < 0 for d in sizes):
        ctx.invalid(f"split sizes {sizes} must not be negative")
    total = 0
    for d in sizes:
        total = D.add(total, d)
    if D.norm(total) != D.norm(dim):
        ctx.invalid(f"split sizes {sizes} do not add up to the size {dim} of axis {axis}")
    x = ctx.value(0)
    outs, offset = [], 0
    for size in sizes:
        begin, end = [0] * len(shape), list(shape)
        begin[axis], end[axis] = offset, D.add(offset, size)
        outs.append(ctx.op("slice", x, begin=tuple(begin), end=tuple(end), step=(1,) * len(shape)))
        offset = D.add(offset, size)
    return outs


@handles("Expand")
def _expand(ctx):
    target = dims_of(ctx.ints(1, "shape"))
    shape = ctx.shape(0)
    rank = max(len(shape), len(target))
    a = (1,) * (rank - len(shape)) + tuple(shape)
    b = (1,) * (rank - len(target)) + tuple(target)
    if any(isinstance(y, int) and y < 0 for y in b):
        ctx.invalid(f"the shape {tuple(target)} has a negative size")
    broadcast_shapes("Expand", a, b)  # (the shapes must broadcast)
    out = tuple(y if x == 1 else x for x, y in zip(a, b))
    x = ctx.value(0)
    if len(shape) < rank:
        x = ctx.op("reshape", x, shape=a)
    return [ctx.op("broadcast_to", x, shape=out)]


@handles("Tile")
def _tile(ctx):
    return [ctx.op("tile", ctx.value(0), repeats=tuple(int(r) for r in ctx.ints(1, "repeats")))]


@handles("Gather")
def _gather(ctx):
    rank = len(ctx.shape(0))
    if rank == 0:
        ctx.invalid("the data must have rank >= 1, got a scalar")
    axis = ctx.axis(int(ctx.attr("axis", 0)), rank)
    data, idx = ctx.const(0), ctx.const(1)
    if data is not None and idx is not None and (data.dtype == object or data.size <= 1024):
        if idx.dtype.kind not in "iu":
            ctx.invalid(f"indices must be integers, got {idx.dtype}", error=DTypeError)
        n = data.shape[axis]
        if idx.size and (idx.min() < -n or idx.max() >= n):
            ctx.invalid(f"index {idx.max() if idx.max() >= n else idx.min()} is out of range for axis {axis} "
                        f"of size {n}")
        return [np.take(data, np.where(idx < 0, idx + n, idx), axis=axis)]
    return [ctx.op("gather", ctx.value(0), ctx.value(1), axis=axis)]


@handles("GatherElements")
def _gather_elements(ctx):
    return [ctx.op("gather_elements", ctx.value(0), ctx.value(1), axis=int(ctx.attr("axis", 0)))]


@handles("Pad")
def _pad(ctx):
    x = ctx.value(0)
    rank = x.type.rank
    mode = ctx.attr("mode", "constant")
    if ctx.opset < 11:
        pads, value, axes = list(ctx.attr("pads")), float(ctx.attr("value", 0.0)), None
    else:
        pads = ctx.ints(1, "pads")
        value = ctx.floats(2, "constant_value") if ctx.has(2) else []
        value = value[0] if value else 0.0
        axes = ctx.ints(3, "axes") if ctx.has(3) else None
    want = 2 * (rank if axes is None else len(axes))
    if len(pads) != want:
        ctx.invalid(f"pads {list(pads)} must have {want} entries (begin and end for each of "
                    f"{'the ' + str(rank) + ' axes' if axes is None else 'the axes ' + str(list(axes))})")
    if any(not isinstance(p, int) for p in pads):
        ctx.unsupported("symbolic pads are not supported")
    if axes is not None:
        full = [0] * (2 * rank)
        for k, a in enumerate(axes):
            a = ctx.axis(int(a), rank)
            full[a], full[rank + a] = pads[k], pads[len(axes) + k]
        pads = full
    if any(p < 0 for p in pads):  # negative pads crop
        begin = [max(-p, 0) for p in pads[:rank]]
        end = [D.sub(d, max(-p, 0)) for d, p in zip(x.shape, pads[rank:])]
        x = ctx.op("slice", x, begin=tuple(begin), end=tuple(end), step=(1,) * rank)
        pads = [max(p, 0) for p in pads]
    if mode not in ("constant", "edge", "reflect", "wrap"):
        ctx.unsupported(f"mode {mode!r} is not supported (constant, edge, reflect, wrap are)")
    return [ctx.op("pad", x, pads=tuple(pads), mode=mode, value=value)]


@handles("Resize")
def _resize(ctx):
    x = ctx.value(0)
    shape = x.shape
    scales = sizes = None
    if ctx.opset < 11:
        scales = ctx.floats(1, "scales")
    else:
        if ctx.has(3):
            sizes = ctx.ints(3, "sizes")
        elif ctx.has(2):
            scales = ctx.floats(2, "scales")
    axes = ctx.attr("axes")
    if axes is not None:
        axes = [ctx.axis(int(a), len(shape)) for a in axes]
    else:
        axes = list(range(len(shape)))
    if len(set(axes)) != len(axes):
        ctx.invalid(f"axes {axes} repeat an axis")
    for what, vals in (("sizes", sizes), ("scales", scales or None)):
        if vals is not None and len(vals) != len(axes):
            ctx.invalid(f"{what} {list(vals)} must have {len(axes)} entries (one per resized axis)")
    if sizes is not None and any(not isinstance(d, int) or d < 0 for d in sizes):
        ctx.invalid(f"sizes {sizes} must be non-negative integers")
    if scales and any(not np.isfinite(v) or v <= 0 for v in scales):
        ctx.invalid(f"scales {scales} must be positive")
    if ctx.attr("antialias", 0):
        ctx.unsupported("antialias=1 is not supported")
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        ctx.unsupported(f"keep_aspect_ratio_policy {policy!r} is not supported")
    for a in axes:
        if not isinstance(shape[a], int):
            ctx.unsupported("resizing a symbolic axis is not supported")
    if sizes is not None and policy != "stretch":  # one scale for every resized axis
        if any(shape[a] == 0 for a in axes):
            ctx.invalid(f"cannot keep the aspect ratio of an empty input {tuple(shape)}")
        ratios = [sizes[k] / shape[a] for k, a in enumerate(axes)]
        scale = min(ratios) if policy == "not_larger" else max(ratios)
        sizes, scales = None, [scale] * len(axes)
        out_override = {a: int(np.floor(scale * shape[a] + 0.5)) for a in axes}
    else:
        out_override = {}
    out = list(shape)
    full_scales = [1.0] * len(shape)
    for k, a in enumerate(axes):
        if sizes is not None:
            out[a] = int(sizes[k])
        elif scales:
            full_scales[a] = scales[k]
            out[a] = out_override.get(a, int(np.floor(shape[a] * scales[k])))
    mode = ctx.attr("mode", "nearest")
    attrs = dict(sizes=tuple(out), mode=mode,
                 coordinate_transformation_mode=ctx.attr("coordinate_transformation_mode",
                                                         "half_pixel" if ctx.opset >= 11 else "asymmetric"),
                 nearest_mode=ctx.attr("nearest_mode", "round_prefer_floor"),
                 cubic_coeff_a=float(ctx.attr("cubic_coeff_a", -0.75)),
                 exclude_outside=bool(ctx.attr("exclude_outside", 0)),
                 extrapolation_value=float(ctx.attr("extrapolation_value", 0.0)))
    if ctx.opset < 11:
        attrs["nearest_mode"] = "floor" if mode == "nearest" else attrs["nearest_mode"]
    if sizes is None and scales:
        attrs["scales"] = tuple(full_scales)
    return [ctx.op("resize", x, **attrs)]


@handles("Upsample")
def _upsample(ctx):
    return _resize(ctx)


@handles("Einsum")
def _einsum(ctx):
    return [ctx.op("einsum", *(ctx.value(i) for i in range(ctx.num_inputs)), equation=ctx.attr("equation"))]


@handles("TopK")
def _topk(ctx):
    k = ctx.scalar_int(1, "K") if ctx.opset >= 10 else int(ctx.attr("k"))
    return ctx.node_op("topk", [ctx.value(0)], k=int(k), axis=int(ctx.attr("axis", -1)),
                       largest=bool(ctx.attr("largest", 1)), sorted=bool(ctx.attr("sorted", 1)))


@handles("CumSum")
def _cumsum(ctx):
    axis = ctx.scalar_int(1, "axis")
    return [ctx.op("cumsum", ctx.value(0), axis=int(axis), exclusive=bool(ctx.attr("exclusive", 0)),
                   reverse=bool(ctx.attr("reverse", 0)))]


@handles("Trilu")
def _trilu(ctx):
    k = ctx.scalar_int(1, "k") if ctx.has(1) else 0
    return [ctx.op("trilu", ctx.value(0), upper=bool(ctx.attr("upper", 1)), k=int(k))]


@handles("DepthToSpace")
def _depth_to_space(ctx):
    return [ctx.op("depth_to_space", ctx.value(0), blocksize=int(ctx.attr("blocksize")),
                   mode=ctx.attr("mode", "DCR"))]


@handles("SpaceToDepth")
def _space_to_depth(ctx):
    return [ctx.op("space_to_depth", ctx.value(0), blocksize=int(ctx.attr("blocksize")))]


# -- recurrent ------------------------------------------------------------------------------------
@handles("LSTM", "GRU")
def _rnn(ctx):
    from ubique.compiler.onnx_frontend.rnn import import_rnn

    return import_rnn(ctx)


def supported_ops() -> list[str]:
    return sorted(HANDLERS)


__all__ = ["HANDLERS", "check_supported", "supported_ops", "DType", "UnsupportedOpError"]
