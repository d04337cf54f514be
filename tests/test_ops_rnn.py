"""Conformance of the ONNX recurrent ops (ir/ops_rnn.py): lstm and gru.

The reference is a plain numpy loop over time written here, which covers what ONNX's
own reference implementation ignores (activations, clip, input_forget); wherever the
ONNX reference applies (default activations, no clip), the numpy loop is checked
against onnx.reference.ReferenceEvaluator first, on the very same inputs.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, note, settings, strategies as st

import ubique as ub
from strategies import arrays
from tolerances import EPS, assert_close, dtype_name
from ubique.errors import DTypeError, ShapeError, UnsupportedOpError, VerifyError
from ubique.ir.graph import Graph, TensorType

F64 = np.float64
LSTM_OPTIONAL = ("B", "sequence_lens", "initial_h", "initial_c", "P")
GRU_OPTIONAL = ("B", "sequence_lens", "initial_h")

# name -> f(x, alpha, beta), with ONNX's default alpha and beta
ACTS = {
    "Sigmoid": (lambda x, a, b: 1 / (1 + np.exp(-x)), None, None),
    "Tanh": (lambda x, a, b: np.tanh(x), None, None),
    "Relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "LeakyRelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "HardSigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "Affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "ScaledTanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "Elu": (lambda x, a, b: np.where(x >= 0, x, a * (np.exp(x) - 1)), 1.0, None),
    "Softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "Softplus": (lambda x, a, b: np.log1p(np.exp(x)), None, None),
}


def _act_fns(names, alphas, betas):
    """Activation callables; alphas/betas are consumed by the activations that take them."""
    alphas, betas, out = list(alphas or ()), list(betas or ()), []
    for n in names:
        f, da, db = ACTS[n]
        a = alphas.pop(0) if da is not None and alphas else da
        b = betas.pop(0) if db is not None and betas else db
        out.append(lambda x, f=f, a=a, b=b: f(x, a, b))
    return out


def _directions(direction):
    return [False, True] if direction == "bidirectional" else [direction == "reverse"]


def rnn_ref(kind, inp, direction="forward", layout=0, activations=None, activation_alpha=None,
            activation_beta=None, clip=None, input_forget=0, linear_before_reset=0, hidden_size=None):
    """float64 ONNX LSTM/GRU: returns Y, Y_h (, Y_c)."""
    G = 4 if kind == "lstm" else 3
    X = inp["X"].astype(F64)
    if layout:
        X = X.transpose(1, 0, 2)
    seq, batch, _ = X.shape
    nd = len(_directions(direction))
    H = inp["R"].shape[-1]
    per = 3 if kind == "lstm" else 2
    names = activations or (["Sigmoid", "Tanh", "Tanh"] if kind == "lstm" else ["Sigmoid", "Tanh"]) * nd
    acts = _act_fns(names, activation_alpha, activation_beta)
    cl = (lambda v: np.clip(v, -clip, clip)) if clip else (lambda v: v)

    def state(name):
        v = inp.get(name)
        if v is None:
            return np.zeros((nd, batch, H))
        return v.astype(F64).transpose(1, 0, 2) if layout else v.astype(F64)

    h0, c0 = state("initial_h"), state("initial_c")
    # batch entry b runs steps t < lens[b] only (onnxruntime's semantics)
    lens = inp.get("sequence_lens")
    live = (np.arange(seq)[:, None] < (np.full(batch, seq) if lens is None else lens)[None, :])[:, :, None]
    Y, Yh, Yc = np.zeros((seq, nd, batch, H)), np.zeros((nd, batch, H)), np.zeros((nd, batch, H))
    for d, backward in enumerate(_directions(direction)):
        W, R = inp["W"][d].astype(F64), inp["R"][d].astype(F64)
        Bv = inp["B"][d].astype(F64) if inp.get("B") is not None else np.zeros(2 * G * H)
        Wb, Rb = Bv[:G * H], Bv[G * H:]
        f, g = acts[per * d], acts[per * d + 1]
        h, c = h0[d], c0[d]
        for t in (range(seq - 1, -1, -1) if backward else range(seq)):
            x = X[t]
            h_old, c_old = h, c
            if kind == "lstm":
                P = inp["P"][d].astype(F64) if inp.get("P") is not None else np.zeros(3 * H)
                hh = acts[per * d + 2]
                z = x @ W.T + h @ R.T + Wb + Rb
                zi, zo, zf, zc = (z[:, k * H:(k + 1) * H] for k in range(4))
                i = f(cl(zi + P[:H] * c))
                fg = 1 - i if input_forget else f(cl(zf + P[2 * H:] * c))
                c = fg * c + i * g(cl(zc))
                o = f(cl(zo + P[H:2 * H] * c))
                h = o * hh(c)
            else:
                Wz, Wr, Wh = (W[k * H:(k + 1) * H] for k in range(3))
                Rz, Rr, Rh = (R[k * H:(k + 1) * H] for k in range(3))
                wbz, wbr, wbh = (Wb[k * H:(k + 1) * H] for k in range(3))
                rbz, rbr, rbh = (Rb[k * H:(k + 1) * H] for k in range(3))
                z = f(cl(x @ Wz.T + h @ Rz.T + wbz + rbz))
                r = f(cl(x @ Wr.T + h @ Rr.T + wbr + rbr))
                if linear_before_reset:
                    n = g(cl(x @ Wh.T + r * (h @ Rh.T + rbh) + wbh))
                else:
                    n = g(cl(x @ Wh.T + (r * h) @ Rh.T + rbh + wbh))
                h = (1 - z) * n + z * h
            h, c = np.where(live[t], h, h_old), np.where(live[t], c, c_old)
            Y[t, d] = np.where(live[t], h, 0)
        ran = live.any(axis=0)  # entries of length 0 end with zero states
        Yh[d], Yc[d] = np.where(ran, h, 0), np.where(ran, c, 0)
    outs = [Y, Yh, Yc] if kind == "lstm" else [Y, Yh]
    if layout:
        outs = [Y.transpose(2, 0, 1, 3)] + [o.transpose(1, 0, 2) for o in outs[1:]]
    return outs


def onnx_ref(kind, inp, **attrs):
    pytest.importorskip("onnx")
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    order = ["X", "W", "R"] + list(LSTM_OPTIONAL if kind == "lstm" else GRU_OPTIONAL)
    names = [n if inp.get(n) is not None else "" for n in order]
    while names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h", "Y_c"] if kind == "lstm" else ["Y", "Y_h"]
    node = helper.make_node(kind.upper(), names, outs, **attrs)
    vi = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(inp[n].dtype), inp[n].shape)
          for n in names if n]
    graph = helper.make_graph([node], "g", vi, [helper.make_tensor_value_info(o, vi[0].type.tensor_type.elem_type,
                                                                                None) for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    return ReferenceEvaluator(model).run(None, {n: inp[n] for n in names if n})


def run_ub(kind, inp, lens_const=True, **attrs):
    """Builds the op with the has_* convention: inputs X, W, R, then the present optional ones
    (sequence_lens a constant, or with lens_const=False a graph input)."""
    optional = LSTM_OPTIONAL if kind == "lstm" else GRU_OPTIONAL
    present = [n for n in optional if inp.get(n) is not None]
    g = Graph(kind)
    args, vals = [], []
    for name in ["X", "W", "R"] + present:
        a = inp[name]
        if name == "sequence_lens" and lens_const:
            vals.append(g.constant(a))
            continue
        vals.append(g.add_input(TensorType(a.shape, dtype_name(a.dtype)), name))
        args.append(a)
    g.outputs = g.add_node(kind, vals, dict(attrs, **{f"has_{n}": True for n in present})).outputs
    return ub.build(g).run(*args)


@st.composite
def rnn_cases(draw, kind, dtypes=("float32",), custom=True, full_lens=False):
    G = 4 if kind == "lstm" else 3
    direction = draw(st.sampled_from(["forward", "reverse", "bidirectional"]))
    nd = 2 if direction == "bidirectional" else 1
    layout = draw(st.integers(0, 1))
    seq, batch, I, H = (draw(st.integers(1, n)) for n in (3, 3, 4, 4))
    dt = draw(st.sampled_from(dtypes))
    arr = lambda shape, lo=-1, hi=1: draw(arrays(dt, shape, lo=lo, hi=hi, special=False))  # noqa: E731
    inp = {"X": arr((batch, seq, I) if layout else (seq, batch, I), -2, 2), "W": arr((nd, G * H, I)),
           "R": arr((nd, G * H, H))}
    state = (batch, nd, H) if layout else (nd, batch, H)
    shapes = {"B": (nd, 2 * G * H), "initial_h": state, "initial_c": state, "P": (nd, 3 * H)}
    for name in (LSTM_OPTIONAL if kind == "lstm" else GRU_OPTIONAL):
        if name == "sequence_lens":
            if draw(st.booleans()):
                dt_lens = draw(st.sampled_from([np.int32, np.int64]))
                inp[name] = np.full(batch, seq, dt_lens) if full_lens else \
                    np.array(draw(st.lists(st.integers(0, seq), min_size=batch, max_size=batch)), dt_lens)
        elif draw(st.booleans()):
            inp[name] = arr(shapes[name])
    attrs = dict(direction=direction, layout=layout)
    if draw(st.booleans()):
        attrs["hidden_size"] = H
    if kind == "gru":
        attrs["linear_before_reset"] = draw(st.integers(0, 1))
    if custom:
        per = 3 if kind == "lstm" else 2
        if draw(st.booleans()):
            attrs["activations"] = [draw(st.sampled_from(sorted(ACTS))) for _ in range(per * nd)]
            attrs["activation_alpha"] = draw(st.lists(st.sampled_from([0.1, 0.5, 1.5]), max_size=3))
            attrs["activation_beta"] = draw(st.lists(st.sampled_from([0.0, 0.3, 0.5]), max_size=3))
        if draw(st.booleans()):
            attrs["clip"] = draw(st.sampled_from([0.5, 1.0, 3.0]))
        if kind == "lstm":
            attrs["input_forget"] = draw(st.integers(0, 1))
    return inp, attrs


def _check(kind, inp, attrs, expected):
    got = run_ub(kind, inp, **attrs)
    x = inp["X"]
    seq = x.shape[1] if attrs.get("layout") else x.shape[0]
    fan_in = inp["W"].shape[2] + inp["R"].shape[2] + 2
    for name, a, e in zip(["Y", "Y_h", "Y_c"], got, expected):
        # float32 recurrences: every step adds a few roundings of dot products of fan_in terms
        atol = 8 * EPS[dtype_name(x.dtype)] * seq * fan_in * (1 + np.abs(e))
        assert_close(a, e.astype(x.dtype), atol_extra=atol, msg=f"{kind} {name} {attrs}")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@settings(max_examples=8)
@given(data=st.data())
def test_rnn_matches_onnx_reference(kind, data):
    """Default activations, no clip: ONNX's reference, the numpy loop and ubique agree."""
    # (ONNX's reference ignores sequence_lens: only full lengths here)
    inp, attrs = data.draw(rnn_cases(kind, dtypes=("float32", "float64"), custom=False, full_lens=True), "case")
    note(f"{kind} {attrs} {[(k, v.shape) for k, v in inp.items()]}")
    expected = rnn_ref(kind, inp, **attrs)
    for name, o, e in zip(["Y", "Y_h", "Y_c"], onnx_ref(kind, inp, **attrs), expected):
        np.testing.assert_allclose(o, e, rtol=1e-5, atol=1e-5, err_msg=f"numpy reference {name} vs onnx")
    _check(kind, inp, attrs, expected)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@settings(max_examples=8)
@given(data=st.data())
def test_rnn_activations_clip_input_forget(kind, data):
    inp, attrs = data.draw(rnn_cases(kind), "case")
    note(f"{kind} {attrs} {[(k, v.shape) for k, v in inp.items()]}")
    with np.errstate(over="ignore"):
        expected = rnn_ref(kind, inp, **attrs)
    _check(kind, inp, attrs, expected)


def test_lstm_float16_computes_in_float32():
    rng = np.random.default_rng(0)
    inp = {"X": rng.uniform(-1, 1, (3, 2, 4)).astype(np.float16),
           "W": rng.uniform(-1, 1, (1, 12, 4)).astype(np.float16),
           "R": rng.uniform(-1, 1, (1, 12, 3)).astype(np.float16)}
    got = run_ub("lstm", inp)
    for a, e in zip(got, rnn_ref("lstm", inp)):
        assert a.dtype == np.float16
        assert_close(a, e.astype(np.float16), rtol_mult=2, msg="lstm float16")


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_symbolic_batch(kind):
    """One compilation serves every batch size (the ONNX exporters mark batch dynamic)."""
    rng = np.random.default_rng(1)
    G, H, I, S = (4 if kind == "lstm" else 3), 5, 3, 2
    W = rng.uniform(-1, 1, (2, G * H, I)).astype(np.float32)
    R = rng.uniform(-1, 1, (2, G * H, H)).astype(np.float32)
    B = rng.uniform(-1, 1, (2, 2 * G * H)).astype(np.float32)
    g = Graph(kind)
    x = g.add_input(TensorType(("batch", S, I), F), "X")
    h0 = g.add_input(TensorType(("batch", 2, H), F), "h0")
    attrs = dict(direction="bidirectional", layout=1, has_B=True, has_initial_h=True)
    outs = g.add_node(kind, [x, g.constant(W), g.constant(R), g.constant(B), h0], attrs).outputs
    assert outs[0].type == TensorType(("batch", S, 2, H), F)
    g.outputs = outs
    exe = ub.build(g)
    for batch in (1, 3):
        inp = {"X": rng.uniform(-2, 2, (batch, S, I)).astype(np.float32), "W": W, "R": R, "B": B,
               "initial_h": rng.uniform(-1, 1, (batch, 2, H)).astype(np.float32)}
        expected = rnn_ref(kind, inp, direction="bidirectional", layout=1)
        for a, e in zip(exe.run(inp["X"], inp["initial_h"]), expected):
            assert_close(a, e.astype(np.float32), atol_extra=1e-5 * (1 + np.abs(e)), msg=f"{kind} batch {batch}")


# -- errors -----------------------------------------------------------------------------------------
def _types(op, *types, **attrs):
    g = Graph(op)
    ins = [g.add_input(TensorType(s, d), f"x{k}") for k, (s, d) in enumerate(types)]
    return [v.type for v in g.add_node(op, ins, attrs).outputs]


F = "float32"


def test_rnn_output_types():
    ts = _types("lstm", ((5, 2, 3), F), ((2, 16, 3), F), ((2, 16, 4), F), direction="bidirectional")
    assert [t.shape for t in ts] == [(5, 2, 2, 4), (2, 2, 4), (2, 2, 4)]
    ts = _types("gru", ((2, 5, 3), F), ((1, 12, 3), F), ((1, 12, 4), F), ((2, 1, 4), F), layout=1,
                has_initial_h=True)
    assert [t.shape for t in ts] == [(2, 5, 1, 4), (2, 1, 4)]


def test_rnn_errors():
    x, w, r = ((5, 2, 3), F), ((1, 16, 3), F), ((1, 16, 4), F)
    with pytest.raises(VerifyError, match="has_B=True"):  # 4 inputs but no flag says which
        _types("lstm", x, w, r, ((1, 32), F))
    with pytest.raises(ShapeError, match="sequence length must be static"):
        _types("lstm", (("seq", 2, 3), F), w, r)
    with pytest.raises(ShapeError, match="B must have shape"):
        _types("lstm", x, w, r, ((1, 30), F), has_B=True)
    with pytest.raises(ShapeError, match="initial_h"):  # layout 0 state is (num_dir, batch, hidden)
        _types("lstm", x, w, r, ((2, 1, 4), F), has_initial_h=True)
    with pytest.raises(ShapeError, match="hidden_size"):
        _types("lstm", x, w, r, hidden_size=5)
    with pytest.raises(ShapeError, match="W must have shape"):
        _types("lstm", x, w, r, direction="bidirectional")
    with pytest.raises(VerifyError, match="direction"):
        _types("gru", x, ((1, 12, 3), F), ((1, 12, 4), F), direction="sideways")
    with pytest.raises(UnsupportedOpError, match="activation 'Gelu'"):
        _types("gru", x, ((1, 12, 3), F), ((1, 12, 4), F), activations=("Sigmoid", "Gelu"))
    with pytest.raises(VerifyError, match="activations needs 3"):
        _types("lstm", x, w, r, activations=("Sigmoid", "Tanh"))
    with pytest.raises(DTypeError, match="float"):
        _types("lstm", ((5, 2, 3), "int32"), w, r)
    with pytest.raises(VerifyError, match="clip"):
        _types("lstm", x, w, r, clip=-1.0)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("lens_const", [True, False])
def test_sequence_lens_masks_steps(kind, lens_const):
    """Ragged batches: steps past an entry's length keep its state and give zeros (as onnxruntime)."""
    rng = np.random.default_rng(2)
    G, H, I, S = (4 if kind == "lstm" else 3), 3, 2, 4
    inp = {"X": rng.uniform(-2, 2, (S, 4, I)).astype(np.float32),
           "W": rng.uniform(-1, 1, (2, G * H, I)).astype(np.float32),
           "R": rng.uniform(-1, 1, (2, G * H, H)).astype(np.float32),
           "sequence_lens": np.array([4, 2, 0, 1], np.int32),
           "initial_h": rng.uniform(-1, 1, (2, 4, H)).astype(np.float32)}
    expected = rnn_ref(kind, inp, direction="bidirectional")
    got = run_ub(kind, inp, lens_const=lens_const, direction="bidirectional")
    for a, e in zip(got, expected):
        assert_close(a, e.astype(np.float32), atol_extra=1e-5 * (1 + np.abs(e)), msg=f"{kind} ragged")
    assert np.all(got[0][2:, :, 1] == 0) and np.all(got[0][:, :, 2] == 0)
    assert np.all(got[1][:, 2] == 0), "an entry of length 0 ends with zero states"


def test_sequence_lens_reference_semantics_are_onnxruntimes():
    """The numpy loop's reading of sequence_lens (which ONNX's reference ignores) is onnxruntime's."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    rng = np.random.default_rng(2)
    for kind, G in (("lstm", 4), ("gru", 3)):
        H, I, S = 3, 2, 4
        inp = {"X": rng.uniform(-2, 2, (S, 4, I)).astype(np.float32),
               "W": rng.uniform(-1, 1, (2, G * H, I)).astype(np.float32),
               "R": rng.uniform(-1, 1, (2, G * H, H)).astype(np.float32),
               "B": rng.uniform(-1, 1, (2, 2 * G * H)).astype(np.float32),
               "sequence_lens": np.array([4, 2, 0, 1], np.int32),
               "initial_h": rng.uniform(-1, 1, (2, 4, H)).astype(np.float32)}
        if kind == "lstm":
            inp["initial_c"] = rng.uniform(-1, 1, (2, 4, H)).astype(np.float32)
        names, outs = list(inp), ["Y", "Y_h", "Y_c"][:2 + (kind == "lstm")]
        node = helper.make_node(kind.upper(), names, outs, direction="bidirectional", hidden_size=H)
        vi = [helper.make_tensor_value_info(n, TensorProto.INT32 if n == "sequence_lens" else TensorProto.FLOAT,
                                            inp[n].shape) for n in names]
        graph = helper.make_graph([node], "g", vi, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                    for o in outs])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
        model.ir_version = 8
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        for a, e in zip(session.run(None, inp), rnn_ref(kind, inp, direction="bidirectional")):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5, err_msg=f"{kind}: onnxruntime vs numpy loop")
