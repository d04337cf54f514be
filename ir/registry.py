"""The op registry: every operator is defined once, here, as data.

An `OpDef` holds the op's attributes (with types and defaults), its type/shape
rule (`infer`), and its meaning, which is exactly one of:

* `compute(ctx, index) -> loop-IR Expr` — the value of the output element at
  `index`, written with the loop-IR expression language (`ctx.input(i, idx)` reads
  an input; `Reduce` expresses reductions). Every target compiles this.
* `decompose(graph, inputs, attrs) -> [Value]` — a composite op, rewritten into
  other ops of the registry before lowering (softmax, layer_norm, mean, ...).

`kind` tells fusion how the op reads its inputs: "elementwise" (same index,
modulo broadcasting), "injective" (each output reads at most one element of
each input: reshape, transpose, slice...), "reduce" (an output element reads many
input elements), "composite" or "source" (constants).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ubique.errors import UnsupportedOpError, VerifyError
from ubique.ir.dtypes import dtype_of
from ubique.ir import loop as L

KINDS = ("elementwise", "injective", "reduce", "composite", "source")


@dataclass(frozen=True)
class Attr:
    """Declares one attribute: `type` is one of int, float, bool, str, ints, dims, floats, dtype, array, any."""

    type: str
    default: Any = None
    required: bool = False


_MISSING = object()


def _coerce(op: str, name: str, spec: Attr, value):
    def bad(expected):
        raise VerifyError(f"op {op}: attribute {name!r} must be {expected}, got {value!r}")

    t = spec.type
    try:
        if t == "int":
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                bad("an int")
            return int(value)
        if t == "float":
            return float(value)
        if t == "bool":
            return bool(value)
        if t == "str":
            if not isinstance(value, str):
                bad("a str")
            return value
        if t == "ints":
            if value is None:
                return None
            return tuple(int(v) for v in value)
        if t == "dims":  # shape entries: ints or symbolic dimensions (ir/dims.py)
            from ubique.ir.dims import norm

            return tuple(int(v) if isinstance(v, (int, np.integer)) else norm(v) for v in value)
        if t == "floats":
            return tuple(float(v) for v in value)
        if t == "dtype":
            return dtype_of(value)
        if t == "array":
            a = np.asarray(value)
            return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))
        if t == "int_or_none":
            return None if value is None else int(value)
        if t == "any":
            return value
    except (TypeError, ValueError):
        bad(f"of type {t}")
    raise AssertionError(f"unknown attribute type {t}")


@dataclass
class OpDef:
    name: str
    kind: str
    infer: Callable[[list, dict], list]
    attrs: dict[str, Attr] = field(default_factory=dict)
    compute: Callable | None = None
    decompose: Callable | None = None
    num_inputs: int | tuple[int, int] = 1  # exact count or (min, max); max -1 = any
    doc: str = ""
    kernels: Any = None  # hand-written kernels per target (ubique.custom_ops.HandKernels) or None

    def __post_init__(self):
        assert self.kind in KINDS, self.kind
        assert (self.compute is None) != (self.decompose is None) or self.kind == "source", self.name

    def check_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Validates and normalises attributes, filling defaults; raises VerifyError."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise VerifyError(f"op {self.name}: unknown attribute(s) {sorted(unknown)}; "
                              f"it takes {sorted(self.attrs) or 'none'}")
        out = {}
        for name, spec in self.attrs.items():
            value = attrs.get(name, _MISSING)
            if value is _MISSING:
                if spec.required:
                    raise VerifyError(f"op {self.name}: missing required attribute {name!r}")
                value = spec.default
                out[name] = value
                continue
            out[name] = _coerce(self.name, name, spec, value)
        return out

    def check_arity(self, n: int):
        lo, hi = (self.num_inputs, self.num_inputs) if isinstance(self.num_inputs, int) else self.num_inputs
        if n < lo or (hi != -1 and n > hi):
            want = str(lo) if lo == hi else f"{lo}..{'any' if hi == -1 else hi}"
            raise VerifyError(f"op {self.name}: takes {want} input(s), got {n}")


_REGISTRY: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in _REGISTRY:
        raise ValueError(f"op {opdef.name!r} is already registered")
    _REGISTRY[opdef.name] = opdef
    return opdef


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_op(name: str) -> OpDef:
    _load_builtin_ops()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnsupportedOpError(f"unknown op {name!r}: it is not in the op registry "
                                 f"({len(_REGISTRY)} ops; see ubique.ir.registry.all_ops()). If it is a custom "
                                 "op, import the module that defines it (ub.op.define) first") from None


def all_ops() -> dict[str, OpDef]:
    _load_builtin_ops()
    return dict(_REGISTRY)


_loaded = False


def _load_builtin_ops():
    global _loaded
    if not _loaded:
        _loaded = True
        from ubique.ir import (ops_elementwise, ops_reduce, ops_shape, ops_nn, ops_activation,  # noqa: F401
                               ops_index, ops_resample, ops_rnn, ops_blocked)  # (they register)


class ComputeContext:
    """What an op's compute sees: input readers, types, attributes, fresh variables."""

    def __init__(self, in_types, out_type, attrs, read, fresh):
        self.in_types = in_types
        self.out_type = out_type
        self.attrs = attrs
        self._read = read   # read(i, index, mask, other) -> Expr
        self.fresh = fresh  # fresh(prefix) -> L.Var

    def input(self, i: int, index) -> L.Expr:
        """Element of input `i` at `index` (a tuple of int64 expressions)."""
        return self._read(i, tuple(index), None, None)

    def input_masked(self, i: int, index, mask: L.Expr, other) -> L.Expr:
        """Element of input `i` at `index` where `mask` holds, else `other`; `index` may be
        out of range where the mask is false (padding, window borders, concat parts)."""
        other = L.Const(other, self.in_types[i].dtype) if not isinstance(other, L.Expr) else other
        return self._read(i, tuple(index), mask, other)

    def input_bcast(self, i: int, index) -> L.Expr:
        """Element of input `i` broadcast numpy-style to the output index."""
        return self.input(i, broadcast_index(index, self.in_types[i].shape))


def broadcast_index(index, in_shape) -> tuple:
    """Maps an output index to an input of shape `in_shape` (numpy right-aligned broadcasting)."""
    index = tuple(index)
    lead = len(index) - len(in_shape)
    return tuple(L.Const(0, L.I64) if d == 1 else index[lead + k] for k, d in enumerate(in_shape))


def broadcast_shapes(op: str, *shapes) -> tuple:
    """numpy broadcasting of static or symbolic shapes; raises ShapeError naming the op."""
    from ubique.errors import ShapeError

    rank = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(rank):
        dims = {s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ShapeError(f"{op}: shapes {' and '.join(str(tuple(s)) for s in shapes)} "
                             f"do not broadcast (axis {k - rank}: sizes {sorted(map(str, dims))})")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def normalize_axis(op: str, axis: int, rank: int) -> int:
    from ubique.errors import ShapeError

    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"{op}: axis {axis} is out of range for a tensor of rank {rank}")
    return axis % max(rank, 1)


def dim_expr(d) -> L.Expr:
    """A shape dimension as a loop-IR expression: symbolic dims become int64 expressions over Vars."""
    from ubique.ir.dims import to_expr

    return to_expr(d)
