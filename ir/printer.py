"""Text form of the graph IR (golden tests pin it)."""
from __future__ import annotations

import numpy as np

from ubique.ir.dtypes import DType, dtype_of
from ubique.ir.graph import Graph, Value


def value_name(v: Value) -> str:
    return f"%{v.name}" if v.name else f"%{v.id}"


def format_attr(value) -> str:
    if isinstance(value, np.ndarray):
        dt = dtype_of(value.dtype).short
        if value.size == 1:
            return f"{value.reshape(()).item()!r}:{dt}" if value.ndim == 0 else \
                f"{dt}[{', '.join(map(str, value.shape))}] {value.reshape(-1)[0].item()!r}"
        return f"<{dt}[{', '.join(map(str, value.shape))}]>"
    if isinstance(value, DType):
        return value.short
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def print_graph(g: Graph) -> str:
    from ubique.ir.registry import get_op

    ins = ", ".join(f"{value_name(v)}: {v.type}" for v in g.inputs)
    outs = ", ".join(value_name(v) for v in g.outputs)
    lines = [f"graph {g.name}({ins}) -> ({outs}) {{"]
    for n in g.nodes:
        specs = get_op(n.op).attrs
        order = list(specs) + [k for k in n.attrs if k not in specs]
        shown = [f"{k}={format_attr(n.attrs[k])}" for k in order if k in n.attrs
                 and (isinstance(n.attrs[k], np.ndarray) or k not in specs or n.attrs[k] != specs[k].default)]
        attrs = f" {{{', '.join(shown)}}}" if shown else ""
        res = ", ".join(value_name(v) for v in n.outputs)
        types = ", ".join(str(v.type) for v in n.outputs)
        args = ", ".join(value_name(v) for v in n.inputs)
        lines.append(f"  {res} = {n.op}({args}){attrs} : {types}")
    lines.append(f"  return {outs}")
    lines.append("}")
    return "\n".join(lines)
