"""Channel blocking: convolutions and their neighbours move to the NCHWc layout.

A float32 conv2d (dense, or depthwise with one filter per channel) with static channel
and spatial sizes becomes `conv2d_nchwc` / `depthwise_conv2d_nchwc` (ir/ops_blocked.py)
over tensors [N, C/c, H, W, c], c being the target's vector width in float32 lanes.
Channels are padded with zeros up to a multiple of c (weights too, so padded channels
contribute nothing); a first layer with fewer channels than c keeps them as one block.

The layout then spreads: elementwise ops whose tensor operands are all blocked (residual
adds, activations, per-channel biases and scales), pooling, and sums/maxima over the
spatial axes compute on the blocked tensors directly. Every other reader gets the value
converted back to NCHW, at the point it needs it; conversions nobody reads are dropped.
So between two convolutions no layout transform is left: they cancel by construction.

Zero-padded channels must stay finite through blocked elementwise ops (they are later
multiplied by zero weights, and 0 * inf is NaN): when a tensor has padded channels only
the ops in FINITE_AT_ZERO may compute on it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ubique.compiler.passes import dead_code_elimination
from ubique.compiler.rewrite import rewrite
from ubique.ir.dtypes import DType
from ubique.ir.graph import Graph, Node, Value
from ubique.ir.registry import get_op

# elementwise ops that map finite (zero) inputs to finite outputs
FINITE_AT_ZERO = frozenset({
    "abs", "add", "sub", "mul", "neg", "relu", "clip", "maximum", "minimum", "leaky_relu", "prelu", "elu",
    "selu", "celu", "sigmoid", "hard_sigmoid", "hard_swish", "silu", "mish", "tanh", "erf", "exp", "softplus",
    "softsign", "sqrt", "sin", "cos", "atan", "asinh", "sinh", "cosh", "identity", "cast", "floor", "ceil",
    "round", "sign", "shrink", "thresholded_relu", "where", "equal", "not_equal", "greater", "greater_equal",
    "less", "less_equal", "logical_and", "logical_or", "logical_xor", "logical_not", "isnan", "isinf"})
_POOLS = ("max_pool2d", "avg_pool2d")
_SPATIAL_REDUCES = ("sum", "max", "min")


@dataclass
class Blocked:
    value: Value      # [N, Cp/c, H, W, c]
    channels: int     # the real channel count C <= Cp

    @property
    def block(self) -> int:
        return self.value.shape[4]

    @property
    def padded(self) -> bool:
        return self.value.shape[1] * self.block != self.channels


def block_channels(g: Graph, lanes: int) -> Graph:
    """The graph with its float32 convolutions (and what can follow them) in NCHWc."""
    if lanes < 2 or not any(n.op == "conv2d" for n in g.nodes):
        return g
    blocked: dict[int, Blocked] = {}  # id of a new-graph NCHW value -> its blocked form

    def fn(ng: Graph, n: Node, ins: list[Value]):
        if n.op == "conv2d":
            y = _conv(ng, n, ins, lanes, blocked)
        elif n.op in _POOLS:
            y = _pool(ng, n, ins, blocked)
        elif n.op in _SPATIAL_REDUCES:
            y = _spatial_reduce(ng, n, ins, blocked)
        elif get_op(n.op).kind == "elementwise" and len(n.outputs) == 1:
            y = _elementwise(ng, n, ins, blocked)
        else:
            y = None
        if y is None:
            return None
        nchw = to_nchw(ng, y)
        blocked[nchw.id] = y
        return [nchw]

    return dead_code_elimination(rewrite(g, fn))


# -- conversions --------------------------------------------------------------------------
def to_blocked(g: Graph, x: Value, block: int) -> Blocked:
    """[N, C, H, W] -> [N, ceil(C/block), H, W, block], zero-padding the channels."""
    n, c, h, w = x.shape
    cp = -(-c // block) * block
    if cp != c:
        x = g.op("pad", x, pads=(0, 0, 0, 0, 0, cp - c, 0, 0))
    x = g.op("reshape", x, shape=(n, cp // block, block, h, w))
    return Blocked(g.op("transpose", x, perm=(0, 1, 3, 4, 2)), c)


def to_nchw(g: Graph, b: Blocked) -> Value:
    n, cb, h, w, c = b.value.shape
    x = g.op("reshape", g.op("transpose", b.value, perm=(0, 1, 4, 2, 3)), shape=(n, cb * c, h, w))
    if b.padded:
        x = g.op("slice", x, begin=(0, 0, 0, 0), end=(n, b.channels, h, w), step=(1, 1, 1, 1))
    return x


def _channel_vector(g: Graph, v: Value, like: Blocked) -> Value:
    """A per-channel operand ([C, 1, 1], [1, C, 1, 1]...) as [1, Cp/c, 1, 1, c]."""
    c, block = like.channels, like.block
    cp = like.value.shape[1] * block
    x = g.op("reshape", v, shape=(c,))
    if cp != c:
        x = g.op("pad", x, pads=(0, cp - c))
    return g.op("reshape", x, shape=(1, cp // block, 1, 1, block))


def _channel_shape(shape, channels: int) -> bool:
    if len(shape) > 4:
        return False
    full = (1,) * (4 - len(shape)) + tuple(shape)
    return full[0] == 1 and full[2] == 1 and full[3] == 1 and full[1] == channels


# -- ops ------------------------------------------------------------------------------------
def _conv(g: Graph, n: Node, ins: list[Value], lanes: int, blocked) -> Blocked | None:
    x, w = ins
    if x.dtype is not DType.float32 or w.dtype is not DType.float32 or x.type.rank != 4 \
            or not all(isinstance(d, int) for d in x.shape[1:]) or not w.type.is_static:
        return None
    o, ipg, kh, kw = w.shape
    c = x.shape[1]
    groups = n.attrs["groups"]
    depthwise = groups > 1 and groups == c == o and ipg == 1
    if groups != 1 and not depthwise:
        return None
    xb = blocked.get(x.id)
    if xb is None:
        xb = to_blocked(g, x, lanes if depthwise or c > lanes else c)
    elif depthwise and xb.block != lanes:
        return None
    pt, pl, pb, pr = n.attrs["padding"]
    window = {"stride": n.attrs["stride"], "dilation": n.attrs["dilation"]}
    op_ = -(-o // lanes) * lanes
    if depthwise:
        wp = g.op("pad", w, pads=(0, 0, 0, 0, op_ - o, 0, 0, 0)) if op_ != o else w
        wb = g.op("transpose", g.op("reshape", wp, shape=(op_ // lanes, lanes, kh, kw)), perm=(0, 2, 3, 1))
        y = g.op("depthwise_conv2d_nchwc", xb.value, wb, padding=n.attrs["padding"], **window)
        return Blocked(y, o)
    xin = xb.value
    if pt or pl or pb or pr:
        xin = g.op("pad", xin, pads=(0, 0, pt, pl, 0, 0, 0, pb, pr, 0))
    cb = xb.block
    ip = xb.value.shape[1] * cb
    if (op_, ip) != (o, c):
        w = g.op("pad", w, pads=(0, 0, 0, 0, op_ - o, ip - c, 0, 0))
    wb = g.op("transpose", g.op("reshape", w, shape=(op_ // lanes, lanes, ip // cb, cb, kh, kw)),
              perm=(0, 2, 4, 5, 3, 1))
    return Blocked(g.op("conv2d_nchwc", xin, wb, **window), o)


def _pool(g: Graph, n: Node, ins: list[Value], blocked) -> Blocked | None:
    xb = blocked.get(ins[0].id)
    if xb is None or n.attrs.get("layout", "NCHW") != "NCHW":
        return None
    return Blocked(g.op(n.op, xb.value, **{**n.attrs, "layout": "NCHWc"}), xb.channels)


def _spatial_reduce(g: Graph, n: Node, ins: list[Value], blocked) -> Blocked | None:
    xb = blocked.get(ins[0].id)
    axes = n.attrs["axes"]
    if xb is None or axes is None or not n.attrs["keepdims"] or sorted(a % 4 for a in axes) != [2, 3]:
        return None
    return Blocked(g.op(n.op, xb.value, axes=(2, 3), keepdims=True), xb.channels)


def _divides_by_nonzero_scalar(n: Node) -> bool:
    d = n.inputs[-1]
    return n.op == "div" and d.node is not None and d.node.op == "constant" and d.type.size == 1 \
        and bool(d.node.attrs["value"].all())


def _elementwise(g: Graph, n: Node, ins: list[Value], blocked) -> Blocked | None:
    source = next((v for v in ins if v.id in blocked), None)
    if source is None or tuple(n.output.shape) != tuple(source.shape):
        return None  # (an operand broadcast the blocked tensor to a bigger shape)
    like = blocked[source.id]
    if like.padded and n.op not in FINITE_AT_ZERO and not _divides_by_nonzero_scalar(n):
        return None
    new_ins = []
    for v in ins:
        b = blocked.get(v.id)
        if b is not None:
            if b.value.shape != like.value.shape or b.channels != like.channels:
                return None
            new_ins.append(b.value)
        elif v.type.is_static and v.type.size == 1:
            new_ins.append(v)  # a scalar broadcasts against any layout
        elif v.type.is_static and _channel_shape(v.shape, like.channels):
            new_ins.append(_channel_vector(g, v, like))
        else:
            return None
    return Blocked(g.add_node(n.op, new_ins, n.attrs, n.loc).output, like.channels)


# -- matmul ---------------------------------------------------------------------------------
# A runtime right-hand side is packed only when it is large: its rows then lie pages apart
# (a 2048-wide float32 row is 8 KiB), and walking a column panel down K rows touches more
# pages than the TLB holds. Constant right-hand sides (weights) are always packed: free.
PACK_RUNTIME_MIN_ELEMENTS = 1 << 20


def pack_matmul_rhs(g: Graph, width: int) -> Graph:
    """matmul(a, b[K, N]) -> matmul_packed(a, panels of b [N/width, K, width]) for float32
    right-hand sides with static K and N >= width."""
    if width < 2 or not any(n.op == "matmul" for n in g.nodes):
        return g
    from ubique.compiler.passes import constant_valued

    const = constant_valued(g)

    def fn(ng: Graph, n: Node, ins: list[Value]):
        if n.op != "matmul":
            return None
        a, b = ins
        if b.type.rank != 2 or not b.type.is_static or a.type.rank < 1 \
                or a.dtype is not DType.float32 or b.dtype is not DType.float32:
            return None
        k, cols = b.shape
        if cols < width or (n.inputs[1].id not in const and k * cols < PACK_RUNTIME_MIN_ELEMENTS):
            return None
        padded = -(-cols // width) * width
        bp = ng.op("pad", b, pads=(0, 0, 0, padded - cols)) if padded != cols else b
        bp = ng.op("transpose", ng.op("reshape", bp, shape=(k, padded // width, width)), perm=(1, 0, 2))
        return [ng.op("matmul_packed", a, bp, n=cols)]

    return rewrite(g, fn)
