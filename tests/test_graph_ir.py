"""Graph IR infrastructure: building graphs, the printer, the verifier, JSON serialisation,
and golden-text tests pinning the printed graph IR and loop IR of small programs.

Golden files live in tests/golden/. Regenerate them with

    UBIQUE_UPDATE_GOLDEN=1 python -m pytest tests/test_graph_ir.py -k golden

and review the diff; by default the printed IR must match the files exactly.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest

import ubique as ub
from ubique.ir import Graph, TensorType
from ubique.ir.dtypes import DType
from ubique.ir.printer import print_graph
from ubique.ir.serialize import dumps, graph_to_dict, loads
from ubique.ir.verify import verify_graph

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - the test extra installs it
    ml_dtypes = None

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("UBIQUE_UPDATE_GOLDEN") == "1"


def f32(*shape):
    return TensorType(shape, DType.float32)


def small_graph():
    """x: f32[2, 3] -> exp(x) + 1.5 ; returns (graph, x, exp value, output value)."""
    g = Graph("small")
    x = g.add_input(f32(2, 3), "x")
    e = g.op("exp", x)
    c = g.constant(np.float32(1.5))
    y = g.op("add", e, c)
    g.outputs = [y]
    return g, x, e, y


# ---------------------------------------------------------------------------------------------
# building and printing
# ---------------------------------------------------------------------------------------------
def test_build_infers_types_and_links_values():
    g = Graph("b")
    x = g.add_input(TensorType((4, 1, 3), "f32"), "x")
    w = g.add_input(TensorType((5, 3), DType.float64), "w")
    s = g.op("add", x, w)                      # broadcast + promotion
    assert s.type == TensorType((4, 5, 3), DType.float64)
    r = g.op("sum", s, axes=(0, 2), keepdims=True)
    assert r.shape == (1, 5, 1) and r.dtype is DType.float64
    c = g.op("cast", r, dtype="i32")
    assert c.dtype is DType.int32
    assert c.node is g.nodes[-1] and c.node.op == "cast" and c.node.inputs == [r]
    assert [v.id for v in g.values()] == sorted({v.id for v in g.values()})  # ids unique
    assert g.users()[s.id] == [r.node]
    assert x.node is None and x.name == "x"


def test_constant_values_and_types():
    g = Graph("c")
    a = g.constant(np.arange(6, dtype=np.int32).reshape(2, 3))
    b = g.constant([1.0, 2.0], dtype="f64")
    s = g.constant(3)
    assert a.type == TensorType((2, 3), DType.int32)
    assert b.type == TensorType((2,), DType.float64)
    assert s.type.shape == () and s.type.dtype is DType.int64
    np.testing.assert_array_equal(a.node.attrs["value"], np.arange(6).reshape(2, 3))
    assert a.node.op == "constant" and a.node.inputs == []


def test_printer_exact_text():
    g = Graph("demo")
    x = g.add_input(f32(2, 3), "x")
    y = g.add_input(TensorType((3,), "i32"), "y")
    s = g.op("sum", x, axes=(1,))                       # keepdims default False: not printed
    m = g.op("max", x, axes=(0,), keepdims=True)
    t = g.op("transpose", x)                            # perm default None: not printed
    c = g.op("cast", y, dtype=DType.float32)
    k = g.constant(np.float32(2.0))
    arr = g.constant(np.ones((2, 2), np.float64))
    one = g.constant(np.array([7], np.int8))
    p = g.op("pad", x, pads=(1, 0, 0, 2), mode="edge")
    z = g.op("mul", c, k)
    g.outputs = [s, m, t, z, arr, one, p]
    expected = "\n".join([
        "graph demo(%x: f32[2, 3], %y: i32[3]) -> (%2, %3, %4, %10, %7, %8, %9) {",
        "  %2 = sum(%x) {axes=[1]} : f32[2]",
        "  %3 = max(%x) {axes=[0], keepdims=True} : f32[1, 3]",
        "  %4 = transpose(%x) : f32[3, 2]",
        "  %5 = cast(%y) {dtype=f32} : f32[3]",
        "  %6 = constant() {value=2.0:f32} : f32[]",
        "  %7 = constant() {value=<f64[2, 2]>} : f64[2, 2]",
        "  %8 = constant() {value=i8[1] 7} : i8[1]",
        "  %9 = pad(%x) {pads=[1, 0, 0, 2], mode='edge'} : f32[3, 5]",
        "  %10 = mul(%5, %6) : f32[3]",
        "  return %2, %3, %4, %10, %7, %8, %9",
        "}",
    ])
    # node order in the text is the graph's node order (p was added before z)
    assert [n.op for n in g.nodes] == ["sum", "max", "transpose", "cast", "constant", "constant",
                                       "constant", "pad", "mul"]
    assert print_graph(g) == expected
    assert str(g) == expected
    verify_graph(g)


def test_printer_unnamed_inputs_and_scalar_types():
    g = Graph("u")
    a = g.add_input(TensorType((), "bool"), None)
    b = g.op("where", a, g.constant(np.float32(1)), g.constant(np.float32(0)))
    g.outputs = [b]
    text = str(g)
    assert text.splitlines()[0] == "graph u(%0: bool[]) -> (%3) {"
    assert "  %3 = where(%0, %1, %2) : f32[]" in text


def test_value_and_node_repr():
    g, x, e, y = small_graph()
    assert repr(x) == "%x: f32[2, 3]"
    assert repr(e) == f"%{e.id}: f32[2, 3]"
    assert "exp" in repr(e.node)


# ---------------------------------------------------------------------------------------------
# the verifier
# ---------------------------------------------------------------------------------------------
def test_verify_accepts_well_formed_graph():
    g, *_ = small_graph()
    assert verify_graph(g) is None


def test_verify_rejects_unknown_op():
    g, *_ = small_graph()
    g.nodes[0].op = "frobnicate"
    with pytest.raises(ub.VerifyError) as ei:
        verify_graph(g)
    msg = str(ei.value)
    assert "frobnicate" in msg and "node 0" in msg and "unknown op" in msg


@pytest.mark.parametrize("extra", [0, 2])
def test_verify_rejects_wrong_arity(extra):
    g, x, e, y = small_graph()
    node = y.node  # add: 2 inputs
    node.inputs = node.inputs[:1] + [x] * extra if extra else node.inputs[:1]
    with pytest.raises(ub.VerifyError) as ei:
        verify_graph(g)
    msg = str(ei.value)
    got = len(node.inputs)
    assert "add" in msg and "takes 2 input(s)" in msg and f"got {got}" in msg
    assert f"node {g.nodes.index(node)}" in msg


def test_verify_rejects_unknown_attribute():
    g, x, e, y = small_graph()
    e.node.attrs["colour"] = "blue"
    with pytest.raises(ub.VerifyError) as ei:
        verify_graph(g)
    msg = str(ei.value)
    assert "unknown attribute" in msg and "colour" in msg and "exp" in msg


def test_verify_rejects_missing_required_attribute():
    g = Graph("m")
    x = g.add_input(f32(2, 3), "x")
    c = g.op("cast", x, dtype="f64")
    g.outputs = [c]
    del c.node.attrs["dtype"]
    with pytest.raises(ub.VerifyError) as ei:
        verify_graph(g)
    msg = str(ei.value)
    assert "missing required attribute" in msg and "'dtype'" in msg and "cast" in msg


def test_verify_rejects_badly_typed_attribute():
    g = Graph("m")
    x = g.add_input(f32(2, 3), "x")
    g.outputs = [g.op("concat", x, x, axis=1)]
    g.nodes[0].attrs["axis"] = "one"
    with pytest.raises(ub.VerifyError) as ei:
        verify_graph(g)
    msg = str(ei.value)
    assert "'axis'" in msg and "an int" in msg and "'one'" in msg


def test_verify_rejects_use_before_def():
    g = Graph("order")
    x = g.add_input(f32(4), "x")
    a = g.op("exp", x)
    b = g.op("neg", a)
    g.outputs = [b]
    g.nodes.reverse()
    with pytest.raises(ub.VerifyError) as ei:
        verify_graph(g)
    msg = str(ei.value)
    assert "used before it is defined" in msg and f"%{a.id}" in msg and "neg" in msg


@pytest.mark.parametrize("bad,expect", [
    (TensorType((2, 3), "f64"), "f64[2, 3]"),
    (TensorType((3, 2), "f32"), "f32[3, 2]"),
    (TensorType((2, 3, 1), "f32"), "f32[2, 3, 1]"),
])
def test_verify_rejects_wrong_output_type(bad, expect):
    g, x, e, y = small_graph()
    e.type = bad
    with pytest.raises(ub.VerifyError) as ei:
        verify_graph(g)
    msg = str(ei.value)
    assert f"has type {expect}" in msg and "type rule gives f32[2, 3]" in msg and "exp" in msg


def test_verify_rejects_undefined_graph_output():
    g, *_ = small_graph()
    stray = Graph("other").add_input(f32(1), "stray")
    stray.id = 99
    g.outputs = [g.outputs[0], stray]
    with pytest.raises(ub.VerifyError) as ei:
        verify_graph(g)
    msg = str(ei.value)
    assert "output 1" in msg and "%stray" in msg and "not defined" in msg


def test_verify_rejects_double_definition_and_bad_backlink():
    g, x, e, y = small_graph()
    y.node.outputs = [e]  # e is already defined by exp
    with pytest.raises(ub.VerifyError, match="defined twice"):
        verify_graph(g)
    g, x, e, y = small_graph()
    y.node = e.node
    with pytest.raises(ub.VerifyError, match="does not point back"):
        verify_graph(g)


def test_verify_rejects_input_listed_twice():
    g, x, e, y = small_graph()
    g.inputs.append(x)
    with pytest.raises(ub.VerifyError, match="listed twice"):
        verify_graph(g)


def test_verify_reports_source_location():
    g, x, e, y = small_graph()
    e.node.loc = "model.py:42"
    e.type = f32(9)
    with pytest.raises(ub.VerifyError, match="model.py:42"):
        verify_graph(g)


def test_builder_rejects_unknown_op_and_attributes():
    g = Graph("b")
    x = g.add_input(f32(2), "x")
    with pytest.raises(ub.UnsupportedOpError, match="'nope'"):
        g.op("nope", x)
    with pytest.raises(ub.VerifyError, match="unknown attribute.*'foo'"):
        g.op("exp", x, foo=1)
    with pytest.raises(ub.VerifyError, match="missing required attribute 'dtype'"):
        g.op("cast", x)


@pytest.mark.parametrize("op,n", [("exp", 2), ("add", 1), ("add", 3), ("where", 2)])
def test_builder_rejects_wrong_arity(op, n):
    """Graph.op must refuse a wrong input count with the same VerifyError the verifier gives
    (not build an invalid node, and not crash with IndexError inside the type rule)."""
    g = Graph("b")
    x = g.add_input(f32(2), "x")
    with pytest.raises(ub.VerifyError) as ei:
        g.op(op, *([x] * n))
    assert op in str(ei.value) and f"got {n}" in str(ei.value)


# ---------------------------------------------------------------------------------------------
# JSON serialisation
# ---------------------------------------------------------------------------------------------
ARRAY_DTYPES = ["float32", "float64", "float16", "int8", "uint8", "int32", "int64", "bool"]


def _sample_array(dtype: str, shape=(2, 3)) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(dtype)) % 1000)
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    a = rng.standard_normal(shape).astype(dtype)
    if a.size >= 3:
        a.reshape(-1)[:3] = [np.inf, -0.0, np.nan]
    return a


def every_attribute_graph() -> Graph:
    """A graph whose nodes use every attribute kind: arrays of all dtypes (0-d, empty,
    1-element, n-d), dtypes, int/float/bool/str scalars, tuples and None."""
    g = Graph("everything")
    x = g.add_input(f32(2, 3), "x")
    img = g.add_input(TensorType((1, 2, 5, 5), "f32"), "img")
    outs = []
    for dt in ARRAY_DTYPES:
        outs.append(g.constant(_sample_array(dt)))
    if ml_dtypes is not None:
        outs.append(g.constant(np.array([[1.5, -2.25, 3e38]], dtype=ml_dtypes.bfloat16)))
        outs.append(g.constant(np.array(0.5, dtype=ml_dtypes.bfloat16)))
    outs.append(g.constant(np.zeros((0, 4), np.float32)))             # empty
    outs.append(g.constant(np.array(-7, np.int64)))                    # 0-d
    outs.append(g.constant(np.array([3.25], np.float64)))              # 1 element
    outs.append(g.constant(np.asfortranarray(np.arange(12.0).reshape(3, 4))))  # not C order
    outs.append(g.op("cast", x, dtype=DType.float16))                  # dtype attribute
    outs.append(g.op("cast", x, dtype=DType.bfloat16))
    outs.append(g.op("sum", x, axes=(0, 1), keepdims=True))            # tuple + bool
    outs.append(g.op("sum", x, axes=None))                              # None
    outs.append(g.op("argmax", x, axis=None))                           # int_or_none: None
    outs.append(g.op("argmin", x, axis=-1, keepdims=True))              # int_or_none: int
    outs.append(g.op("transpose", x, perm=(1, 0)))
    outs.append(g.op("transpose", x, perm=None))
    outs.append(g.op("slice", x, begin=(1, 2), end=(2, -1), step=(1, -1)))
    outs.append(g.op("pad", x, pads=(1, 2, 0, 1), mode="reflect"))     # str
    outs.append(g.op("pad", x, pads=(0, 1, 1, 0), mode="constant", value=-np.inf))  # float
    outs.append(g.op("pad", x, pads=(0, 1, 1, 0), value=2.5))
    outs.append(g.op("concat", x, x, x, axis=1))                        # int, variadic
    outs.append(g.op("reshape", x, shape=(3, 2)))
    outs.append(g.op("broadcast_to", x, shape=(4, 2, 3)))
    outs.append(g.op("gelu", x, approximate="tanh"))
    outs.append(g.op("layer_norm", x, axis=-1, epsilon=1e-3))
    outs.append(g.op("conv2d", img, g.constant(np.ones((4, 2, 3, 3), np.float32)),
                     stride=(2, 1), padding=(1, 0, 1, 2), dilation=(1, 2), groups=1))
    outs.append(g.op("max_pool2d", img, kernel=(2, 2), stride=(1, 2), ceil_mode=True))
    outs.append(g.op("avg_pool2d", img, kernel=(3, 3), count_include_pad=False))
    g.outputs = outs
    for k, n in enumerate(g.nodes):
        if n.op != "constant":
            n.loc = f"model.py:{k + 1}"
    return g


def _assert_same_graph(a: Graph, b: Graph, text: bool = True):
    if text:
        assert print_graph(a) == print_graph(b)
    assert a.name == b.name
    assert [(v.id, v.name, v.type) for v in a.inputs] == [(v.id, v.name, v.type) for v in b.inputs]
    assert [v.id for v in a.outputs] == [v.id for v in b.outputs]
    assert len(a.nodes) == len(b.nodes)
    for na, nb in zip(a.nodes, b.nodes):
        assert na.op == nb.op and na.loc == nb.loc
        assert [v.id for v in na.inputs] == [v.id for v in nb.inputs]
        assert [(v.id, v.type) for v in na.outputs] == [(v.id, v.type) for v in nb.outputs]
        assert set(na.attrs) == set(nb.attrs)
        for k, va in na.attrs.items():
            vb = nb.attrs[k]
            if isinstance(va, np.ndarray):
                assert isinstance(vb, np.ndarray), (na.op, k)
                assert vb.dtype == va.dtype and vb.shape == va.shape, (na.op, k)
                assert np.ascontiguousarray(vb).tobytes() == np.ascontiguousarray(va).tobytes(), (na.op, k)
            elif isinstance(va, float) and np.isnan(va):
                assert isinstance(vb, float) and np.isnan(vb)
            else:
                assert type(vb) is type(va) and vb == va, (na.op, k, va, vb)


def test_every_attribute_graph_is_valid():
    g = every_attribute_graph()
    verify_graph(g)
    ops = {n.op for n in g.nodes}
    assert {"constant", "cast", "sum", "argmax", "transpose", "slice", "pad", "concat", "conv2d"} <= ops


def test_json_round_trip_every_attribute_kind():
    g = every_attribute_graph()
    text = dumps(g)
    json.loads(text)                          # it is JSON
    g2 = loads(text)
    _assert_same_graph(g, g2, text=False)     # same structure, types, attribute values and types
    assert dumps(g2) == text                  # re-serialisation is byte-identical
    assert dumps(loads(dumps(g2))) == text    # and stable


def test_json_round_trip_keeps_printed_text():
    """The printed IR of a loaded graph is the printed IR of the saved one (attributes in
    the same order), so golden text and diffs of saved models are stable."""
    g = every_attribute_graph()
    assert print_graph(loads(dumps(g))) == print_graph(g)
    g = Graph("pad")
    x = g.add_input(f32(2, 3), "x")
    g.outputs = [g.op("pad", x, pads=(1, 0, 0, 1), mode="edge")]
    assert str(loads(dumps(g))) == str(g)


@pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes is not installed")
def test_json_round_trip_bfloat16_bits():
    bits = np.array([0x0000, 0x8000, 0x3FC0, 0x7F80, 0xFF80, 0x7FC1, 0x0001, 0x7F7F], np.uint16)
    arr = bits.view(ml_dtypes.bfloat16)
    g = Graph("bf")
    g.outputs = [g.constant(arr)]
    g2 = loads(dumps(g))
    got = g2.nodes[0].attrs["value"]
    assert got.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(got.view(np.uint16), bits)
    assert g2.outputs[0].dtype is DType.bfloat16


def test_json_round_trip_of_traced_graph_runs_the_same():
    @ub.jit
    def model(x, w):
        h = ub.relu(x @ w + np.arange(4, dtype=np.float32))
        return ub.softmax(h, axis=-1), h.sum(axis=0)

    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    graph, _ = model.trace(x, w)
    g2 = loads(dumps(graph))
    _assert_same_graph(graph, g2)
    for a, b in zip(ub.build(graph).run(x, w), ub.build(g2).run(x, w)):
        np.testing.assert_array_equal(a, b)
    # the trace recorded where each node came from, and that survives serialisation
    locs = [n.loc for n in g2.nodes if n.op != "constant"]
    assert locs and all(loc and os.path.basename(__file__) in loc for loc in locs)


def test_graph_to_dict_is_versioned():
    g, *_ = small_graph()
    d = graph_to_dict(g)
    assert d["format"] == "ubique.graph" and d["version"] == 1


def _corruptions():
    g = Graph("c")
    x = g.add_input(f32(2, 3), "x")
    k = g.constant(np.arange(6, dtype=np.float32).reshape(2, 3))
    g.outputs = [g.op("add", x, k)]
    good = dumps(g)
    d = json.loads(good)

    def edit(fn):
        dd = json.loads(good)
        fn(dd)
        return json.dumps(dd)

    def arr(dd):
        return dd["nodes"][0]["attrs"]["value"]["array"]

    cases = {
        "empty": "",
        "garbage": "\x00\xff garbage {",
        "truncated": good[: len(good) // 2],
        "json-list": "[]",
        "json-null": "null",
        "json-number": "42",
        "json-string": '"ubique.graph"',
        "wrong-format": edit(lambda dd: dd.update(format="onnx")),
        "wrong-version": edit(lambda dd: dd.update(version=99)),
        "no-nodes": edit(lambda dd: dd.pop("nodes")),
        "unknown-op": edit(lambda dd: dd["nodes"][1].update(op="frobnicate")),
        "dangling-input": edit(lambda dd: dd["nodes"][1].update(inputs=[0, 77])),
        "dangling-output": edit(lambda dd: dd.update(outputs=[123])),
        "bad-input-dtype": edit(lambda dd: dd["inputs"][0].update(dtype="f99")),
        "bad-output-type": edit(lambda dd: dd["nodes"][1]["outputs"][0].update(dtype="i8")),
        "node-not-object": edit(lambda dd: dd["nodes"].insert(0, 5)),
        "attrs-not-object": edit(lambda dd: dd["nodes"][1].update(attrs=[])),
        "unknown-attr": edit(lambda dd: dd["nodes"][1]["attrs"].update(bogus=1)),
        "array-short-data": edit(lambda dd: arr(dd).update(data=base64.b64encode(b"\0" * 5).decode())),
        "array-bad-base64": edit(lambda dd: arr(dd).update(data="!!!not base64")),
        "array-bad-shape": edit(lambda dd: arr(dd).update(shape=[4, 4])),
        "array-bad-dtype": edit(lambda dd: arr(dd).update(dtype="c64")),
        "shape-not-ints": edit(lambda dd: dd["inputs"][0].update(shape=[2.5, 3])),
    }
    assert d["nodes"][0]["op"] == "constant"
    return cases


CORRUPTIONS = _corruptions()


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_loads_rejects_corrupt_json_with_verify_error(case):
    with pytest.raises(ub.VerifyError) as ei:
        loads(CORRUPTIONS[case])
    assert str(ei.value)


def test_loads_error_messages_are_precise():
    with pytest.raises(ub.VerifyError, match="does not parse"):
        loads("{not json")
    with pytest.raises(ub.VerifyError, match="format 'onnx'.*'ubique.graph'"):
        loads(CORRUPTIONS["wrong-format"])
    with pytest.raises(ub.VerifyError, match="version 99"):
        loads(CORRUPTIONS["wrong-version"])
    with pytest.raises(ub.VerifyError, match="frobnicate"):
        loads(CORRUPTIONS["unknown-op"])
    with pytest.raises(ub.VerifyError, match="value id 77"):
        loads(CORRUPTIONS["dangling-input"])


BIG_ENDIAN = np.array([0.5, 1.5, -2.0, 1e30], dtype=">f4")


def test_non_native_byte_order_constant_round_trips():
    """A big-endian array is a valid constant: its value, not its bytes, is what counts."""
    assert not BIG_ENDIAN.dtype.isnative
    g = Graph("be")
    x = g.add_input(f32(4), "x")
    g.outputs = [g.op("add", x, g.constant(BIG_ENDIAN))]
    g2 = loads(dumps(g))
    np.testing.assert_array_equal(g2.nodes[0].attrs["value"], BIG_ENDIAN)


def test_non_native_byte_order_constant_computes_its_value():
    g = Graph("be")
    x = g.add_input(f32(4), "x")
    g.outputs = [g.op("add", x, g.constant(BIG_ENDIAN))]
    zero = np.zeros(4, np.float32)
    np.testing.assert_array_equal(ub.build(g).run(zero)[0], BIG_ENDIAN.astype(np.float32))

    @ub.jit
    def add_be(a):
        return a + BIG_ENDIAN

    np.testing.assert_array_equal(add_be(zero), BIG_ENDIAN.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# golden text: printed graph IR and loop IR of small programs
# ---------------------------------------------------------------------------------------------
def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _matmul_bias_relu():
    @ub.jit
    def matmul_bias_relu(x, w, b):
        return ub.relu(x @ w + b)

    args = (_rand((4, 8)), _rand((8, 16), 1), _rand((16,), 2))
    return matmul_bias_relu, args, lambda x, w, b: np.maximum(x @ w + b, 0)


def _broadcast_chain():
    @ub.jit
    def broadcast_chain(a, b):
        return ub.exp(a * b - 1.5) + a

    args = (_rand((3, 1, 16)), _rand((5, 16), 1))
    return broadcast_chain, args, lambda a, b: np.exp(a * b - np.float32(1.5)) + a


def _softmax():
    @ub.jit
    def softmax(x):
        return ub.softmax(x, axis=-1)

    def ref(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    return softmax, (_rand((4, 10)),), ref


def _slice_pad():
    @ub.jit
    def slice_pad(x):
        return ub.pad(x[1:3, ::2], ((1, 0), (0, 2)))

    return slice_pad, (_rand((4, 10)),), lambda x: np.pad(x[1:3, ::2], ((1, 0), (0, 2)))


GOLDEN_PROGRAMS = {
    "matmul_bias_relu": _matmul_bias_relu,
    "broadcast_chain": _broadcast_chain,
    "softmax": _softmax,
    "slice_pad": _slice_pad,
}


def _check_golden(name: str, text: str):
    path = GOLDEN_DIR / f"{name}.txt"
    text = text.rstrip("\n") + "\n"
    if UPDATE_GOLDEN:
        GOLDEN_DIR.mkdir(exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"golden file {path} is missing; run with UBIQUE_UPDATE_GOLDEN=1 to create it")
    expected = path.read_text()
    assert text == expected, (f"printed IR differs from {path}; if the change is intended, "
                              "regenerate with UBIQUE_UPDATE_GOLDEN=1 and review the diff")


@pytest.fixture(scope="module")
def lowered_programs():
    out = {}
    for name, make in GOLDEN_PROGRAMS.items():
        fn, args, ref = make()
        out[name] = (fn.lower(*args), fn, args, ref)
    return out


@pytest.mark.parametrize("name", sorted(GOLDEN_PROGRAMS))
def test_golden_graph_ir(name, lowered_programs):
    low = lowered_programs[name][0]
    _check_golden(f"{name}.graph", low.graph_ir)


@pytest.mark.parametrize("name", sorted(GOLDEN_PROGRAMS))
def test_golden_loop_ir(name, lowered_programs):
    low = lowered_programs[name][0]
    _check_golden(f"{name}.loop", low.loop_ir)


@pytest.mark.parametrize("name", sorted(GOLDEN_PROGRAMS))
def test_golden_programs_compute_the_right_values(name, lowered_programs):
    _, fn, args, ref = lowered_programs[name]
    np.testing.assert_allclose(fn(*args), ref(*args), rtol=1e-5, atol=1e-6)


def test_golden_files_have_no_strays():
    """Every file in tests/golden/ belongs to a program above (renames leave no orphans)."""
    if UPDATE_GOLDEN:
        pytest.skip("regenerating golden files")
    expected = {f"{n}.{k}.txt" for n in GOLDEN_PROGRAMS for k in ("graph", "loop")}
    present = {p.name for p in GOLDEN_DIR.glob("*.txt")}
    assert present == expected, {"missing": sorted(expected - present), "stray": sorted(present - expected)}
