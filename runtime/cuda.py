"""The CUDA runtime device: PTX from the "nvptx" backend run through the CUDA driver API.

libcuda (the driver's library, libcuda.so.1) is loaded with ctypes: no CUDA toolkit, no
CUDA Python package. What is used of it: cuInit, devices and their attributes, the primary
context, module loading from PTX text (the driver compiles it for the GPU), kernel
launches, device memory and copies, streams, events and CUDA graphs.

`CudaDevice` ("cuda", the device of the cuda targets) loads a compiled Program into a
`CudaProgram`, whose `run(*arrays)` takes and returns numpy arrays like the CPU
Executable. Nothing touches the driver until the first run, so `ub.compile(g,
target="cuda")` works on a machine without a GPU (and its PTX can be inspected); running
there raises RuntimeFailure saying what is missing. The first run for given input sizes
uploads the weights, allocates device buffers for the inputs, outputs and workspace, and
captures the model's kernel launches into a CUDA graph; every run then copies the inputs
in, replays the graph (one driver call) and copies the outputs out. Inputs already on the GPU
(`ub.to_device`, or any `__cuda_array_interface__` object: runtime/cuda_array.py) are copied
on the device instead, and the outputs then stay there, as DeviceArrays.

`EmulatedCudaDevice` ("cuda-emulator") runs the same GPU-scheduled kernels serially on this
CPU (compiler/gpu_schedule.serial_form), to check the GPU schedules where there is no GPU.

Environment: UBIQUE_LIBCUDA names the driver library to load; UBIQUE_CUDA_GRAPHS=0 launches
kernels one by one instead of replaying a graph; UBIQUE_CUDA_DEVICE picks the GPU (0).
"""
from __future__ import annotations

import ctypes
import os
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from ubique.errors import DTypeError, RuntimeFailure
from ubique.runtime.cuda_array import DeviceArray, device_input
from ubique.runtime.devices import Device, register_device

__all__ = ["CudaDevice", "CudaProgram", "Driver", "DeviceInfo", "EmulatedCudaDevice", "driver", "probe_device",
           "reset_driver"]

LIBRARY = "libcuda.so.1"
CUDA_ERROR_NO_DEVICE = 100
CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
CU_JIT_INFO_LOG_BUFFER, CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES = 3, 4
CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 5, 6
CU_STREAM_NON_BLOCKING = 1
CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1
_LOG_SIZE = 1 << 14

_c = ctypes
_P = _c.c_void_p          # CUcontext, CUmodule, CUfunction, CUstream, CUevent, CUgraph, CUgraphExec
_DPTR = _c.c_uint64       # CUdeviceptr
_R = _c.c_int             # CUresult
# name -> (argument types); each returns CUresult. Where the driver has a _v2 symbol it is used.
_API = {
    "cuInit": [_c.c_uint],
    "cuDriverGetVersion": [_c.POINTER(_c.c_int)],
    "cuGetErrorName": [_R, _c.POINTER(_c.c_char_p)],
    "cuGetErrorString": [_R, _c.POINTER(_c.c_char_p)],
    "cuDeviceGetCount": [_c.POINTER(_c.c_int)],
    "cuDeviceGet": [_c.POINTER(_c.c_int), _c.c_int],
    "cuDeviceGetName": [_c.c_char_p, _c.c_int, _c.c_int],
    "cuDeviceGetAttribute": [_c.POINTER(_c.c_int), _c.c_int, _c.c_int],
    "cuDeviceTotalMem": [_c.POINTER(_c.c_size_t), _c.c_int],
    "cuDevicePrimaryCtxRetain": [_c.POINTER(_P), _c.c_int],
    "cuDevicePrimaryCtxRelease": [_c.c_int],
    "cuCtxSetCurrent": [_P],
    "cuCtxSynchronize": [],
    "cuModuleLoadDataEx": [_c.POINTER(_P), _c.c_char_p, _c.c_uint, _c.POINTER(_c.c_int), _c.POINTER(_P)],
    "cuModuleUnload": [_P],
    "cuModuleGetFunction": [_c.POINTER(_P), _P, _c.c_char_p],
    "cuMemAlloc": [_c.POINTER(_DPTR), _c.c_size_t],
    "cuMemFree": [_DPTR],
    "cuMemcpyHtoD": [_DPTR, _c.c_void_p, _c.c_size_t],
    "cuMemcpyDtoH": [_c.c_void_p, _DPTR, _c.c_size_t],
    "cuMemcpyHtoDAsync": [_DPTR, _c.c_void_p, _c.c_size_t, _P],
    "cuMemcpyDtoHAsync": [_c.c_void_p, _DPTR, _c.c_size_t, _P],
    "cuMemcpyDtoDAsync": [_DPTR, _DPTR, _c.c_size_t, _P],
    "cuPointerGetAttribute": [_c.c_void_p, _c.c_int, _DPTR],
    "cuMemsetD8": [_DPTR, _c.c_ubyte, _c.c_size_t],
    "cuLaunchKernel": [_P, _c.c_uint, _c.c_uint, _c.c_uint, _c.c_uint, _c.c_uint, _c.c_uint, _c.c_uint, _P,
                       _c.POINTER(_c.c_void_p), _c.POINTER(_c.c_void_p)],
    "cuStreamCreate": [_c.POINTER(_P), _c.c_uint],
    "cuStreamDestroy": [_P],
    "cuStreamSynchronize": [_P],
    "cuStreamBeginCapture": [_P, _c.c_int],
    "cuStreamEndCapture": [_P, _c.POINTER(_P)],
    "cuGraphInstantiateWithFlags": [_c.POINTER(_P), _P, _c.c_ulonglong],
    "cuGraphLaunch": [_P, _P],
    "cuGraphExecDestroy": [_P],
    "cuGraphDestroy": [_P],
    "cuEventCreate": [_c.POINTER(_P), _c.c_uint],
    "cuEventDestroy": [_P],
    "cuEventRecord": [_P, _P],
    "cuEventSynchronize": [_P],
    "cuEventElapsedTime": [_c.POINTER(_c.c_float), _P, _P],
}
_REQUIRED = ("cuInit", "cuGetErrorName", "cuGetErrorString", "cuDeviceGetCount", "cuDeviceGet")

_FIX = ("the 'cuda' targets run on an NVIDIA GPU through its driver. Install the NVIDIA driver (it provides "
        "libcuda.so.1; set UBIQUE_LIBCUDA to load another file), or run the model on a CPU target "
        "(target='host'); target 'cuda-emulated' runs the GPU schedules on this CPU")


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]
    multiprocessors: int
    total_memory: int


class Driver:
    """The CUDA driver API of one libcuda, initialised (cuInit). Each bound function raises
    RuntimeFailure with the driver's error name and text when it does not return success."""

    def __init__(self, path: str | None = None):
        path = path or os.environ.get("UBIQUE_LIBCUDA") or LIBRARY
        self.path = path
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as e:
            raise RuntimeFailure(f"no CUDA driver: {path} could not be loaded ({e}); {_FIX}") from None
        self._fns = {}
        for name, argtypes in _API.items():
            fn = getattr(self.lib, name + "_v2", None) or getattr(self.lib, name, None)
            if fn is None:
                if name in _REQUIRED:
                    raise RuntimeFailure(f"{path} is not a CUDA driver library: it has no {name}; {_FIX}")
                continue
            fn.argtypes, fn.restype = argtypes, _R
            self._fns[name] = fn
        status = self._fns["cuInit"](0)
        if status == CUDA_ERROR_NO_DEVICE:
            raise RuntimeFailure(f"the CUDA driver ({path}) found no GPU (cuInit: {self.error_text(status)}). "
                                 "Check that `nvidia-smi` lists one and that CUDA_VISIBLE_DEVICES does not hide it; "
                                 "to run without a GPU use target='host', or 'cuda-emulated' to check the GPU "
                                 "schedules on this CPU")
        if status != 0:
            raise RuntimeFailure(f"the CUDA driver ({path}) failed to initialise (cuInit: {self.error_text(status)})"
                                 f"; {_FIX}")
        count = _c.c_int(0)
        self.call("cuDeviceGetCount", _c.byref(count))
        self.device_count = count.value
        if self.device_count == 0:
            raise RuntimeFailure(f"the CUDA driver ({path}) reports no GPU (cuDeviceGetCount = 0). Check "
                                 "`nvidia-smi` and CUDA_VISIBLE_DEVICES; to run without a GPU use target='host'")

    def has(self, name: str) -> bool:
        return name in self._fns

    def error_text(self, status: int) -> str:
        name, text = _c.c_char_p(), _c.c_char_p()
        if self._fns["cuGetErrorName"](status, _c.byref(name)) != 0 or not name.value:
            return f"CUDA error {status}"
        self._fns["cuGetErrorString"](status, _c.byref(text))
        return f"{name.value.decode()}: {(text.value or b'').decode()}"

    def call(self, name: str, *args, what: str = "") -> None:
        fn = self._fns.get(name)
        if fn is None:
            raise RuntimeFailure(f"the CUDA driver {self.path} has no {name}; update the NVIDIA driver")
        status = fn(*args)
        if status != 0:
            raise RuntimeFailure(f"{name}{' (' + what + ')' if what else ''} failed: {self.error_text(status)}")

    def device_info(self, index: int = 0) -> DeviceInfo:
        if not 0 <= index < self.device_count:
            raise RuntimeFailure(f"no CUDA device {index}: the driver sees {self.device_count}")
        dev = _c.c_int()
        self.call("cuDeviceGet", _c.byref(dev), index)
        name = _c.create_string_buffer(256)
        self.call("cuDeviceGetName", name, 256, dev)

        def attr(a):
            v = _c.c_int()
            self.call("cuDeviceGetAttribute", _c.byref(v), a, dev)
            return v.value

        mem = _c.c_size_t(0)
        if self.has("cuDeviceTotalMem"):
            self.call("cuDeviceTotalMem", _c.byref(mem), dev)
        return DeviceInfo(index, name.value.decode(errors="replace"),
                          (attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                           attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)),
                          attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT), mem.value)


_driver: Driver | None = None
_driver_error: RuntimeFailure | None = None
_driver_lock = threading.Lock()


def driver() -> Driver:
    """The process's CUDA driver (loaded and initialised once).

    Raises:
        RuntimeFailure: no driver library, no GPU, or the driver fails to initialise (the
            message says which and what to do); raised again on later calls.
    """
    global _driver, _driver_error
    with _driver_lock:
        if _driver is None and _driver_error is None:
            try:
                _driver = Driver()
            except RuntimeFailure as e:
                _driver_error = e
        if _driver_error is not None:
            raise RuntimeFailure(str(_driver_error))
        return _driver


def reset_driver() -> None:
    """Forgets the loaded driver or the error of loading it (tests change UBIQUE_LIBCUDA)."""
    global _driver, _driver_error
    with _driver_lock:
        _driver, _driver_error = None, None
        _Context._contexts.clear()


def probe_device(index: int | None = None) -> DeviceInfo | None:
    """The GPU the cuda target compiles for, or None where there is no driver or GPU (never raises)."""
    try:
        return driver().device_info(_device_index() if index is None else index)
    except RuntimeFailure:
        return None


def _device_index() -> int:
    try:
        return int(os.environ.get("UBIQUE_CUDA_DEVICE", "0"))
    except ValueError:
        return 0


class _Context:
    """The primary context of one GPU, with the module, stream and memory of the programs on it."""

    _contexts: dict[int, "_Context"] = {}

    def __init__(self, drv: Driver, index: int):
        self.drv, self.index = drv, index
        self.info = drv.device_info(index)
        dev = _c.c_int()
        drv.call("cuDeviceGet", _c.byref(dev), index)
        self.device = dev.value
        self.handle = _P()
        drv.call("cuDevicePrimaryCtxRetain", _c.byref(self.handle), self.device)

    @classmethod
    def get(cls, index: int) -> "_Context":
        drv = driver()
        with _driver_lock:
            ctx = cls._contexts.get(index)
            if ctx is None:
                ctx = cls._contexts[index] = _Context(drv, index)
        return ctx

    def make_current(self) -> None:
        self.drv.call("cuCtxSetCurrent", self.handle)

    def alloc(self, nbytes: int) -> int:
        ptr = _DPTR()
        self.drv.call("cuMemAlloc", _c.byref(ptr), max(int(nbytes), 256), what=f"{nbytes} bytes")
        return ptr.value

    def free(self, ptr: int) -> None:
        try:
            self.make_current()
            self.drv.call("cuMemFree", _DPTR(ptr))
        except RuntimeFailure:
            pass  # (at exit the context may be gone)

    def load_module(self, ptx: str, what: str):
        """A CUmodule from PTX text; the driver's compile log is in the error."""
        module = _P()
        error_log = _c.create_string_buffer(_LOG_SIZE)
        info_log = _c.create_string_buffer(_LOG_SIZE)
        options = (_c.c_int * 4)(CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, CU_JIT_INFO_LOG_BUFFER,
                                 CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES)
        values = (_P * 4)(_c.cast(error_log, _P), _P(_LOG_SIZE), _c.cast(info_log, _P), _P(_LOG_SIZE))
        fn = self.drv._fns["cuModuleLoadDataEx"]
        status = fn(_c.byref(module), ptx.encode() + b"\0", 4, options, values)
        if status != 0:
            log = error_log.value.decode(errors="replace").strip()
            raise RuntimeFailure(f"the CUDA driver rejected the PTX of {what} for {self.info.name} (sm_"
                                 f"{self.info.compute_capability[0]}{self.info.compute_capability[1]}): "
                                 f"{self.drv.error_text(status)}" + (f"\n{log}" if log else ""))
        return module


class _Plan:
    """Device buffers and the captured launches for one binding of the symbolic sizes."""

    def __init__(self, program: "CudaProgram", env: dict, out_shapes: list[tuple]):
        # (no reference to the program: its finalizer releases the plans)
        self.ctx, self.weight_ptrs = program._ctx, program._weight_ptrs
        self.out_shapes = out_shapes
        self.inputs, self.outputs, self.owned = [], [], []
        self.graph = self.graph_exec = None
        self.launches: list[tuple] = []
        self.env = env
        try:
            self._allocate(program, env, out_shapes)
            self._prepare_launches(program, env)
            if os.environ.get("UBIQUE_CUDA_GRAPHS", "1") != "0" and self.ctx.drv.has("cuGraphInstantiateWithFlags"):
                self._capture(program._stream)
        except BaseException:
            self.release()
            raise

    def _allocate(self, program, env, out_shapes):
        ctx = program._ctx
        from ubique.ir.dims import evaluate

        def alloc(n):
            ptr = ctx.alloc(n)
            self.owned.append(ptr)
            return ptr

        for name, shape, dt in program._in_specs:
            n = int(np.prod([evaluate(d, env) for d in shape], dtype=np.int64)) * dt.itemsize
            self.inputs.append((alloc(n), n))
        for shape, dt in zip(out_shapes, program._out_dtypes):
            n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            self.outputs.append((alloc(n), n))
        table, ws = None, program.workspace_size
        if program.dynamic_memory is not None:
            table, ws = program.dynamic_memory.plan(env)
        self.table = table
        self.workspace = alloc(ws) if ws else 0

    def _address(self, kind: str, index: int) -> int:
        if kind == "arg":
            args = [p for p, _ in self.inputs] + [p for p, _ in self.outputs] + self.weight_ptrs
            return args[index]
        if kind == "workspace":
            return self.workspace + index
        if kind == "table":
            return self.workspace + int(self.table[index])
        raise RuntimeFailure(f"unknown buffer kind {kind!r} in the launch table")

    def _prepare_launches(self, program, env):
        from ubique.codegen.nvptx import evaluate_size

        dims = [int(env[s]) for s in program.symbols]
        for launch in program.launches:
            grid = evaluate_size(launch["grid"], env)
            if not launch.get("module"):  # (generated kernels' block loops stride past the cap; hand ones choose)
                grid = min(grid, program.max_grid)
            if grid <= 0:
                continue
            values = [_DPTR(self._address(k, i)) for k, i in launch["buffers"]]
            values += [_c.c_int64(d) for d in dims[:launch["dims"]]]
            params = (_c.c_void_p * max(1, len(values)))(*[_c.cast(_c.pointer(v), _c.c_void_p) for v in values])
            self.launches.append((program._functions[launch["kernel"]], grid, launch["block"], values, params,
                                  launch["kernel"]))

    def launch_all(self, stream) -> None:
        drv = self.ctx.drv
        for fn, grid, block, _, params, name in self.launches:
            drv.call("cuLaunchKernel", fn, grid, 1, 1, block, 1, 1, 0, stream, params, None,
                     what=f"kernel {name}, {grid} blocks of {block} threads")

    def _capture(self, stream):
        drv = self.ctx.drv
        drv.call("cuStreamBeginCapture", stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        graph = _P()
        try:
            self.launch_all(stream)
        except BaseException:
            drv._fns["cuStreamEndCapture"](stream, _c.byref(graph))  # (ends the capture; the launch's error counts)
            raise
        drv.call("cuStreamEndCapture", stream, _c.byref(graph))
        self.graph = graph
        exec_ = _P()
        drv.call("cuGraphInstantiateWithFlags", _c.byref(exec_), graph, 0)
        self.graph_exec = exec_

    def run(self, stream) -> None:
        if self.graph_exec is not None:
            self.ctx.drv.call("cuGraphLaunch", self.graph_exec, stream)
        else:
            self.launch_all(stream)

    def release(self) -> None:
        ctx = self.ctx
        drv = ctx.drv
        try:
            ctx.make_current()
            if self.graph_exec is not None:
                drv.call("cuGraphExecDestroy", self.graph_exec)
            if self.graph is not None:
                drv.call("cuGraphDestroy", self.graph)
        except RuntimeFailure:
            pass
        self.graph = self.graph_exec = None
        for p in self.owned:
            ctx.free(p)
        self.owned = []


class CudaProgram:
    """A compiled Program on a CUDA GPU (see the module docstring): `run(*arrays)` -> outputs."""

    MAX_PLANS = 16

    def __init__(self, code, signature, weights, workspace_size: int, contract=None, dynamic_memory=None,
                 name: str = "model", device_index: int | None = None):
        extras = code.extras
        # the generated module, then the hand-written kernels' modules (codegen/nvptx.py)
        self.modules = [(code.source, name)] + [(m["ptx"], f"{m['kernel']} ({m['origin']})")
                                                for m in extras.get("modules", [])]
        self.launches = list(extras["launches"])
        self.max_grid = int(extras.get("max_grid", 1 << 20))
        self.signature = signature
        self.contract = contract
        self.symbols = list(contract.symbols) if contract is not None else []
        self.workspace_size = int(workspace_size)
        self.dynamic_memory = dynamic_memory
        self.name = name
        self.device_index = _device_index() if device_index is None else device_index
        self._weights = [np.ascontiguousarray(w) for w in weights]
        self._in_specs = [(n, tuple(t.shape), _numpy(t.dtype)) for n, t in signature.inputs]
        self._out_specs = [tuple(t.shape) for t in signature.outputs]
        self._out_dtypes = [_numpy(t.dtype) for t in signature.outputs]
        self._lock = threading.RLock()  # (check_inputs may set up the program while run holds it)
        self._ctx = None
        self._plans: dict[tuple, _Plan] = {}
        self._finalizer = None

    # -- set-up on first use ------------------------------------------------------------------
    def _ensure(self):
        with self._lock:
            if self._ctx is None:
                self._set_up()

    def _set_up(self):
        try:
            ctx = _Context.get(self.device_index)
        except RuntimeFailure as e:
            raise RuntimeFailure(f"cannot run {self.name} on a CUDA GPU: {e}") from None
        ctx.make_current()
        modules, functions, stream, weight_ptrs = {}, {}, _P(), []
        try:
            for launch in self.launches:
                name, index = launch["kernel"], launch.get("module", 0)
                if index not in modules:
                    modules[index] = ctx.load_module(*self.modules[index])
                if name not in functions:
                    fn = _P()
                    ctx.drv.call("cuModuleGetFunction", _c.byref(fn), modules[index], name.encode(), what=name)
                    functions[name] = fn
            ctx.drv.call("cuStreamCreate", _c.byref(stream), CU_STREAM_NON_BLOCKING)
            for w in self._weights:
                weight_ptrs.append(ctx.alloc(w.nbytes))
                if w.nbytes:
                    ctx.drv.call("cuMemcpyHtoD", _DPTR(weight_ptrs[-1]), w.ctypes.data, w.nbytes, what="weights")
        except BaseException:  # (a later try starts afresh: release what this one made)
            _release(ctx, list(modules.values()), stream, weight_ptrs, {})
            raise
        self._functions, self._stream, self._weight_ptrs = functions, stream, weight_ptrs
        self._ctx = ctx
        self._finalizer = weakref.finalize(self, _release, ctx, list(modules.values()), stream, weight_ptrs,
                                           self._plans)

    # -- running --------------------------------------------------------------------------------
    def check_inputs(self, arrays) -> list:
        """Checked inputs: numpy arrays, and DeviceInputs for data already on the GPU
        (runtime/cuda_array.py)."""
        from ubique.runtime.executable import check_input_arrays

        def on_device(a, name):
            if not isinstance(a, DeviceArray) and not hasattr(a, "__cuda_array_interface__"):
                return None
            self._ensure()
            self._ctx.make_current()  # (device_input asks the driver where the data lives)
            return device_input(a, name, self._ctx)

        return check_input_arrays(arrays, self._in_specs, bool(self.symbols), on_device)

    def _copy_inputs(self, inputs, plan: _Plan) -> None:
        """Queues the copies of the inputs into the plan's buffers: from the host, or on the device."""
        drv, stream = self._ctx.drv, self._stream
        for a, (ptr, n) in zip(inputs, plan.inputs):
            if not n:
                continue
            if isinstance(a, np.ndarray):
                drv.call("cuMemcpyHtoDAsync", _DPTR(ptr), a.ctypes.data, n, stream, what="input")
            else:
                a.wait(drv)
                drv.call("cuMemcpyDtoDAsync", _DPTR(ptr), _DPTR(a.ptr), n, stream, what="input on the device")

    def _plan(self, inputs) -> _Plan:
        env = {}
        if self.symbols:
            from ubique.runtime.contract import bind

            env = bind(self.contract, [(n, s) for n, s, _ in self._in_specs], [a.shape for a in inputs])
        key = tuple(env.get(s) for s in self.symbols)
        if any(dt is None for dt in self._out_dtypes + [d for _, _, d in self._in_specs]):
            raise DTypeError("bfloat16 inputs and outputs need ml_dtypes (pip install ml_dtypes)")
        plan = self._plans.get(key)
        if plan is None:
            from ubique.ir.dims import evaluate

            shapes = [tuple(evaluate(d, env) for d in shape) for shape in self._out_specs]
            if len(self._plans) >= self.MAX_PLANS:
                self._plans.pop(next(iter(self._plans))).release()
            plan = self._plans[key] = _Plan(self, env, shapes)
        return plan

    def upload(self, *arrays) -> _Plan:
        """Copies inputs to the device (for timing the launches alone: see `launch`)."""
        inputs = self.check_inputs(arrays)
        with self._lock:
            self._ensure()
            self._ctx.make_current()
            plan = self._plan(inputs)
            self._copy_inputs(inputs, plan)
            self._ctx.drv.call("cuStreamSynchronize", self._stream)
            return plan

    def launch(self, plan: _Plan, sync: bool = True) -> None:
        """Runs the model's kernels on inputs already on the device."""
        with self._lock:
            self._ctx.make_current()
            plan.run(self._stream)
            if sync:
                self._ctx.drv.call("cuStreamSynchronize", self._stream, what="running the kernels")

    def time_launches(self, plan: _Plan, repeat: int = 20) -> float:
        """Seconds per run of the kernels alone (CUDA events around `repeat` graph replays)."""
        drv = self._ctx.drv
        with self._lock:
            self._ctx.make_current()
            start, end = _P(), _P()
            drv.call("cuEventCreate", _c.byref(start), 0)
            drv.call("cuEventCreate", _c.byref(end), 0)
            try:
                drv.call("cuEventRecord", start, self._stream)
                for _ in range(repeat):
                    plan.run(self._stream)
                drv.call("cuEventRecord", end, self._stream)
                drv.call("cuEventSynchronize", end, what="running the kernels")
                ms = _c.c_float()
                drv.call("cuEventElapsedTime", _c.byref(ms), start, end)
            finally:
                drv.call("cuEventDestroy", start)
                drv.call("cuEventDestroy", end)
        return ms.value / 1e3 / repeat

    def run(self, *arrays) -> list:
        """Runs the model. Inputs are numpy arrays (copied to the GPU) or arrays already on it
        (DeviceArray, or any `__cuda_array_interface__` object: copied on the device); the
        outputs are new numpy arrays, or new DeviceArrays where any input was on the GPU."""
        inputs = self.check_inputs(arrays)
        keep_on_device = any(not isinstance(a, np.ndarray) for a in inputs)
        with self._lock:
            self._ensure()
            ctx, drv, stream = self._ctx, self._ctx.drv, self._stream
            ctx.make_current()
            plan = self._plan(inputs)
            self._copy_inputs(inputs, plan)
            plan.run(stream)
            if keep_on_device:
                outputs = [DeviceArray(ctx, s, dt) for s, dt in zip(plan.out_shapes, self._out_dtypes)]
                for o, (ptr, n) in zip(outputs, plan.outputs):
                    if n:
                        drv.call("cuMemcpyDtoDAsync", _DPTR(o.ptr), _DPTR(ptr), n, stream, what="output")
            else:
                outputs = [np.empty(s, dt) for s, dt in zip(plan.out_shapes, self._out_dtypes)]
                for o, (ptr, n) in zip(outputs, plan.outputs):
                    if n:
                        drv.call("cuMemcpyDtoHAsync", o.ctypes.data, _DPTR(ptr), n, stream, what="output")
            drv.call("cuStreamSynchronize", stream, what=f"running {self.name}")
            return outputs

    __call__ = run

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


def _release(ctx: _Context, modules, stream, weight_ptrs, plans) -> None:
    try:
        ctx.make_current()
    except RuntimeFailure:
        return  # (at exit the context may be gone)
    for plan in list(plans.values()):
        plan.release()
    plans.clear()
    for p in weight_ptrs:
        ctx.free(p)
    for call, handle in ([("cuStreamDestroy", stream)] if stream else []) + [("cuModuleUnload", m) for m in modules]:
        try:
            ctx.drv.call(call, handle)
        except RuntimeFailure:
            pass


def _numpy(dt):
    try:
        return dt.to_numpy()
    except DTypeError:  # bfloat16 without ml_dtypes
        return None


def _check_program(program) -> None:
    if program.code.language != "ptx" or "launches" not in program.code.extras:
        raise RuntimeFailure(f"device 'cuda' runs PTX with a launch table (codegen 'nvptx'); target "
                             f"{program.target.name!r} generated {program.code.language}")


class CudaDevice(Device):
    """Device "cuda": NVIDIA GPUs through the CUDA driver."""

    name = "cuda"

    def load(self, program) -> CudaProgram:
        _check_program(program)
        return CudaProgram(program.code, program.signature, program.weights, program.memory.workspace_size,
                           program.contract, program.dynamic_memory, name=f"{program.name} ({program.target.name})")

    def code_blob(self, program) -> bytes:
        """The code a .ubq file embeds for this device (see `code_blob`)."""
        return code_blob(program)

    def load_blob(self, blob: bytes, entry: dict, weights, name: str = "model") -> CudaProgram:
        """A runnable from embedded code and its manifest entry (see `program_from_blob`)."""
        return program_from_blob(blob, entry, weights, name)

    def describe_blob(self, blob: bytes, full: bool = False) -> str:
        return describe_blob(blob, full)


# ---- code in model files -------------------------------------------------------------------------
BLOB_FORMAT = "ubique.cuda-ptx"


def code_blob(program) -> bytes:
    """What a .ubq file embeds for a cuda target: the PTX text and its launch table (JSON)."""
    import json

    _check_program(program)
    return json.dumps({"format": BLOB_FORMAT, "arch": program.code.extras.get("arch"),
                       "ptx": program.code.source, "extras": program.code.extras}).encode()


def _read_blob(blob: bytes) -> dict:
    import json

    from ubique.errors import ModelError

    try:
        d = json.loads(bytes(blob).decode())
        if d.get("format") != BLOB_FORMAT or not isinstance(d.get("ptx"), str) or "launches" not in d["extras"]:
            raise ValueError(f"format {d.get('format')!r}")
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        raise ModelError(f"the embedded GPU code is not a {BLOB_FORMAT} entry ({type(e).__name__}: {e})") from None
    return d


def describe_blob(blob: bytes, full: bool = False) -> str:
    """`ubique inspect`: the embedded PTX (its kernels and launches, or the whole text)."""
    d = _read_blob(blob)
    hand = d["extras"].get("modules", [])
    if full:
        from ubique.codegen.nvptx import ptx_listing

        return ptx_listing(d["ptx"], hand)
    launches = d["extras"]["launches"]
    head = [line for line in d["ptx"].splitlines()[:12] if line.startswith((".version", ".target"))]
    lines = [f"PTX for {d.get('arch')} ({len(d['ptx'])} characters; {' '.join(head)}), {len(launches)} launches:"]
    for launch in launches:
        index = launch.get("module", 0)
        origin = f" (hand-written PTX: {hand[index - 1]['origin']})" if index else ""
        lines.append(f"  {launch['kernel']}: grid {launch['grid']} x {launch['block']} threads{origin}")
    return "\n".join(lines)


def program_from_blob(blob: bytes, entry: dict, weights, name: str = "model") -> CudaProgram:
    """A CudaProgram from a .ubq code entry (`code_blob` bytes and the manifest entry: signature,
    workspace size, contract, dynamic memory, as for CPU code) and its weights."""
    from ubique.codegen.backend import GeneratedCode
    from ubique.compiler.pipeline import Signature
    from ubique.runtime.contract import DimContract
    from ubique.runtime.memory import DynamicMemory

    d = _read_blob(blob)
    dynamic = entry.get("dynamic_memory")
    return CudaProgram(GeneratedCode("ptx", d["ptx"], b"", d["extras"]), Signature.from_json(entry["signature"]),
                       weights, entry["workspace_size"], DimContract.from_json(entry["contract"]),
                       DynamicMemory.from_json(dynamic) if dynamic else None, name=name)


# ---- the emulator ------------------------------------------------------------------------------
def emulate_program(program):
    """An Executable that runs a cuda Program's GPU-scheduled kernels serially on this CPU: each
    kernel through compiler/gpu_schedule.serial_form (block and thread loops serial, scratch buffers as
    extra arguments after the weights), compiled by the host's LLVM backend."""
    import tempfile
    from pathlib import Path

    from ubique.codegen.backend import BufferRef, KernelModule, Step, get_backend
    from ubique.codegen.nvptx import ptx_name
    from ubique.compiler.gpu_schedule import serial_form
    from ubique.runtime.executable import Executable, link_program_object
    from ubique.targets.registry import host_target

    _check_program(program)
    kernels = {ptx_name(lk.kernel.name): lk.kernel for lk in program.kernels}
    num_args = program.code.extras["num_args"]
    serial, steps, scratch_arrays = [], [], []
    for launch in program.code.extras["launches"]:
        kernel, scratch = serial_form(kernels[launch["kernel"]])
        serial.append(kernel)
        refs = [BufferRef(kind, index) for kind, index in launch["buffers"]]
        for buf in scratch:
            refs.append(BufferRef("arg", num_args + len(scratch_arrays)))
            nbytes = int(np.prod([d.value for d in buf.shape])) * buf.dtype.itemsize
            scratch_arrays.append(np.zeros(max(nbytes, 1), np.uint8))
        steps.append(Step(kernel.name, tuple(refs)))
    host = host_target()
    module = KernelModule(program.name + "_emu", program.entry, serial, [], steps, num_args + len(scratch_arrays))
    code = get_backend(host.codegen, host).generate(module, host)
    with tempfile.TemporaryDirectory(prefix="ubique-emu-") as tmp:
        lib = link_program_object(code.obj, Path(tmp) / "module.so", host.link_libs)
        return Executable(lib, program.entry, program.signature, list(program.weights) + scratch_arrays,
                          program.memory.workspace_size, program.contract, program.dynamic_memory)


class EmulatedCudaDevice(Device):
    """Device "cuda-emulator": a cuda Program's GPU-scheduled loop IR run serially on this CPU
    (no GPU, no driver): checks the GPU schedules, not the PTX; custom ops' hand-written PTX
    kernels are left out (their generated kernels run)."""

    name = "cuda-emulator"
    runs_hand_kernels = False

    def load(self, program):
        return emulate_program(program)


register_device(CudaDevice, "built-in")
register_device(EmulatedCudaDevice, "built-in")
