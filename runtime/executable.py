"""A loaded, runnable compiled graph: a shared library with one ABI entry plus its weights.

`Executable.run` validates every input against the signature before any kernel
runs, allocates the outputs, and makes one native call (`ubq_call`) that runs all
kernels of the graph; there is no Python loop over kernels.
"""
from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path

import numpy as np

from ubique.errors import DTypeError, ShapeError
from ubique.ir.dtypes import dtype_of
from ubique.runtime import native
from ubique.runtime.toolchain import link_shared


class Executable:
    def __init__(self, library: Path, entry: str, signature, weights: list[np.ndarray], workspace_size: int):
        native.lib()  # the runtime first: kernels resolve its symbols
        self.library = Path(library)
        self._dll = ctypes.CDLL(os.fspath(library), mode=os.RTLD_NOW | os.RTLD_LOCAL)
        try:
            address = ctypes.cast(getattr(self._dll, entry), ctypes.c_void_p).value
        except AttributeError:
            raise ShapeError(f"{library} has no entry {entry!r}; the cache entry or library is stale") from None
        self._entry = native.entry_pointer(address)
        self.entry = entry
        self.signature = signature
        self.workspace_size = int(workspace_size)
        self._weights = [np.ascontiguousarray(w) for w in weights]
        self._in_dtypes = [t.dtype.to_numpy() if t.dtype.name != "bfloat16" else None for _, t in signature.inputs]
        self._out_specs = [(tuple(t.shape), t.dtype) for t in signature.outputs]
        n_in, n_out = len(signature.inputs), len(signature.outputs)
        self._n_args = n_in + n_out + len(self._weights)
        self._weight_ptrs = [native.ffi.cast("void *", w.ctypes.data) for w in self._weights]

    @property
    def inputs(self):
        return list(self.signature.inputs)

    @property
    def outputs(self):
        return list(self.signature.outputs)

    def check_inputs(self, arrays) -> list[np.ndarray]:
        """Validates count, dtype and shape; returns C-contiguous arrays."""
        sig = self.signature.inputs
        if len(arrays) != len(sig):
            raise ShapeError(f"expected {len(sig)} input(s) ({', '.join(n for n, _ in sig)}), got {len(arrays)}")
        out = []
        for a, (name, t) in zip(arrays, sig):
            a = np.asarray(a)
            try:
                got = dtype_of(a.dtype)
            except DTypeError:
                got = None
            if got is not t.dtype:
                raise DTypeError(f"input {name!r}: expected dtype {t.dtype.name}, got {a.dtype}")
            if a.shape != tuple(t.shape):
                raise ShapeError(f"input {name!r}: expected shape {tuple(t.shape)}, got {a.shape}")
            out.append(np.ascontiguousarray(a))
        return out

    def run(self, *arrays) -> list[np.ndarray]:
        inputs = self.check_inputs(arrays)
        outputs = [np.empty(shape, dtype.to_numpy()) for shape, dtype in self._out_specs]
        args = native.make_pointer_array(self._n_args)
        k = 0
        for a in inputs + outputs:
            args[k] = native.ffi.cast("void *", a.ctypes.data)
            k += 1
        for p in self._weight_ptrs:
            args[k] = p
            k += 1
        native.call_entry(self._entry, args, native.ffi.NULL, self.workspace_size)
        return outputs


def link_program_object(obj: bytes, out: Path) -> Path:
    """Links emitted object code into a shared library at `out`."""
    with tempfile.TemporaryDirectory(prefix="ubique-link-") as tmp:
        o = Path(tmp) / "module.o"
        o.write_bytes(obj)
        return link_shared([o], out)


def load_program(program) -> Executable:
    """Links a compiler Program into a temporary library and loads it (no disk cache)."""
    with tempfile.TemporaryDirectory(prefix="ubique-") as folder:
        lib = link_program_object(program.obj, Path(folder) / "module.so")
        # once loaded, the mapping outlives the file
        return Executable(lib, program.entry, program.signature, program.weights, program.memory.workspace_size)
