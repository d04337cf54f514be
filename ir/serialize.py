"""JSON serialisation of the graph IR (versioned; round-trips exactly, no pickle)."""
from __future__ import annotations

import base64
import binascii
import json

import numpy as np

from ubique.errors import VerifyError
from ubique.ir.dtypes import DType, dtype_of
from ubique.ir.graph import Graph, Node, TensorType, Value

FORMAT = "ubique.graph"
VERSION = 1


def _enc_attr(v, store=None):
    if isinstance(v, np.ndarray) and store is not None:
        return {"tensor": store(v)}
    if isinstance(v, np.ndarray):
        a = np.asarray(v, order="C")
        return {"array": {"dtype": dtype_of(a.dtype).short, "shape": list(a.shape),
                          "data": base64.b64encode(a.tobytes()).decode("ascii")}}
    if isinstance(v, DType):
        return {"dtype": v.short}
    if isinstance(v, tuple):
        return {"tuple": list(v)}
    return v


def _dec_attr(v, load=None):
    if isinstance(v, dict):
        if "tensor" in v:
            if load is None:
                raise VerifyError(f"graph JSON refers to tensor {v['tensor']!r} stored outside it; load it "
                                  "with its model file")
            return load(v["tensor"])
        if "array" in v:
            a = v["array"]
            dt = dtype_of(a["dtype"]).to_numpy()
            data = base64.b64decode(a["data"], validate=True)
            return np.frombuffer(data, dtype=dt).reshape(a["shape"]).copy()
        if "dtype" in v:
            return dtype_of(v["dtype"])
        if "tuple" in v:
            return tuple(v["tuple"])
    return v


def _type(v: Value) -> dict:
    return {"shape": list(v.shape), "dtype": v.dtype.short}


def graph_to_dict(g: Graph, locations: bool = True, store=None) -> dict:
    """The JSON-ready form; `locations=False` leaves out source locations (for hashing).
    `store(array) -> name` keeps arrays outside the JSON (a model file's weights section,
    or a digest for hashing); they are written as {"tensor": name}."""
    return {
        "format": FORMAT, "version": VERSION, "name": g.name,
        "inputs": [{"id": v.id, "name": v.name, **_type(v)} for v in g.inputs],
        "nodes": [{"op": n.op, "inputs": [v.id for v in n.inputs],
                   "attrs": {k: _enc_attr(a, store) for k, a in n.attrs.items()},
                   "outputs": [{"id": v.id, **_type(v), **({"name": v.name} if v.name else {})}
                               for v in n.outputs],
                   **({"loc": n.loc} if n.loc and locations else {})} for n in g.nodes],
        "outputs": [v.id for v in g.outputs],
    }


def _shape(v) -> tuple:
    shape = v["shape"]
    if not isinstance(shape, list) or not all(isinstance(x, str) or (isinstance(x, int) and x >= 0) for x in shape):
        raise VerifyError(f"malformed graph JSON: shape {shape!r} must be a list of non-negative ints or names")
    return tuple(shape)


def graph_from_dict(d: dict, load=None) -> Graph:
    """The graph of a JSON form; `load(name) -> array` resolves arrays stored outside it."""
    if not isinstance(d, dict):
        raise VerifyError(f"malformed graph JSON: expected an object, got {type(d).__name__}")
    if d.get("format") != FORMAT:
        raise VerifyError(f"not a ubique graph (format {d.get('format')!r}, expected {FORMAT!r})")
    if d.get("version") != VERSION:
        raise VerifyError(f"graph format version {d.get('version')} is not supported (this ubique reads {VERSION})")
    g = Graph(d.get("name", "main"))
    values: dict[int, Value] = {}

    def lookup(i):
        if i not in values:
            raise VerifyError(f"graph {g.name}: value id {i} is used before it is defined")
        return values[i]

    try:
        for v in d["inputs"]:
            values[v["id"]] = val = Value(v["id"], TensorType(_shape(v), v["dtype"]), None, v["name"])
            g.inputs.append(val)
        for nd in d["nodes"]:
            node = Node(nd["op"], [lookup(i) for i in nd["inputs"]],
                        {k: _dec_attr(a, load) for k, a in nd["attrs"].items()}, [], nd.get("loc"))
            for o in nd["outputs"]:
                values[o["id"]] = val = Value(o["id"], TensorType(_shape(o), o["dtype"]), node, o.get("name"))
                node.outputs.append(val)
            g.nodes.append(node)
        g.outputs = [lookup(i) for i in d["outputs"]]
    except (KeyError, TypeError, AttributeError, ValueError, binascii.Error) as e:
        raise VerifyError(f"malformed graph JSON: {type(e).__name__}: {e}") from None
    g._next_id = max(values, default=-1) + 1
    from ubique.ir.verify import verify_graph

    verify_graph(g)
    return g


def dumps(g: Graph, locations: bool = True, store=None) -> str:
    return json.dumps(graph_to_dict(g, locations, store), sort_keys=True, separators=(",", ":"))


def loads(text: str, load=None) -> Graph:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise VerifyError(f"graph JSON does not parse: {e}") from None
    return graph_from_dict(d, load)
