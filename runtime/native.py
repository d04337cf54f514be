"""Build, load and call the native runtime (native/ubique_runtime.c) through cffi's ABI mode.

On first use the C runtime is compiled with the host C compiler into
`cache_root()/native/<sha256 of sources + compiler>/libubique_runtime.so` and loaded with
RTLD_GLOBAL, so emitted kernels resolve `ubq_set_error` from it. `call_entry` is the one
call per model run; it hands prebuilt argument arrays straight to `ubq_call`.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cffi

from ubique.errors import RuntimeFailure
from ubique.runtime.cache import cache_root
from ubique.runtime.toolchain import compile_c_shared, find_cc

__all__ = [
    "ffi",
    "lib",
    "ThreadPool",
    "default_pool",
    "set_num_threads",
    "call_entry",
    "entry_pointer",
    "make_pointer_array",
    "make_dims_array",
    "last_error",
]

NATIVE_DIR = Path(__file__).resolve().parent / "native"
_SOURCE = NATIVE_DIR / "ubique_runtime.c"
_HEADER = NATIVE_DIR / "ubique_runtime.h"
_LIB_NAME = "libubique_runtime.so"
_CFLAGS = ("-std=c99", "-pthread", "-Wall", "-Wextra")

ffi = cffi.FFI()
ffi.cdef(
    """
    typedef void (*ubq_task_fn)(int64_t begin, int64_t end, void *closure);
    typedef struct ubq_ctx {
        int32_t abi_version;
        int32_t num_threads;
        void *pool;
        int32_t (*parallel_for)(struct ubq_ctx *ctx, ubq_task_fn fn, void *closure, int64_t n);
        void *workspace;
        int64_t workspace_size;
    } ubq_ctx;
    typedef int32_t (*ubq_entry_fn)(void *const *args, const int64_t *dims, ubq_ctx *ctx);
    typedef struct ubq_pool ubq_pool;

    const char *ubq_last_error(void);
    void ubq_set_error(const char *msg);
    ubq_pool *ubq_pool_create(int32_t num_threads);
    void ubq_pool_destroy(ubq_pool *pool);
    int32_t ubq_pool_num_threads(const ubq_pool *pool);
    void ubq_ctx_init(ubq_ctx *ctx, ubq_pool *pool);
    int32_t ubq_call(ubq_entry_fn fn, void *const *args, const int64_t *dims, ubq_pool *pool,
                     int64_t workspace_size);
    int64_t ubq_plan_memory(int64_t n, const int64_t *sizes, const int32_t *first, const int32_t *last,
                            int64_t *offsets);
    """
)

_lock = threading.Lock()
_lib: Any = None
_default: ThreadPool | None = None


def lib() -> Any:
    """The loaded runtime library (built on first use, then cached for the process).

    Raises:
        ToolchainError: the runtime had to be built and no working C compiler was found.
    """
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                _lib = _load()
    return _lib


def _load() -> Any:
    cc = find_cc()
    digest = hashlib.sha256()
    flags_text = " ".join(_CFLAGS).encode()
    for part in (_SOURCE.read_bytes(), _HEADER.read_bytes(), cc.encode(), flags_text):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    path = cache_root() / "native" / digest.hexdigest() / _LIB_NAME
    flags = ffi.RTLD_NOW | ffi.RTLD_GLOBAL
    if path.is_file():
        try:
            return ffi.dlopen(str(path), flags)
        except OSError:
            pass  # truncated or foreign file: rebuild it below
    compile_c_shared([_SOURCE], path, (*_CFLAGS, "-I", str(NATIVE_DIR)), libs=(), cc=cc)
    return ffi.dlopen(str(path), flags)


def last_error() -> str:
    """The calling thread's last native error message ("" if none)."""
    return ffi.string(lib().ubq_last_error()).decode("utf-8", "replace")


class ThreadPool:
    """A native pool of `num_threads` threads (the caller counts as one); 0 means all CPUs.

    The workers are joined when the pool is garbage-collected.
    """

    def __init__(self, num_threads: int = 0) -> None:
        native = lib()
        ptr = native.ubq_pool_create(num_threads)
        if ptr == ffi.NULL:
            raise RuntimeFailure(f"cannot create a thread pool: {last_error()}")
        self._ptr = ffi.gc(ptr, native.ubq_pool_destroy)
        self._num_threads = int(native.ubq_pool_num_threads(ptr))

    @property
    def num_threads(self) -> int:
        return self._num_threads

    def __repr__(self) -> str:
        return f"ThreadPool(num_threads={self._num_threads})"


def _default_size() -> int:
    env = os.environ.get("UBIQUE_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"UBIQUE_NUM_THREADS={env!r} is not a positive integer")
        return n
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))  # respects taskset/cgroup CPU pinning
    return os.cpu_count() or 1


def default_pool() -> ThreadPool:
    """The process-wide pool: UBIQUE_NUM_THREADS threads if set, else one per usable CPU."""
    global _default
    pool = _default
    if pool is None:
        with _lock:
            if _default is None:
                _default = ThreadPool(_default_size())
            pool = _default
    return pool


def set_num_threads(n: int) -> None:
    """Replace the default pool with one of `n` threads (n >= 1)."""
    global _default
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: need an integer >= 1, got {n!r}")
    pool = ThreadPool(n)
    with _lock:
        _default = pool  # a run still using the old pool keeps it alive until it returns


def _forget_default_pool() -> None:
    # A forked child has no worker threads; the next default_pool() makes a fresh pool.
    global _default
    _default = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_default_pool)


def entry_pointer(address: int) -> Any:
    """A cffi `ubq_entry_fn` for a function address; build it once and reuse it."""
    return ffi.cast("ubq_entry_fn", address)


def make_pointer_array(n: int) -> Any:
    """A zeroed cffi `void *[n]` for an entry's buffer pointers."""
    return ffi.new("void *[]", n)


def make_dims_array(values: Iterable[int]) -> Any:
    """A cffi `int64_t[]` holding `values` (an entry's symbolic dimension values)."""
    return ffi.new("int64_t[]", list(values))


def call_entry(
    fn: Any, args_ptr: Any, dims_ptr: Any, workspace_size: int, pool: ThreadPool | None = None
) -> None:
    """Run one ABI entry: `fn(args_ptr, dims_ptr, ctx)` with a workspace, through ubq_call.

    Args:
        fn: the entry, as an int address or (cheaper per call) an `entry_pointer(...)`.
        args_ptr: a cffi `void *[]` (see make_pointer_array).
        dims_ptr: a cffi `int64_t[]` (see make_dims_array), or ffi.NULL.
        workspace_size: scratch bytes the entry needs (0 for none).
        pool: the thread pool; default_pool() if None.

    Raises:
        RuntimeFailure: the entry (or the runtime) returned a nonzero status.
    """
    native = _lib if _lib is not None else lib()
    if pool is None:
        pool = _default if _default is not None else default_pool()
    if type(fn) is int:
        fn = ffi.cast("ubq_entry_fn", fn)
    status = native.ubq_call(fn, args_ptr, dims_ptr, pool._ptr, workspace_size)
    if status:
        message = last_error() or "no error message was set"
        raise RuntimeFailure(f"native entry failed with status {status}: {message}")
