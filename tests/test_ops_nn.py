"""Conformance of ubique's neural-network ops with small numpy references written here:
softmax, log_softmax, layer_norm, gelu (erf and tanh forms), conv2d (stride, padding,
dilation, groups, depthwise, bias), max_pool2d / avg_pool2d (padding, ceil_mode,
count_include_pad) and global_avg_pool. Semantics are PyTorch's (NCHW, OIHW weights).

The references are deliberately naive (explicit loops over the kernel window, each tap
an np.einsum over a strided view of the padded input) so that they are easy to check
by eye, and they compute in float64.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.special
from hypothesis import given, note, strategies as st

import ubique as ub
from strategies import FLOAT_DTYPES, arrays, dtypes, float_result_dtype, is_float, np_dtype, shapes
from tolerances import ACCUMULATE_EPS, EPS, assert_close, dtype_name

F64 = np.float64


def _desc(x):
    return f"{dtype_name(x.dtype)}{tuple(x.shape)}"


def _eps(dt):
    return EPS[dtype_name(np_dtype(dt))]


# -- softmax / log_softmax ---------------------------------------------------------------------
def softmax_ref(x, axis):
    if x.size == 0:  # nothing to normalise: an empty result (as in PyTorch), not an error
        return x.copy()
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax_ref(x, axis):
    if x.size == 0:
        return x.copy()
    s = x - np.max(x, axis=axis, keepdims=True)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@given(data=st.data())
def test_softmax_and_log_softmax(op, data):
    dt = data.draw(dtypes(FLOAT_DTYPES + ("int32",)), "dtype")
    shape = data.draw(shapes(min_dims=1, max_dims=3, max_side=5), "shape")
    x = data.draw(arrays(dt, shape, lo=-20, hi=20), "x")
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), "axis")
    out = float_result_dtype(dt)
    x64 = x.astype(F64)
    with np.errstate(all="ignore"):
        expected64 = (softmax_ref if op == "softmax" else log_softmax_ref)(x64, axis)
        shifted = np.abs(x64 - np.max(x64, axis=axis, keepdims=True)) if x.size else x64
    expected = expected64.astype(out)
    n = shape[axis] + 2
    # The row max and row sum live in their own buffers of the result dtype between kernels, so
    # each output carries a few roundings of that dtype, scaled by |x - max| through exp.
    store_eps = _eps(out)
    if op == "softmax":
        kw = dict(n=n, scale=np.abs(expected64) * (1 + shifted),
                  atol_extra=np.nan_to_num(3 * store_eps * np.abs(expected64) * (1 + shifted)))
    else:
        kw = dict(n=n, scale=1 + shifted, atol_extra=np.nan_to_num(3 * store_eps * (1 + shifted + math.log(n))))
    msg = f"ub.{op}({_desc(x)}, axis={axis})"
    assert_close(getattr(ub, op)(x, axis=axis), expected, msg="eager " + msg, **kw)
    assert_close(ub.jit(lambda t: getattr(ub, op)(t, axis))(x), expected, msg="jit " + msg, **kw)


def test_softmax_masked_rows():
    """-inf entries get probability 0; a row of only -inf is NaN (0/0), as the formula says."""
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf], [np.inf, 0.0, 1.0]], np.float32)
    with np.errstate(all="ignore"):
        assert_close(ub.softmax(x), softmax_ref(x.astype(F64), -1).astype(np.float32), msg="softmax masked")
        assert_close(ub.log_softmax(x), log_softmax_ref(x.astype(F64), -1).astype(np.float32),
                     msg="log_softmax masked")


# -- layer_norm --------------------------------------------------------------------------------
@given(data=st.data())
def test_layer_norm(data):
    dt = data.draw(dtypes(FLOAT_DTYPES), "dtype")
    shape = data.draw(shapes(min_dims=1, max_dims=3, min_side=1, max_side=5), "shape")
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), "axis")
    k = axis % len(shape)
    norm_shape = shape[k:]
    x = data.draw(arrays(dt, shape, lo=-10, hi=10, special=False), "x")
    with_scale = data.draw(st.booleans(), "scale")
    with_bias = data.draw(st.booleans(), "bias")
    scale = data.draw(arrays(dt, norm_shape, lo=-3, hi=3, special=False), "scale") if with_scale else None
    bias = data.draw(arrays(dt, norm_shape, lo=-3, hi=3, special=False), "bias") if with_bias else None
    eps = data.draw(st.sampled_from([1e-5, 1e-3, 0.5]), "eps")

    axes = tuple(range(k, len(shape)))
    n = math.prod(norm_shape)
    x64 = x.astype(F64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + eps)
    s64 = scale.astype(F64) if scale is not None else np.ones(norm_shape)
    y = y * s64 + (bias.astype(F64) if bias is not None else 0.0)
    expected = y.astype(x.dtype)
    # error in the centred values (the mean is off by its summation error and by its rounding
    # to the storage dtype) is amplified by 1/sqrt(var + eps) and by |scale|
    mean_abs = np.abs(x64).mean(axis=axes, keepdims=True)
    centre_err = (2 * _eps(dt) + n * ACCUMULATE_EPS[dtype_name(x.dtype)]) * mean_abs
    atol_extra = 4 * centre_err / np.sqrt(var + eps) * np.abs(s64) + 2 * _eps(dt) * np.abs(y)
    msg = f"ub.layer_norm({_desc(x)}, axis={axis}, scale={with_scale}, bias={with_bias}, eps={eps})"
    note(msg)
    got = ub.layer_norm(x, scale, bias, axis=axis, eps=eps)
    assert_close(got, expected, n=n, scale=y, atol_extra=atol_extra, msg="eager " + msg)
    args = [a for a in (x, scale, bias) if a is not None]

    def fn(*ts):
        it = iter(ts[1:])
        return ub.layer_norm(ts[0], next(it) if with_scale else None, next(it) if with_bias else None,
                             axis=axis, eps=eps)

    assert_close(ub.jit(fn)(*args), expected, n=n, scale=y, atol_extra=atol_extra, msg="jit " + msg)


# -- gelu --------------------------------------------------------------------------------------
def gelu_ref(x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + scipy.special.erf(x / math.sqrt(2)))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@given(data=st.data())
def test_gelu_both_forms(approximate, data):
    dt = data.draw(dtypes(FLOAT_DTYPES + ("int8", "int32")), "dtype")
    x = data.draw(arrays(dt, shapes(max_dims=3)), "x")
    with np.errstate(all="ignore"):
        expected64 = gelu_ref(x.astype(F64), approximate)
    expected = expected64.astype(float_result_dtype(dt))
    msg = f"ub.gelu({_desc(x)}, approximate={approximate!r})"
    # 0.5*x*(1 + t): for x << 0, t -> -1 and the sum cancels, leaving an absolute error of
    # ~|x| times the epsilon of the precision the fused kernel computes in
    acc = ACCUMULATE_EPS[dtype_name(float_result_dtype(dt))]
    atol_extra = np.nan_to_num(2 * acc * np.abs(x.astype(F64)), posinf=0)
    assert_close(ub.gelu(x, approximate=approximate), expected, atol_extra=atol_extra, msg="eager " + msg)
    assert_close(ub.jit(lambda t: ub.gelu(t, approximate=approximate))(x), expected, atol_extra=atol_extra,
                 msg="jit " + msg)


def test_gelu_rejects_unknown_form():
    with pytest.raises(ub.UbiqueError):
        ub.gelu(np.zeros(3, np.float32), approximate="sigmoid")


# -- conv2d ------------------------------------------------------------------------------------
def _pad4(padding):
    if isinstance(padding, int):
        return (padding,) * 4
    return tuple(padding) * 2 if len(padding) == 2 else tuple(padding)


def conv2d_ref(x, w, bias, stride, padding, dilation, groups):
    """float64 / int64 NCHW x OIHW cross-correlation: one einsum per kernel tap and group."""
    (sh, sw), (dh, dw) = stride, dilation
    pt, pl, pb, pr = _pad4(padding)
    N, C, H, W = x.shape
    O, Cg, KH, KW = w.shape
    OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
    OW = (W + pl + pr - dw * (KW - 1) - 1) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    Og = O // groups
    out = np.zeros((N, O, OH, OW), x.dtype)
    for g in range(groups):
        xg, wg = xp[:, g * Cg:(g + 1) * Cg], w[g * Og:(g + 1) * Og]
        for kh in range(KH):
            for kw in range(KW):
                h0, w0 = kh * dh, kw * dw
                patch = xg[:, :, h0:h0 + sh * (OH - 1) + 1:sh, w0:w0 + sw * (OW - 1) + 1:sw]
                out[:, g * Og:(g + 1) * Og] += np.einsum("nchw,oc->nohw", patch, wg[:, :, kh, kw])
    if bias is not None:
        out += bias.reshape(-1, 1, 1)
    return out


@st.composite
def conv_cases(draw):
    depthwise = draw(st.booleans())
    if depthwise:
        C = draw(st.integers(1, 4))
        groups, Cg, O = C, 1, C * draw(st.integers(1, 2))
    else:
        groups = draw(st.integers(1, 3))
        Cg = draw(st.integers(1, 3))
        C, O = groups * Cg, groups * draw(st.integers(1, 3))
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2)),
                             st.tuples(*[st.integers(0, 2)] * 4)))
    N, H, W = draw(st.integers(1, 2)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    return dict(x=(N, C, H, W), w=(O, Cg, KH, KW), stride=stride, padding=padding, dilation=dilation,
                groups=groups)


def _fits(size, k, pad_lo, pad_hi, dil):
    return size + pad_lo + pad_hi >= dil * (k - 1) + 1


@given(data=st.data())
def test_conv2d_stride_padding_dilation_groups(data):
    case = data.draw(conv_cases(), "case")
    dt = data.draw(dtypes(FLOAT_DTYPES + ("int32", "int8")), "dtype")
    lo, hi = (-3, 3) if is_float(dt) else (-5, 5)
    x = data.draw(arrays(dt, case["x"], lo=lo, hi=hi), "x")
    w = data.draw(arrays(dt, case["w"], lo=lo, hi=hi), "w")
    bias = data.draw(st.none() | arrays(dt, (case["w"][0],), lo=lo, hi=hi), "bias")
    kw = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
    msg = f"ub.conv2d({_desc(x)}, {_desc(w)}, bias={bias is not None}, {kw})"
    pt, pl, pb, pr = _pad4(case["padding"])
    (_, _, H, W), (_, _, KH, KW) = case["x"], case["w"]
    jitted = ub.jit((lambda a, b, c: ub.conv2d(a, b, c, **kw)) if bias is not None else
                    (lambda a, b: ub.conv2d(a, b, **kw)))
    args = (x, w, bias) if bias is not None else (x, w)
    if not (_fits(H, KH, pt, pb, case["dilation"][0]) and _fits(W, KW, pl, pr, case["dilation"][1])):
        for fn in (lambda: ub.conv2d(x, w, bias, **kw), lambda: jitted(*args)):
            with pytest.raises(ub.ShapeError):  # PyTorch: "kernel size can't be greater than input size"
                fn()
        return
    if is_float(dt):
        with np.errstate(all="ignore"):
            ref = conv2d_ref(x.astype(F64), w.astype(F64), None if bias is None else bias.astype(F64), **kw)
            scale = conv2d_ref(np.abs(x.astype(F64)), np.abs(w.astype(F64)),
                               None if bias is None else np.abs(bias.astype(F64)), **kw)
        expected = ref.astype(x.dtype)
        # a bias add outside the conv kernel rounds the conv result to the dtype first
        tol = dict(n=case["w"][1] * KH * KW + 1, scale=scale,
                   atol_extra=np.nan_to_num(_eps(dt) * scale) if bias is not None else 0.0)
    else:
        ref = conv2d_ref(x.astype(np.int64), w.astype(np.int64), None if bias is None else bias.astype(np.int64),
                         **kw)
        expected, tol = ref.astype(x.dtype), {}  # narrow ints wrap modulo 2**bits in any order
    assert_close(ub.conv2d(x, w, bias, **kw), expected, msg="eager " + msg, **tol)
    assert_close(jitted(*args), expected, msg="jit " + msg, **tol)


def test_conv2d_larger_than_a_vector_register():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 16, 19, 23)).astype(np.float32)
    w = rng.standard_normal((24, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    kw = dict(stride=(2, 1), padding=(1, 2, 0, 1), dilation=(1, 2), groups=2)
    ref = conv2d_ref(x.astype(F64), w.astype(F64), b.astype(F64), **kw)
    scale = conv2d_ref(np.abs(x.astype(F64)), np.abs(w.astype(F64)), np.abs(b.astype(F64)), **kw)
    assert_close(ub.conv2d(x, w, b, **kw), ref.astype(np.float32), n=73, scale=scale, msg="conv2d 16->24 g2")


def test_conv2d_shape_errors():
    x = np.zeros((1, 4, 5, 5), np.float32)
    with pytest.raises(ub.ShapeError):
        ub.conv2d(x, np.zeros((6, 3, 3, 3), np.float32))  # 4 input channels, weight expects 3
    with pytest.raises(ub.ShapeError):
        ub.conv2d(x, np.zeros((6, 2, 3, 3), np.float32), groups=3)  # 3 does not divide 4


# -- pooling -----------------------------------------------------------------------------------
def _pool_out(size, k, s, pad_lo, pad_hi, d, ceil_mode):
    """PyTorch's output size: with ceil_mode the last window must start inside input or left pad."""
    span = d * (k - 1) + 1
    n = (-(-(size + pad_lo + pad_hi - span) // s) if ceil_mode else (size + pad_lo + pad_hi - span) // s) + 1
    if ceil_mode and (n - 1) * s >= size + pad_lo:
        n -= 1
    return n


def _taps(xp, k, s, d, OH, OW):
    """Strided views of `xp` (N, C, Hp, Wp), one per kernel tap."""
    for kh in range(k[0]):
        for kw in range(k[1]):
            h0, w0 = kh * d[0], kw * d[1]
            yield xp[:, :, h0:h0 + s[0] * (OH - 1) + 1:s[0], w0:w0 + s[1] * (OW - 1) + 1:s[1]]


def _pool_geometry(shape, k, s, pad, d, ceil_mode):
    pt, pl, pb, pr = pad
    OH = _pool_out(shape[2], k[0], s[0], pt, pb, d[0], ceil_mode)
    OW = _pool_out(shape[3], k[1], s[1], pl, pr, d[1], ceil_mode)
    # extra room past the padding for ceil_mode windows that hang over the end
    xh = max(0, (OH - 1) * s[0] + d[0] * (k[0] - 1) + 1 - (shape[2] + pt + pb))
    xw = max(0, (OW - 1) * s[1] + d[1] * (k[1] - 1) + 1 - (shape[3] + pl + pr))
    return OH, OW, xh, xw


def max_pool2d_ref(x, k, s, pad, d, ceil_mode, lowest):
    pt, pl, pb, pr = pad
    OH, OW, xh, xw = _pool_geometry(x.shape, k, s, pad, d, ceil_mode)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb + xh), (pl, pr + xw)), constant_values=lowest)
    out = None
    for tap in _taps(xp, k, s, d, OH, OW):
        out = tap.copy() if out is None else np.maximum(out, tap)  # np.maximum propagates NaN
    return out


def avg_pool2d_ref(x, k, s, pad, ceil_mode, count_include_pad):
    pt, pl, pb, pr = pad
    d = (1, 1)
    OH, OW, xh, xw = _pool_geometry(x.shape, k, s, pad, d, ceil_mode)
    spec = ((0, 0), (0, 0), (pt, pb + xh), (pl, pr + xw))
    xp = np.pad(x, spec)
    ones = np.ones((1, 1) + x.shape[2:])
    if count_include_pad:  # padding counts, the overhang past it (ceil_mode) does not
        counted = np.pad(np.pad(ones, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=1),
                         ((0, 0), (0, 0), (0, xh), (0, xw)))
    else:
        counted = np.pad(ones, spec)
    total = sum(_taps(xp, k, s, d, OH, OW))
    count = sum(_taps(counted, k, s, d, OH, OW))
    return total / count, sum(_taps(np.abs(xp), k, s, d, OH, OW)) / count


@st.composite
def pool_cases(draw, dilation=True):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = draw(st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    pad = tuple(draw(st.integers(0, k[i % 2] // 2)) for i in range(4))  # PyTorch: pad <= kernel // 2
    padding = draw(st.sampled_from([pad, pad[:2], pad[0]]))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilation else (1, 1)
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    return dict(shape=shape, kernel=k, stride=stride, padding=padding, dilation=d,
                ceil_mode=draw(st.booleans()))


@given(data=st.data())
def test_max_pool2d(data):
    case = data.draw(pool_cases(), "case")
    dt = data.draw(dtypes(FLOAT_DTYPES + ("int8", "uint8", "int32")), "dtype")
    x = data.draw(arrays(dt, case["shape"]), "x")
    k, pad, d = case["kernel"], _pad4(case["padding"]), case["dilation"]
    s = case["stride"] or k
    kw = dict(stride=case["stride"], padding=case["padding"], dilation=d, ceil_mode=case["ceil_mode"])
    msg = f"ub.max_pool2d({_desc(x)}, {k}, {kw})"
    jitted = ub.jit(lambda t: ub.max_pool2d(t, k, **kw))
    if not (_fits(x.shape[2], k[0], pad[0], pad[2], d[0]) and _fits(x.shape[3], k[1], pad[1], pad[3], d[1])):
        for fn in (lambda: ub.max_pool2d(x, k, **kw), lambda: jitted(x)):
            with pytest.raises(ub.ShapeError):
                fn()
        return
    lowest = -np.inf if is_float(dt) else np.iinfo(dt).min
    expected = max_pool2d_ref(x.astype(F64) if is_float(dt) else x, k, s, pad, d, case["ceil_mode"], lowest)
    expected = expected.astype(x.dtype)
    assert_close(ub.max_pool2d(x, k, **kw), expected, msg="eager " + msg)
    assert_close(jitted(x), expected, msg="jit " + msg)


@given(data=st.data())
def test_avg_pool2d(data):
    case = data.draw(pool_cases(dilation=False), "case")
    dt = data.draw(dtypes(FLOAT_DTYPES), "dtype")
    x = data.draw(arrays(dt, case["shape"], lo=-100, hi=100), "x")
    cip = data.draw(st.booleans(), "count_include_pad")
    k, pad = case["kernel"], _pad4(case["padding"])
    s = case["stride"] or k
    kw = dict(stride=case["stride"], padding=case["padding"], ceil_mode=case["ceil_mode"], count_include_pad=cip)
    msg = f"ub.avg_pool2d({_desc(x)}, {k}, {kw})"
    jitted = ub.jit(lambda t: ub.avg_pool2d(t, k, **kw))
    if not (_fits(x.shape[2], k[0], pad[0], pad[2], 1) and _fits(x.shape[3], k[1], pad[1], pad[3], 1)):
        for fn in (lambda: ub.avg_pool2d(x, k, **kw), lambda: jitted(x)):
            with pytest.raises(ub.ShapeError):
                fn()
        return
    with np.errstate(all="ignore"):
        ref, scale = avg_pool2d_ref(x.astype(F64), k, s, pad, case["ceil_mode"], cip)
    tol = dict(n=k[0] * k[1] + 1, scale=scale)
    assert_close(ub.avg_pool2d(x, k, **kw), ref.astype(x.dtype), msg="eager " + msg, **tol)
    assert_close(jitted(x), ref.astype(x.dtype), msg="jit " + msg, **tol)


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_ceil_mode_divisors(count_include_pad):
    """A hand-checked case: 1x1x5x5 of ones*index, k=3, s=2, pad=1, ceil_mode -> 3x3 windows
    whose divisors differ between corners, edges and the overhanging last window."""
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    kw = dict(stride=2, padding=1, ceil_mode=True, count_include_pad=count_include_pad)
    ref, scale = avg_pool2d_ref(x.astype(F64), (3, 3), (2, 2), (1, 1, 1, 1), True, count_include_pad)
    assert ref.shape == (1, 1, 3, 3)
    assert_close(ub.avg_pool2d(x, 3, **kw), ref.astype(np.float32), n=10, scale=scale, msg=f"avg_pool {kw}")


@given(data=st.data())
def test_global_avg_pool(data):
    dt = data.draw(dtypes(FLOAT_DTYPES + ("int32", "int64")), "dtype")
    shape = data.draw(shapes(min_dims=4, max_dims=4, max_side=5), "shape")
    x = data.draw(arrays(dt, shape, lo=-100, hi=100), "x")
    out = np.mean(np.zeros(1, np_dtype(dt))).dtype if not is_float(dt) else x.dtype
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of an empty window is NaN
        expected = np.mean(x.astype(F64), axis=(2, 3), keepdims=True).astype(out)
        scale = np.mean(np.abs(x.astype(F64)), axis=(2, 3), keepdims=True)
    tol = dict(n=max(shape[2] * shape[3], 1), scale=scale)
    msg = f"ub.global_avg_pool({_desc(x)})"
    assert_close(ub.global_avg_pool(x), expected, msg="eager " + msg, **tol)
    assert_close(ub.jit(ub.global_avg_pool)(x), expected, msg="jit " + msg, **tol)


def test_softmax_over_an_empty_axis_is_empty():
    """Nothing to normalise: PyTorch returns an empty tensor rather than raising."""
    x = np.zeros((3, 0), np.float32)
    assert_close(ub.softmax(x, axis=-1), x.copy(), msg="softmax of (3, 0) over axis -1")
    assert_close(ub.log_softmax(x, axis=-1), x.copy(), msg="log_softmax of (3, 0) over axis -1")


@pytest.mark.parametrize("dt", ["float16", "bfloat16"])
def test_layer_norm_half_precision_wide_rows(dt):
    """Rows whose sum or sum of squares exceeds float16's range (65504): 1000 features with
    std 10 (sum of squares ~1e5) or mean 80 (sum ~8e4). Half-precision layer norm must
    accumulate in float32, as PyTorch does, rather than overflow to inf/NaN."""
    rng = np.random.default_rng(4)
    for offset, std in [(0.0, 10.0), (80.0, 1.0)]:
        x = (rng.standard_normal((2, 1000)) * std + offset).astype(np_dtype(dt))
        x64 = x.astype(F64)
        y = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
        # the centred values inherit the rounding of the mean (a few ulp of |offset|)
        atol = 4 * _eps(dt) * (abs(offset) + std) / std
        assert_close(ub.layer_norm(x), y.astype(x.dtype), atol_extra=atol,
                     msg=f"ub.layer_norm({dt}(2, 1000), offset={offset}, std={std})")


@pytest.mark.parametrize("dt", ["float16", "bfloat16"])
def test_global_avg_pool_half_precision_large_window(dt):
    """300 x 300 = 90000 taps: more than float16 can count (65504)."""
    x = np.ones((1, 2, 300, 300), np_dtype(dt))
    assert_close(ub.global_avg_pool(x), np.ones((1, 2, 1, 1), np_dtype(dt)), rtol_mult=0.0,
                 msg=f"ub.global_avg_pool(ones (1,2,300,300) {dt})")
