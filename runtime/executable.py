"""A loaded, runnable compiled graph: a shared library with one ABI entry plus its weights.

`Executable.run` validates every input against the signature before any kernel
runs, allocates the outputs, and makes one native call (`ubq_call`) that runs all
kernels of the graph; there is no Python loop over kernels.
"""
from __future__ import annotations

import ctypes
import os
import tempfile
import weakref
from pathlib import Path

import numpy as np

from ubique.errors import DTypeError, ShapeError
from ubique.runtime import native
from ubique.runtime.toolchain import link_shared


class Executable:
    def __init__(self, library: Path, entry: str, signature, weights: list[np.ndarray], workspace_size: int):
        native.lib()  # the runtime first: kernels resolve its symbols
        self.library = Path(library)
        self._dll = ctypes.CDLL(os.fspath(library), mode=os.RTLD_NOW | os.RTLD_LOCAL)
        # unload the library when this executable is collected (the last user of its code)
        weakref.finalize(self, _dlclose, self._dll._handle)
        try:
            address = ctypes.cast(getattr(self._dll, entry), ctypes.c_void_p).value
        except AttributeError:
            raise ShapeError(f"{library} has no entry {entry!r}; the cache entry or library is stale") from None
        self._entry = native.entry_pointer(address)
        self.entry = entry
        self.signature = signature
        self.workspace_size = int(workspace_size)
        self._weights = [np.ascontiguousarray(w) for w in weights]
        self._in_specs = [(name, tuple(t.shape), _numpy_dtype(t.dtype)) for name, t in signature.inputs]
        self._out_specs = [(tuple(t.shape), t.dtype.to_numpy()) for t in signature.outputs]
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
        specs = self._in_specs
        if len(arrays) != len(specs):
            raise ShapeError(f"expected {len(specs)} input(s) ({', '.join(s[0] for s in specs)}), got {len(arrays)}")
        out = []
        for a, (name, shape, dtype) in zip(arrays, specs):
            if type(a) is not np.ndarray:
                a = np.asarray(a)
            if a.dtype != dtype and not a.dtype.isnative and a.dtype.newbyteorder("=") == dtype:
                a = a.astype(dtype)  # same values, native byte order
            if a.dtype != dtype:
                raise DTypeError(f"input {name!r}: expected dtype {dtype}, got {a.dtype}")
            if a.shape != shape:
                raise ShapeError(f"input {name!r}: expected shape {shape}, got {a.shape}")
            out.append(a if a.flags.c_contiguous else np.ascontiguousarray(a))
        return out

    def run(self, *arrays) -> list[np.ndarray]:
        """Runs the graph on numpy inputs (validated first); returns new output arrays."""
        inputs = self.check_inputs(arrays)
        outputs = [np.empty(shape, dtype) for shape, dtype in self._out_specs]
        args = native.make_pointer_array(self._n_args)
        from_buffer = native.ffi.from_buffer
        k = 0
        for a in inputs:
            args[k] = from_buffer(a) if a.size else native.ffi.NULL
            k += 1
        for a in outputs:
            args[k] = from_buffer(a) if a.size else native.ffi.NULL
            k += 1
        for p in self._weight_ptrs:
            args[k] = p
            k += 1
        native.call_entry(self._entry, args, native.ffi.NULL, self.workspace_size)
        return outputs


def _dlclose(handle: int) -> None:
    import _ctypes

    _ctypes.dlclose(handle)


def _numpy_dtype(dt):
    try:
        return dt.to_numpy()
    except DTypeError:  # bfloat16 without ml_dtypes: such inputs cannot be given
        return None


def link_program_object(obj: bytes, out: Path, libs=("m",)) -> Path:
    """Links emitted object code into a shared library at `out`."""
    with tempfile.TemporaryDirectory(prefix="ubique-link-") as tmp:
        o = Path(tmp) / "module.o"
        o.write_bytes(obj)
        return link_shared([o], out, libs=libs)


def load_program(program) -> Executable:
    """Links a compiler Program into a temporary library and loads it (no disk cache)."""
    with tempfile.TemporaryDirectory(prefix="ubique-") as folder:
        lib = link_program_object(program.obj, Path(folder) / "module.so", program.target.link_libs)
        # once loaded, the mapping outlives the file
        return Executable(lib, program.entry, program.signature, program.weights, program.memory.workspace_size)
