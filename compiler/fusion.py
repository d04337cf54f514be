"""Fusion: partitions the graph's nodes into kernels.

Each kernel has one root node (whose output it writes) and nodes inlined into it,
which are recomputed at the index where the root's compute reads them. A node is
inlined into its only consumer when that is cheap and correct:

* elementwise / injective producers go into elementwise, injective and reduce
  consumers, except contractions (matmul, conv2d), which would recompute them
  once per use;
* a reduce producer (matmul, conv2d, sum, pooling...) goes into an elementwise
  consumer of the same shape that is itself the root or inlined the same way:
  the elementwise chain becomes the reduction's epilogue (matmul+bias+relu is one
  kernel).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ubique.ir.graph import Graph, Node
from ubique.ir.registry import get_op

CONTRACTIONS = frozenset({"matmul", "conv2d", "conv_transpose2d", "conv2d_nchwc", "depthwise_conv2d_nchwc",
                          "matmul_packed"})
# producers worth a memory pass rather than being recomputed: math-library calls
EXPENSIVE = frozenset({"exp", "log", "tanh", "erf", "sin", "cos", "sigmoid", "pow", "sqrt", "rsqrt", "div",
                       "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "reciprocal",
                       "mod", "softplus", "mish", "elu", "selu", "celu", "silu", "gelu"})
# consumers that read every element of an input at most once
_READ_ONCE = frozenset({"reshape", "transpose", "slice", "concat", "pad", "identity", "cast",
                        "sum", "prod", "max", "min", "argmax", "argmin"})


@dataclass
class Group:
    root: Node
    members: list[Node] = field(default_factory=list)  # topological order, root last

    @property
    def name(self) -> str:
        return "_".join(n.op for n in self.members)


def fuse(g: Graph, alone: frozenset[int] = frozenset()) -> list[Group]:
    """`alone`: ids of nodes that get a kernel of their own, fusing with nothing (a node
    whose op has a hand-written kernel for the target)."""
    users = g.users()
    outputs = {v.id for v in g.outputs}
    expensive = _expensive_chains(g, users)
    owner: dict[int, Node] = {}        # id(node) -> root of the kernel it belongs to
    epilogue_ok: dict[int, bool] = {}  # id(node) -> root reads it at the root's own index
    for n in reversed(g.nodes):
        if n.op == "constant":
            continue
        target = None if id(n) in alone else _inline_target(n, users, outputs, owner, epilogue_ok, expensive)
        if target is not None and id(target) in alone:
            target = None
        if target is None:
            owner[id(n)] = n
            epilogue_ok[id(n)] = True
        else:
            owner[id(n)] = owner[id(target)]
            epilogue_ok[id(n)] = epilogue_ok[id(target)] and get_op(target.op).kind == "elementwise" \
                and tuple(n.output.shape) == tuple(target.output.shape)
    groups: dict[int, Group] = {}
    for n in g.nodes:
        if n.op == "constant":
            continue
        root = owner[id(n)]
        groups.setdefault(id(root), Group(root)).members.append(n)
    order = {id(n): k for k, n in enumerate(g.nodes)}
    return sorted(groups.values(), key=lambda grp: order[id(grp.root)])


def _expensive_chains(g: Graph, users) -> set[int]:
    """Nodes that call a math function themselves or through the single-use elementwise
    producers that fusion would inline into them."""
    out: set[int] = set()
    for n in g.nodes:
        if n.op in EXPENSIVE or any(
                p.node is not None and id(p.node) in out and len(users.get(p.id, [])) == 1
                and get_op(p.node.op).kind in ("elementwise", "injective") for p in n.inputs):
            out.add(id(n))
    return out


def _inline_target(n: Node, users, outputs, owner, epilogue_ok, expensive):
    if len(n.outputs) != 1 or n.output.id in outputs:
        return None
    consumers = {id(c): c for c in users.get(n.output.id, [])}
    if len(consumers) != 1:
        return None
    c = next(iter(consumers.values()))
    kind, ckind = get_op(n.op).kind, get_op(c.op).kind
    if kind in ("elementwise", "injective"):
        if not (ckind in ("elementwise", "injective") or (ckind == "reduce" and c.op not in CONTRACTIONS)):
            return None
        if id(n) in expensive and not _reads_each_element_once(c, n):
            return None  # pooling windows or large broadcasts would recompute it many times
        return c
    if kind == "reduce" and ckind == "elementwise" and epilogue_ok.get(id(c)) \
            and tuple(c.output.shape) == tuple(n.output.shape) and _reads_once(c, n):
        return c
    return None


# an expensive producer may still be recomputed this many times per element (a small
# broadcast) rather than written to memory and read back
RECOMPUTE_LIMIT = 8


def _reads_each_element_once(consumer: Node, producer: Node) -> bool:
    """Inlining `producer` into `consumer` recomputes each element at most a few times."""
    if not _reads_once(consumer, producer):
        return False
    if consumer.op in _READ_ONCE:
        return True
    if get_op(consumer.op).kind in ("elementwise", "injective"):
        out, src = consumer.output.type, producer.output.type
        if tuple(out.shape) == tuple(src.shape):  # same shape, symbolic or not: one read per element
            return True
        return out.is_static and src.is_static and out.size <= RECOMPUTE_LIMIT * max(src.size, 1)
    return False  # pooling windows overlap


def _reads_once(consumer: Node, producer: Node) -> bool:
    return sum(v.id == producer.output.id for v in consumer.inputs) == 1
