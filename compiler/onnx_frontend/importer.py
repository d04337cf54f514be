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

from ubique.errors import DTypeError, ModelError, ShapeError, UbiqueError, UnsupportedOpError
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
        self.require(i, what)
        c = self.const(i)
        if c is None:
            raise NonConstantInput(f"{self.node.op_type} node {self.name!r}: input {what!r} must be a constant "
                                   "(or computed from shapes); its value decides the output shape",
                                   self.node.input[i])
        return np.asarray(c)

    def scalar_int(self, i: int, what: str):
        """A constant input holding exactly one integer (K of TopK, axis of CumSum...)."""
        vals = self.ints(i, what)
        if len(vals) != 1:
            raise ShapeError(f"{self.node.op_type} node {self.name!r}: input {what!r} must hold one integer, "
                             f"got {len(vals)} values")
        return vals[0]

    def require(self, i: int, what: str) -> str:
        """The name of input `i`, which the op needs: a clear error when it is absent."""
        if not self.has(i):
            raise ModelError(f"{self.node.op_type} node {self.name!r}: input #{i} ({what}) is missing")
        return self.node.input[i]

    def value(self, i: int) -> Value:
        return self.imp.value(self.require(i, "a tensor"))

    def shape(self, i: int) -> tuple:
        return self.imp.shape_of(self.require(i, "a tensor"))

    def dtype(self, i: int) -> DType:
        return self.imp.dtype_of(self.require(i, "a tensor"))

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    # -- building -----------------------------------------------------------------------
    def op(self, op: str, *inputs: Value, **attrs) -> Value:
        return self.g.op(op, *inputs, loc=self.loc, **attrs)

    def node_op(self, op: str, inputs, **attrs) -> list[Value]:
        return self.g.add_node(op, list(inputs), attrs, self.loc).outputs

    def constant(self, array, dtype=None) -> Value:
        array = np.asarray(array)
        if dtype is not None:
            target = dtype_of(dtype)
            if array.dtype.kind == "f" and not target.is_float and not np.isfinite(array).all():
                self.invalid(f"the value {array.tolist()} cannot be stored in a {target.name} tensor", DTypeError)
            array = array.astype(target.to_numpy())
        return self.imp.constant(array)

    def unsupported(self, why: str):
        raise UnsupportedOpError(f"{self.node.op_type} node {self.name!r}: {why}")

    def invalid(self, why: str, error=ShapeError):
        """The node is malformed (an impossible shape, an axis out of range...)."""
        raise error(f"{self.node.op_type} node {self.name!r}: {why}")

    def axis(self, axis, rank: int, what: str = "axis") -> int:
        """An axis attribute or input checked against `rank` and made non-negative."""
        if not -rank <= axis < rank:
            self.invalid(f"{what} {axis} is out of range for a tensor of rank {rank}")
        return axis % rank


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
        found = None
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                found = o.version
        if found is None:
            found = onnx.defs.onnx_opset_version() if not model.opset_import else 1
        self.opset = found
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
        from ubique.compiler.onnx_frontend.ops import check_supported, handler_for

        graph = self.model.graph
        check_supported(self.model, self.opset)
        for t in graph.initializer:
            self.known[t.name] = tensor_to_array(t, self.base)
        for t in graph.sparse_initializer:
            raise UnsupportedOpError(f"sparse initializer {t.values.name!r} is not supported")
        unknown = sorted(set(self.bound) - {i.name for i in graph.input})
        if unknown:
            raise ModelError(f"constants= names {unknown}, which are not graph inputs")
        for name, a in self.bound.items():
            try:
                dtype_of(a.dtype)
            except UbiqueError as e:
                raise DTypeError(f"constants=: the value given for graph input {name!r}: {e}") from None
        self.known.update(self.bound)
        seen_inputs = set()
        for inp in graph.input:
            if inp.name in seen_inputs:
                raise ModelError(f"graph input {inp.name!r} is declared more than once")
            seen_inputs.add(inp.name)
            if inp.name in self.known:
                continue  # old exporters list initializers among the inputs
            self.values[inp.name] = self.graph.add_input(_input_type(inp), inp.name)
        for self.node_index, node in enumerate(graph.node):
            name = node.name or f"{node.op_type}#{self.node_index}"
            try:
                check_node(node, self.opset, name)
                ctx = NodeContext(self, node, self.opset)
                outs = handler_for(node)(ctx)
                needed = max((k + 1 for k, o in enumerate(node.output) if o), default=0)
                if len(outs) < needed:
                    raise ModelError(f"the node declares {needed} outputs; this {node.op_type} produces "
                                     f"{len(outs)}")
            except UbiqueError as e:
                if f"node {name!r}" not in str(e):  # name the node (same error, same attributes)
                    e.args = (f"{node.op_type} node {name!r}: {e}",) + e.args[1:]
                raise
            except Exception as e:  # a handler bug or a case no check foresaw: name the node, keep the cause
                raise ModelError(f"{node.op_type} node {name!r}: unexpected {type(e).__name__} while importing "
                                 f"it ({e}); the node is probably malformed. If the model is valid, this is a "
                                 "bug in ubique's ONNX importer") from e
            for out_name, out in zip(node.output, outs):
                if not out_name:
                    continue
                if out_name in self.values or out_name in self.known:
                    raise ModelError(f"{node.op_type} node {name!r}: tensor {out_name!r} is defined more than once "
                                     "(as a graph input, an initializer or another node's output)")
                if isinstance(out, Value):
                    self.values[out_name] = out
                else:
                    self.known[out_name] = np.asarray(out)
        outputs = []
        for o in graph.output:
            if o.name not in self.values and o.name not in self.known:
                raise ModelError(f"graph output {o.name!r} is not produced by any node (nor is it a graph input "
                                 "or an initializer)")
            v = self.value(o.name)
            if v.name is None:
                v.name = o.name
            outputs.append(v)
        self.graph.outputs = outputs
        return self.graph


_ATTR_TYPE_NAMES = {1: "FLOAT", 2: "INT", 3: "STRING", 4: "TENSOR", 5: "GRAPH", 6: "FLOATS", 7: "INTS",
                    8: "STRINGS", 9: "TENSORS", 10: "GRAPHS", 11: "SPARSE_TENSOR", 12: "SPARSE_TENSORS",
                    13: "TYPE_PROTO", 14: "TYPE_PROTOS"}
_schemas: dict = {}


def _schema(op_type: str, opset: int):
    key = (op_type, opset)
    if key not in _schemas:
        import onnx

        try:
            s = onnx.defs.get_schema(op_type, opset)
        except Exception:  # not defined at this opset (ubique still imports some such ops)
            s = None
        _schemas[key] = None if s is None or s.deprecated else s
    return _schemas[key]


def check_node(node, opset: int, name: str) -> None:
    """The node against its ONNX schema: input and output counts, required inputs present,
    required attributes present, attribute types. Raises ModelError naming what is wrong."""
    from ubique.compiler.onnx_frontend.loader import attribute_type

    if node.domain not in ("", "ai.onnx"):
        return  # a custom op: its own definition (ub.op.define) checks it
    schema = _schema(node.op_type, opset)
    if schema is None:
        return
    n_in, n_out = len(node.input), len(node.output)
    formal = list(schema.inputs)
    single = type(formal[0].option).Single if formal else None
    if n_in < schema.min_input:
        missing = [p.name for p in formal[n_in:schema.min_input]]
        raise ModelError(f"{node.op_type} takes at least {schema.min_input} input(s), got {n_in}"
                         + (f": input(s) {', '.join(missing)} missing" if missing else ""))
    if n_in > schema.max_input:
        raise ModelError(f"{node.op_type} takes at most {schema.max_input} input(s), got {n_in}")
    for k, (p, given) in enumerate(zip(formal, node.input)):
        if p.option == single and not given:
            raise ModelError(f"required input #{k} ({p.name}) of {node.op_type} is missing (empty name)")
    if not schema.min_output <= n_out <= schema.max_output:
        raise ModelError(f"{node.op_type} has {schema.min_output} to {schema.max_output} output(s), got {n_out}")
    attrs = {a.name: a for a in node.attribute}
    unknown = sorted(set(attrs) - set(schema.attributes))
    if unknown:
        raise ModelError(f"{node.op_type} (opset {opset}) has no attribute(s) {unknown}; it takes "
                         f"{sorted(schema.attributes) or 'none'}")
    for attr_name, spec in schema.attributes.items():
        a = attrs.get(attr_name)
        if a is None:
            if spec.required:
                raise ModelError(f"missing required attribute {attr_name!r}")
            continue
        want, got = int(spec.type), attribute_type(a)
        if got != want and not (want == 1 and got == 2):  # (an int where a float is expected is fine)
            raise ModelError(f"attribute {attr_name!r} must be {_ATTR_TYPE_NAMES.get(want, want)}, "
                             f"got {_ATTR_TYPE_NAMES.get(got, 'no value')}")


def _ident(name: str) -> str:
    clean = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return clean if clean and not clean[0].isdigit() else "m_" + clean


def _input_type(inp) -> TensorType:
    tt = inp.type.tensor_type
    if not inp.HasField("type") or inp.type.WhichOneof("value") is None:
        raise ModelError(f"graph input {inp.name!r} has no type; ubique needs its element type and shape")
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
            if d.dim_value < 0:
                raise ShapeError(f"graph input {inp.name!r}: dimension {k} has the negative size {d.dim_value}")
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
