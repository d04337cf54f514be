"""Rebuilding a graph node by node: the mechanism every graph pass uses."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from ubique.ir.graph import Graph, Node, Value

# fn(new_graph, old_node, new_inputs) -> new output values, or None to copy the node unchanged
NodeRewrite = Callable[[Graph, Node, list[Value]], Optional[Sequence[Value]]]


def clone_node(g: Graph, n: Node, inputs: list[Value]) -> list[Value]:
    return g.add_node(n.op, inputs, n.attrs, n.loc).outputs


def rewrite(g: Graph, fn: NodeRewrite, input_type: Callable | None = None) -> Graph:
    """A new graph where each node is replaced by what `fn` returns (or copied);
    `input_type(type) -> type` may change the types of the graph inputs."""
    out = Graph(g.name)
    vmap: dict[int, Value] = {}
    for v in g.inputs:
        vmap[v.id] = out.add_input(input_type(v.type) if input_type else v.type, v.name)
    for n in g.nodes:
        ins = [vmap[v.id] for v in n.inputs]
        new = fn(out, n, ins)
        if new is None:
            new = clone_node(out, n, ins)
        for old, nv in zip(n.outputs, new):
            vmap[old.id] = nv
    out.outputs = [vmap[v.id] for v in g.outputs]
    return out
