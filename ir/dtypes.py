"""Element types of tensors and their mapping to numpy.

bfloat16 has no numpy dtype of its own; when `ml_dtypes` is installed its
`bfloat16` is used for arrays crossing the API, otherwise bfloat16 tensors can
exist inside a graph but not be passed in or out.
"""
from __future__ import annotations

import enum

import numpy as np

try:  # optional: only needed to hand bfloat16 arrays in and out
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - exercised on machines without it
    _ml_dtypes = None


class DType(enum.Enum):
    """A tensor element type. `value` is the short name used in printed IR."""

    float32 = "f32"
    float64 = "f64"
    float16 = "f16"
    bfloat16 = "bf16"
    int8 = "i8"
    uint8 = "u8"
    int32 = "i32"
    int64 = "i64"
    bool = "bool"

    @property
    def short(self) -> str:
        return self.value

    @property
    def bits(self) -> int:
        return _BITS[self]

    @property
    def itemsize(self) -> int:
        return max(1, self.bits // 8)

    @property
    def is_float(self) -> bool:
        return self in (DType.float32, DType.float64, DType.float16, DType.bfloat16)

    @property
    def is_int(self) -> bool:
        return self in (DType.int8, DType.uint8, DType.int32, DType.int64)

    @property
    def is_signed(self) -> bool:
        return self in (DType.int8, DType.int32, DType.int64) or self.is_float

    @property
    def is_bool(self) -> bool:
        return self is DType.bool

    def to_numpy(self) -> np.dtype:
        if self is DType.bfloat16:
            if _ml_dtypes is None:
                from ubique.errors import DTypeError

                raise DTypeError("bfloat16 arrays need the ml_dtypes package: pip install ml_dtypes")
            return np.dtype(_ml_dtypes.bfloat16)
        return np.dtype(self.name)

    def __repr__(self) -> str:
        return f"DType.{self.name}"


_BITS = {
    DType.float32: 32, DType.float64: 64, DType.float16: 16, DType.bfloat16: 16,
    DType.int8: 8, DType.uint8: 8, DType.int32: 32, DType.int64: 64, DType.bool: 1,
}
_BY_SHORT = {d.value: d for d in DType}


def dtype_of(x) -> DType:
    """Converts a DType, numpy dtype, type or name ('float32' or 'f32') to a DType."""
    from ubique.errors import DTypeError

    if isinstance(x, DType):
        return x
    if isinstance(x, str):
        if x in _BY_SHORT:
            return _BY_SHORT[x]
        if x in DType.__members__:
            return DType[x]
    try:
        npd = np.dtype(x)
    except TypeError:
        raise DTypeError(f"unknown dtype {x!r}; expected one of {', '.join(d.name for d in DType)}") from None
    if npd.name == "bfloat16":
        return DType.bfloat16
    if npd.name in DType.__members__:
        return DType[npd.name]
    raise DTypeError(
        f"dtype {npd.name} is not supported; supported: {', '.join(d.name for d in DType)}")


def promote(a: DType, b: DType) -> DType:
    """numpy's promotion of two array dtypes (bfloat16 joins the float family)."""
    if a is b:
        return a
    if DType.bfloat16 in (a, b):
        other = b if a is DType.bfloat16 else a
        if other.is_float and other is not DType.float16:
            return other
        if other is DType.float16:
            return DType.float32
        return DType.bfloat16 if other.bits <= 8 else DType.float32 if other.bits <= 16 else DType.float64
    return _supported(np.promote_types(a.to_numpy(), b.to_numpy()))


# numpy results outside ubique's dtypes widen to the nearest supported one
_WIDEN = {"int16": "int32", "uint16": "int32", "uint32": "int64", "uint64": "int64"}


def _supported(npd: np.dtype) -> DType:
    return dtype_of(_WIDEN.get(npd.name, npd.name))


def true_divide_result(d: DType) -> DType:
    """numpy's true division and mean: integer and bool inputs give float64."""
    return d if d.is_float else DType.float64


def float_result(d: DType) -> DType:
    """The dtype numpy gives a transcendental ufunc (exp, sqrt...) applied to `d`."""
    if d.is_float:
        return d
    for cand in (DType.float16, DType.float32, DType.float64):
        if np.can_cast(d.to_numpy(), cand.to_numpy()):
            return cand
    return DType.float64
