"""Arrays in GPU memory, to keep data on the GPU between models (runtime/cuda.py runs them).

`ub.to_device(x)` copies a numpy array to the GPU and returns a `DeviceArray`; a cuda Model
given device arrays copies them on the device (no trip through the host) and returns its
outputs as new DeviceArrays; `DeviceArray.numpy()` (or `np.asarray`) copies back. Any
object with a `__cuda_array_interface__` (a PyTorch CUDA tensor, a CuPy array) is taken as
an input the same way, and DeviceArrays expose the interface, so `torch.as_tensor(y,
device="cuda")` reads a model's output in place. C-contiguous data only; a producer's
`stream` (version 3 of the interface) is waited for before the data is read.
"""
from __future__ import annotations

import ctypes as _c
import weakref

import numpy as np

from ubique.errors import DTypeError, RuntimeFailure, ShapeError

__all__ = ["DeviceArray", "to_device", "device_input"]

CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL = 9


class DeviceArray:
    """A C-contiguous array in the memory of one CUDA GPU; freed when the last reference goes.

    shape, dtype, nbytes, ndim, size as numpy's; `ptr` is the device address; `device` is
    "cuda:N". `numpy()` copies it to a new host array."""

    def __init__(self, ctx, shape, dtype):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self._ctx = ctx
        self.ptr = ctx.alloc(self.nbytes)
        self._finalizer = weakref.finalize(self, ctx.free, self.ptr)

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape, dtype=np.int64)))
    device = property(lambda self: f"cuda:{self._ctx.index}")

    def live_ptr(self) -> int:
        """`ptr`, checked: a freed array raises RuntimeFailure instead of reading reused memory."""
        if not self._finalizer.alive:
            raise RuntimeFailure(f"{self!r} was freed (DeviceArray.free) and cannot be used")
        return self.ptr

    def numpy(self) -> np.ndarray:
        """A host copy."""
        out = np.empty(self.shape, self.dtype)
        ptr = self.live_ptr()
        if self.nbytes:
            from ubique.runtime.cuda import _DPTR

            self._ctx.make_current()
            self._ctx.drv.call("cuMemcpyDtoH", out.ctypes.data, _DPTR(ptr), self.nbytes, what="a device array")
        return out

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("a DeviceArray lives in GPU memory: reading it on the host always copies")
        out = self.numpy()
        return out if dtype is None else out.astype(dtype, copy=False)

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.live_ptr(), False), "strides": None,
                "version": 3, "stream": None}  # (written and synchronised before it is handed out)

    def free(self) -> None:
        """Releases the device memory now (the array must not be used afterwards)."""
        self._finalizer()

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self.shape[0]

    def __repr__(self):
        return f"<ubique.DeviceArray {self.dtype}{list(self.shape)} on {self.device}>"


def to_device(array, device: str = "cuda") -> DeviceArray:
    """Copies `array` (anything numpy takes) to the GPU: `device` is "cuda" (the GPU that
    UBIQUE_CUDA_DEVICE names, else 0) or "cuda:N".

    Raises:
        RuntimeFailure: no driver or no such GPU (the message says what to do).
    """
    from ubique.runtime.cuda import _DPTR, _Context, _device_index

    index = _device_index() if device == "cuda" else _parse_device(device)
    ctx = _Context.get(index)
    ctx.make_current()
    host = np.asarray(array)
    if not host.dtype.isnative:
        host = host.astype(host.dtype.newbyteorder("="))
    host = np.ascontiguousarray(host).reshape(host.shape)  # (ascontiguousarray makes 0-d arrays 1-d)
    out = DeviceArray(ctx, host.shape, host.dtype)
    if out.nbytes:
        ctx.drv.call("cuMemcpyHtoD", _DPTR(out.ptr), host.ctypes.data, out.nbytes, what="to_device")
    return out


def _parse_device(device: str) -> int:
    name, _, index = device.partition(":")
    if name != "cuda" or not index.isdigit():
        raise RuntimeFailure(f"unknown device {device!r}: use 'cuda' or 'cuda:N' (N: the GPU's index)")
    return int(index)


class DeviceInput:
    """A model input already in GPU memory: where it is, what it holds, which stream wrote it."""

    def __init__(self, ptr: int, shape: tuple, dtype: np.dtype, stream: int | None, keep):
        self.ptr, self.shape, self.dtype, self.stream = ptr, shape, dtype, stream
        self.keep = keep  # (the object that owns the memory, alive while it is read)

    def wait(self, drv) -> None:
        """Waits for the producer's stream (the interface's `stream`) before the data is read: a
        handle, or 1 and 2 for the default streams, which are the driver's handles for them too
        (CU_STREAM_LEGACY, CU_STREAM_PER_THREAD)."""
        if self.stream is not None:
            drv.call("cuStreamSynchronize", _c.c_void_p(self.stream), what="the input's stream")


def device_input(obj, name: str, ctx) -> DeviceInput | None:
    """`obj` as a DeviceInput when it lives in GPU memory (a DeviceArray or any object with a
    `__cuda_array_interface__`), else None.

    Raises:
        ShapeError: strided (not C-contiguous) or masked data.
        DTypeError: an element type numpy does not know.
        RuntimeFailure: the data is on another GPU than the model.
    """
    if isinstance(obj, DeviceArray):
        if obj._ctx is not ctx:
            raise RuntimeFailure(f"input {name!r} is on {obj.device}, the model runs on cuda:{ctx.index}; "
                                 f"copy it with ub.to_device(x.numpy(), 'cuda:{ctx.index}')")
        return DeviceInput(obj.live_ptr(), obj.shape, obj.dtype, None, obj)
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is None:
        return None
    shape = tuple(int(d) for d in cai["shape"])
    try:
        dtype = np.dtype(cai["typestr"])
    except TypeError:
        raise DTypeError(f"input {name!r}: unknown element type {cai['typestr']!r} in its "
                         "__cuda_array_interface__") from None
    if cai.get("mask") is not None:
        raise ShapeError(f"input {name!r}: masked device arrays are not supported; pass the data alone")
    strides = cai.get("strides")
    if strides is not None and 0 not in shape and any(  # (the stride of a size-1 axis does not matter)
            s != c and d != 1 for s, c, d in zip(strides, _c_strides(shape, dtype.itemsize), shape)):
        raise ShapeError(f"input {name!r}: the device array is not C-contiguous (strides {tuple(strides)}); make a "
                         "contiguous copy first (torch: .contiguous(), cupy: cupy.ascontiguousarray)")
    ptr = int(cai["data"][0] or 0)
    if ptr and ctx.drv.has("cuPointerGetAttribute"):
        ordinal = _c.c_int(-1)
        ctx.drv.call("cuPointerGetAttribute", _c.byref(ordinal), CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                     _c.c_uint64(ptr), what=f"input {name!r}")
        if ordinal.value != ctx.index:
            raise RuntimeFailure(f"input {name!r} is on cuda:{ordinal.value}, the model runs on cuda:{ctx.index}")
    stream = cai.get("stream") if cai.get("version", 0) >= 3 else None
    if stream == 0:
        raise RuntimeFailure(f"input {name!r}: its __cuda_array_interface__ gives stream 0, which version 3 of the "
                             "interface disallows (1: the legacy default stream, 2: per-thread, else a handle)")
    return DeviceInput(ptr, shape, dtype, stream, obj)


def _c_strides(shape: tuple, itemsize: int) -> tuple:
    strides, step = [], itemsize
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))
