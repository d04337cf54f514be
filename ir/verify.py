"""Graph IR verifier: SSA, arity, attributes and types, with precise messages."""
from __future__ import annotations

from ubique.errors import UbiqueError, VerifyError
from ubique.ir.graph import Graph
from ubique.ir.printer import value_name
from ubique.ir.registry import get_op


def verify_graph(g: Graph) -> None:
    """Raises VerifyError naming the first problem found; returns None if the graph is well formed."""
    defined: set[int] = set()
    for v in g.inputs:
        if v.id in defined:
            raise VerifyError(f"graph {g.name}: input {value_name(v)} is listed twice")
        defined.add(v.id)
    for pos, n in enumerate(g.nodes):
        where = f"node {pos} ({n.op}{' at ' + n.loc if n.loc else ''})"
        try:
            opdef = get_op(n.op)
        except UbiqueError as e:
            raise VerifyError(f"{where}: {e}") from None
        try:
            opdef.check_arity(len(n.inputs))
            attrs = opdef.check_attrs(n.attrs)
        except VerifyError as e:
            raise VerifyError(f"{where}: {e}") from None
        for k, v in enumerate(n.inputs):
            if v.id not in defined:
                raise VerifyError(f"{where}: input {k} {value_name(v)} is used before it is defined "
                                  "(nodes must be in topological order)")
        try:
            expected = opdef.infer([v.type for v in n.inputs], attrs)
        except UbiqueError as e:
            raise VerifyError(f"{where}: {e}") from None
        if len(expected) != len(n.outputs):
            raise VerifyError(f"{where}: has {len(n.outputs)} outputs, the op defines {len(expected)}")
        for k, (v, t) in enumerate(zip(n.outputs, expected)):
            if v.type != t:
                raise VerifyError(f"{where}: output {k} {value_name(v)} has type {v.type}, "
                                  f"but the op's type rule gives {t}")
            if v.id in defined:
                raise VerifyError(f"{where}: output {value_name(v)} is defined twice (SSA)")
            if v.node is not n:
                raise VerifyError(f"{where}: output {value_name(v)} does not point back to its node")
            defined.add(v.id)
    for k, v in enumerate(g.outputs):
        if v.id not in defined:
            raise VerifyError(f"graph {g.name}: output {k} {value_name(v)} is not defined in the graph")
