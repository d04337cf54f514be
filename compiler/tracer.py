"""The tracing frontend: runs a Python function on symbolic `Tensor`s and records graph IR.

Python control flow on shapes works (shapes are plain ints while tracing); control
flow on values computed from data does not, and raises TraceError naming the
user's line.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any, Sequence

import numpy as np

from ubique.errors import TraceError, UbiqueError
from ubique.ir.dtypes import DType, dtype_of
from ubique.ir.graph import Graph, TensorType, Value

_PACKAGE_DIRS: tuple[str, ...] = ()


def _package_dirs() -> tuple[str, ...]:
    global _PACKAGE_DIRS
    if not _PACKAGE_DIRS:
        from ubique.packages import package_dirs

        _PACKAGE_DIRS = tuple(str(d) + os.sep for d in package_dirs())
    return _PACKAGE_DIRS


def user_location() -> str | None:
    """file:line of the innermost frame outside ubique (the user's code)."""
    dirs = _package_dirs()
    f = sys._getframe(1)
    while f is not None:
        fn = os.path.abspath(f.f_code.co_filename)
        if not fn.startswith(dirs):
            return f"{fn}:{f.f_lineno}"
        f = f.f_back
    return None


class Tracer:
    """Records ops applied to its Tensors into `graph`."""

    _local = threading.local()

    def __init__(self, name: str = "main"):
        self.graph = Graph(name)

    def input(self, t: TensorType, name: str) -> "Tensor":
        return Tensor(self, self.graph.add_input(t, name))

    def constant(self, array: np.ndarray) -> Value:
        return self.graph.constant(array)

    def add(self, op: str, inputs: Sequence[Value], attrs: dict) -> list[Value]:
        loc = user_location()
        try:
            node = self.graph.add_node(op, inputs, attrs, loc)
        except UbiqueError as e:
            if loc and " (at " not in str(e):
                e.args = (f"{e} (at {loc})",) + e.args[1:]
            raise
        return node.outputs


class Tensor:
    """A traced value: supports numpy-style operators, indexing and methods."""

    __slots__ = ("tracer", "value")
    __array_priority__ = 1000  # numpy defers binary operators to us

    def __init__(self, tracer: Tracer, value: Value):
        self.tracer, self.value = tracer, value

    shape = property(lambda self: tuple(self.value.shape))
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: len(self.value.shape))
    size = property(lambda self: self.value.type.size)

    def __repr__(self):
        return f"Tensor({self.value.type}, traced)"

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        for k in range(len(self)):
            yield self[k]

    __hash__ = object.__hash__

    # data-dependent Python: refused with the user's line
    def _refuse(self, what: str):
        loc = user_location()
        raise TraceError(
            f"{what} of a traced tensor needs its value, which is unknown while tracing"
            f"{' at ' + loc if loc else ''}. Python control flow may depend on shapes, not on data; "
            "use ub.where(cond, a, b) for data-dependent choices.")

    def __bool__(self): self._refuse("bool()")
    def __int__(self): self._refuse("int()")
    def __float__(self): self._refuse("float()")
    def __index__(self): self._refuse("using as an index")
    def __array__(self, *a, **k): self._refuse("converting to a numpy array")
    def item(self): self._refuse("item()")
    def tolist(self): self._refuse("tolist()")

    # operators and methods are attached by ubique.ops (one table, no duplication)


def find_tracer(args) -> Tracer | None:
    for a in args:
        if isinstance(a, Tensor):
            return a.tracer
        if isinstance(a, (list, tuple)):
            t = find_tracer(a)
            if t is not None:
                return t
    return None


def weak_scalar_dtype(x, peer: DType | None) -> DType:
    """numpy 2 (NEP 50) rule: a Python scalar takes the dtype of the array it meets if the
    kinds agree; an int array meeting a float scalar becomes float64."""
    if isinstance(x, bool):
        return peer or DType.bool
    if isinstance(x, int):
        if peer is None or peer.is_bool:
            return DType.int64
        return peer
    if isinstance(x, float):
        if peer is not None and peer.is_float:
            return peer
        return DType.float64
    raise TraceError(f"cannot use {type(x).__name__} {x!r} as a tensor")


def to_value(tracer: Tracer, x: Any, peer: DType | None = None) -> Value:
    """A graph value for an argument: traced tensors as they are, Python scalars as weak
    constants, numpy arrays as constants of their own dtype."""
    if isinstance(x, Tensor):
        if x.tracer is not tracer:
            raise TraceError("a tensor from another trace was used here; do not keep tensors between calls")
        return x.value
    if isinstance(x, (bool, int, float)) and not isinstance(x, np.generic):
        dt = weak_scalar_dtype(x, peer)
        return tracer.constant(np.array(x, dtype=dt.to_numpy()))
    if isinstance(x, (np.ndarray, np.generic)):
        dtype_of(x.dtype)  # refuses unsupported dtypes with a clear message
        return tracer.constant(np.asarray(x))
    raise TraceError(f"cannot use a {type(x).__name__} as a tensor; pass numpy arrays or Python numbers")
