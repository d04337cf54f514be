"""Public tensor ops: `ub.exp(x)`, `ub.matmul(a, b)`, ... with numpy-style signatures.

Inside a traced function they record graph nodes; called on numpy arrays outside
a trace they compile (cached) and run immediately.
"""
from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np

from ubique.compiler.tracer import Tensor, Tracer, find_tracer, to_value
from ubique.errors import ShapeError, TraceError, UnsupportedOpError
from ubique.ir.dtypes import DType, dtype_of
from ubique.ir.graph import TensorType
from ubique.ir.ops_shape import slice_extent

__all__ = [
    "apply", "neg", "abs", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "erf", "sin", "cos",
    "relu", "gelu", "add", "sub", "mul", "div", "pow", "maximum", "minimum", "equal", "not_equal",
    "less", "less_equal", "greater", "greater_equal", "subtract", "multiply", "divide", "power",
    "where", "cast", "astype", "sum", "mean", "max", "min", "prod", "argmax", "argmin", "matmul",
    "reshape", "transpose", "broadcast_to", "concat", "concatenate", "expand_dims", "squeeze",
    "pad", "getitem", "softmax", "log_softmax", "layer_norm", "conv2d", "max_pool2d", "avg_pool2d",
    "global_avg_pool",
]


def _located(e: Exception) -> Exception:
    """Adds the user's file:line to an error raised while preparing an op."""
    from ubique.compiler.tracer import user_location

    loc = user_location()
    if loc and " (at " not in str(e):
        e.args = (f"{e} (at {loc})",) + e.args[1:]
    return e


def _peer_dtype(args) -> DType | None:
    for a in args:
        if isinstance(a, Tensor):
            return a.dtype
        if isinstance(a, (np.ndarray, np.generic)):
            return dtype_of(a.dtype)
    return None


def apply(op: str, args: Sequence, num_outputs: int = 1, **attrs):
    """Records (or eagerly runs) `op` on tensors/arrays/scalars; the mechanism behind every op."""
    tracer = find_tracer(args)
    if tracer is None:
        return _eager(op, args, attrs)
    peer = _peer_dtype(args)
    values = [to_value(tracer, a, peer) for a in args]
    outs = [Tensor(tracer, v) for v in tracer.add(op, values, attrs)]
    return outs[0] if num_outputs == 1 else tuple(outs)


def _eager(op: str, args: Sequence, attrs: dict):
    from ubique.build import build

    arrays = [a for a in args if isinstance(a, (np.ndarray, np.generic))]
    if not arrays:
        arrays = [np.asarray(args[0])] if args and isinstance(args[0], numbers.Number) else []
        args = arrays + list(args[1:])
    if not arrays:
        raise TraceError(f"ub.{op} needs at least one array argument")
    tracer = Tracer(op)
    inputs, converted = [], []
    for a in args:
        if isinstance(a, (np.ndarray, np.generic)):
            a = np.asarray(a)
            t = tracer.input(TensorType(a.shape, dtype_of(a.dtype)), f"x{len(inputs)}")
            inputs.append(a)
            converted.append(t)
        else:
            converted.append(a)
    out = apply(op, converted, **attrs)
    tracer.graph.outputs = [out.value]
    executable = build(tracer.graph)
    return executable.run(*inputs)[0]


def _axes(axis):
    if axis is None:
        return None
    return (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)


# -- elementwise -------------------------------------------------------------------------------
def _unary(name):
    def fn(x):
        return apply(name, [x])
    fn.__name__ = name
    fn.__doc__ = f"Elementwise {name} (numpy semantics)."
    return fn


neg, abs, exp, log, sqrt, rsqrt, tanh, sigmoid, erf, sin, cos, relu = (
    _unary(n) for n in ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "erf", "sin", "cos", "relu"))


def _binary(name):
    def fn(a, b):
        return apply(name, [a, b])
    fn.__name__ = name
    fn.__doc__ = f"Elementwise {name} with numpy broadcasting and type promotion."
    return fn


add, sub, mul, div, pow, maximum, minimum = (
    _binary(n) for n in ("add", "sub", "mul", "div", "pow", "maximum", "minimum"))
equal, not_equal, less, less_equal, greater, greater_equal = (
    _binary(n) for n in ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal"))
subtract, multiply, divide, power = sub, mul, div, pow


def gelu(x, approximate: str = "none"):
    """x * Phi(x); approximate="tanh" uses the tanh formula."""
    return apply("gelu", [x], approximate=approximate)


def where(cond, a, b):
    return apply("where", [cond, a, b])


def cast(x, dtype):
    """Converts element type (float -> int truncates toward zero and saturates; NaN -> 0)."""
    return apply("cast", [x], dtype=dtype_of(dtype))


astype = cast


# -- reductions --------------------------------------------------------------------------------
def _reduction(name):
    def fn(x, axis=None, keepdims: bool = False):
        return apply(name, [x], axes=_axes(axis), keepdims=keepdims)
    fn.__name__ = name
    fn.__doc__ = f"numpy.{name} over `axis` (int, tuple or None for all)."
    return fn


sum, mean, max, min, prod = (_reduction(n) for n in ("sum", "mean", "max", "min", "prod"))


def argmax(x, axis: int | None = None, keepdims: bool = False):
    return apply("argmax", [x], axis=axis, keepdims=keepdims)


def argmin(x, axis: int | None = None, keepdims: bool = False):
    return apply("argmin", [x], axis=axis, keepdims=keepdims)


def matmul(a, b):
    """numpy.matmul: batched with broadcast batch dimensions."""
    return apply("matmul", [a, b])


# -- shapes ------------------------------------------------------------------------------------
def _shape_of(x):
    return tuple(x.shape) if isinstance(x, (Tensor, np.ndarray, np.generic)) else np.shape(x)


def reshape(x, shape):
    """numpy.reshape (row-major); one dimension may be -1."""
    shape = (shape,) if isinstance(shape, numbers.Integral) else tuple(int(s) for s in shape)
    src = _shape_of(x)
    size = int(np.prod(src, dtype=np.int64))
    if shape.count(-1) > 1:
        raise _located(ShapeError(f"reshape: only one dimension may be -1, got {shape}"))
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1], dtype=np.int64))
        if known == 0 or size % known:
            raise _located(ShapeError(f"reshape: cannot reshape {src} into {shape}"))
        shape = tuple(size // known if s == -1 else s for s in shape)
    return apply("reshape", [x], shape=shape)


def transpose(x, axes=None):
    return apply("transpose", [x], perm=None if axes is None else tuple(axes))


def broadcast_to(x, shape):
    return apply("broadcast_to", [x], shape=tuple(shape))


def concat(xs, axis: int = 0):
    """numpy.concatenate."""
    if not xs:
        raise _located(ShapeError("concat needs at least one tensor"))
    return apply("concat", list(xs), axis=axis)


concatenate = concat


def expand_dims(x, axis: int):
    shape = list(_shape_of(x))
    axis = axis if axis >= 0 else axis + len(shape) + 1
    shape.insert(axis, 1)
    return reshape(x, shape)


def squeeze(x, axis=None):
    shape = _shape_of(x)
    axes = _axes(axis)
    if axes is None:
        axes = tuple(k for k, d in enumerate(shape) if d == 1)
    axes = {a % len(shape) for a in axes}
    for a in axes:
        if shape[a] != 1:
            raise _located(ShapeError(f"squeeze: axis {a} has size {shape[a]}, not 1"))
    return reshape(x, [d for k, d in enumerate(shape) if k not in axes])


def pad(x, pad_width, mode: str = "constant", constant_values=0):
    """numpy.pad for modes constant, edge, reflect and wrap; pad_width as numpy takes it."""
    rank = len(_shape_of(x))
    pw = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (rank, 2))
    return apply("pad", [x], pads=tuple(pw[:, 0]) + tuple(pw[:, 1]), mode=mode, value=float(constant_values))


def getitem(x, key):
    """Basic indexing: ints, slices (any step), None and Ellipsis."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(isinstance(k, (Tensor, np.ndarray, list)) for k in key):
        raise _located(UnsupportedOpError("indexing with arrays or tensors (advanced indexing) is not "
                                          "supported; use slices, ints, None or ub.where"))
    shape = _shape_of(x)
    n_real = len([k for k in key if k is not None and k is not Ellipsis])
    if n_real > len(shape):
        raise _located(ShapeError(f"too many indices ({n_real}) for a tensor of rank {len(shape)}"))
    if key.count(Ellipsis) > 1:
        raise _located(ShapeError("an index can only have a single ellipsis"))
    if Ellipsis in key:
        k = key.index(Ellipsis)
        key = key[:k] + (slice(None),) * (len(shape) - n_real) + key[k + 1:]
    else:
        key = key + (slice(None),) * (len(shape) - n_real)
    begin, end, step, out_shape = [], [], [], []
    axis = 0
    for k in key:
        if k is None:
            out_shape.append(1)
            continue
        d = shape[axis]
        if isinstance(k, slice):
            b, e, s = k.indices(d)
            begin.append(b); end.append(e); step.append(s)
            out_shape.append(slice_extent(b, e, s))
        elif isinstance(k, numbers.Integral):
            i = int(k)
            if not -d <= i < d:
                raise _located(ShapeError(f"index {i} is out of bounds for axis {axis} with size {d}"))
            i %= d
            begin.append(i); end.append(i + 1); step.append(1)
        else:
            raise _located(UnsupportedOpError(f"cannot index with {type(k).__name__}"))
        axis += 1
    y = x
    if (tuple(begin), tuple(end), tuple(step)) != ((0,) * len(shape), tuple(shape), (1,) * len(shape)):
        y = apply("slice", [x], begin=tuple(begin), end=tuple(end), step=tuple(step))
    if tuple(out_shape) != tuple(_shape_of(y)):
        y = apply("reshape", [y], shape=tuple(out_shape))
    return y


# -- neural network ----------------------------------------------------------------------------
def softmax(x, axis: int = -1):
    return apply("softmax", [x], axis=axis)


def log_softmax(x, axis: int = -1):
    return apply("log_softmax", [x], axis=axis)


def layer_norm(x, scale=None, bias=None, axis: int = -1, eps: float = 1e-5):
    """Normalises over axes [axis, rank), then applies optional scale and bias."""
    args = [x] + ([scale] if scale is not None or bias is not None else [])
    if bias is not None:
        if scale is None:
            args[1] = np.ones(_shape_of(x)[axis:], dtype=np.float32)
        args.append(bias)
    return apply("layer_norm", args, axis=axis, epsilon=eps)


def _pair(v):
    return (int(v), int(v)) if isinstance(v, numbers.Integral) else tuple(int(a) for a in v)


def _padding4(p):
    """int, (ph, pw) or (top, left, bottom, right) -> (top, left, bottom, right)."""
    if isinstance(p, numbers.Integral):
        return (int(p),) * 4
    p = tuple(int(a) for a in p)
    return p + p if len(p) == 2 else p


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1):
    """2-D convolution over NCHW with OIHW weights (PyTorch semantics)."""
    y = apply("conv2d", [x, weight], stride=_pair(stride), padding=_padding4(padding),
              dilation=_pair(dilation), groups=groups)
    if bias is not None:
        y = add(y, reshape(bias, (-1, 1, 1)))
    return y


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False):
    return apply("max_pool2d", [x], kernel=_pair(kernel_size), stride=_pair(stride or kernel_size),
                 padding=_padding4(padding), dilation=_pair(dilation), ceil_mode=ceil_mode)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True):
    return apply("avg_pool2d", [x], kernel=_pair(kernel_size), stride=_pair(stride or kernel_size),
                 padding=_padding4(padding), ceil_mode=ceil_mode, count_include_pad=count_include_pad)


def global_avg_pool(x):
    return apply("global_avg_pool", [x])


# -- operators on traced tensors ----------------------------------------------------------------
def _swap(fn):
    return lambda a, b: fn(b, a)


_OPERATORS = {
    "__add__": add, "__radd__": _swap(add), "__sub__": sub, "__rsub__": _swap(sub),
    "__mul__": mul, "__rmul__": _swap(mul), "__truediv__": div, "__rtruediv__": _swap(div),
    "__pow__": pow, "__rpow__": _swap(pow), "__matmul__": matmul, "__rmatmul__": _swap(matmul),
    "__lt__": less, "__le__": less_equal, "__gt__": greater, "__ge__": greater_equal,
    "__eq__": equal, "__ne__": not_equal,
    "__neg__": neg, "__pos__": lambda x: x, "__abs__": abs, "__getitem__": getitem,
    "reshape": lambda x, *shape: reshape(x, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape),
    "transpose": lambda x, *axes: transpose(x, axes[0] if len(axes) == 1 and not isinstance(axes[0], int)
                                            else (axes or None)),
    "T": property(lambda x: transpose(x)),
    "sum": sum, "mean": mean, "max": max, "min": min, "prod": prod, "argmax": argmax, "argmin": argmin,
    "astype": cast,
}
for _name, _fn in _OPERATORS.items():
    setattr(Tensor, _name, _fn)
