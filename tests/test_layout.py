"""The channel-blocking pass (compiler/layout.py): convolutions, and what follows them,
compute in NCHWc; results match a float64 reference; transforms cancel between convs."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ubique as ub
from ubique.compiler.layout import block_channels
from ubique.compiler.pipeline import compile_graph, optimize_graph
from ubique.ir.graph import Graph, TensorType
from ubique.runtime.executable import load_program
from ubique.targets.registry import get_target, host_target
from test_ops_nn import conv2d_ref
from tolerances import assert_close

F64 = np.float64


def _relu(x):
    return np.maximum(x, 0)


def _maxpool2(x):
    n, c, h, w = x.shape
    return x[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _network(c_in, c_mid, groups_mid, hw, seed):
    """conv -> +bias -> relu -> maxpool -> conv (dense or depthwise) -> +residual -> relu
    -> conv 1x1 -> global mean; returns the graph and a float64 reference function."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((c_mid, c_in, 3, 3)) / np.sqrt(9 * c_in)).astype(np.float32)
    b1 = rng.standard_normal(c_mid).astype(np.float32)
    w2 = (rng.standard_normal((c_mid, c_mid // groups_mid, 3, 3)) / 3).astype(np.float32)
    w3 = (rng.standard_normal((5, c_mid, 1, 1)) / np.sqrt(c_mid)).astype(np.float32)
    g = Graph("net")
    x = g.add_input(TensorType(("n", c_in, hw, hw), "float32"), "x")
    y = g.op("conv2d", x, g.constant(w1), padding=(1, 1, 1, 1))
    y = g.op("relu", g.op("add", y, g.constant(b1.reshape(1, -1, 1, 1))))
    p = g.op("max_pool2d", y, kernel=(2, 2), stride=(2, 2))
    z = g.op("conv2d", p, g.constant(w2), padding=(1, 1, 1, 1), groups=groups_mid)
    z = g.op("relu", g.op("add", z, p))
    z = g.op("conv2d", z, g.constant(w3))
    g.outputs = [g.op("mean", z, axes=(2, 3), keepdims=True), p]

    def reference(xv):
        a = _relu(conv2d_ref(xv.astype(F64), w1.astype(F64), b1.astype(F64), (1, 1), 1, (1, 1), 1))
        pa = _maxpool2(a)
        b = _relu(conv2d_ref(pa, w2.astype(F64), None, (1, 1), 1, (1, 1), groups_mid) + pa)
        c = conv2d_ref(b, w3.astype(F64), None, (1, 1), 0, (1, 1), 1)
        return [c.mean(axis=(2, 3), keepdims=True), pa]
    return g, reference


@settings(max_examples=12, deadline=None)
@given(c_in=st.sampled_from([1, 3, 8, 16, 20]), c_mid=st.sampled_from([4, 16, 24, 40]),
       depthwise=st.booleans(), hw=st.integers(4, 13), batch=st.integers(1, 3), seed=st.integers(0, 99))
def test_blocked_network_matches_reference(c_in, c_mid, depthwise, hw, batch, seed):
    g, reference = _network(c_in, c_mid, c_mid if depthwise else 1, hw, seed)
    x = np.random.default_rng(seed).standard_normal((batch, c_in, hw, hw)).astype(np.float32)
    got = ub.compile(g).run({"x": x})
    for a, e in zip(got, reference(x)):
        assert a.shape == e.shape
        assert_close(a, e.astype(np.float32), n=9 * max(c_in, c_mid) + 9 * c_mid + c_mid, scale=np.abs(e) + 1,
                     msg=f"c_in={c_in} c_mid={c_mid} depthwise={depthwise} hw={hw} batch={batch}")


def _ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes if n.op != "constant"]


def test_transforms_cancel_between_convolutions():
    g, _ = _network(16, 32, 1, 8, 0)
    opt = optimize_graph(g, lanes=16)
    ops = _ops(opt)
    assert ops.count("conv2d_nchwc") == 3 and "conv2d" not in ops
    assert "max_pool2d" in ops and "sum" in ops
    # into the layout once (the input), out of it once per output
    assert ops.count("transpose") == 1 + 2, ops
    assert ops[-1] == "slice", ops  # the mean's division stays blocked: 5 channels are unpadded last

    def producer(v):
        while v.node.op == "pad":
            v = v.node.inputs[0]
        return v.node.op
    convs = [n for n in opt.nodes if n.op == "conv2d_nchwc"]
    assert [producer(n.inputs[0]) for n in convs] == ["transpose", "max_pool2d", "relu"]


def test_portable_graph_keeps_nchw():
    g, _ = _network(3, 16, 1, 8, 0)
    assert "conv2d_nchwc" not in _ops(optimize_graph(g))          # no lanes: no target layout
    assert block_channels(g, 1) is g


def test_unsafe_op_on_padded_channels_leaves_the_layout():
    """log(0) on a zero-padded channel would give -inf, and -inf * 0 weights NaN."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((20, 4, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((3, 20, 1, 1)).astype(np.float32)
    g = Graph("log")
    x = g.add_input(TensorType((1, 4, 5, 5), "float32"), "x")
    y = g.op("log", g.op("abs", g.op("conv2d", x, g.constant(w))))
    g.outputs = [g.op("conv2d", y, g.constant(w2))]
    ops = _ops(optimize_graph(g, lanes=16))
    assert ops.index("log") > ops.index("slice")    # computed on the unpadded NCHW tensor
    xv = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    out = ub.compile(g).run({"x": xv})[0]
    ref = conv2d_ref(np.log(np.abs(conv2d_ref(xv.astype(F64), w.astype(F64), None, (1, 1), 0, (1, 1), 1))),
                     w2.astype(F64), None, (1, 1), 0, (1, 1), 1)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_grouped_conv_that_is_not_depthwise_stays_nchw():
    g = Graph("g2")
    x = g.add_input(TensorType((1, 32, 6, 6), "float32"), "x")
    g.outputs = [g.op("conv2d", x, g.constant(np.ones((32, 16, 3, 3), np.float32)), groups=2)]
    assert _ops(optimize_graph(g, lanes=16)) == ["conv2d"]


@pytest.mark.parametrize("target", ["aarch64"])
def test_block_width_follows_the_target(target):
    g, _ = _network(8, 24, 1, 6, 1)
    lanes = get_target(target).vector_bits // 32
    opt = optimize_graph(g, lanes=lanes)
    convs = [n for n in opt.nodes if n.op == "conv2d_nchwc"]
    assert convs and all(n.output.shape[-1] == lanes for n in convs)


def test_weights_are_packed_at_compile_time():
    g, reference = _network(16, 16, 1, 6, 2)
    prog = compile_graph(g, host_target())
    # every kernel reads something computed from the input: none repacks a weight per call
    constants = {id(n.output) for n in prog.graph.nodes if n.op == "constant"}
    for k in prog.kernels:
        assert not all(id(v) in constants for v in k.inputs), k.kernel.name
    assert sorted(w.ndim for w in prog.weights if w.ndim > 1) == [5, 6, 6, 6]  # bias vector + packed convs
    x = np.random.default_rng(2).standard_normal((2, 16, 6, 6)).astype(np.float32)
    got = load_program(prog).run(x)
    np.testing.assert_allclose(got[1], reference(x)[1], rtol=1e-5, atol=1e-5)


def test_blocked_ops_reject_mismatched_blocking():
    g = Graph("bad")
    x = g.add_input(TensorType((1, 2, 5, 5, 16), "float32"), "x")
    with pytest.raises(ub.ShapeError, match="weight blocks 3x16 channels, the input has 2x16"):
        g.op("conv2d_nchwc", x, g.constant(np.zeros((1, 3, 3, 3, 16, 16), np.float32)))
    with pytest.raises(ub.ShapeError, match="expects input"):
        g.op("depthwise_conv2d_nchwc", x, g.constant(np.zeros((2, 3, 3, 16, 1), np.float32)))
    with pytest.raises(ub.ShapeError, match="do not fill"):
        g.op("matmul_packed", g.add_input(TensorType((4, 8), "float32"), "a"),
             g.constant(np.zeros((2, 8, 64), np.float32)), n=10)


@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 9), k=st.integers(1, 70), n=st.integers(64, 200), const=st.booleans(), seed=st.integers(0, 99))
def test_packed_matmul_matches_numpy(m, k, n, const, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    _check_matmul(a, b, const, packed=const)


def _check_matmul(a, b, const, packed):
    g = Graph("mm")
    x = g.add_input(TensorType(a.shape, "float32"), "a")
    y = g.constant(b) if const else g.add_input(TensorType(b.shape, "float32"), "b")
    g.outputs = [g.op("matmul", x, y)]
    assert ("matmul_packed" in _ops(optimize_graph(g, lanes=16))) == packed
    got = ub.compile(g).run({"a": a} if const else {"a": a, "b": b})[0]
    ref = a.astype(F64) @ b.astype(F64)
    assert_close(got, ref.astype(np.float32), n=a.shape[-1], scale=np.abs(a.astype(F64)) @ np.abs(b.astype(F64)))


def test_large_runtime_right_hand_side_is_packed():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((5, 1025)).astype(np.float32)
    b = rng.standard_normal((1025, 1030)).astype(np.float32)   # >= 1M elements, 1030 = 16 panels + 6
    _check_matmul(a, b, const=False, packed=True)
