"""The graph IR: a typed SSA dataflow graph of tensor operations.

A `Graph` has input values, a list of nodes in topological order and output
values. Every `Value` is defined exactly once, by a graph input or by one node
output, and carries a `TensorType` (shape and dtype). Dimensions are ints or
symbolic expressions over named sizes
(canonical strings, see ir/dims.py). Constants are nodes of the op `constant` holding an array.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence, Union

import numpy as np

from ubique.ir import dims
from ubique.ir.dtypes import DType, dtype_of

Dim = Union[int, str]


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: DType

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) if isinstance(d, (int, np.integer)) else dims.norm(d)
                                                for d in self.shape))
        object.__setattr__(self, "dtype", dtype_of(self.dtype))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def size(self) -> int:
        """Number of elements (static shapes only)."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def __str__(self) -> str:
        return f"{self.dtype.short}[{', '.join(str(d) for d in self.shape)}]"


class Value:
    """An SSA value: defined once, by a graph input or a node output."""

    __slots__ = ("id", "type", "node", "name")

    def __init__(self, id: int, type: TensorType, node: "Node | None" = None, name: str | None = None):
        self.id = id
        self.type = type
        self.node = node
        self.name = name

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    def __repr__(self) -> str:
        return f"%{self.name or self.id}: {self.type}"


class Node:
    """One operation: `op` names an entry of the op registry."""

    __slots__ = ("op", "inputs", "attrs", "outputs", "loc")

    def __init__(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any], outputs: Sequence[Value],
                 loc: str | None = None):
        self.op = op
        self.inputs = list(inputs)
        self.attrs = dict(attrs)
        self.outputs = list(outputs)
        self.loc = loc  # source location (file:line) the node was traced or imported from

    @property
    def output(self) -> Value:
        return self.outputs[0]

    def __repr__(self) -> str:
        return f"Node({self.op}, {[v.id for v in self.inputs]} -> {[v.id for v in self.outputs]})"


class Graph:
    """A graph: inputs, topologically ordered nodes, outputs."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []
        self._next_id = 0

    # -- construction -------------------------------------------------------------------
    def new_value(self, type: TensorType, node: Node | None = None, name: str | None = None) -> Value:
        v = Value(self._next_id, type, node, name)
        self._next_id += 1
        return v

    def add_input(self, type: TensorType, name: str) -> Value:
        v = self.new_value(type, None, name)
        self.inputs.append(v)
        return v

    def add_node(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any] | None = None,
                 loc: str | None = None) -> Node:
        """Appends a node, inferring its output types from the op registry."""
        from ubique.ir.registry import get_op

        opdef = get_op(op)
        opdef.check_arity(len(inputs))
        attrs = opdef.check_attrs(attrs or {})
        out_types = opdef.infer([v.type for v in inputs], attrs)
        node = Node(op, inputs, attrs, [], loc)
        node.outputs = [self.new_value(t, node) for t in out_types]
        self.nodes.append(node)
        return node

    def op(self, op: str, *inputs: Value, loc: str | None = None, **attrs) -> Value:
        """Adds a single-output node and returns its value."""
        return self.add_node(op, inputs, attrs, loc).output

    def constant(self, array, dtype=None) -> Value:
        arr = np.asarray(array, dtype=None if dtype is None else dtype_of(dtype).to_numpy())
        return self.add_node("constant", [], {"value": np.array(arr, order="C")}).output

    # -- queries ------------------------------------------------------------------------
    def users(self) -> dict[int, list[Node]]:
        """Maps each value id to the nodes reading it (a node once per use)."""
        out: dict[int, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                out.setdefault(v.id, []).append(n)
        return out

    def values(self) -> Iterable[Value]:
        yield from self.inputs
        for n in self.nodes:
            yield from n.outputs

    def __str__(self) -> str:
        from ubique.ir.printer import print_graph

        return print_graph(self)
