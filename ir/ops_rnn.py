"""Recurrent ops with ONNX semantics: lstm (outputs Y, Y_h, Y_c) and gru (outputs Y, Y_h).

Both are composites, unrolled over the (static) sequence length into matmul,
elementwise, slice, reshape and concat ops. The input projection of all time steps
is one matmul; each step adds one matmul with the recurrent weights. The batch size
may be symbolic; the sequence length, input and hidden sizes must be static.

Input convention (unambiguous optional inputs): the op's inputs are X, W, R followed by
the optional inputs that are present, in ONNX order, and a bool attribute `has_<name>`
announces each present one:

    lstm: X, W, R, [B], [sequence_lens], [initial_h], [initial_c], [P]
          (has_B, has_sequence_lens, has_initial_h, has_initial_c, has_P)
    gru:  X, W, R, [B], [sequence_lens], [initial_h]
          (has_B, has_sequence_lens, has_initial_h)

e.g. an ONNX LSTM with inputs (X, W, R, "", "", h0) becomes lstm(X, W, R, h0, has_initial_h=True).
A missing B, initial_h, initial_c or P means zeros, as in ONNX. With sequence_lens (values
known at compile time or only at run time), batch entry b runs steps t < sequence_lens[b]
only, as onnxruntime does: later steps leave its state unchanged and write zeros to Y, and
the reverse direction starts at step sequence_lens[b] - 1 (steps are masked, not skipped);
an entry of length 0 has zero final states.
"""
from __future__ import annotations

import numpy as np

from ubique.errors import DTypeError, ShapeError, UnsupportedOpError, VerifyError
from ubique.ir import dims as D
from ubique.ir.dtypes import DType
from ubique.ir.graph import TensorType
from ubique.ir.registry import Attr, OpDef, register

_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}

# activation name -> (number of alpha values it takes, number of betas, default alpha, default beta)
_ACTIVATIONS = {
    "sigmoid": (0, 0, None, None), "tanh": (0, 0, None, None), "relu": (0, 0, None, None),
    "softsign": (0, 0, None, None), "softplus": (0, 0, None, None),
    "leakyrelu": (1, 0, 0.01, None), "thresholdedrelu": (1, 0, 1.0, None), "elu": (1, 0, 1.0, None),
    "scaledtanh": (1, 1, 1.0, 1.0), "hardsigmoid": (1, 1, 0.2, 0.5), "affine": (1, 1, 1.0, 0.0),
}


def _common_attrs(optional):
    return {"hidden_size": Attr("int_or_none", None), "direction": Attr("str", "forward"),
            "layout": Attr("int", 0), "activations": Attr("any", None), "activation_alpha": Attr("any", None),
            "activation_beta": Attr("any", None), "clip": Attr("any", None),
            **{f"has_{name}": Attr("bool", False) for name in optional}}


def _named_inputs(op, items, attrs, optional) -> dict:
    """Maps input names to the given inputs (types or values); absent optional ones -> None."""
    present = [name for name in optional if attrs[f"has_{name}"]]
    if len(items) != 3 + len(present):
        flags = ", ".join(f"has_{n}" for n in present) or "none set"
        raise VerifyError(f"{op}: got {len(items)} inputs, but its has_* attributes ({flags}) announce "
                          f"{len(present)} optional input(s), so it takes {3 + len(present)}: X, W, R, then the "
                          f"present optional inputs in the order {', '.join(optional)}, each announced by "
                          f"has_<name>=True (e.g. has_{optional[0]}=True)")
    out = dict(zip(["X", "W", "R"] + present, items))
    return {name: out.get(name) for name in ["X", "W", "R"] + list(optional)}


def _parse_activations(op, attrs, per_dir, defaults, num_dir) -> list:
    """[(name, alpha, beta)] * (per_dir * num_dir); alphas/betas are consumed in order by the
    activations that take them (as onnxruntime does), defaults after the lists run out."""
    names = attrs["activations"]
    if names is None:
        names = list(defaults) * num_dir
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise VerifyError(f"{op}: activations must be a sequence of names, got {names!r}")
    names = list(names)
    if len(names) == per_dir and num_dir == 2:  # one set given for both directions
        names = names * 2
    if len(names) != per_dir * num_dir:
        raise VerifyError(f"{op}: activations needs {per_dir * num_dir} names ({per_dir} per direction), "
                          f"got {len(names)}: {names}")
    try:
        alphas = [float(a) for a in attrs["activation_alpha"] or ()]
        betas = [float(a) for a in attrs["activation_beta"] or ()]
    except (TypeError, ValueError):
        raise VerifyError(f"{op}: activation_alpha and activation_beta must be sequences of floats, got "
                          f"{attrs['activation_alpha']!r} and {attrs['activation_beta']!r}") from None
    out = []
    for name in names:
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise UnsupportedOpError(f"{op}: activation {name!r} is not supported; supported: "
                                     f"{', '.join(sorted(_ACTIVATIONS))} (ONNX names, any case)")
        na, nb, da, db = _ACTIVATIONS[key]
        alpha = alphas.pop(0) if na and alphas else da
        beta = betas.pop(0) if nb and betas else db
        out.append((key, alpha, beta))
    return out


def _check_rnn(op, ts, attrs, gates, optional, per_dir_acts):
    """Validates shapes and attributes; returns (seq, batch, num_dir, hidden)."""
    v = _named_inputs(op, ts, attrs, optional)
    x, w, r = v["X"], v["W"], v["R"]
    if attrs["direction"] not in _DIRECTIONS:
        raise VerifyError(f"{op}: direction must be forward, reverse or bidirectional, got {attrs['direction']!r}")
    if attrs["layout"] not in (0, 1):
        raise VerifyError(f"{op}: layout must be 0 (sequence first) or 1 (batch first), got {attrs['layout']}")
    nd = _DIRECTIONS[attrs["direction"]]
    for name, t in (("X", x), ("W", w), ("R", r)):
        if t.rank != 3:
            raise ShapeError(f"{op}: {name} must have rank 3, got shape {tuple(t.shape)}")
    if not x.dtype.is_float:
        raise DTypeError(f"{op}: X must be a float tensor, got {x.dtype.name}")
    seq, batch, isz = (x.shape[1], x.shape[0], x.shape[2]) if attrs["layout"] else x.shape
    # only the batch size may be symbolic
    if not D.is_static(seq):
        raise ShapeError(f"{op}: X has shape {tuple(x.shape)}, but the sequence length must be static "
                         f"(the recurrence is unrolled over it); got {seq!r}")
    if not D.is_static(isz):
        raise ShapeError(f"{op}: X has shape {tuple(x.shape)}, but the input size must be static")
    for name in ("W", "R", "B", "P"):
        if v.get(name) is not None and not v[name].is_static:
            raise ShapeError(f"{op}: {name} has shape {tuple(v[name].shape)}; it must be static")
    if seq < 1:
        raise ShapeError(f"{op}: the sequence length must be at least 1, got {seq}")
    hid = r.shape[2]
    if attrs["hidden_size"] is not None and attrs["hidden_size"] != hid:
        raise ShapeError(f"{op}: hidden_size={attrs['hidden_size']} but R has shape {tuple(r.shape)} "
                         f"(hidden size {hid})")
    state = (batch, nd, hid) if attrs["layout"] else (nd, batch, hid)
    expect = {"W": (nd, gates * hid, isz), "R": (nd, gates * hid, hid), "B": (nd, 2 * gates * hid),
              "sequence_lens": (batch,), "initial_h": state, "initial_c": state, "P": (nd, 3 * hid)}
    for name, t in v.items():
        if t is None or name == "X":
            continue
        if tuple(t.shape) != expect[name]:
            raise ShapeError(f"{op}: {name} must have shape {expect[name]} (direction={attrs['direction']}, "
                             f"layout={attrs['layout']}, input size {isz}, hidden size {hid}), "
                             f"got {tuple(t.shape)}")
        if name == "sequence_lens" and not t.dtype.is_int:
            raise DTypeError(f"{op}: sequence_lens must be an integer tensor, got {t.dtype.name}")
        if name != "sequence_lens" and not t.dtype.is_float:
            raise DTypeError(f"{op}: {name} must be a float tensor, got {t.dtype.name}")
    clip = attrs["clip"]
    if clip is not None and not (isinstance(clip, (int, float, np.floating, np.integer))
                                 and not isinstance(clip, bool) and clip > 0):
        raise VerifyError(f"{op}: clip must be a positive float or None, got {clip!r}")
    _parse_activations(op, attrs, len(per_dir_acts), per_dir_acts, nd)
    return seq, batch, nd, hid


def _output_types(x_dtype, seq, batch, nd, hid, layout, n_states):
    y = (batch, seq, nd, hid) if layout else (seq, nd, batch, hid)
    s = (batch, nd, hid) if layout else (nd, batch, hid)
    return [TensorType(y, x_dtype)] + [TensorType(s, x_dtype)] * n_states


# -- building blocks for the decompositions -------------------------------------------------------
class _Builder:
    def __init__(self, g, dtype: DType, clip):
        self.g, self.d, self.clip = g, dtype, None if clip is None else float(clip)

    def const(self, v):
        return self.g.constant(v, self.d)

    def op(self, name, *args, **attrs):
        return self.g.op(name, *args, **attrs)

    def cast(self, v):
        return v if v is None or v.dtype is self.d else self.g.op("cast", v, dtype=self.d)

    def cols(self, v, lo, hi):
        """v[:, lo:hi] of a 2-D value."""
        return self.op("slice", v, begin=(0, lo), end=(v.shape[0], hi), step=(1, 1))

    def row(self, v, k):
        """v[k] of a value (k along axis 0), without the leading axis."""
        n = v.type.rank
        s = self.op("slice", v, begin=(k,) + (0,) * (n - 1), end=(k + 1,) + tuple(v.shape[1:]), step=(1,) * n)
        return self.op("reshape", s, shape=tuple(v.shape[1:]))

    def add(self, a, b):
        return a if b is None else b if a is None else self.op("add", a, b)

    def clipped(self, v):
        if self.clip is None:
            return v
        return self.op("minimum", self.op("maximum", v, self.const(-self.clip)), self.const(self.clip))

    def act(self, spec, v):
        name, alpha, beta = spec
        c = self.const
        if name in ("sigmoid", "tanh", "relu"):
            return self.op(name, v)
        if name == "softsign":
            return self.op("div", v, self.op("add", c(1.0), self.op("abs", v)))
        if name == "softplus":
            return self.op("log", self.op("add", c(1.0), self.op("exp", v)))
        if name == "leakyrelu":
            return self.op("where", self.op("greater_equal", v, c(0.0)), v, self.op("mul", v, c(alpha)))
        if name == "thresholdedrelu":
            return self.op("where", self.op("greater", v, c(alpha)), v, c(0.0))
        if name == "elu":
            neg = self.op("mul", c(alpha), self.op("sub", self.op("exp", v), c(1.0)))
            return self.op("where", self.op("greater_equal", v, c(0.0)), v, neg)
        if name == "scaledtanh":
            return self.op("mul", c(alpha), self.op("tanh", self.op("mul", v, c(beta))))
        if name == "hardsigmoid":
            lin = self.op("add", self.op("mul", v, c(alpha)), c(beta))
            return self.op("minimum", self.op("maximum", lin, c(0.0)), c(1.0))
        assert name == "affine", name
        return self.op("add", self.op("mul", v, c(alpha)), c(beta))

    def stack(self, values, axis_shape, axis):
        """Concatenates values reshaped to `axis_shape` along `axis` (a new axis of the result)."""
        parts = [self.op("reshape", v, shape=axis_shape) for v in values]
        return parts[0] if len(parts) == 1 else self.op("concat", *parts, axis=axis)


def _compute_dtype(d: DType) -> DType:
    return DType.float32 if d in (DType.float16, DType.bfloat16) else d


def _prepare(op, g, ins, attrs, optional):
    """Named inputs cast to the compute dtype, sequence-first; sequence_lens stays an integer
    tensor, and is dropped when it is a constant that covers every step."""
    v = _named_inputs(op, ins, attrs, optional)
    x = v["X"]
    b = _Builder(g, _compute_dtype(x.dtype), attrs["clip"])
    seq = x.shape[1] if attrs["layout"] else x.shape[0]
    lens = v.pop("sequence_lens")
    if lens is not None and lens.node is not None and lens.node.op == "constant" \
            and np.all(np.asarray(lens.node.attrs["value"]) >= seq):
        lens = None
    v = {k: b.cast(t) for k, t in v.items()}
    v["sequence_lens"] = lens
    if attrs["layout"]:  # batch-first: work sequence-first
        for k in ("X", "initial_h", "initial_c"):
            if v.get(k) is not None:
                v[k] = b.op("transpose", v[k], perm=(1, 0, 2))
    return b, v


def _finish(b, attrs, ys, states):
    """Per-direction step outputs -> Y (and the final states), in the requested layout."""
    y = b.op("concat", *ys, axis=1) if len(ys) > 1 else ys[0]
    outs = [b.op("concat", *s, axis=0) if len(s) > 1 else s[0] for s in states]
    if attrs["layout"]:
        y = b.op("transpose", y, perm=(2, 0, 1, 3))
        outs = [b.op("transpose", s, perm=(1, 0, 2)) for s in outs]
    return [y] + outs


def _direction_weights(b, v, k, gates):
    """W[k]^T (I, G*H), R[k]^T (H, G*H), and the (G*H,) halves of B[k] (or None)."""
    w, r = b.row(v["W"], k), b.row(v["R"], k)
    wt, rt = b.op("transpose", w), b.op("transpose", r)
    wb = rb = None
    if v["B"] is not None:
        bias = b.row(v["B"], k)
        n = bias.shape[0] // 2
        wb = b.op("slice", bias, begin=(0,), end=(n,), step=(1,))
        rb = b.op("slice", bias, begin=(n,), end=(2 * n,), step=(1,))
    return wt, rt, wb, rb


def _step_mask(b, lens, t):
    """(batch, 1) bool: which batch entries run step t (None: all of them)."""
    if lens is None:
        return None
    live = b.op("less", b.g.constant(t, lens.dtype), lens)
    return b.op("reshape", live, shape=(lens.shape[0], 1))


def _masked(b, mask, new, old):
    """The new state where the step ran, else the old one (None: zeros)."""
    if mask is None:
        return new
    return b.op("where", mask, new, b.const(0.0) if old is None else old)


def _final(b, lens, state):
    """A final state, zero for batch entries of length 0 (as onnxruntime gives)."""
    if lens is None:
        return state
    ran = b.op("reshape", b.op("greater", lens, b.g.constant(0, lens.dtype)), shape=(lens.shape[0], 1))
    return b.op("where", ran, state, b.const(0.0))


def _time_order(attrs, k, seq):
    backward = attrs["direction"] == "reverse" or (attrs["direction"] == "bidirectional" and k == 1)
    return list(range(seq))[::-1] if backward else list(range(seq))


# -- lstm -----------------------------------------------------------------------------------------
_LSTM_OPTIONAL = ("B", "sequence_lens", "initial_h", "initial_c", "P")
_LSTM_ACTS = ("Sigmoid", "Tanh", "Tanh")


def _lstm_infer(ts, attrs):
    if attrs["input_forget"] not in (0, 1):
        raise VerifyError(f"lstm: input_forget must be 0 or 1, got {attrs['input_forget']}")
    seq, batch, nd, hid = _check_rnn("lstm", ts, attrs, 4, _LSTM_OPTIONAL, _LSTM_ACTS)
    return _output_types(ts[0].dtype, seq, batch, nd, hid, attrs["layout"], 2)


def _lstm_decompose(g, ins, attrs):
    b, v = _prepare("lstm", g, ins, attrs, _LSTM_OPTIONAL)
    x = v["X"]
    seq, batch, _ = x.shape
    nd = _DIRECTIONS[attrs["direction"]]
    hid = v["R"].shape[2]
    acts = _parse_activations("lstm", attrs, 3, _LSTM_ACTS, nd)
    ys, hs, cs = [], [], []
    for k in range(nd):
        f_act, g_act, h_act = acts[3 * k:3 * k + 3]
        wt, rt, wb, rb = _direction_weights(b, v, k, 4)
        # input projection of every step at once, with both biases: (seq, batch, 4H)
        xw = b.add(b.op("matmul", x, wt), b.add(wb, rb))
        h = None if v["initial_h"] is None else b.row(v["initial_h"], k)  # None: zeros
        c = None if v["initial_c"] is None else b.row(v["initial_c"], k)
        p = [None] * 3
        if v["P"] is not None:
            pk = b.row(v["P"], k)
            p = [b.op("slice", pk, begin=(j * hid,), end=((j + 1) * hid,), step=(1,)) for j in range(3)]
        pi, po, pf = p
        peep = lambda pv, state: None if pv is None or state is None else b.op("mul", pv, state)  # noqa: E731
        outs = {}
        for t in _time_order(attrs, k, seq):
            gates = b.row(xw, t)
            if h is not None:
                gates = b.op("add", gates, b.op("matmul", h, rt))
            gi, go, gf, gc = (b.cols(gates, j * hid, (j + 1) * hid) for j in range(4))  # ONNX order i, o, f, c
            i = b.act(f_act, b.clipped(b.add(gi, peep(pi, c))))
            if attrs["input_forget"]:  # coupled gates: f = 1 - i (onnxruntime's reading)
                f = b.op("sub", b.const(1.0), i)
            else:
                f = b.act(f_act, b.clipped(b.add(gf, peep(pf, c))))
            new_c = b.op("mul", i, b.act(g_act, b.clipped(gc)))
            if c is not None:
                new_c = b.op("add", b.op("mul", f, c), new_c)
            o = b.act(f_act, b.clipped(b.add(go, peep(po, new_c))))
            new_h = b.op("mul", o, b.act(h_act, new_c))
            mask = _step_mask(b, v["sequence_lens"], t)
            h, c = _masked(b, mask, new_h, h), _masked(b, mask, new_c, c)
            outs[t] = _masked(b, mask, new_h, None)
        ys.append(b.stack([outs[t] for t in range(seq)], (1, 1, batch, hid), 0))
        hs.append(b.op("reshape", _final(b, v["sequence_lens"], h), shape=(1, batch, hid)))
        cs.append(b.op("reshape", _final(b, v["sequence_lens"], c), shape=(1, batch, hid)))
    return _finish(b, attrs, ys, [hs, cs])


register(OpDef("lstm", "composite", _lstm_infer,
               attrs={**_common_attrs(_LSTM_OPTIONAL), "input_forget": Attr("int", 0)},
               decompose=_lstm_decompose, num_inputs=(3, 8),
               doc="ONNX LSTM (gates i, o, f, c; B = [Wb, Rb]; peepholes P = [Pi, Po, Pf]); outputs Y "
                   "(seq, num_dir, batch, hidden) [layout 0] or (batch, seq, num_dir, hidden) [layout 1], "
                   "Y_h, Y_c. Inputs X, W, R, then the present optional inputs among B, sequence_lens, "
                   "initial_h, initial_c, P in that order, each announced by has_<name>=True. clip bounds "
                   "the gate pre-activations; input_forget=1 uses f = 1 - i. sequence_lens masks steps "
                   "(later steps keep the state and give zeros in Y)."))


# -- gru ------------------------------------------------------------------------------------------
_GRU_OPTIONAL = ("B", "sequence_lens", "initial_h")
_GRU_ACTS = ("Sigmoid", "Tanh")


def _gru_infer(ts, attrs):
    seq, batch, nd, hid = _check_rnn("gru", ts, attrs, 3, _GRU_OPTIONAL, _GRU_ACTS)
    return _output_types(ts[0].dtype, seq, batch, nd, hid, attrs["layout"], 1)


def _gru_decompose(g, ins, attrs):
    b, v = _prepare("gru", g, ins, attrs, _GRU_OPTIONAL)
    x = v["X"]
    seq, batch, _ = x.shape
    nd = _DIRECTIONS[attrs["direction"]]
    hid = v["R"].shape[2]
    acts = _parse_activations("gru", attrs, 2, _GRU_ACTS, nd)
    linear_before_reset = attrs["linear_before_reset"] != 0
    ys, hs = [], []
    for k in range(nd):
        f_act, g_act = acts[2 * k:2 * k + 2]
        wt, rt, wb, rb = _direction_weights(b, v, k, 3)
        xw = b.add(b.op("matmul", x, wt), wb)  # (seq, batch, 3H), gates z, r, h
        # recurrent weights and bias of the z, r gates and of the h gate
        rt_zr, rt_h = b.cols(rt, 0, 2 * hid), b.cols(rt, 2 * hid, 3 * hid)
        rb_zr = rb_h = None
        if rb is not None:
            rb_zr = b.op("slice", rb, begin=(0,), end=(2 * hid,), step=(1,))
            rb_h = b.op("slice", rb, begin=(2 * hid,), end=(3 * hid,), step=(1,))
        h = None if v["initial_h"] is None else b.row(v["initial_h"], k)  # None: zeros
        outs = {}
        for t in _time_order(attrs, k, seq):
            gx = b.row(xw, t)
            zr = b.add(b.cols(gx, 0, 2 * hid), rb_zr)
            if h is not None:
                zr = b.op("add", zr, b.op("matmul", h, rt_zr))
            z = b.act(f_act, b.clipped(b.cols(zr, 0, hid)))
            r = b.act(f_act, b.clipped(b.cols(zr, hid, 2 * hid)))
            if linear_before_reset:  # r * (h R_h^T + Rb_h)
                rec = b.add(None if h is None else b.op("matmul", h, rt_h), rb_h)
                rec = None if rec is None else b.op("mul", r, rec)
            else:  # (r * h) R_h^T + Rb_h
                rec = b.add(None if h is None else b.op("matmul", b.op("mul", r, h), rt_h), rb_h)
            hh = b.act(g_act, b.clipped(b.add(b.cols(gx, 2 * hid, 3 * hid), rec)))
            new_h = b.op("mul", b.op("sub", b.const(1.0), z), hh)
            if h is not None:
                new_h = b.op("add", new_h, b.op("mul", z, h))
            mask = _step_mask(b, v["sequence_lens"], t)
            h = _masked(b, mask, new_h, h)
            outs[t] = _masked(b, mask, new_h, None)
        ys.append(b.stack([outs[t] for t in range(seq)], (1, 1, batch, hid), 0))
        hs.append(b.op("reshape", _final(b, v["sequence_lens"], h), shape=(1, batch, hid)))
    return _finish(b, attrs, ys, [hs])


register(OpDef("gru", "composite", _gru_infer,
               attrs={**_common_attrs(_GRU_OPTIONAL), "linear_before_reset": Attr("int", 0)},
               decompose=_gru_decompose, num_inputs=(3, 6),
               doc="ONNX GRU (gates z, r, h; B = [Wb, Rb]); outputs Y (seq, num_dir, batch, hidden) [layout 0] "
                   "or (batch, seq, num_dir, hidden) [layout 1], Y_h. Inputs X, W, R, then the present "
                   "optional inputs among B, sequence_lens, initial_h in that order, each announced by "
                   "has_<name>=True. clip bounds the gate pre-activations. sequence_lens masks steps "
                   "(later steps keep the state and give zeros in Y)."))
