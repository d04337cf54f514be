"""The on-disk cache for compiled code: verified, atomically published folders keyed by hash.

An entry is a folder `cache_root()/<namespace>/<key[:2]>/<key>` holding the cached files and
a `manifest.json` with the caller's metadata and each file's sha256. Entries are written to
a temporary folder and renamed into place, so a reader sees a complete entry or none. Every
read re-hashes the files: an entry that does not match its manifest is deleted, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from ubique.errors import CacheError

__all__ = ["cache_root", "DiskCache", "read_meta"]

MANIFEST = "manifest.json"
_FORMAT = 1
_HEX = frozenset("0123456789abcdef")


def cache_root() -> Path:
    """The cache folder: `$UBIQUE_CACHE_DIR`, else `$XDG_CACHE_HOME/ubique`, else
    `~/.cache/ubique`; created if missing.

    Raises:
        CacheError: the folder cannot be created.
    """
    env = os.environ.get("UBIQUE_CACHE_DIR")
    if env:
        root = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "ubique"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(
            f"cannot create the ubique cache folder {str(root)!r}: {exc}; "
            "set UBIQUE_CACHE_DIR to a writable folder"
        ) from exc
    return root


def read_meta(entry: Path) -> dict[str, Any]:
    """The metadata stored with an entry folder returned by DiskCache.get or put."""
    return json.loads((entry / MANIFEST).read_text())["meta"]


class DiskCache:
    """One namespace of the on-disk cache, e.g. DiskCache("modules").

    The root is looked up on every call (unless given), so a cache made at import time
    still follows a later change of UBIQUE_CACHE_DIR.
    """

    def __init__(self, namespace: str, root: Path | None = None) -> None:
        if not namespace or "/" in namespace or namespace.startswith("."):
            raise CacheError(f"bad cache namespace {namespace!r}: use a plain folder name")
        self.namespace = namespace
        self._root = root

    def entry_path(self, key: str) -> Path:
        """Where the entry for `key` lives (whether or not it exists)."""
        _check_key(key)
        root = self._root if self._root is not None else cache_root()
        return root / self.namespace / key[:2] / key

    def get(self, key: str) -> Path | None:
        """The folder of the complete, verified entry for `key`, else None.

        An entry whose files do not match their recorded sha256 is deleted.
        """
        entry = self.entry_path(key)
        if not entry.is_dir():
            return None
        if _verify(entry, key):
            return entry
        _remove(entry)
        return None

    def remove(self, key: str) -> None:
        """Deletes an entry (if present), e.g. one that verified but failed to load."""
        _check_key(key)
        entry = self.entry_path(key)
        if entry.exists():
            _remove(entry)

    def put(self, key: str, files: dict[str, Any], meta: dict[str, Any]) -> Path:
        """Store `files` (name -> content: bytes, or a list of buffers written one after
        another, so large weights are never joined into one copy) and JSON-serialisable
        `meta` under `key`.

        Returns the entry folder. If a verified entry for `key` already exists (e.g. written
        by a concurrent process), it is kept and this put's content is discarded.

        Raises:
            CacheError: bad key or file name, meta not JSON-serialisable, or an OS error.
        """
        entry = self.entry_path(key)
        for name in files:
            if not name or name == MANIFEST or name.startswith(".") or "/" in name \
                    or os.sep in name:
                raise CacheError(f"bad cache file name {name!r}: use a plain file name "
                                 f"other than {MANIFEST!r}")
        manifest = {
            "format": _FORMAT,
            "key": key,
            "meta": meta,
            "files": {name: _digest(data) for name, data in files.items()},
        }
        try:
            manifest_text = json.dumps(manifest, indent=1, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise CacheError(f"cache metadata for {key} is not JSON-serialisable: {exc}") \
                from exc

        tmp = entry.with_name(f".tmp-{key}-{uuid.uuid4().hex}")
        try:
            tmp.mkdir(parents=True)
            for name, data in files.items():
                with open(tmp / name, "wb") as f:
                    for chunk in (data if isinstance(data, list) else [data]):
                        f.write(chunk)
            (tmp / MANIFEST).write_text(manifest_text)
            # Two attempts: the second runs after removing a corrupt entry in the way.
            for _ in range(2):
                try:
                    os.rename(tmp, entry)
                    return entry
                except OSError:
                    if not entry.exists():
                        raise
                if _verify(entry, key):
                    return entry
                _remove(entry)
            raise CacheError(f"could not publish cache entry {entry}: it keeps being "
                             "replaced by an invalid one")
        except OSError as exc:
            raise CacheError(f"cannot write cache entry {entry}: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _check_key(key: str) -> None:
    if len(key) < 3 or not _HEX.issuperset(key):
        raise CacheError(f"bad cache key {key!r}: expected a lower-case hex string")


def _verify(entry: Path, key: str) -> bool:
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
        if manifest.get("format") != _FORMAT or manifest.get("key") != key:
            return False
        for name, digest in manifest["files"].items():
            if _file_digest(entry / name) != digest:
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


def _remove(entry: Path) -> None:
    # Rename first so a concurrent reader never sees a half-deleted folder under the key.
    trash = entry.with_name(f".trash-{entry.name}-{uuid.uuid4().hex}")
    try:
        os.rename(entry, trash)
    except OSError:
        return  # already gone (another process removed or replaced it)
    shutil.rmtree(trash, ignore_errors=True)


def _file_digest(path: Path) -> str:
    """sha256 of a file, read in chunks (a large weights file is never held in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _digest(data) -> str:
    h = hashlib.sha256()
    for chunk in (data if isinstance(data, list) else [data]):
        h.update(chunk)
    return h.hexdigest()
