"""Tests for the native runtime (thread pool, ubq_call, errors), the disk cache and the toolchain.

Kernels here are tiny C entries that follow the ABI in runtime/native/ubique_runtime.h,
compiled with toolchain.compile_c_shared and called through native.call_entry.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ubique.errors import CacheError, RuntimeFailure, ToolchainError
from ubique.runtime import cache, native, toolchain
from ubique.runtime.cache import DiskCache, cache_root, read_meta

KERNELS_C = r"""
#include <stdio.h>
#include <string.h>
#include "ubique_runtime.h"

typedef struct { int32_t *hits; int64_t *begin_of; } fill_args;

static void fill_task(int64_t begin, int64_t end, void *closure) {
    fill_args *a = (fill_args *)closure;
    for (int64_t i = begin; i < end; i++) {
        __atomic_fetch_add(&a->hits[i], 1, __ATOMIC_RELAXED);
        a->begin_of[i] = begin;
    }
}

/* args: int32 hits[n], int64 begin_of[n]; dims: n */
int32_t fill_entry(void *const *args, const int64_t *dims, ubq_ctx *ctx) {
    fill_args a = {(int32_t *)args[0], (int64_t *)args[1]};
    return ctx->parallel_for(ctx, fill_task, &a, dims[0]);
}

typedef struct { ubq_ctx *ctx; int32_t *hits; int64_t cols; } nest_args;
typedef struct { int32_t *row; } row_args;

static void row_task(int64_t begin, int64_t end, void *closure) {
    row_args *r = (row_args *)closure;
    for (int64_t j = begin; j < end; j++) __atomic_fetch_add(&r->row[j], 1, __ATOMIC_RELAXED);
}

static void outer_task(int64_t begin, int64_t end, void *closure) {
    nest_args *a = (nest_args *)closure;
    for (int64_t i = begin; i < end; i++) {
        row_args r = {a->hits + i * a->cols};
        a->ctx->parallel_for(a->ctx, row_task, &r, a->cols);
    }
}

/* args: int32 hits[rows * cols]; dims: rows, cols */
int32_t nested_entry(void *const *args, const int64_t *dims, ubq_ctx *ctx) {
    nest_args a = {ctx, (int32_t *)args[0], dims[1]};
    return ctx->parallel_for(ctx, outer_task, &a, dims[0]);
}

/* dims: expected, got */
int32_t fail_entry(void *const *args, const int64_t *dims, ubq_ctx *ctx) {
    char msg[128];
    (void)args; (void)ctx;
    snprintf(msg, sizeof msg, "fail_entry: expected %lld, got %lld",
             (long long)dims[0], (long long)dims[1]);
    ubq_set_error(msg);
    return 42;
}

/* args: int64 out[4] = workspace address, workspace size, abi version, num_threads */
int32_t ctx_entry(void *const *args, const int64_t *dims, ubq_ctx *ctx) {
    int64_t *out = (int64_t *)args[0];
    (void)dims;
    out[0] = (int64_t)(intptr_t)ctx->workspace;
    out[1] = ctx->workspace_size;
    out[2] = ctx->abi_version;
    out[3] = ctx->num_threads;
    if (ctx->workspace != NULL) memset(ctx->workspace, 0xab, (size_t)ctx->workspace_size);
    return 0;
}
"""


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    native.lib()  # loaded RTLD_GLOBAL first, so the kernels resolve ubq_set_error
    folder = tmp_path_factory.mktemp("kernels")
    src = folder / "kernels.c"
    src.write_text(KERNELS_C)
    so = toolchain.compile_c_shared(
        [src], folder / "kernels.so", extra_flags=("-std=c99", "-I", str(native.NATIVE_DIR))
    )
    dll = ctypes.CDLL(str(so))
    names = ("fill_entry", "nested_entry", "fail_entry", "ctx_entry")
    return {name: ctypes.cast(getattr(dll, name), ctypes.c_void_p).value for name in names}


def ptr(arr: np.ndarray):
    return native.ffi.cast("void *", arr.ctypes.data)


def expected_begins(n: int, threads: int) -> np.ndarray:
    """The documented chunking: c = min(n, threads) near-equal chunks, larger ones first."""
    chunks = min(n, threads)
    q, r = divmod(n, chunks)
    begins = []
    for k in range(chunks):
        begin = k * q + min(k, r)
        begins += [begin] * (q + (k < r))
    return np.array(begins, dtype=np.int64)


def run_fill(address: int, n: int, pool: native.ThreadPool | None) -> tuple[np.ndarray, ...]:
    hits = np.zeros(max(n, 1), dtype=np.int32)
    begin_of = np.full(max(n, 1), -1, dtype=np.int64)
    args = native.make_pointer_array(2)
    args[0], args[1] = ptr(hits), ptr(begin_of)
    native.call_entry(address, args, native.make_dims_array([n]), 0, pool)
    return hits[:n], begin_of[:n]


# ---- native library and thread pool ----------------------------------------------------


def test_runtime_source_compiles_without_warnings(tmp_path: Path) -> None:
    cc = toolchain.find_cc()
    src = native.NATIVE_DIR / "ubique_runtime.c"
    flags = "-O2 -Wall -Wextra -Werror -std=c99 -pthread -fPIC -c".split()
    proc = subprocess.run([cc, *flags, str(src), "-o", str(tmp_path / "rt.o")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_library_builds_and_loads() -> None:
    lib = native.lib()
    assert native.lib() is lib
    lib.ubq_set_error(b"hello from python")
    assert native.last_error() == "hello from python"
    ctx = native.ffi.new("ubq_ctx *")
    lib.ubq_ctx_init(ctx, native.ffi.NULL)
    assert (ctx.abi_version, ctx.num_threads, ctx.workspace) == (1, 1, native.ffi.NULL)


def test_library_is_cached_under_cache_root() -> None:
    built = list((cache_root() / "native").glob("*/libubique_runtime.so"))
    assert built


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 1000])
def test_parallel_for_covers_each_index_once(kernels, threads: int, n: int) -> None:
    pool = native.ThreadPool(threads)
    assert pool.num_threads == threads
    hits, begin_of = run_fill(kernels["fill_entry"], n, pool)
    assert (hits == 1).all()
    if n:
        np.testing.assert_array_equal(begin_of, expected_begins(n, threads))


def test_parallel_for_repeated_calls_and_entry_pointer(kernels) -> None:
    pool = native.ThreadPool(4)
    entry = native.entry_pointer(kernels["fill_entry"])
    hits = np.zeros(513, dtype=np.int32)
    begin_of = np.zeros(513, dtype=np.int64)
    args = native.make_pointer_array(2)
    args[0], args[1] = ptr(hits), ptr(begin_of)
    dims = native.make_dims_array([513])
    for _ in range(200):
        native.call_entry(entry, args, dims, 0, pool)
    assert (hits == 200).all()


def test_pool_shared_by_concurrent_callers(kernels) -> None:
    pool = native.ThreadPool(3)
    results: list[bool] = []

    def caller() -> None:
        for _ in range(50):
            hits, _ = run_fill(kernels["fill_entry"], 101, pool)
            results.append(bool((hits == 1).all()))

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 200 and all(results)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_nested_parallel_for_runs_inline(kernels, threads: int) -> None:
    rows, cols = 9, 37
    hits = np.zeros(rows * cols, dtype=np.int32)
    args = native.make_pointer_array(1)
    args[0] = ptr(hits)
    pool = native.ThreadPool(threads)
    worker = threading.Thread(
        target=native.call_entry,
        args=(kernels["nested_entry"], args, native.make_dims_array([rows, cols]), 0, pool),
        daemon=True,  # if it deadlocks, do not hang the interpreter's exit
    )
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "nested parallel_for deadlocked"
    assert (hits == 1).all()


def test_nonzero_status_raises_runtime_failure(kernels) -> None:
    with pytest.raises(RuntimeFailure, match="status 42: fail_entry: expected 3, got 4"):
        native.call_entry(kernels["fail_entry"], native.make_pointer_array(0),
                          native.make_dims_array([3, 4]), 0)
    # The message is cleared by the next successful call.
    out = np.zeros(4, dtype=np.int64)
    args = native.make_pointer_array(1)
    args[0] = ptr(out)
    native.call_entry(kernels["ctx_entry"], args, native.ffi.NULL, 0)
    assert native.last_error() == ""


def test_negative_workspace_is_rejected(kernels) -> None:
    with pytest.raises(RuntimeFailure, match="workspace_size is negative"):
        native.call_entry(kernels["ctx_entry"], native.make_pointer_array(1),
                          native.ffi.NULL, -1)


def test_workspace_is_aligned_and_reused(kernels) -> None:
    out = np.zeros(4, dtype=np.int64)
    args = native.make_pointer_array(1)
    args[0] = ptr(out)
    pool = native.ThreadPool(2)

    native.call_entry(kernels["ctx_entry"], args, native.ffi.NULL, 0, pool)
    assert out[0] == 0 and out[1] == 0  # no workspace asked, none given
    assert (out[2], out[3]) == (1, 2)

    native.call_entry(kernels["ctx_entry"], args, native.ffi.NULL, 4096, pool)
    first = int(out[0])
    assert first % 64 == 0 and out[1] == 4096
    native.call_entry(kernels["ctx_entry"], args, native.ffi.NULL, 1000, pool)
    assert int(out[0]) == first and out[1] == 1000  # same cached buffer, no new allocation
    native.call_entry(kernels["ctx_entry"], args, native.ffi.NULL, 1 << 20, pool)
    assert int(out[0]) % 64 == 0 and out[1] == 1 << 20


def test_default_pool_and_set_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_default", None)
    monkeypatch.setenv("UBIQUE_NUM_THREADS", "3")
    assert native.default_pool().num_threads == 3
    assert native.default_pool() is native.default_pool()
    native.set_num_threads(2)
    assert native.default_pool().num_threads == 2
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="integer >= 1"):
            native.set_num_threads(bad)


def test_bad_num_threads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_default", None)
    monkeypatch.setenv("UBIQUE_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="UBIQUE_NUM_THREADS='many'"):
        native.default_pool()


def test_pool_of_zero_means_all_cpus() -> None:
    assert native.ThreadPool(0).num_threads == os.cpu_count()


def test_pool_too_large_raises() -> None:
    with pytest.raises(RuntimeFailure, match="5000 threads requested, at most 4096"):
        native.ThreadPool(5000)


def test_forked_child_does_not_deadlock(kernels) -> None:
    parent_pool = native.ThreadPool(3)
    run_fill(kernels["fill_entry"], 100, parent_pool)
    pid = os.fork()
    if pid == 0:  # child: the parent's pool has no workers here, the default pool is fresh
        ok = (run_fill(kernels["fill_entry"], 100, parent_pool)[0] == 1).all()
        ok &= (run_fill(kernels["fill_entry"], 100, None)[0] == 1).all()
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("forked child deadlocked in parallel_for")


# ---- disk cache ----------------------------------------------------------------------------

KEY = "ab" + "0123456789abcdef" * 3


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("UBIQUE_CACHE_DIR", str(root))
    return root


def test_cache_root_respects_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UBIQUE_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_root() == tmp_path / "explicit" and cache_root().is_dir()
    monkeypatch.delenv("UBIQUE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "ubique"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "ubique"


def test_cache_round_trip(cache_dir: Path) -> None:
    store = DiskCache("modules")
    assert store.get(KEY) is None
    entry = store.put(KEY, {"kernel.o": b"\x7fELF...", "sig.json": b"{}"}, {"target": "x86_64"})
    assert entry == cache_dir / "modules" / KEY[:2] / KEY
    assert store.get(KEY) == entry
    assert (entry / "kernel.o").read_bytes() == b"\x7fELF..."
    assert read_meta(entry) == {"target": "x86_64"}
    assert sorted(os.listdir(entry.parent)) == [KEY]  # no temp folders left behind


def test_cache_corrupt_entry_is_deleted(cache_dir: Path) -> None:
    store = DiskCache("modules")
    entry = store.put(KEY, {"kernel.o": b"abcdef"}, {})
    data = bytearray((entry / "kernel.o").read_bytes())
    data[2] ^= 0xFF
    (entry / "kernel.o").write_bytes(bytes(data))
    assert store.get(KEY) is None
    assert not entry.exists()
    assert os.listdir(entry.parent) == []


def test_cache_missing_manifest_is_a_miss(cache_dir: Path) -> None:
    store = DiskCache("modules")
    entry = store.put(KEY, {"kernel.o": b"abcdef"}, {})
    (entry / cache.MANIFEST).write_text("{not json")
    assert store.get(KEY) is None and not entry.exists()


def test_cache_put_keeps_existing_valid_entry(cache_dir: Path) -> None:
    store = DiskCache("modules")
    first = store.put(KEY, {"a.bin": b"first"}, {"n": 1})
    second = store.put(KEY, {"a.bin": b"second"}, {"n": 2})
    assert first == second
    assert (first / "a.bin").read_bytes() == b"first" and read_meta(first) == {"n": 1}
    assert sorted(os.listdir(first.parent)) == [KEY]


def test_cache_put_replaces_corrupt_entry(cache_dir: Path) -> None:
    store = DiskCache("modules")
    entry = store.put(KEY, {"a.bin": b"old"}, {})
    (entry / "a.bin").write_bytes(b"tampered")
    assert store.put(KEY, {"a.bin": b"new"}, {}) == entry
    assert (entry / "a.bin").read_bytes() == b"new"
    assert json.loads((entry / cache.MANIFEST).read_text())["key"] == KEY


def test_cache_concurrent_puts_of_one_key(cache_dir: Path) -> None:
    store = DiskCache("modules")
    payload = {f"f{i}.bin": os.urandom(50_000) for i in range(4)}
    entries: list[Path] = []
    threads = [threading.Thread(target=lambda: entries.append(store.put(KEY, payload, {})))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(entries)) == 1 and store.get(KEY) == entries[0]
    assert sorted(os.listdir(entries[0].parent)) == [KEY]


def test_cache_rejects_bad_keys_and_names(cache_dir: Path) -> None:
    store = DiskCache("modules")
    for bad in ("../../etc", "ABCDEF", "", "zz"):
        with pytest.raises(CacheError, match="bad cache key"):
            store.get(bad)
    for name in ("manifest.json", "../x", ".hidden"):
        with pytest.raises(CacheError, match="bad cache file name"):
            store.put(KEY, {name: b""}, {})
    with pytest.raises(CacheError, match="not JSON-serialisable"):
        store.put(KEY, {"a": b""}, {"x": object()})


# ---- toolchain -----------------------------------------------------------------------------


def test_find_cc_reports_missing_env_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/ubique-cc")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ToolchainError, match=r"CC is set to '/nonexistent/ubique-cc'.*"
                       r"install gcc \(apt-get install gcc\) or set CC"):
        toolchain.find_cc()


def test_find_cc_reports_what_was_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ToolchainError, match=r"none of cc, gcc, clang is on PATH.*apt-get"):
        toolchain.find_cc()


def test_find_cc_uses_env_with_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "gcc -m64")
    cc = toolchain.find_cc()
    assert os.path.isabs(cc.split()[0]) and cc.endswith(" -m64")


def test_compile_failure_carries_stderr(tmp_path: Path) -> None:
    src = tmp_path / "broken.c"
    src.write_text("int f(void) { return undeclared_name; }\n")
    out = tmp_path / "lib" / "broken.so"
    with pytest.raises(ToolchainError, match="undeclared_name"):
        toolchain.compile_c_shared([src], out)
    assert not out.exists() and os.listdir(out.parent) == []


def test_compile_then_link_objects(tmp_path: Path) -> None:
    src = tmp_path / "add.c"
    src.write_text("#include <math.h>\ndouble add_sqrt(double x) { return sqrt(x) + 1; }\n")
    obj = tmp_path / "add.o"
    subprocess.run([*toolchain.find_cc().split(), "-fPIC", "-c", str(src), "-o", str(obj)],
                   check=True)
    so = toolchain.link_shared([obj], tmp_path / "libadd.so")
    fn = ctypes.CDLL(str(so)).add_sqrt
    fn.restype, fn.argtypes = ctypes.c_double, [ctypes.c_double]
    assert fn(16.0) == 5.0


def test_runtime_build_error_names_fix(tmp_path: Path) -> None:
    # A fresh interpreter with no compiler and an empty cache: loading the runtime fails clearly.
    env = {**os.environ, "PATH": "", "UBIQUE_CACHE_DIR": str(tmp_path), "CC": ""}
    code = ("from ubique.runtime import native\n"
            "try:\n    native.lib()\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "ToolchainError" in proc.stdout and "apt-get install gcc" in proc.stdout


# -- run-time memory planning -------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 12), st.integers(0, 6)), min_size=1, max_size=24))
def test_native_planner_places_buffers_like_the_compiler(buffers):
    """ubq_plan_memory (used for symbolic sizes at run time) gives exactly the offsets of
    compiler/memory_plan.py's plan_memory (used for static sizes), and never overlaps two
    buffers that are live at the same time."""
    import numpy as np

    from ubique.compiler.memory_plan import ALIGN, plan_memory
    from ubique.runtime import native

    # buffer k is written at step first_k and last read `span` steps later
    steps = [([], k) for k in range(len(buffers))]
    firsts = []
    for k, (_, first, span) in enumerate(buffers):
        firsts.append(k)
        last = min(k + span, len(buffers) - 1)
        for s in range(k + 1, last + 1):
            steps[s][0].append(k)
    sizes = {k: b[0] for k, b in enumerate(buffers)}
    expected = plan_memory(steps, sizes, set())
    first = np.array(firsts, np.int32)
    last = np.array([max([k] + [s for s, (reads, _) in enumerate(steps) if k in reads]) for k in range(len(buffers))],
                    np.int32)
    offsets = np.zeros(len(buffers), np.int64)
    size_arr = np.array([sizes[k] for k in range(len(buffers))], np.int64)
    cast = native.ffi.cast
    total = native.lib().ubq_plan_memory(len(buffers), cast("int64_t *", size_arr.ctypes.data),
                                         cast("int32_t *", first.ctypes.data), cast("int32_t *", last.ctypes.data),
                                         cast("int64_t *", offsets.ctypes.data))
    assert total == expected.workspace_size
    assert [int(o) for o in offsets] == [expected.offsets[k] for k in range(len(buffers))]
    for a in range(len(buffers)):
        assert offsets[a] % ALIGN == 0
        for b in range(a):
            if not (last[a] < first[b] or last[b] < first[a]):
                ea, eb = offsets[a] + max(size_arr[a], 1), offsets[b] + max(size_arr[b], 1)
                assert ea <= offsets[b] or eb <= offsets[a]


def test_native_planner_refuses_negative_sizes():
    import numpy as np

    from ubique.runtime import native

    arr = np.array([-5], np.int64)
    z = np.zeros(1, np.int32)
    out = np.zeros(1, np.int64)
    cast = native.ffi.cast
    assert native.lib().ubq_plan_memory(1, cast("int64_t *", arr.ctypes.data), cast("int32_t *", z.ctypes.data),
                                        cast("int32_t *", z.ctypes.data), cast("int64_t *", out.ctypes.data)) == -1
    assert "negative" in native.last_error()
