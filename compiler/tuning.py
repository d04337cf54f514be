"""Tuning records: measured register-tile choices for contraction kernels, per target and CPU.

A record maps a kernel's signature (a hash of its unscheduled loop IR, which names its
shapes, dtypes and computation but not its position in a model) to the TileKnobs that
measured fastest. Compilation looks kernels up here (`lookup`); `ubique tune` writes the
records. Records live in the cache folder, one JSON file per (target key, CPU name), so a
record measured on one machine is never used for another CPU. A record that cannot be read
(a damaged file, a malformed entry, knobs out of range) is ignored: compilation falls back to
the default schedule. docs/tuning.md describes the whole scheme.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from pathlib import Path

from ubique.compiler.schedule import TileKnobs
from ubique.ir import loop as L
from ubique.ir.loop_printer import print_kernel
from ubique.runtime.cache import cache_root
from ubique.targets.target import Target

_lock = threading.Lock()
_loaded: dict[Path, tuple] = {}  # path -> ((mtime_ns, size) or None, records)

# rows beyond this are never a register tile (a record asking for more is ignored)
MAX_ROWS = 64


def kernel_signature(kernel: L.Kernel) -> str:
    """Identifies a kernel's computation independent of its name."""
    text = print_kernel(L.Kernel("k", kernel.params, kernel.dims, kernel.body))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def records_path(target: Target) -> Path:
    cpu = re.sub(r"[^A-Za-z0-9_.-]", "_", target.cpu or "cpu")
    return cache_root() / "tuning" / f"{target.key}-{cpu}.json"


def _records(path: Path) -> dict[str, dict]:
    """The records in `path` ({} when missing or unreadable); re-read when the file changes,
    so a process sees what a `ubique tune` running beside it stored."""
    try:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    with _lock:
        cached = _loaded.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        data: dict = {}
        if stamp is not None:
            try:
                raw = json.loads(path.read_text())
                data = raw if isinstance(raw, dict) else {}
            except (OSError, ValueError):
                data = {}
        _loaded[path] = (stamp, data)
        return data


def _knobs(rec) -> TileKnobs | None:
    """A record's knobs, or None when it is malformed (never trusted blindly: a bad record
    would otherwise break compilation)."""
    if not isinstance(rec, dict):
        return None
    rows, vectors = rec.get("rows"), rec.get("vectors")
    if rows is not None and not (type(rows) is int and 1 <= rows <= MAX_ROWS):
        return None
    if vectors is not None and vectors not in (1, 2, 4):
        return None
    if rows is None and vectors is None:
        return None
    return TileKnobs(rows=rows, vectors=None if vectors is None else int(vectors))


def lookup(target: Target, kernel: L.Kernel) -> TileKnobs | None:
    """The recorded knobs for this kernel on this target and CPU, if `ubique tune` measured it."""
    records = _records(records_path(target))
    if not records:
        return None
    return _knobs(records.get(kernel_signature(kernel)))


def records(target: Target) -> dict[str, TileKnobs]:
    """Every valid record for this target and CPU: signature -> knobs."""
    out = {}
    for sig, rec in _records(records_path(target)).items():
        knobs = _knobs(rec)
        if knobs is not None:
            out[sig] = knobs
    return out


def records_digest(target: Target) -> str:
    """Identifies the records that compilation for `target` would use ("" when there are none):
    a compiled-code cache key that includes it is invalidated when `ubique tune` stores new records."""
    recs = records(target)
    if not recs:
        return ""
    text = json.dumps({k: v.to_json() for k, v in recs.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def store(target: Target, records: dict[str, TileKnobs | dict]) -> Path:
    """Adds records (signature -> knobs) for this target and CPU; written atomically."""
    path = records_path(target)
    data = dict(_records(path))
    for sig, knobs in records.items():
        data[sig] = knobs.to_json() if isinstance(knobs, TileKnobs) else dict(knobs)
    return _write(path, data)


def forget(target: Target, signatures) -> Path | None:
    """Removes the records of these kernel signatures (a re-tune found the default best)."""
    path = records_path(target)
    data = dict(_records(path))
    if not any(sig in data for sig in signatures):
        return None
    for sig in signatures:
        data.pop(sig, None)
    return _write(path, data)


def clear(target: Target | None = None) -> int:
    """Deletes the records of `target` (its CPU), or of every target and CPU; returns how many
    files were removed. (`ubique cache --clear` removes them too, with the compiled code.)"""
    paths = [records_path(target)] if target is not None else \
        sorted((cache_root() / "tuning").glob("*.json"))
    removed = 0
    for path in paths:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        with _lock:
            _loaded.pop(path, None)
    return removed


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with _lock:
        _loaded.pop(path, None)  # re-read (and re-stamped) on the next lookup
    return path
