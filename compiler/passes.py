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


def fold_constants(g: Graph, evaluate: Callable[[Graph], list[np.ndarray]]) -> Graph:
    """Replaces nodes whose inputs are all constants by constants, computed by `evaluate`
    (which compiles and runs a one-node graph: the op has one meaning, the compiled one)."""
    def fn(ng, n, ins):
        if n.op == "constant" or not ins or not all(v.node is not None and v.node.op == "constant" for v in ins):
            return None
        if not all(o.type.is_static for o in n.outputs):
            return None  # a symbolic size (a weight sliced to the sequence length): computed per call
        biggest = max(v.type.size for v in ins)
        if any(o.type.size > max(FOLD_MAX_ELEMENTS, biggest) for o in n.outputs):
            return None
        sub = Graph("fold")
        consts = [sub.constant(v.node.attrs["value"]) for v in ins]
        sub.outputs = sub.add_node(n.op, consts, n.attrs).outputs
        return [ng.constant(arr, o.dtype) for arr, o in zip(evaluate(sub), n.outputs)]

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
