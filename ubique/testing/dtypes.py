"""The dtypes the conformance kit tries every op with, and numpy conversions."""
from __future__ import annotations

import numpy as np

from ubique.errors import UbiqueError

# dtypes every op is tried with (those its type rule accepts); bfloat16 needs ml_dtypes
DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int64", "int8", "uint8", "bool")
_FLOATS = ("float32", "float64", "float16", "bfloat16")


def _np_dtype(name: str) -> np.dtype:
    from ubique.ir.dtypes import dtype_of

    return dtype_of(name).to_numpy()


def _dtype_name(a: np.ndarray) -> str:
    from ubique.ir.dtypes import dtype_of

    return dtype_of(a.dtype).name


def _available_dtypes() -> tuple[str, ...]:
    try:
        _np_dtype("bfloat16")
    except UbiqueError:  # no ml_dtypes: bfloat16 arrays cannot cross the API
        return tuple(d for d in DTYPES if d != "bfloat16")
    return DTYPES
