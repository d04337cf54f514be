"""Reading ONNX models safely: protobuf parsing, tensors, and external data.

External-data files are read only from the model's own folder: a location that is
absolute or escapes that folder (`../../etc/passwd`, a symlink out) is refused, as
are offsets and lengths outside the file. Any parse failure becomes a ModelError.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ubique.errors import DTypeError, ModelError, UbiqueError
from ubique.ir.dtypes import DType


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise UbiqueError("importing ONNX models needs the onnx package: pip install 'ubique[onnx]'") from None
    return onnx


def load_model(source):
    """An onnx.ModelProto from a path, bytes or a ModelProto, with external data resolved
    inside the model's folder. Returns (model, base folder or None)."""
    onnx = require_onnx()
    if isinstance(source, onnx.ModelProto):
        _check_graph(source)
        return source, None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, base = bytes(source), None
    elif isinstance(source, (str, os.PathLike)):
        path = Path(os.fspath(source))
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelError(f"cannot read ONNX model {path}: {e.strerror or e}") from None
        base = path.resolve().parent
    else:
        raise ModelError(f"import_onnx takes a path, bytes or an onnx.ModelProto, got {type(source).__name__}")
    if not data:
        raise ModelError("the ONNX model is empty (0 bytes)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # protobuf raises DecodeError (and others) on corrupt bytes
        raise ModelError(f"the ONNX model is corrupt or truncated: {type(e).__name__}: {e}") from None
    _check_graph(model)
    return model, base


def _check_graph(model) -> None:
    if not model.HasField("graph") or not model.graph.node and not model.graph.output:
        raise ModelError("the ONNX model holds no graph (or an empty one: no nodes, no outputs); "
                         "is it truncated or another format?")
    _check_text(model, "model")


def _check_text(msg, where: str) -> None:
    """Every string field of the model must be valid UTF-8: protobuf hands back invalid
    text (corrupt files) as bytes, which no name or op type may be."""
    from google.protobuf.descriptor import FieldDescriptor

    stack = [(msg, where)]
    while stack:
        m, at = stack.pop()
        for field, value in m.ListFields():
            if field.type == FieldDescriptor.TYPE_STRING:
                items = value if _is_repeated(field) else [value]
                if any(isinstance(v, bytes) for v in items):
                    raise ModelError(f"the ONNX model is corrupt: {at}.{field.name} holds text that is not "
                                     "valid UTF-8")
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                items = value if _is_repeated(field) else [value]
                stack.extend((v, f"{at}.{field.name}") for v in items)


def _is_repeated(field) -> bool:
    label = getattr(field, "is_repeated", None)
    if label is not None:
        return label
    return field.label == field.LABEL_REPEATED


# ONNX TensorProto element types -> ubique dtypes (others are refused by name)
_ONNX_DTYPES = {1: DType.float32, 2: DType.uint8, 3: DType.int8, 6: DType.int32, 7: DType.int64,
                9: DType.bool, 10: DType.float16, 11: DType.float64, 16: DType.bfloat16}


def onnx_dtype(code: int, what: str) -> DType:
    try:
        return _ONNX_DTYPES[code]
    except KeyError:
        onnx = require_onnx()
        name = onnx.TensorProto.DataType.Name(code) if code in onnx.TensorProto.DataType.values() else str(code)
        raise DTypeError(f"{what}: ONNX element type {name} is not supported "
                         f"(supported: {', '.join(d.name for d in _ONNX_DTYPES.values())})") from None


def tensor_to_array(t, base: Path | None) -> np.ndarray:
    """A TensorProto as a numpy array; external data is read from `base` only."""
    onnx = require_onnx()
    from onnx import numpy_helper

    dtype = onnx_dtype(t.data_type, f"tensor {t.name!r}")
    if any(d < 0 for d in t.dims):
        raise ModelError(f"tensor {t.name!r} has negative dimensions {tuple(t.dims)}")
    count = 1
    for d in t.dims:
        count *= d
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return _external(t, base, dtype)
    stored = _stored_count(t, dtype)
    if stored is not None and stored != count:
        raise ModelError(f"tensor {t.name!r}: its dims {tuple(t.dims)} call for {count} elements, "
                         f"but it holds {stored}")
    try:
        arr = numpy_helper.to_array(t)
    except Exception as e:
        raise ModelError(f"tensor {t.name!r} is malformed: {type(e).__name__}: {e}") from None
    if arr.size != count:
        raise ModelError(f"tensor {t.name!r}: its dims {tuple(t.dims)} call for {count} elements, "
                         f"but it holds {arr.size}")
    if dtype is DType.bfloat16:
        return arr.astype(dtype.to_numpy()) if arr.dtype != dtype.to_numpy() else arr
    return np.array(arr, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)


def _stored_count(t, dtype: DType) -> int | None:
    """How many elements a tensor's data holds (None where it cannot tell cheaply)."""
    if t.HasField("raw_data"):
        itemsize = dtype.to_numpy().itemsize
        if len(t.raw_data) % itemsize:
            return -1  # a partial element
        return len(t.raw_data) // itemsize
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        n = len(getattr(t, field))
        if n:
            return n  # (one element per entry; float16, int8, bool... are stored one per int32)
    return 0


def _external(t, base: Path | None, dtype: DType) -> np.ndarray:
    info = {e.key: e.value for e in t.external_data}
    where = info.get("location", "")
    if base is None:
        raise ModelError(f"tensor {t.name!r} keeps its data in an external file ({where!r}); "
                         "load the model from its path so the file can be found beside it")
    if not where or os.path.isabs(where) or "\\" in where:
        raise ModelError(f"tensor {t.name!r}: external data location {where!r} is not a relative path "
                         "inside the model's folder; refusing to read it")
    path = (base / where).resolve()
    if base.resolve() not in path.parents:
        raise ModelError(f"tensor {t.name!r}: external data location {where!r} escapes the model's "
                         f"folder {base}; refusing to read it")
    shape = tuple(t.dims)
    itemsize = dtype.to_numpy().itemsize
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    try:
        offset = int(info.get("offset", 0))
        length = int(info.get("length", count * itemsize))
    except ValueError:
        raise ModelError(f"tensor {t.name!r}: external data offset {info.get('offset')!r} or length "
                         f"{info.get('length')!r} is not an integer") from None
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ModelError(f"tensor {t.name!r}: cannot open external data file {where!r}: {e.strerror}") from None
    if offset < 0 or length != count * itemsize or offset + length > size:
        raise ModelError(f"tensor {t.name!r}: external data range (offset {offset}, length {length}) does not "
                         f"fit its shape {shape} or the file {where!r} ({size} bytes)")
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(length)
    return np.frombuffer(raw, dtype.to_numpy(), count).reshape(shape).copy()


def attributes(node) -> dict:
    """A node's attributes as Python values (tensors as numpy arrays, graphs refused)."""
    onnx = require_onnx()
    from onnx import helper

    out = {}
    for a in node.attribute:
        kind = attribute_type(a)
        if kind == 0:
            raise ModelError(f"attribute {a.name!r} has no type and no value")
        if kind not in _ATTR_KINDS:
            raise ModelError(f"attribute {a.name!r} has the unknown type code {kind}")
        if a.type != kind:  # (very old exporters left the type out)
            a = type(a).FromString(a.SerializeToString())
            a.type = kind
        if a.type == onnx.AttributeProto.TENSOR:
            out[a.name] = tensor_to_array(a.t, None)
        elif a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            out[a.name] = None  # control flow bodies: the op handler refuses them
        else:
            v = helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            elif isinstance(v, list) and v and isinstance(v[0], bytes):
                v = [x.decode("utf-8", "replace") for x in v]
            out[a.name] = v
    return out


_ATTR_FIELDS = (("f", 1), ("i", 2), ("s", 3), ("t", 4), ("g", 5), ("sparse_tensor", 11), ("tp", 13))
_ATTR_LISTS = (("floats", 6), ("ints", 7), ("strings", 8), ("tensors", 9), ("graphs", 10),
               ("sparse_tensors", 12), ("type_protos", 14))


_ATTR_KINDS = {code for _, code in _ATTR_FIELDS + _ATTR_LISTS}


def attribute_type(a) -> int:
    """An AttributeProto's type; for attributes written without one, the type of the field
    that holds the value (0 if none does)."""
    if a.type:
        return a.type
    for field, code in _ATTR_FIELDS:
        if a.HasField(field):
            return code
    for field, code in _ATTR_LISTS:
        if len(getattr(a, field)):
            return code
    return 0
