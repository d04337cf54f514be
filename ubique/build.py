"""Graph -> runnable Executable, through an in-memory cache and an on-disk cache.

The disk cache key covers the graph (with its constants), the target and the
compiler revision, so a second process running the same function on the same
shapes loads the shared library instead of compiling. `cache_info()` counts what
happened in this process.
"""
from __future__ import annotations

import functools
import hashlib
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ubique.runtime.memory import DynamicMemory
from ubique.compiler.pipeline import COMPILER_REVISION, Program, Signature, compile_graph
from ubique import report
from ubique.errors import UbiqueError, UnsupportedOpError
from ubique.ir.dtypes import dtype_of
from ubique.ir.graph import Graph
from ubique.ir.serialize import dumps
from ubique.runtime.cache import DiskCache, read_meta
from ubique.runtime.contract import DimContract
from ubique.runtime.executable import Executable, link_program_object
from ubique.targets.registry import get_target
from ubique.targets.target import Target

_lock = threading.Lock()
# Most recently used executables; older ones are dropped (and their libraries unloaded
# once nothing else holds them), so long-running processes do not accumulate mappings.
MEMORY_CACHE_SIZE = 256
_memory: "OrderedDict[str, Executable]" = OrderedDict()
_building: dict[str, threading.Lock] = {}  # per-key locks of builds in progress
_stats = {"compiled": 0, "memory_hits": 0, "disk_hits": 0, "disk_writes": 0}
_ALIGN = 64


def cache_info() -> dict[str, int]:
    """Counts for this process: compiled, memory_hits, disk_hits, disk_writes."""
    return dict(_stats)


def count_memory_hit() -> None:
    _stats["memory_hits"] += 1


@functools.lru_cache(maxsize=None)
def compiler_fingerprint() -> str:
    """Hash of the compiler's own sources: any change to them invalidates cached code."""
    import llvmlite

    import ubique
    from ubique.packages import package_dirs

    h = hashlib.sha256(f"{ubique.__version__} r{COMPILER_REVISION} llvmlite {llvmlite.__version__}".encode())
    for folder in package_dirs():
        for f in sorted(folder.rglob("*")):
            if f.suffix in (".py", ".c", ".h"):
                h.update(f.name.encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def graph_key(graph: Graph, target: Target, dims: dict | None = None) -> str:
    return _key(graph_digest(graph), target, dims, graph)


def graph_digest(graph: Graph) -> str:
    """Hash of the graph with its constants (arrays enter as digests of their bytes: no
    base64 copy of large weights)."""
    return hashlib.sha256(dumps(graph, locations=False, store=_array_digest).encode()).hexdigest()


def plugin_fingerprint(graph: Graph, target: Target) -> str:
    """Of what plug-ins contribute to `graph`'s code for `target`: the backend, the custom
    passes and the definitions of the custom ops it uses (they change code without changing
    ubique's own sources)."""
    from ubique import custom_ops
    from ubique.codegen.backend import get_backend
    from ubique.compiler import pass_manager

    text = (f"{get_backend(target.codegen, target).fingerprint()}|{pass_manager.fingerprint(target)}|"
            f"{custom_ops.fingerprint(graph)}")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _key(digest: str, target: Target, dims: dict | None, graph: Graph) -> str:
    from ubique.compiler import tuning

    # tuning records change schedules: code compiled before a tune is not reused after it
    text = (f"{compiler_fingerprint()}|{target.key}|{tuning.records_digest(target)}|"
            f"{plugin_fingerprint(graph, target)}|{sorted((dims or {}).items())}|{digest}")
    return hashlib.sha256(text.encode()).hexdigest()


def _array_digest(a: np.ndarray) -> str:
    a = np.require(a, requirements="C")  # (ascontiguousarray would make a 0-d array 1-d)
    return f"{a.dtype.str}{list(a.shape)}:{hashlib.sha256(a.reshape(-1).view(np.uint8)).hexdigest()}"


def compile_program(graph: Graph, target=None, dims: dict | None = None) -> Program:
    """Compiles (always) and remembers the result in the memory cache."""
    target = get_target(target)
    t0 = time.perf_counter()
    program = compile_graph(graph, target, dims=dims)
    _stats["compiled"] += 1
    key = graph_key(graph, target, dims)
    if target.device != "cpu":  # code for another device (PTX...): nothing to link or cache here
        report.record("compiled", graph.name, target.name, key, f"compile_program: target {target.name} runs on "
                      f"device {target.device} (not cached)", program=program, seconds=time.perf_counter() - t0)
        return program
    t_link = time.perf_counter()
    executable = _store(key, program)
    _remember(key, executable)
    report.record("compiled", graph.name, target.name, key, "compile_program always compiles (it returns the Program)",
                  program=program, seconds=time.perf_counter() - t0, link=time.perf_counter() - t_link)
    return program


def build(graph: Graph, target=None, dims: dict | None = None) -> Executable:
    """An Executable for `graph`: from memory, from disk, or freshly compiled and stored.
    `dims` declares symbolic dimensions (ints specialise, (lo, hi) pairs bound them)."""
    target = get_target(target)
    if not target.runs_natively:
        raise UnsupportedOpError(f"target {target.name!r} does not run on this machine; ub.compile(graph, "
                                 f"target={target.name!r}) runs it under its emulator, and ahead-of-time builds "
                                 "deploy it")
    digest = graph_digest(graph)
    key = _key(digest, target, dims, graph)
    ex = _lookup(key)
    if ex is None:
        with _key_lock(key):  # threads asking for the same graph compile it once
            ex = _lookup(key)
            if ex is None:
                return _build_uncached(graph, target, key, dims, digest)
    report.record("memory_hit", graph.name, target.name, key)
    return ex


def _lookup(key: str) -> Executable | None:
    with _lock:
        ex = _memory.get(key)
        if ex is not None:
            _stats["memory_hits"] += 1
            _memory.move_to_end(key)
        return ex


def _key_lock(key: str) -> threading.Lock:
    with _lock:
        return _building.setdefault(key, threading.Lock())


def _build_uncached(graph: Graph, target: Target, key: str, dims: dict | None, digest: str) -> Executable:
    cache = DiskCache("modules")
    why = ("not in the memory or disk cache" if not cache.entry_path(key).is_dir() else
           "the disk cache entry did not match its sha256 (corrupt or partly written): deleted")
    entry = cache.get(key)
    ex = None
    if entry is not None:
        try:
            ex = _load_entry(entry, _graph_arrays(graph, read_meta(entry)))
            _stats["disk_hits"] += 1
            report.record("disk_hit", graph.name, target.name, key)
        except (OSError, ValueError, KeyError, UbiqueError) as e:
            # verified bytes that still do not load (built for another machine, truncated
            # before hashing...): never trusted, rebuilt below
            why = f"disk cache entry failed to load: {type(e).__name__}: {e}"
            cache.remove(key)
    changed = report.dims_reason(digest, target.key, dims)
    if ex is None:
        t0 = time.perf_counter()
        program = compile_graph(graph, target, dims=dims)
        _stats["compiled"] += 1
        t_link = time.perf_counter()
        ex = _store(key, program)
        report.record("compiled", graph.name, target.name, key, f"{changed}; {why}" if changed else why,
                      program=program, seconds=time.perf_counter() - t0, link=time.perf_counter() - t_link)
    _remember(key, ex)
    return ex


def _remember(key: str, ex: Executable) -> None:
    with _lock:
        _building.pop(key, None)
        _memory[key] = ex
        _memory.move_to_end(key)
        while len(_memory) > MEMORY_CACHE_SIZE:
            _memory.popitem(last=False)


def _store(key: str, program: Program) -> Executable:
    with tempfile.TemporaryDirectory(prefix="ubique-") as tmp:
        so = link_program_object(program.obj, Path(tmp) / "module.so", program.target.link_libs)
        blob, specs = _pack_weights(program.weights)
        meta = {"entry": program.entry, "signature": program.signature.to_json(), "weights": specs,
                "workspace_size": program.memory.workspace_size, "num_kernels": program.num_kernels,
                "target": program.target.name, "contract": program.contract.to_json(),
                "dynamic_memory": program.dynamic_memory.to_json() if program.dynamic_memory else None}
        files = {"module.so": so.read_bytes(), "weights.bin": blob,
                 "graph_ir.txt": program.graph_ir.encode(), "loop_ir.txt": program.loop_ir.encode()}
    entry = DiskCache("modules").put(key, files, meta)
    _stats["disk_writes"] += 1
    return _load_entry(entry, program.weights)


def _pack_weights(weights: list[np.ndarray]) -> tuple[list, list[dict]]:
    """The weights file as a list of buffers (padding and views of the arrays: no copy)."""
    chunks, specs, size = [], [], 0
    for w in weights:
        pad = -size % _ALIGN
        if pad:
            chunks.append(b"\0" * pad)
            size += pad
        w = np.require(w, requirements="C")
        specs.append({"offset": size, "shape": list(w.shape), "dtype": dtype_of(w.dtype).short,
                      "digest": _array_digest(w)})
        chunks.append(w.reshape(-1).view(np.uint8))
        size += w.nbytes
    return chunks, specs


def _graph_arrays(graph: Graph, meta: dict) -> list[np.ndarray] | None:
    """The entry's weights taken from the graph's own constants where they are the same
    arrays (a model file's mapped weights are then not mapped a second time), else None."""
    specs = meta.get("weights", [])
    if not specs or not all("digest" in s for s in specs):
        return None
    wanted = {s["digest"] for s in specs}
    found = {}
    for n in graph.nodes:
        if n.op == "constant" and n.attrs["value"].nbytes >= 1 << 16:
            d = _array_digest(n.attrs["value"])
            if d in wanted:
                found[d] = n.attrs["value"]
    if len(found) < len(wanted):
        return None  # folded weights exist only in the entry
    return [found[s["digest"]] for s in specs]


def _load_entry(entry: Path, weights: list[np.ndarray] | None = None) -> Executable:
    """The executable of a cache entry; its weights are mapped from the entry's file
    unless the caller still holds them (`weights`, in entry order)."""
    meta = read_meta(entry)
    if weights is None:
        weights = []
        path = entry / "weights.bin"
        blob = np.memmap(path, np.uint8, "r") if path.stat().st_size else b""
        for spec in meta["weights"]:
            dt = dtype_of(spec["dtype"]).to_numpy()
            count = int(np.prod(spec["shape"], dtype=np.int64))
            weights.append(np.frombuffer(blob, dt, count, spec["offset"]).reshape(spec["shape"]))
    dynamic = meta.get("dynamic_memory")
    return Executable(entry / "module.so", meta["entry"], Signature.from_json(meta["signature"]),
                      weights, meta["workspace_size"], DimContract.from_json(meta["contract"]),
                      DynamicMemory.from_json(dynamic) if dynamic else None)
