"""A loaded, runnable compiled graph: a shared library with one ABI entry plus its weights.

`Executable.run` validates every input against the signature before any kernel
runs, allocates the outputs, and makes one native call (`ubq_call`) that runs all
kernels of the graph; there is no Python loop over kernels.
"""
from __future__ import annotations

import ctypes
import os
import tempfile
import threading
import weakref
from pathlib import Path

import numpy as np

from ubique.errors import DTypeError, ShapeError
from ubique.ir.dims import evaluate
from ubique.runtime import native
from ubique.runtime.contract import bind
from ubique.runtime.toolchain import link_shared


class Executable:
    def __init__(self, library: Path, entry: str, signature, weights: list[np.ndarray], workspace_size: int,
                 contract=None, dynamic_memory=None):
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
        # symbolic dimensions: bound from the input shapes at each call
        self.contract = contract
        self._symbolic = bool(contract is not None and contract.symbols)
        self._dynamic_memory = dynamic_memory
        self._plans: dict[tuple, tuple] = {}  # dims values -> (offsets table, workspace size)
        self._plans_lock = threading.Lock()

    @property
    def inputs(self):
        return list(self.signature.inputs)

    @property
    def outputs(self):
        return list(self.signature.outputs)

    def check_inputs(self, arrays) -> list[np.ndarray]:
        """Validates count, dtype and shape; returns C-contiguous arrays."""
        return check_input_arrays(arrays, self._in_specs, self._symbolic)

    def run(self, *arrays) -> list[np.ndarray]:
        """Runs the graph on numpy inputs (validated first); returns new output arrays."""
        inputs = self.check_inputs(arrays)
        dims_ptr, table, workspace_size = native.ffi.NULL, None, self.workspace_size
        if self._symbolic:
            env = self.bind([a.shape for a in inputs])
            values = tuple(env[s] for s in self.contract.symbols)
            dims_arr = np.array(values, np.int64)
            dims_ptr = native.ffi.cast("int64_t *", dims_arr.ctypes.data)
            table, workspace_size = self._plan(values, env)
            outputs = [np.empty(tuple(evaluate(d, env) for d in shape), dtype) for shape, dtype in self._out_specs]
        else:
            outputs = [np.empty(shape, dtype) for shape, dtype in self._out_specs]
        args = native.make_pointer_array(self._n_args + (table is not None))
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
        if table is not None:
            args[k] = native.ffi.cast("void *", table.ctypes.data)
        native.call_entry(self._entry, args, dims_ptr, workspace_size)
        return outputs

    def bind(self, shapes) -> dict[str, int]:
        """Symbol values for these input shapes, checked against the compiled contract."""
        return bind(self.contract, [(name, shape) for name, shape, _ in self._in_specs], shapes)

    def _plan(self, values: tuple, env: dict):
        if self._dynamic_memory is None:
            return None, self.workspace_size
        plan = self._plans.get(values)
        if plan is None:
            plan = self._dynamic_memory.plan(env)
            with self._plans_lock:  # threads at new sizes: evict and insert one at a time
                if len(self._plans) >= 64:  # bounded: a long-running server sees many sizes
                    self._plans.pop(next(iter(self._plans)))
                self._plans[values] = plan
        return plan


def check_input_arrays(arrays, specs, symbolic: bool, on_device=None) -> list:
    """Checks model inputs against `specs` [(name, shape, numpy dtype)]: count, dtype, and
    shape unless sizes are `symbolic` (the contract checks those); returns C-contiguous
    arrays in native byte order. Every runtime device validates its inputs with it; a device
    with its own arrays passes `on_device(a, name)`, which returns such an input (with
    `shape` and `dtype`, checked alike and returned as it is) or None for host data."""
    if len(arrays) != len(specs):
        raise ShapeError(f"expected {len(specs)} input(s) ({', '.join(s[0] for s in specs)}), got {len(arrays)}")
    out = []
    for a, (name, shape, dtype) in zip(arrays, specs):
        kept = on_device(a, name) if on_device is not None else None
        if kept is not None:
            a = kept
        elif type(a) is not np.ndarray:
            a = np.asarray(a)
        if kept is None and a.dtype != dtype and not a.dtype.isnative and a.dtype.newbyteorder("=") == dtype:
            a = a.astype(dtype)  # same values, native byte order
        if a.dtype != dtype:
            raise DTypeError(f"input {name!r}: expected dtype {dtype}, got {a.dtype}")
        if a.shape != shape and not symbolic:
            raise ShapeError(f"input {name!r}: expected shape {shape}, got {a.shape}")
        out.append(a if kept is not None or a.flags.c_contiguous else np.ascontiguousarray(a))
    return out


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
        return Executable(lib, program.entry, program.signature, program.weights, program.memory.workspace_size,
                          program.contract, program.dynamic_memory)
