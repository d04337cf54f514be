"""Conformance of the ONNX-style resampling ops (ir/ops_resample.py, ir/ops_einsum.py):
conv_transpose2d, resize, batch_norm, instance_norm and einsum.

References: numpy formulas written here (conv_transpose2d as a scatter of each input
pixel, resize as one interpolation matrix per axis built from the ONNX spec's
formulas, einsum as numpy.einsum), plus ONNX's own reference implementation
(onnx.reference.ReferenceEvaluator) for resize on a grid of modes.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, note, strategies as st

import ubique as ub
from strategies import arrays, dtypes, is_float, np_dtype
from tolerances import EPS, assert_close, assert_same, dtype_name
from ubique.errors import ShapeError, UnsupportedOpError, VerifyError
from ubique.ir.graph import Graph, TensorType

F64 = np.float64


def _graph(op, arrs, consts=(), **attrs):
    """One-node graph of `op`: `arrs` are graph inputs, `consts` constant inputs after them."""
    g = Graph(op)
    ins = [g.add_input(TensorType(a.shape, dtype_name(a.dtype)), f"x{k}") for k, a in enumerate(arrs)]
    ins += [g.constant(c) for c in consts]
    g.outputs = g.add_node(op, ins, attrs).outputs
    return g


def _run(op, *arrs, **attrs):
    return ub.build(_graph(op, arrs, **attrs)).run(*arrs)[0]


def _types(op, *types, **attrs):
    g = Graph(op)
    ins = [g.add_input(TensorType(s, d), f"x{k}") for k, (s, d) in enumerate(types)]
    return [v.type for v in g.add_node(op, ins, attrs).outputs]


def _desc(x):
    return f"{dtype_name(x.dtype)}{tuple(x.shape)}"


# -- conv_transpose2d ---------------------------------------------------------------------------
def conv_transpose_ref(x, w, stride, padding, dilation, output_padding, groups):
    """Each input pixel scatters w * x into the output (PyTorch's definition), then the pads are
    cropped (negative pads: zeros appended)."""
    N, C, H, W = x.shape
    _, Mg, KH, KW = w.shape
    (sh, sw), (dh, dw), (pt, pl, pb, pr), (oph, opw) = stride, dilation, padding, output_padding
    Cg = C // groups
    full_h = (H - 1) * sh + (KH - 1) * dh + 1 + oph
    full_w = (W - 1) * sw + (KW - 1) * dw + 1 + opw
    out = np.zeros((N, Mg * groups, full_h, full_w), x.dtype)
    for g in range(groups):
        xg, wg = x[:, g * Cg:(g + 1) * Cg], w[g * Cg:(g + 1) * Cg]
        for kh in range(KH):
            for kw in range(KW):
                contrib = np.einsum("nchw,cm->nmhw", xg, wg[:, :, kh, kw])
                out[:, g * Mg:(g + 1) * Mg, kh * dh:kh * dh + (H - 1) * sh + 1:sh,
                    kw * dw:kw * dw + (W - 1) * sw + 1:sw] += contrib
    out = np.pad(out, ((0, 0), (0, 0), (max(-pt, 0), max(-pb, 0)), (max(-pl, 0), max(-pr, 0))))
    return out[:, :, max(pt, 0):out.shape[2] - max(pb, 0), max(pl, 0):out.shape[3] - max(pr, 0)]


@st.composite
def conv_transpose_cases(draw):
    groups = draw(st.integers(1, 3))
    Cg, Mg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    output_padding = (draw(st.integers(0, stride[0] - 1)), draw(st.integers(0, stride[1] - 1)))
    N, H, W = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    pads = []
    for size, s, k, d, op in ((H, stride[0], KH, dilation[0], output_padding[0]),
                              (W, stride[1], KW, dilation[1], output_padding[1])):
        full = (size - 1) * s + (k - 1) * d + 1 + op
        lo = draw(st.integers(-1, min(2, full - 1)))  # negative pads extend the output (ONNX output_shape)
        pads.append((lo, draw(st.integers(-1, min(2, full - 1 - lo)))))
    padding = (pads[0][0], pads[1][0], pads[0][1], pads[1][1])
    return dict(x=(N, groups * Cg, H, W), w=(groups * Cg, Mg, KH, KW), stride=stride, padding=padding,
                dilation=dilation, output_padding=output_padding, groups=groups)


@given(data=st.data())
def test_conv_transpose2d_matches_scatter_reference(data):
    case = data.draw(conv_transpose_cases(), "case")
    dt = data.draw(dtypes(("float32", "float64", "int32")), "dtype")
    x = data.draw(arrays(dt, case["x"], lo=-3, hi=3, special=False), "x")
    w = data.draw(arrays(dt, case["w"], lo=-3, hi=3, special=False), "w")
    kw = {k: case[k] for k in ("stride", "padding", "dilation", "output_padding", "groups")}
    msg = f"conv_transpose2d({_desc(x)}, {_desc(w)}, {kw})"
    note(msg)
    got = _run("conv_transpose2d", x, w, **kw)
    if is_float(dt):
        ref = conv_transpose_ref(x.astype(F64), w.astype(F64), **kw)
        scale = conv_transpose_ref(np.abs(x.astype(F64)), np.abs(w.astype(F64)), **kw)
        n = case["w"][0] // kw["groups"] * case["w"][2] * case["w"][3]
        assert_close(got, ref.astype(x.dtype), n=n, scale=scale, msg=msg)
    else:
        assert_close(got, conv_transpose_ref(x.astype(np.int64), w.astype(np.int64), **kw).astype(x.dtype), msg=msg)


def test_conv_transpose2d_symbolic_batch_and_height():
    rng = np.random.default_rng(0)
    g = Graph("ct")
    x = g.add_input(TensorType(("n", 4, "h", 5), "float32"), "x")
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    y = g.op("conv_transpose2d", x, g.constant(w), stride=(2, 1), padding=(1, 0, 0, 1), groups=2)
    assert y.type == TensorType(("n", 6, "2*h", 5), "float32")
    g.outputs = [y]
    xv = rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
    kw = dict(stride=(2, 1), padding=(1, 0, 0, 1), dilation=(1, 1), output_padding=(0, 0), groups=2)
    ref = conv_transpose_ref(xv.astype(F64), w.astype(F64), **kw)
    assert_close(ub.build(g).run(xv)[0], ref.astype(np.float32), n=6, scale=np.abs(ref) + 10, msg="symbolic")


def test_conv_transpose2d_errors():
    f = "float32"
    with pytest.raises(ShapeError, match="channels"):
        _types("conv_transpose2d", ((1, 4, 5, 5), f), ((3, 2, 3, 3), f))
    with pytest.raises(ShapeError, match="groups"):
        _types("conv_transpose2d", ((1, 4, 5, 5), f), ((4, 2, 3, 3), f), groups=3)
    with pytest.raises(ShapeError, match="output size"):
        _types("conv_transpose2d", ((1, 4, 1, 1), f), ((4, 2, 1, 1), f), padding=(1, 0, 1, 0))
    with pytest.raises(ShapeError, match="padding"):
        _types("conv_transpose2d", ((1, 4, 5, 5), f), ((4, 2, 3, 3), f), padding=(1, 1))


# -- resize -------------------------------------------------------------------------------------
CTMS = ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "tf_half_pixel_for_nn",
        "half_pixel_symmetric")
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _source_coords(size_in, size_out, scale, ctm):
    """ONNX Resize's x_original of every output index along one axis (float64)."""
    y = np.arange(size_out, dtype=F64)
    if ctm == "asymmetric":
        return y / scale
    if ctm == "align_corners":
        width = scale * size_in  # the reference's (possibly fractional) output width
        return np.zeros(size_out) if width == 1 else y * (size_in - 1) / (width - 1)
    if ctm == "pytorch_half_pixel" and size_out <= 1:
        return np.zeros(size_out)
    if ctm == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale
    if ctm == "half_pixel_symmetric":
        offset = size_in / 2 * (1 - size_out / (scale * size_in))
        return offset + (y + 0.5) / scale - 0.5
    return (y + 0.5) / scale - 0.5


def _keys(d, a):
    """The cubic convolution kernel of Keys (1981) with parameter a."""
    d = abs(d)
    if d <= 1:
        return (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
    if d < 2:
        return a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
    return 0.0


def _axis_matrix(size_in, size_out, scale, mode, ctm, nearest_mode, a, exclude_outside):
    """(size_out, size_in) interpolation matrix of one axis: out = M @ in along that axis."""
    m = np.zeros((size_out, size_in))
    for o, x in enumerate(_source_coords(size_in, size_out, scale, ctm)):
        f = math.floor(x)
        if mode == "nearest":
            i = {"floor": f, "ceil": math.ceil(x), "round_prefer_floor": f + (x - f > 0.5),
                 "round_prefer_ceil": f + (x - f >= 0.5)}[nearest_mode]
            m[o, min(max(i, 0), size_in - 1)] = 1.0
            continue
        taps = [f, f + 1] if mode == "linear" else [f - 1, f, f + 1, f + 2]
        w = [1 - abs(x - t) if mode == "linear" else _keys(x - t, a) for t in taps]
        if exclude_outside:
            w = [wi if 0 <= t < size_in else 0.0 for t, wi in zip(taps, w)]
            s = sum(w)
            w = [wi / (s if s != 0 else 1.0) for wi in w]
        for t, wi in zip(taps, w):
            m[o, min(max(t, 0), size_in - 1)] += wi  # edge padding
    return m


def resize_ref(x, sizes, scales=None, mode="nearest", coordinate_transformation_mode="half_pixel",
               nearest_mode="round_prefer_floor", cubic_coeff_a=-0.75, exclude_outside=False, absolute=False):
    """float64 result (with `absolute`, the same interpolation of |x| with |weights|: an error scale)."""
    out = np.abs(x.astype(F64)) if absolute else x.astype(F64)
    for k, (i, o) in enumerate(zip(x.shape, sizes)):
        s = None if scales is None else scales[k]
        if o == i and (s is None or math.isclose(s, 1.0)):
            continue
        m = _axis_matrix(i, o, s if s is not None else o / i, mode, coordinate_transformation_mode, nearest_mode,
                         cubic_coeff_a, exclude_outside)
        out = np.moveaxis(np.tensordot(np.abs(m) if absolute else m, out, axes=(1, k)), 0, k)
    return out


def _cast_like_onnx(v, dt):
    """ONNX's reference rounds (half to even) and saturates for integer outputs."""
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return np.clip(np.round(v), info.min, info.max).astype(dt)
    return v.astype(dt)


@st.composite
def resize_cases(draw):
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple))
    mode = draw(st.sampled_from(("nearest", "linear", "cubic")))
    attrs = dict(mode=mode, coordinate_transformation_mode=draw(st.sampled_from(CTMS)))
    if mode == "nearest":
        attrs["nearest_mode"] = draw(st.sampled_from(NEAREST))
    else:
        attrs["exclude_outside"] = draw(st.booleans())
    if mode == "cubic":
        attrs["cubic_coeff_a"] = draw(st.sampled_from((-0.75, -0.5)))
    # resize at most two axes (a cubic tap count of 4**axes stays small)
    axes = draw(st.lists(st.integers(0, len(shape) - 1), max_size=2, unique=True))
    if draw(st.booleans()):  # the model gave scales: sizes are floor(input * scale)
        scales = [1.0] * len(shape)
        for k in axes:
            scales[k] = draw(st.sampled_from((0.5, 0.6, 0.75, 1.5, 2.0, 2.5, 3.0)))
        attrs["scales"] = scales
        attrs["sizes"] = [int(math.floor(d * s)) for d, s in zip(shape, scales)]
    else:
        sizes = list(shape)
        for k in axes:
            sizes[k] = draw(st.integers(1, 8))
        attrs["sizes"] = sizes
    return shape, attrs


@given(data=st.data())
def test_resize_matches_spec_formulas(data):
    shape, attrs = data.draw(resize_cases(), "case")
    ints = ("int8", "uint8", "int32") if attrs["mode"] == "nearest" else ()
    dt = data.draw(dtypes(("float32", "float64", "float16") + ints), "dtype")
    x = data.draw(arrays(dt, shape, lo=-10, hi=10, special=False), "x")
    msg = f"resize({_desc(x)}, {attrs})"
    note(msg)
    got = _run("resize", x, **attrs)
    ref = resize_ref(x, **attrs)
    if attrs["mode"] == "nearest":
        assert_same(got, ref.astype(x.dtype), msg=msg)
    else:
        scale = resize_ref(x, absolute=True, **attrs)
        assert_close(got, ref.astype(x.dtype), n=16, scale=scale, msg=msg)


def _onnx_resize(x, sizes=None, scales=None, **attrs):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    names = ["X", "", "scales" if scales is not None else "", "sizes" if sizes is not None else ""]
    while names[-1] == "":
        names.pop()
    inits = []
    if scales is not None:
        inits.append(numpy_helper.from_array(np.array(scales, np.float32), "scales"))
    if sizes is not None:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    graph = helper.make_graph([helper.make_node("Resize", names, ["Y"], **attrs)], "g",
                              [helper.make_tensor_value_info("X", elem, x.shape)],
                              [helper.make_tensor_value_info("Y", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    del onnx, TensorProto
    return ReferenceEvaluator(model).run(None, {"X": x})[0]


# tf_half_pixel_for_nn is missing from the installed reference's vectorised path
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("ctm", [c for c in CTMS if c != "tf_half_pixel_for_nn"])
def test_resize_matches_onnx_reference(mode, ctm):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 5, 7)).astype(np.float32)
    # one axis up, one down (sizes), then explicit scales that do not divide evenly
    for sizes, scales in (((1, 2, 9, 4), None), (None, (1.0, 1.0, 2.0, 1.3))):
        attrs = dict(mode=mode, coordinate_transformation_mode=ctm)
        expected = _onnx_resize(x, sizes=sizes, scales=scales, **attrs)
        ub_attrs = dict(attrs, sizes=expected.shape, scales=None if scales is None else
                        [float(np.float32(s)) for s in scales])  # as the importer passes them
        got = _run("resize", x, **ub_attrs)
        msg = f"resize {attrs} sizes={sizes} scales={scales}"
        if mode == "nearest":
            assert_same(got, expected, msg=msg)
        else:
            assert_close(got, expected, n=16, scale=resize_ref(x, absolute=True, **ub_attrs), msg=msg)


@pytest.mark.parametrize("nearest_mode", NEAREST)
def test_resize_nearest_modes_match_onnx_reference(nearest_mode):
    x = np.arange(2 * 6, dtype=np.float32).reshape(2, 6)
    for sizes in ((2, 15), (2, 4)):
        expected = _onnx_resize(x, sizes=sizes, mode="nearest", nearest_mode=nearest_mode,
                                coordinate_transformation_mode="asymmetric")
        got = _run("resize", x, sizes=sizes, mode="nearest", nearest_mode=nearest_mode,
                   coordinate_transformation_mode="asymmetric")
        assert_same(got, expected, msg=f"nearest {nearest_mode} {sizes}")


def test_resize_integer_linear_rounds_half_to_even():
    x = np.array([[1, 2, 4, 7, 250]], np.uint8)
    kw = dict(mode="linear", coordinate_transformation_mode="asymmetric", sizes=(1, 10))
    expected = _onnx_resize(x, sizes=(1, 10), mode="linear", coordinate_transformation_mode="asymmetric")
    assert_same(_run("resize", x, **kw), expected, msg="uint8 linear")
    assert_same(expected, _cast_like_onnx(resize_ref(x, **kw), np.uint8), msg="test reference")


def test_resize_symbolic_axes_pass_through():
    g = Graph("r")
    x = g.add_input(TensorType(("n", 3, 4), "float32"), "x")
    y = g.op("resize", x, sizes=("n", 3, 8), mode="linear")
    assert y.type == TensorType(("n", 3, 8), "float32")
    g.outputs = [y]
    xv = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    ref = resize_ref(xv, sizes=(2, 3, 8), mode="linear")
    assert_close(ub.build(g).run(xv)[0], ref.astype(np.float32), n=2, scale=np.abs(ref) + 1, msg="symbolic n")


def test_resize_errors():
    f = "float32"
    with pytest.raises(UnsupportedOpError, match="tf_crop_and_resize"):
        _types("resize", ((1, 4), f), sizes=(1, 8), coordinate_transformation_mode="tf_crop_and_resize")
    with pytest.raises(UnsupportedOpError, match="mode"):
        _types("resize", ((1, 4), f), sizes=(1, 8), mode="area")
    with pytest.raises(ShapeError, match="sizes"):
        _types("resize", ((1, 4), f), sizes=(8,))
    with pytest.raises(ShapeError, match="scales"):
        _types("resize", ((1, 4), f), sizes=(1, 8), scales=(2.0,))
    with pytest.raises(ShapeError, match="static"):
        _types("resize", (("n", 4), f), sizes=(3, 4))
    with pytest.raises(ShapeError, match="empty"):
        _types("resize", ((0, 4), f), sizes=(3, 4))


# -- batch_norm / instance_norm ----------------------------------------------------------------
def _eps(x):
    return EPS[dtype_name(x.dtype)]


@given(data=st.data())
def test_batch_norm(data):
    dt = data.draw(dtypes(("float32", "float64", "float16")), "dtype")
    shape = data.draw(st.lists(st.integers(1, 4), min_size=2, max_size=4).map(tuple), "shape")
    C = shape[1]
    x = data.draw(arrays(dt, shape, lo=-10, hi=10, special=False), "x")
    scale, bias, mean = (data.draw(arrays(dt, (C,), lo=-3, hi=3, special=False), n) for n in ("scale", "bias", "mean"))
    var = data.draw(arrays(dt, (C,), lo=0, hi=4, special=False), "var")
    eps = data.draw(st.sampled_from([1e-5, 1e-3]), "eps")
    bshape = (C,) + (1,) * (len(shape) - 2)
    p = [v.astype(F64).reshape(bshape) for v in (scale, bias, mean, var)]
    a = p[0] / np.sqrt(p[3] + eps)
    ref = (x.astype(F64) - p[2]) * a + p[1]
    # computed as x * a + (bias - mean * a): a few roundings of each term
    atol = 4 * _eps(x) * (np.abs(x.astype(F64) * a) + np.abs(p[2] * a) + np.abs(p[1]))
    got = _run("batch_norm", x, scale, bias, mean, var, epsilon=eps)
    assert_close(got, ref.astype(dt), atol_extra=atol, msg=f"batch_norm({_desc(x)}, eps={eps})")


def test_batch_norm_folds_to_one_scale_and_shift():
    from ubique.compiler.pipeline import compile_graph
    from ubique.targets.registry import host_target

    rng = np.random.default_rng(0)
    C = 3
    params = [rng.standard_normal(C).astype(np.float32) for _ in range(3)] + [rng.random(C).astype(np.float32)]
    x = rng.standard_normal((2, C, 4, 5)).astype(np.float32)
    g = _graph("batch_norm", [x], consts=params, epsilon=1e-3)
    program = compile_graph(g, host_target())
    ops = sorted(n.op for n in program.graph.nodes if n.op != "constant")
    assert ops == ["add", "mul"], program.graph_ir
    s, b, m, v = (p.astype(F64).reshape(C, 1, 1) for p in params)
    ref = (x - m) / np.sqrt(v + 1e-3) * s + b
    assert_close(ub.build(g).run(x)[0], ref.astype(np.float32), atol_extra=1e-5 * (np.abs(ref) + 1), msg="bn const")


@given(data=st.data())
def test_instance_norm(data):
    dt = data.draw(dtypes(("float32", "float64", "float16")), "dtype")
    shape = data.draw(st.lists(st.integers(1, 4), min_size=3, max_size=4).map(tuple), "shape")
    C = shape[1]
    x = data.draw(arrays(dt, shape, lo=-10, hi=10, special=False), "x")
    scale = data.draw(arrays(dt, (C,), lo=-3, hi=3, special=False), "scale")
    bias = data.draw(arrays(dt, (C,), lo=-3, hi=3, special=False), "bias")
    eps = data.draw(st.sampled_from([1e-5, 0.1]), "eps")
    axes = tuple(range(2, len(shape)))
    x64 = x.astype(F64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    bshape = (C,) + (1,) * (len(shape) - 2)
    s64, b64 = scale.astype(F64).reshape(bshape), bias.astype(F64).reshape(bshape)
    y = (x64 - mean) / np.sqrt(var + eps) * s64 + b64
    n = math.prod(shape[2:])
    # the mean's rounding error is amplified by 1/sqrt(var + eps) (as in the layer_norm test)
    centre_err = (2 * _eps(x) + n * EPS["float32"]) * np.abs(x64).mean(axis=axes, keepdims=True)
    atol = 4 * centre_err / np.sqrt(var + eps) * np.abs(s64) + 2 * _eps(x) * (np.abs(y) + np.abs(b64))
    got = _run("instance_norm", x, scale, bias, epsilon=eps)
    assert_close(got, y.astype(dt), n=n, scale=np.abs(y), atol_extra=atol, msg=f"instance_norm({_desc(x)})")


def test_norm_errors():
    f = "float32"
    with pytest.raises(ShapeError, match="batch_norm"):
        _types("batch_norm", ((2, 3, 4), f), ((4,), f), ((3,), f), ((3,), f), ((3,), f))
    with pytest.raises(ShapeError, match="instance_norm"):
        _types("instance_norm", ((2, 3), f), ((3,), f), ((3,), f))


# -- einsum -------------------------------------------------------------------------------------
@pytest.mark.parametrize("eq,shapes", [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("bhqk,bhkd->bhqd", [(2, 3, 4, 6), (2, 3, 6, 5)]),
    ("ii->i", [(4, 4)]),
    ("ii", [(3, 3)]),
    ("iij->j", [(3, 3, 2)]),
    ("ij->ji", [(3, 4)]),
    ("ij->", [(3, 4)]),
    ("i,j->ij", [(3,), (4,)]),
    ("i,i", [(5,), (5,)]),
    ("...ij,...jk", [(2, 1, 3, 4), (5, 4, 2)]),
    ("...ij->...ji", [(2, 3, 4)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]),
    ("Ba,aC", [(2, 3), (3, 4)]),
    ("b i d , b j d -> b i j", [(2, 3, 4), (2, 5, 4)]),
])
def test_einsum_common_equations(eq, shapes):
    rng = np.random.default_rng(len(eq))
    arrs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ref = np.einsum(eq, *[a.astype(F64) for a in arrs])
    scale = np.einsum(eq, *[np.abs(a.astype(F64)) for a in arrs])
    assert_close(_run("einsum", *arrs, equation=eq), np.asarray(ref, np.float32), n=64, scale=scale, msg=eq)


@st.composite
def einsum_cases(draw):
    letters = "abcd"
    size = {c: draw(st.integers(1, 3)) for c in letters}
    n_ops = draw(st.integers(1, 3))
    ell = tuple(draw(st.lists(st.integers(1, 3), max_size=2))) if draw(st.booleans()) else None
    terms, shapes, used = [], [], []
    for _ in range(n_ops):
        labels = draw(st.lists(st.sampled_from(letters), max_size=3))
        used += labels
        shape = [size[c] for c in labels]
        term = "".join(labels)
        if ell is not None:  # a suffix of the broadcast shape, some sides 1
            e = draw(st.integers(0, len(ell)))
            eshape = [d if draw(st.booleans()) else 1 for d in ell[len(ell) - e:]]
            at = draw(st.integers(0, len(labels)))
            term = term[:at] + "..." + term[at:]
            shape = shape[:at] + eshape + shape[at:]
        terms.append(term)
        shapes.append(tuple(shape))
    eq = ",".join(terms)
    if draw(st.booleans()):  # explicit output: some distinct labels, in any order
        out = draw(st.permutations(sorted(set(used))).flatmap(lambda p: st.integers(0, len(p)).map(lambda n: p[:n])))
        out = "".join(out)
        if ell is not None:
            at = draw(st.integers(0, len(out)))
            out = out[:at] + "..." + out[at:]
        eq += "->" + out
    return eq, shapes


@given(data=st.data())
def test_einsum_random_equations(data):
    eq, shapes = data.draw(einsum_cases(), "case")
    dt = data.draw(dtypes(("float32", "float64", "int32")), "dtype")
    arrs = [data.draw(arrays(dt, s, lo=-4, hi=4, special=False), f"x{k}") for k, s in enumerate(shapes)]
    note(f"einsum({eq!r}, {[_desc(a) for a in arrs]})")
    got = _run("einsum", *arrs, equation=eq)
    if is_float(dt):
        ref = np.einsum(eq, *[a.astype(F64) for a in arrs])
        scale = np.einsum(eq, *[np.abs(a.astype(F64)) for a in arrs])
        assert_close(got, np.asarray(ref).astype(np_dtype(dt)), n=81, scale=scale, msg=eq)
    else:
        assert_close(got, np.asarray(np.einsum(eq, *arrs)), msg=eq)


def test_einsum_symbolic_batch():
    g = Graph("einsum")
    q = g.add_input(TensorType(("b", 2, 3, 4), "float32"), "q")
    k = g.add_input(TensorType(("b", 2, 5, 4), "float32"), "k")
    y = g.op("einsum", q, k, equation="bhqd,bhkd->bqhk")
    assert y.type == TensorType(("b", 3, 2, 5), "float32")
    g.outputs = [y]
    exe = ub.build(g)
    rng = np.random.default_rng(0)
    for n in (1, 3):
        qv = rng.standard_normal((n, 2, 3, 4)).astype(np.float32)
        kv = rng.standard_normal((n, 2, 5, 4)).astype(np.float32)
        ref = np.einsum("bhqd,bhkd->bqhk", qv.astype(F64), kv.astype(F64))
        scale = np.einsum("bhqd,bhkd->bqhk", np.abs(qv.astype(F64)), np.abs(kv.astype(F64)))
        assert_close(exe.run(qv, kv)[0], ref.astype(np.float32), n=4, scale=scale, msg=f"einsum b={n}")


def test_einsum_errors():
    f = "float32"
    cases = [
        (VerifyError, "2 operand", "ij,jk->ik", [((3, 4), f)]),
        (VerifyError, "appears in no operand", "ij->k", [((3, 4), f)]),
        (VerifyError, "repeats", "ij->ii", [((3, 4), f)]),
        (VerifyError, "invalid character", "i1->i", [((3, 4), f)]),
        (VerifyError, "rank", "ijk->i", [((3, 4), f)]),
        (VerifyError, "more than one '->'", "i->i->i", [((3,), f)]),
        (VerifyError, "more than one ellipsis", "...i...->i", [((3,), f)]),
        (VerifyError, "needs '...'", "...i->i", [((2, 3), f)]),
        (ShapeError, "label 'j'", "ij,jk->ik", [((3, 4), f), ((5, 6), f)]),
        (ShapeError, "broadcast", "...i,...i->...i", [((2, 3), f), ((4, 3), f)]),
    ]
    for err, match, eq, types in cases:
        with pytest.raises(err, match=match):
            _types("einsum", *types, equation=eq)
