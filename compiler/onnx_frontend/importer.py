"""ONNX model -> ubique graph IR.

Each ONNX tensor name maps to either a graph `Value` or a numpy array known at
import time: initializers, `Constant` nodes and shape arithmetic (`Shape`,
`Gather`, `Concat`, `Unsqueeze`...) stay numpy arrays, folded as they are met, so
`Reshape(x, Concat(Shape(x)[0], 256))` imports as a reshape to `(batch, 256)`.
Symbolic sizes inside those arrays are `ir.dims.Sym` objects (numpy object arrays).
Arrays become graph constants only when a graph op reads them.

Each ONNX op is translated by one handler in `ops.py` onto ops of the graph-IR
registry; the importer itself knows no op. All unsupported ops of a model are
reported together, with their node names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ubique.errors import ModelError, ShapeError, UbiqueError, UnsupportedOpError
from ubique.ir import dims as D
from ubique.ir.dims import Sym
from ubique.ir.dtypes import DType, dtype_of
from ubique.ir.graph import Graph, TensorType, Value
from ubique.compiler.onnx_frontend.loader import attributes, load_model, onnx_dtype, tensor_to_array

MIN_OPSET = 1


class NonConstantInput(UnsupportedOpError):
    """An input that decides a shape (Reshape's shape, Slice's starts...) is not known at
    import time. `tensor` names it; binding the graph inputs it depends on as constants
    (import_onnx(..., constants=...)) resolves it."""

    def __init__(self, message: str, tensor: str):
        super().__init__(message)
        self.tensor = tensor


class NodeContext:
    """What an op handler sees for one ONNX node."""

    def __init__(self, imp: "Importer", node, opset: int):
        self.imp, self.node, self.opset = imp, node, opset
        self.g = imp.graph
        self.attrs = attributes(node)
        self.name = node.name or f"{node.op_type}#{imp.node_index}"
        self.loc = f"onnx:{self.name}"

    # -- inputs -------------------------------------------------------------------------
    def has(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    @property
    def num_inputs(self) -> int:
        return len(self.node.input)

    def const(self, i: int):
        """Input `i` as a numpy array if it is known at import time, else None."""
        return self.imp.known.get(self.node.input[i]) if self.has(i) else None

    def ints(self, i: int, what: str) -> list:
        """A constant int vector input (entries may be symbolic Sym)."""
        return [x if isinstance(x, Sym) else int(x) for x in self.known_input(i, what).reshape(-1).tolist()]

    def floats(self, i: int, what: str) -> list[float]:
        return [float(x) for x in self.known_input(i, what).reshape(-1).tolist()]

    def known_input(self, i: int, what: str) -> np.ndarray:
        c = self.const(i)
        if c is None:
            raise NonConstantInput(f"{self.node.op_type} node {self.name!r}: input {what!r} must be a constant "
                                   "(or computed from shapes); its value decides the output shape",
                                   self.node.input[i])
        return np.asarray(c)

    def value(self, i: int) -> Value:
        return self.imp.value(self.node.input[i])

    def shape(self, i: int) -> tuple:
        return self.imp.shape_of(self.node.input[i])

    def dtype(self, i: int) -> DType:
        return self.imp.dtype_of(self.node.input[i])

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    # -- building -----------------------------------------------------------------------
    def op(self, op: str, *inputs: Value, **attrs) -> Value:
        return self.g.op(op, *inputs, loc=self.loc, **attrs)

    def node_op(self, op: str, inputs, **attrs) -> list[Value]:
        return self.g.add_node(op, list(inputs), attrs, self.loc).outputs

    def constant(self, array, dtype=None) -> Value:
        return self.imp.constant(np.asarray(array, dtype=None if dtype is None else dtype_of(dtype).to_numpy()))

    def unsupported(self, why: str):
        raise UnsupportedOpError(f"{self.node.op_type} node {self.name!r}: {why}")


class Importer:
    def __init__(self, model, base: Path | None, constants: dict | None = None):
        import onnx

        self.model = model
        self.base = base
        self.graph = Graph(_ident(model.graph.name or "onnx_model"))
        self.values: dict[str, Value] = {}
        self.known: dict[str, np.ndarray] = {}   # tensors known at import time
        self.bound = {name: np.asarray(a) for name, a in (constants or {}).items()}
        self._const_values: dict[int, Value] = {}
        self.node_index = 0
        self.opset = 0
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                self.opset = o.version
        if not self.opset:
            self.opset = onnx.defs.onnx_opset_version() if not model.opset_import else 1
        newest = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= self.opset <= newest:
            raise UnsupportedOpError(f"the model uses ONNX opset {self.opset}; ubique imports opsets "
                                     f"{MIN_OPSET} to {newest} (convert it with onnx.version_converter)")

    # -- values -------------------------------------------------------------------------
    def value(self, name: str) -> Value:
        if name in self.values:
            return self.values[name]
        if name in self.known:
            return self.constant(self.known[name])
        raise ModelError(f"tensor {name!r} is used before it is defined (the graph is not topologically sorted "
                         "or names an unknown tensor)")

    def constant(self, array: np.ndarray) -> Value:
        if array.dtype == object:
            if any(isinstance(x, Sym) and not x.is_const for x in array.reshape(-1)):
                raise UnsupportedOpError("a symbolic size is used as tensor data (e.g. Range(0, seq)); "
                                         "give that dimension a static size with dims=")
            array = np.array([int(x) for x in array.reshape(-1)], np.int64).reshape(array.shape)
        key = id(array)
        if key not in self._const_values:
            self._const_values[key] = self.graph.constant(array)
            self._keep = getattr(self, "_keep", []) + [array]  # ids stay unique while kept
        return self._const_values[key]

    def shape_of(self, name: str) -> tuple:
        if name in self.values:
            return tuple(self.values[name].shape)
        if name in self.known:
            return tuple(self.known[name].shape)
        return tuple(self.value(name).shape)

    def dtype_of(self, name: str) -> DType:
        if name in self.values:
            return self.values[name].dtype
        a = self.known.get(name)
        if a is not None:
            return DType.int64 if a.dtype == object else dtype_of(a.dtype)
        return self.value(name).dtype

    # -- import -------------------------------------------------------------------------
    def run(self) -> Graph:
        from ubique.compiler.onnx_frontend.ops import HANDLERS, check_supported

        graph = self.model.graph
        check_supported(self.model, self.opset)
        for t in graph.initializer:
            self.known[t.name] = tensor_to_array(t, self.base)
        for t in graph.sparse_initializer:
            raise UnsupportedOpError(f"sparse initializer {t.values.name!r} is not supported")
        unknown = sorted(set(self.bound) - {i.name for i in graph.input})
        if unknown:
            raise ModelError(f"constants= names {unknown}, which are not graph inputs")
        self.known.update(self.bound)
        for inp in graph.input:
            if inp.name in self.known:
                continue  # old exporters list initializers among the inputs
            self.values[inp.name] = self.graph.add_input(_input_type(inp), inp.name)
        for self.node_index, node in enumerate(graph.node):
            ctx = NodeContext(self, node, self.opset)
            try:
                outs = HANDLERS[node.op_type](ctx)
            except UbiqueError as e:
                if ctx.name in str(e):
                    raise
                raise type(e)(f"{node.op_type} node {ctx.name!r}: {e}") from None
            for name, out in zip(node.output, outs):
                if not name:
                    continue
                if isinstance(out, Value):
                    self.values[name] = out
                else:
                    self.known[name] = np.asarray(out)
        outputs = []
        for o in graph.output:
            v = self.value(o.name)
            if v.name is None:
                v.name = o.name
            outputs.append(v)
        self.graph.outputs = outputs
        return self.graph


def _ident(name: str) -> str:
    clean = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return clean if clean and not clean[0].isdigit() else "m_" + clean


def _input_type(inp) -> TensorType:
    tt = inp.type.tensor_type
    if not inp.type.HasField("tensor_type"):
        raise UnsupportedOpError(f"graph input {inp.name!r} is not a tensor (sequences, maps and optionals "
                                 "are not supported)")
    dtype = onnx_dtype(tt.elem_type, f"graph input {inp.name!r}")
    if not tt.HasField("shape"):
        raise ShapeError(f"graph input {inp.name!r} has no shape; ubique needs the rank and sizes "
                         "(named sizes are fine)")
    shape = []
    for k, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        else:  # named (or anonymous) sizes become symbols
            shape.append(_ident(d.dim_param) if d.dim_param else f"{_ident(inp.name)}_{k}")
    return TensorType(tuple(shape), dtype)


def import_onnx(source, constants: dict | None = None) -> Graph:
    """An ONNX model (path, bytes or onnx.ModelProto) as a ubique graph.

    Named input sizes ("batch", "seq") stay symbolic: compile once, run at any size.
    `constants` binds graph inputs to fixed values (they stop being inputs): needed when
    an input decides a shape, e.g. the `axes` of a ReduceSum fed as a graph input.
    Raises ModelError for corrupt files or unsafe external data, UnsupportedOpError
    naming every unsupported op with its nodes, NonConstantInput for shape-deciding
    inputs that are not bound."""
    model, base = load_model(source)
    return Importer(model, base, constants).run()


def upstream_inputs(model, tensor: str) -> list[str]:
    """The graph inputs a tensor is computed from (in graph input order)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inputs = [i.name for i in model.graph.input]
    seen, stack = set(), [tensor]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in producers:
            stack.extend(x for x in producers[t].input if x)
    return [i for i in inputs if i in seen]


def symbolic(values) -> np.ndarray:
    """Dimensions as an int64 array, or an object array of Sym where some are symbolic."""
    vals = [Sym.of(v).dim() if not isinstance(v, int) else v for v in values]
    if all(isinstance(v, int) for v in vals):
        return np.array(vals, np.int64)
    return np.array([v if isinstance(v, int) else Sym.of(v) for v in vals], dtype=object)


def dims_of(values) -> tuple:
    """Sym/int entries as canonical dimensions."""
    return tuple(D.norm(v) if not isinstance(v, int) else v for v in values)
