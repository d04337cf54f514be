"""Graph passes: decomposition of composite ops, constant folding, DCE, CSE, output copies."""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np

from ubique.compiler.rewrite import rewrite
from ubique.ir.graph import Graph, Node, Value
from ubique.ir.registry import get_op

# Folding a node whose result is much larger than its inputs (broadcast_to of a scalar, say)
# would bloat the weights; such nodes stay in the graph.
FOLD_MAX_ELEMENTS = 1 << 16


def decompose(g: Graph) -> Graph:
    """Rewrites composite ops (softmax, layer_norm, mean, ...) into primitive ops, to a fixpoint."""
    def fn(ng, n, ins):
        opdef = get_op(n.op)
        if opdef.kind != "composite":
            return None
        outs = opdef.decompose(ng, ins, n.attrs)
        fixed = []
        for old, new in zip(n.outputs, outs):
            assert tuple(new.shape) == tuple(old.shape), (n.op, new.shape, old.shape)
            fixed.append(new if new.dtype is old.dtype else ng.op("cast", new, dtype=old.dtype))
        return fixed

    while any(get_op(n.op).kind == "composite" for n in g.nodes):
        g = rewrite(g, fn)
    return g


def dead_code_elimination(g: Graph) -> Graph:
    live = {v.id for v in g.outputs}
    keep: list[Node] = []
    for n in reversed(g.nodes):
        if any(v.id in live for v in n.outputs):
            keep.append(n)
            live.update(v.id for v in n.inputs)
    keep_ids = {id(n) for n in keep}
    return rewrite(g, lambda ng, n, ins: None if id(n) in keep_ids else [None] * len(n.outputs)) \
        if len(keep) != len(g.nodes) else g


def _attr_key(v):
    if isinstance(v, np.ndarray):
        return ("array", v.dtype.str, v.shape, hashlib.sha256(v.tobytes()).hexdigest())
    return repr(v)


def common_subexpression_elimination(g: Graph) -> Graph:
    seen: dict[tuple, list[Value]] = {}

    def fn(ng, n, ins):
        key = (n.op, tuple(v.id for v in ins), tuple(sorted((k, _attr_key(a)) for k, a in n.attrs.items())))
        if key in seen:
            return seen[key]
        seen[key] = outs = ng.add_node(n.op, ins, n.attrs, n.loc).outputs
        return outs

    return rewrite(g, fn)


def constant_valued(g: Graph) -> set[int]:
    """Ids of values computed from constants only (static shapes)."""
    out: set[int] = set()
    for n in g.nodes:
        if n.op == "constant" or (n.inputs and all(v.id in out for v in n.inputs)
                                  and all(o.type.is_static for o in n.outputs)):
            out.update(v.id for v in n.outputs)
    return out


def _channel_scale(scale: Value, conv_out: Value) -> bool:
    """True if `scale` broadcasts against an NCHW conv output as one value per channel."""
    shape = tuple(scale.shape)
    if len(shape) > 4 or conv_out.type.rank != 4:
        return False
    full = (1,) * (4 - len(shape)) + shape
    return full[0] == 1 and full[2] == 1 and full[3] == 1 and full[1] in (1, conv_out.shape[1])


def fold_scale_into_conv(g: Graph) -> Graph:
    """conv2d(x, W) * s  ->  conv2d(x, W * s)  for a per-output-channel constant s (batch
    normalisation after a convolution), also through a per-channel bias: (conv + b) * s ->
    conv(x, W * s) + b * s. Constant folding then computes the new weights once."""
    const = constant_valued(g)
    users = g.users()
    outputs = {v.id for v in g.outputs}

    def single(v):
        return len(users.get(v.id, [])) == 1 and v.id not in outputs

    def match(n):
        if n.op != "mul":
            return None
        for c, scale in ((n.inputs[0], n.inputs[1]), (n.inputs[1], n.inputs[0])):
            if scale.id not in const or c.node is None or not single(c) or c.dtype != scale.dtype:
                continue
            conv, bias = c.node, None
            if conv.op == "add":
                a, b = conv.inputs
                conv, bias = (a.node, b) if b.id in const else (b.node, a) if a.id in const else (None, None)
                if conv is None or not single(conv.output) or not _channel_scale(bias, conv.output):
                    continue
            if conv.op == "conv2d" and conv.inputs[1].id in const and _channel_scale(scale, conv.output) \
                    and tuple(n.output.shape) == tuple(conv.output.shape):
                return conv, bias, scale
        return None

    def fn(ng, n, ins):
        found = match(n)
        if found is None:
            return None
        conv, bias, scale = found
        k = 0 if n.inputs[1] is scale else 1
        new_c, s = ins[k], ins[1 - k]        # the rewritten graph's copies
        new_conv = new_c.node if bias is None else next(v.node for v in new_c.node.inputs if v.node.op == "conv2d")
        x, w = new_conv.inputs
        size = int(np.prod(scale.shape))     # 1 or the channel count
        w = ng.op("mul", w, ng.op("reshape", s, shape=(size, 1, 1, 1)))
        y = ng.add_node("conv2d", [x, w], conv.attrs, conv.loc).output
        if bias is not None:
            new_bias = next(v for v in new_c.node.inputs if v.node is None or v.node.op != "conv2d")
            y = ng.op("add", y, ng.op("mul", new_bias, s))
        return [y]

    return rewrite(g, fn)


def _slice_np(a, attrs, out_shape):
    for axis, (b, step, n) in enumerate(zip(attrs["begin"], attrs["step"], out_shape)):
        a = np.take(a, b + step * np.arange(n), axis=axis)
    return a


# Ops whose result numpy computes exactly as compiled code does (data movement, and one
# IEEE operation per element for float tensors of one dtype): weight packing and batch-norm
# folding are evaluated here, without a compilation.
_NUMPY_FOLD = {
    "identity": lambda ins, attrs, shape: ins[0],
    "reshape": lambda ins, attrs, shape: ins[0].reshape(shape),
    "transpose": lambda ins, attrs, shape: np.transpose(ins[0], attrs["perm"]),
    "slice": lambda ins, attrs, shape: _slice_np(ins[0], attrs, shape),
    "pad": lambda ins, attrs, shape: np.pad(ins[0], list(zip(attrs["pads"][:ins[0].ndim], attrs["pads"][ins[0].ndim:])),
                                            constant_values=attrs["value"]),
    "mul": lambda ins, attrs, shape: np.multiply(*ins),
    "add": lambda ins, attrs, shape: np.add(*ins),
    "sub": lambda ins, attrs, shape: np.subtract(*ins),
}


def _numpy_foldable(n: Node) -> bool:
    if n.op not in _NUMPY_FOLD or not n.output.type.is_static:
        return False
    if n.op == "pad":
        return n.attrs["mode"] == "constant"
    if n.op in ("mul", "add", "sub"):
        return n.output.dtype.is_float and all(v.dtype is n.output.dtype for v in n.inputs)
    return True


def fold_with_numpy(g: Graph) -> Graph:
    """Folds the data-movement and single-arithmetic-op nodes whose inputs are constants."""
    values: dict[int, np.ndarray] = {}
    for n in g.nodes:
        if n.op == "constant":
            values[n.output.id] = n.attrs["value"]
        elif _numpy_foldable(n) and all(v.id in values for v in n.inputs):
            out = _NUMPY_FOLD[n.op]([values[v.id] for v in n.inputs], n.attrs, n.output.shape)
            values[n.output.id] = np.ascontiguousarray(out, dtype=n.output.dtype.to_numpy())
    if all(n.op == "constant" or n.output.id not in values for n in g.nodes):
        return g
    return rewrite(g, lambda ng, n, ins: [ng.constant(values[n.output.id], n.output.dtype)]
                   if n.op != "constant" and len(n.outputs) == 1 and n.output.id in values else None)


def fold_constants(g: Graph, evaluate: Callable[[Graph], list[np.ndarray]]) -> Graph:
    """Replaces nodes computed from constants only by constants. What numpy computes
    exactly (fold_with_numpy) is folded first; the rest is evaluated together by
    `evaluate`, which compiles and runs one graph (so an op has one meaning, the compiled
    one, and a model with many foldable nodes costs one compilation)."""
    g = fold_with_numpy(g)
    g = _fold_compiled(g, evaluate)
    return fold_with_numpy(g)


def _fold_compiled(g: Graph, evaluate: Callable[[Graph], list[np.ndarray]]) -> Graph:
    is_const: set[int] = set()     # value ids known at compile time
    folded: list[Node] = []
    for n in g.nodes:
        if n.op == "constant":
            is_const.update(v.id for v in n.outputs)
            continue
        if not n.inputs or not all(v.id in is_const for v in n.inputs):
            continue
        if not all(o.type.is_static for o in n.outputs):
            continue  # a symbolic size (a weight sliced to the sequence length): computed per call
        biggest = max(v.type.size for v in n.inputs)
        if any(o.type.size > max(FOLD_MAX_ELEMENTS, 2 * biggest) for o in n.outputs):  # (2: padded weights)
            continue
        folded.append(n)
        is_const.update(v.id for v in n.outputs)
    if not folded:
        return g
    # the folded values something else reads (or the graph returns)
    folded_ids = {id(n) for n in folded}
    needed = {v.id for n in g.nodes if id(n) not in folded_ids for v in n.inputs} | {v.id for v in g.outputs}
    wanted = [o for n in folded for o in n.outputs if o.id in needed]
    if not wanted:
        return g
    sub = Graph("fold")
    vmap = {}
    for n in g.nodes:
        if n.op == "constant" or id(n) in folded_ids:
            outs = sub.add_node(n.op, [vmap[v.id] for v in n.inputs], n.attrs).outputs
            vmap.update({old.id: new for old, new in zip(n.outputs, outs)})
    sub.outputs = [vmap[v.id] for v in wanted]
    values = {v.id: arr for v, arr in zip(wanted, evaluate(sub))}

    def fn(ng, n, ins):
        if id(n) not in folded_ids:
            return None
        return [ng.constant(values[o.id], o.dtype) if o.id in values else None for o in n.outputs]

    return rewrite(g, fn)


def copy_aliased_outputs(g: Graph) -> Graph:
    """Makes every graph output a distinct value written by a kernel: outputs that are
    inputs, constants, or repeated get an identity copy."""
    seen: set[int] = set()
    outs = []
    for v in g.outputs:
        if v.id in seen or v.node is None or v.node.op == "constant":
            v = g.op("identity", v)
        seen.add(v.id)
        outs.append(v)
    g.outputs = outs
    return g
