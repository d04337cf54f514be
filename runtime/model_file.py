"""The .ubq model file: graph, weights and optional per-target code in one file.

Layout (all integers little-endian; specified for parser writers in docs/ubq-format.md):

    header   64 bytes   magic b"UBQMODEL", u32 version, u32 section count, u64 table offset
    table    128 bytes per section: u32 kind, u32 reserved, u64 offset, u64 length,
             32-byte sha256 of the section's bytes, 64-byte NUL-padded name, 8 reserved bytes
    sections each at a 64-byte aligned offset:
      MANIFEST  JSON: format, version, producer, inputs/outputs, and one entry per code section
      GRAPH     graph IR JSON (ir/serialize.py) whose constants are {"tensor": name} references
      WEIGHTS   safetensors: u64 header length, JSON header, tensor data (each tensor 64-byte
                aligned in the file, so it is memory-mapped in place)
      CODE      a shared library for one target (its name: the target key); loaded only when
                its sha256 and its target match

Reading maps the file; weights are numpy views of the mapping (never copied), and every
section's hash is checked before its bytes are used. Nothing in the file is executed except
a CODE section whose hash matches and whose target is this machine's.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ubique.errors import ModelError
from ubique.ir.dtypes import dtype_of

MAGIC = b"UBQMODEL"
VERSION = 1
HEADER = struct.Struct("<8sIIQ36x")           # 64 bytes
ENTRY = struct.Struct("<IIQQ32s64s8x")        # 128 bytes
MANIFEST, GRAPH, WEIGHTS, CODE = 1, 2, 3, 4
KIND_NAMES = {MANIFEST: "manifest", GRAPH: "graph", WEIGHTS: "weights", CODE: "code"}
ALIGN = 64

# safetensors dtype names <-> ubique dtype short names
_ST_DTYPES = {"f32": "F32", "f64": "F64", "f16": "F16", "bf16": "BF16", "i8": "I8", "u8": "U8",
              "i32": "I32", "i64": "I64", "bool": "BOOL"}
_FROM_ST = {v: k for k, v in _ST_DTYPES.items()}


@dataclass
class Section:
    kind: int
    offset: int
    length: int
    sha256: bytes
    name: str


def _pad(n: int) -> int:
    return -n % ALIGN


# -- writing ------------------------------------------------------------------------------------
def write(path, graph_json: str, weights: dict[str, np.ndarray], manifest: dict,
          code: list[tuple[str, bytes]] = ()) -> Path:
    """Writes a .ubq file atomically. `weights`: name -> array, referenced by the graph JSON;
    `code`: (target key, shared library bytes) per embedded target; `manifest["code"]` holds
    one metadata entry per code blob, in the same order."""
    path = Path(path)
    parts: list[tuple[int, str, bytes]] = [(GRAPH, "graph", graph_json.encode())]
    for key, blob in code:
        parts.append((CODE, key, blob))
    header_size = HEADER.size + ENTRY.size * (len(parts) + 2)  # + manifest, weights
    offset = header_size + _pad(header_size)
    # weights first among the sections: their alignment depends on their own offset only
    weights_offset = offset
    weights_blob = _safetensors(weights, weights_offset)
    offset += len(weights_blob) + _pad(len(weights_blob))
    sections, blobs = [(WEIGHTS, "weights", weights_offset, weights_blob)], [weights_blob]
    for kind, name, blob in parts:
        sections.append((kind, name, offset, blob))
        offset += len(blob) + _pad(len(blob))
    manifest_blob = json.dumps(manifest, sort_keys=True, indent=1).encode()
    sections.append((MANIFEST, "manifest", offset, manifest_blob))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, VERSION, len(sections), HEADER.size))
            for kind, name, off, blob in sections:
                f.write(ENTRY.pack(kind, 0, off, len(blob), hashlib.sha256(blob).digest(), name.encode()[:64]))
            for kind, name, off, blob in sections:
                f.write(b"\0" * (off - f.tell()))
                f.write(blob)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _safetensors(weights: dict[str, np.ndarray], file_offset: int) -> bytes:
    """A safetensors blob whose tensor data lands 64-byte aligned in the file."""
    entries, data_parts, pos = {}, [], 0
    arrays = {name: np.require(a, requirements="C") for name, a in weights.items()}
    for name, a in arrays.items():
        pos += _pad(pos)
        entries[name] = {"dtype": _ST_DTYPES[dtype_of(a.dtype).short], "shape": list(a.shape),
                         "data_offsets": [pos, pos + a.nbytes]}
        pos += a.nbytes
    header = json.dumps({"__metadata__": {"format": "ubique"}, **entries}, separators=(",", ":")).encode()
    # pad the header with spaces so the data starts aligned in the file
    header += b" " * _pad(file_offset + 8 + len(header))
    out = bytearray(struct.pack("<Q", len(header)) + header)
    start = len(out)
    for name, a in arrays.items():
        begin = start + entries[name]["data_offsets"][0]
        out.extend(b"\0" * (begin - len(out)))
        out.extend(a.reshape(-1).view(np.uint8))
    return bytes(out)


# -- reading ------------------------------------------------------------------------------------
class ModelFile:
    """A mapped, verified .ubq file."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < HEADER.size:
                    raise ModelError(f"{self.path}: not a ubique model ({size} bytes; truncated?)")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise ModelError(f"cannot read model file {self.path}: {e.strerror or e}") from None
        magic, version, count, table = HEADER.unpack_from(self._map, 0)
        if magic != MAGIC:
            raise ModelError(f"{self.path}: not a ubique model file (magic {magic!r}, expected {MAGIC!r})")
        if version != VERSION:
            raise ModelError(f"{self.path}: model file version {version}; this ubique reads version {VERSION}")
        if count > 4096 or table + count * ENTRY.size > size:
            raise ModelError(f"{self.path}: section table does not fit the file (truncated?)")
        self.sections: list[Section] = []
        for k in range(count):
            kind, _, off, length, digest, name = ENTRY.unpack_from(self._map, table + k * ENTRY.size)
            if off + length > size or off % ALIGN:
                raise ModelError(f"{self.path}: section {k} ({KIND_NAMES.get(kind, kind)}) lies outside the "
                                 f"file or is misaligned (truncated?)")
            self.sections.append(Section(kind, off, length, digest, name.rstrip(b"\0").decode("utf-8", "replace")))
        manifest = bytes(self._verified(self._one(MANIFEST)))  # (its ModelErrors are not JSON errors)
        try:
            self.manifest = json.loads(manifest)
        except ValueError as e:
            raise ModelError(f"{self.path}: the manifest is not valid JSON: {e}") from None
        code = self.manifest.get("code", []) if isinstance(self.manifest, dict) else None
        if not isinstance(code, list) or not all(isinstance(e, dict) for e in code):
            raise ModelError(f"{self.path}: the manifest is malformed (expected a JSON object whose \"code\" "
                             "is a list of objects)")
        self._weights_section = self._one(WEIGHTS)
        self._verified(self._weights_section)  # a flipped byte in the weights is caught here
        self.tensors = self._read_safetensors(self._weights_section)

    def _one(self, kind: int) -> Section:
        found = [s for s in self.sections if s.kind == kind]
        if len(found) != 1:
            raise ModelError(f"{self.path}: expected one {KIND_NAMES[kind]} section, found {len(found)}")
        return found[0]

    def _verified(self, s: Section) -> memoryview:
        view = memoryview(self._map)[s.offset:s.offset + s.length]
        if hashlib.sha256(view).digest() != s.sha256:
            raise ModelError(f"{self.path}: the {KIND_NAMES.get(s.kind, s.kind)} section {s.name!r} does not match "
                             "its sha256 (the file is corrupt)")
        return view

    def _read_safetensors(self, s: Section) -> dict[str, np.ndarray]:
        try:
            (n,) = struct.unpack_from("<Q", self._map, s.offset)
            header = json.loads(bytes(self._map[s.offset + 8:s.offset + 8 + n]))
            if not isinstance(header, dict):
                raise ModelError(f"{self.path}: malformed weights section: the header is not a JSON object")
            base = s.offset + 8 + n
            out = {}
            for name, e in header.items():
                if name == "__metadata__":
                    continue
                dt = dtype_of(_FROM_ST[e["dtype"]]).to_numpy()
                begin, end = e["data_offsets"]
                count = int(np.prod(e["shape"], dtype=np.int64)) if e["shape"] else 1
                if (begin < 0 or end < begin or any(d < 0 for d in e["shape"]) or base + end > s.offset + s.length
                        or end - begin != count * dt.itemsize):
                    raise ModelError(f"{self.path}: tensor {name!r} does not fit the weights section")
                out[name] = np.frombuffer(self._map, dt, count, base + begin).reshape(e["shape"])
            return out
        except ModelError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, struct.error) as e:
            raise ModelError(f"{self.path}: malformed weights section: {e}") from None

    def graph_json(self) -> str:
        try:
            return bytes(self._verified(self._one(GRAPH))).decode()
        except UnicodeDecodeError as e:
            raise ModelError(f"{self.path}: the graph section is not UTF-8 text: {e}") from None

    def code_entries(self) -> list[dict]:
        return list(self.manifest.get("code", []))

    def code(self, key: str) -> bytes | None:
        """The verified code blob for a target key, or None when the file has none for it."""
        for s in self.sections:
            if s.kind == CODE and s.name == key:
                return bytes(self._verified(s))
        return None

    @property
    def size(self) -> int:
        return len(self._map)
