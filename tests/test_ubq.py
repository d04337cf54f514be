"""The .ubq model file (runtime/model_file.py, ubique/ubq.py): `ub.save` / `ub.load` round trips
(hand-built graphs with constants of several dtypes, ONNX models against onnxruntime),
embedded code used without compiling (checked in fresh processes with fresh caches),
weights used in place from the file mapping (views, and the peak RSS of loading a ~100 MB
model), bad files refused with ModelError before any code is loaded, foreign code never
loaded, and an aarch64 build in the same file run under qemu.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ubique as ub
from ubique.ir.graph import Graph, TensorType
from ubique.runtime import model_file as mfmod
from ubique.runtime import native
from ubique.targets.registry import get_target
from ubique.targets.target import host_arch
from ubique.ubq import open_model

REL_TOL = 1e-4
BATCHES = (1, 3, 8)
HOST_KEY = get_target().key
KIND = {"manifest": mfmod.MANIFEST, "graph": mfmod.GRAPH, "weights": mfmod.WEIGHTS, "code": mfmod.CODE}


def _host_arch_names_host() -> bool:
    try:
        return get_target(host_arch()).key == HOST_KEY
    except ub.UnsupportedOpError:
        return False


# the names of this machine's target that `targets=[...]` accepts
HOST_NAMES = ["host"] + ([host_arch()] if _host_arch_names_host() else [])
# a target whose code this machine never loads
FOREIGN = "aarch64" if host_arch() != "aarch64" else "x86_64"


# ---------------------------------------------------------------------------------------------
# a hand-built graph: symbolic batch, constants of several dtypes (f32 matrix, 0-d f32, bool,
# f16, i8, i32), outputs of several dtypes
# ---------------------------------------------------------------------------------------------
_rng = np.random.default_rng(7)
W = _rng.standard_normal((8, 4)).astype(np.float32)
SCALE = np.float32(0.5)                                  # 0-d
FILL = np.float32(-1.25)                                 # 0-d
MASK = np.array([True, False, True, True])
C16 = np.array([0.5, -1.0, 2.0, 3.0], np.float16)
C8 = np.array([1, -2, 3, -4], np.int8)
C32 = np.array([[100000, -7, 3, 0]], np.int32)


def mixed_graph() -> Graph:
    g = Graph("mixed")
    x = g.add_input(TensorType(("batch", 8), "f32"), "x")
    h = g.add_input(TensorType(("batch", 4), "f16"), "h")
    q = g.add_input(TensorType(("batch", 4), "i8"), "q")
    m = g.add_input(TensorType(("batch", 4), "bool"), "m")
    k = g.add_input(TensorType(("batch", 4), "i32"), "k")
    y = g.op("mul", g.op("matmul", x, g.constant(W)), g.constant(SCALE))
    y = g.op("where", g.op("logical_and", m, g.constant(MASK)), y, g.constant(FILL))
    outs = [y, g.op("add", h, g.constant(C16)), g.op("add", q, g.constant(C8)), g.op("mul", k, g.constant(C32)),
            g.op("logical_or", m, g.constant(MASK))]
    for v, name in zip(outs, ["y", "h16", "q8", "k32", "any"]):
        v.name = name
    g.outputs = outs
    return g


def mixed_feeds(batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed + batch)
    return {"x": rng.standard_normal((batch, 8)).astype(np.float32),
            "h": rng.standard_normal((batch, 4)).astype(np.float16),
            "q": rng.integers(-60, 60, (batch, 4)).astype(np.int8),
            "m": rng.random((batch, 4)) > 0.3,
            "k": rng.integers(-1000, 1000, (batch, 4)).astype(np.int32)}


def mixed_reference(f: dict) -> list[np.ndarray]:
    y = np.where(f["m"] & MASK, (f["x"].astype(np.float64) @ W) * SCALE, FILL).astype(np.float32)
    return [y, f["h"] + C16, f["q"] + C8, f["k"] * C32, f["m"] | MASK]


def assert_same(got: list, expected: list, exact: bool = True):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, g.dtype, e.shape, e.dtype)
        if exact or g.dtype.kind not in "fc":
            np.testing.assert_array_equal(g, e)
        else:
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def relative_error(got, expected) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - expected)) / max(np.max(np.abs(expected)), 1e-30))


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory):
    """Two files of the mixed graph: portable (no code) and with code for this host."""
    folder = tmp_path_factory.mktemp("ubq-mixed")
    g = mixed_graph()
    return {"portable": ub.save(g, folder / "portable.ubq"),
            "host": ub.save(g, folder / "host.ubq", targets=["host"])}


# ---------------------------------------------------------------------------------------------
# fresh processes with fresh caches
# ---------------------------------------------------------------------------------------------
FRESH_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import ubique as ub

    path, feeds_path, out_path = sys.argv[1:4]
    feeds = np.load(feeds_path, allow_pickle=False)
    model = ub.load(path)
    outputs = {}
    for run in sorted({key.split(".", 1)[0] for key in feeds.files}):
        inputs = {key.split(".", 1)[1]: feeds[key] for key in feeds.files if key.startswith(run + ".")}
        for j, out in enumerate(model.run(inputs)):
            outputs[f"{run}.{j}"] = out
    np.savez(out_path, **outputs)
    print("RESULT " + json.dumps({"info": ub.cache_info(), "target": model.target}))
''')


def run_fresh(path: Path, runs: list[dict], tmp_path: Path) -> tuple[dict, list[list[np.ndarray]]]:
    """Loads `path` in a new Python process with an empty cache folder and runs it on each
    feed dict; returns that process's cache counts and the outputs of each run."""
    script = tmp_path / "fresh_load.py"
    script.write_text(FRESH_SCRIPT)
    feeds = {f"r{k}.{name}": a for k, f in enumerate(runs) for name, a in f.items()}
    np.savez(tmp_path / "feeds.npz", **feeds)
    cache = tmp_path / "fresh-cache"
    assert not cache.exists()
    env = dict(os.environ, UBIQUE_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "feeds.npz"),
                           str(tmp_path / "outputs.npz")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    data = np.load(tmp_path / "outputs.npz")
    outs = [[data[f"r{k}.{j}"] for j in range(len({n for n in data.files if n.startswith(f"r{k}.")}))]
            for k in range(len(runs))]
    return result, outs


# ---------------------------------------------------------------------------------------------
# 1. round trips
# ---------------------------------------------------------------------------------------------
def test_portable_round_trip_matches_compile(mixed_files):
    path = mixed_files["portable"]
    mf, graph = open_model(path)
    assert mf.manifest["code"] == [] and not [s for s in mf.sections if s.kind == mfmod.CODE]
    assert [i["shape"] for i in mf.manifest["inputs"]] == [["batch", 8]] + [["batch", 4]] * 4
    assert [o["name"] for o in mf.manifest["outputs"]] == ["y", "h16", "q8", "k32", "any"]
    # every constant dtype is stored as itself, 0-d constants included
    stored = {(str(a.dtype), a.shape) for a in mf.tensors.values()}
    for c in (W, SCALE, FILL, MASK, C16, C8, C32):
        assert (str(c.dtype), c.shape) in stored, (c.dtype, c.shape, stored)

    compiled = ub.compile(mixed_graph())
    model = ub.load(path)
    assert model.target == compiled.target
    assert model.inputs == compiled.inputs and model.outputs == compiled.outputs
    assert model.inputs[0].shape == ("batch", 8) and "batch: symbolic" in model.contract
    before = ub.cache_info()["compiled"]
    for batch in BATCHES:  # one load, several batch sizes
        feeds = mixed_feeds(batch)
        got = model.run(feeds)
        assert_same(got, compiled.run(feeds))
        assert_same(got, mixed_reference(feeds), exact=False)
    assert ub.cache_info()["compiled"] == before, "a new batch size must not recompile"


@pytest.mark.parametrize("target", HOST_NAMES)
def test_embedded_code_is_used_without_compiling(tmp_path, target):
    path = ub.save(mixed_graph(), tmp_path / "m.ubq", targets=[target])
    mf, _ = open_model(path)
    (entry,) = mf.code_entries()
    assert entry["key"] == HOST_KEY and entry["target"] == get_target().name
    assert [s.name for s in mf.sections if s.kind == mfmod.CODE] == [HOST_KEY]
    reference = ub.compile(mixed_graph())
    before = ub.cache_info()
    model = ub.load(path)
    assert model.inputs == reference.inputs and model.outputs == reference.outputs
    for batch in BATCHES:
        feeds = mixed_feeds(batch)
        assert_same(model.run(feeds), reference.run(feeds))
    after = ub.cache_info()
    assert after["compiled"] == before["compiled"], (before, after)
    assert after == before, "loading embedded code must not touch the compile cache"


def test_embedded_code_in_a_fresh_process_compiles_nothing(mixed_files, tmp_path):
    runs = [mixed_feeds(b, seed=1) for b in BATCHES]
    result, outs = run_fresh(mixed_files["host"], runs, tmp_path)
    assert result["info"]["compiled"] == 0 and result["info"]["disk_hits"] == 0, result
    assert result["info"]["disk_writes"] == 0, result
    assert not (tmp_path / "fresh-cache" / "modules").exists()
    reference = ub.compile(mixed_graph())
    for feeds, got in zip(runs, outs):
        assert_same(got, reference.run(feeds))


def test_portable_file_in_a_fresh_process_compiles_once(mixed_files, tmp_path):
    runs = [mixed_feeds(b, seed=2) for b in BATCHES]
    result, outs = run_fresh(mixed_files["portable"], runs, tmp_path)
    assert result["info"]["compiled"] == 1, result  # the graph, once, for all batch sizes
    for feeds, got in zip(runs, outs):
        assert_same(got, mixed_reference(feeds), exact=False)


# -- ONNX models -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_models():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    from torch_models import BertEncoder, LeNet, export

    torch.manual_seed(0)
    ids, mask = torch.randint(0, 1000, (1, 128)), torch.ones(1, 128, dtype=torch.int64)
    batch = lambda names: {n: {0: "batch"} for n in names}  # noqa: E731
    return {
        "lenet": export(LeNet(), (torch.randn(1, 1, 28, 28),), ["x"], ["y"], batch(["x", "y"])),
        "bert": export(BertEncoder(), (ids, mask), ["ids", "mask"], ["hidden", "pooled"],
                       batch(["ids", "mask", "hidden", "pooled"])),
    }


def onnx_feeds(name: str, batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed + batch)
    if name == "lenet":
        return {"x": rng.standard_normal((batch, 1, 28, 28), np.float32)}
    mask = np.ones((batch, 128), np.int64)
    mask[:, 100:] = 0
    return {"ids": rng.integers(0, 1000, (batch, 128)).astype(np.int64), "mask": mask}


@pytest.mark.parametrize("name", ["lenet", "bert"])
def test_onnx_model_round_trip_matches_onnxruntime(onnx_models, name, tmp_path):
    import onnxruntime as ort

    data = onnx_models[name]
    graph = ub.import_onnx(data)
    portable = ub.save(graph, tmp_path / f"{name}.ubq")
    with_code = ub.save(graph, tmp_path / f"{name}-host.ubq", targets=["host"])
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    compiled = ub.compile(graph)

    loaded = ub.load(portable)
    before = ub.cache_info()
    embedded = ub.load(with_code)
    assert any(isinstance(d, str) for d in embedded.inputs[0].shape), embedded.inputs
    assert [s.name for s in embedded.outputs] == [s.name for s in compiled.outputs]
    runs = [onnx_feeds(name, b) for b in BATCHES]
    for feeds in runs:
        expected = session.run(None, feeds)
        reference = compiled.run(feeds)
        for model in (loaded, embedded):
            got = model.run(feeds)
            assert len(got) == len(expected)
            for g, e, r in zip(got, expected, reference):
                assert g.shape == e.shape and g.dtype == e.dtype
                assert relative_error(g, e) <= REL_TOL, f"{name} batch {len(g)}: {relative_error(g, e):.2e}"
                np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(r))))
    assert ub.cache_info()["compiled"] == before["compiled"], "embedded code or a new batch size compiled"

    result, outs = run_fresh(with_code, runs, tmp_path)
    assert result["info"]["compiled"] == 0 and result["info"]["disk_hits"] == 0, result
    for feeds, got in zip(runs, outs):
        for g, e in zip(got, session.run(None, feeds)):
            assert relative_error(g, e) <= REL_TOL


# ---------------------------------------------------------------------------------------------
# 2. weights are used in place
# ---------------------------------------------------------------------------------------------
def _mapping_of(a: np.ndarray):
    """The object at the end of an array's .base chain."""
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base


def _assert_view_of_the_file(a: np.ndarray):
    assert not a.flags.owndata, "a copy"
    mapping = _mapping_of(a)
    assert isinstance(mapping, mmap.mmap), type(mapping)
    if a.nbytes:
        assert np.shares_memory(a, np.frombuffer(mapping, np.uint8))
    assert not a.flags.writeable  # read-only mapping: a model cannot write its weights


def test_weights_are_views_of_the_file_mapping(mixed_files):
    mf, graph = open_model(mixed_files["host"])
    for a in mf.tensors.values():
        _assert_view_of_the_file(a)
    constants = [n.attrs["value"] for n in graph.nodes if n.op == "constant"]
    assert constants and all(_mapping_of(c) is mf._map for c in constants)

    model = ub.load(mixed_files["host"])
    weights = model._ex._weights
    assert len(weights) >= 4  # the matrix, the bool, f16 and i8 vectors at least
    for w in weights:
        _assert_view_of_the_file(w)
    for n in model.graph.nodes:
        if n.op == "constant":
            _assert_view_of_the_file(n.attrs["value"])
    # and they are the file's bytes: the model still runs right
    feeds = mixed_feeds(2)
    assert_same(model.run(feeds), mixed_reference(feeds), exact=False)


def test_portable_load_keeps_the_graph_constants_in_the_mapping(mixed_files):
    model = ub.load(mixed_files["portable"])
    constants = [n.attrs["value"] for n in model.graph.nodes if n.op == "constant"]
    assert constants
    for c in constants:
        _assert_view_of_the_file(c)


RSS_SCRIPT = textwrap.dedent('''
    import json, resource, sys, time
    import numpy as np
    import ubique as ub
    from ubique.runtime import native
    from ubique.targets.registry import get_target

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024

    native.lib()
    start = status("VmRSS")
    get_target()            # LLVM's host detection (its library's pages): not the model's
    ready = status("VmRSS")
    t0 = time.perf_counter()
    model = ub.load(sys.argv[1])
    loaded = status("VmRSS")
    y = model.run({"x": np.load(sys.argv[2])})[0]
    seconds = time.perf_counter() - t0
    np.save(sys.argv[3], y)
    print("RESULT " + json.dumps({"start": start, "ready": ready, "loaded": loaded, "peak": status("VmHWM"),
                                  "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                                  "seconds": seconds, "info": ub.cache_info()}))
''')


def test_loading_a_100mb_model_does_not_copy_its_weights(tmp_path):
    rng = np.random.default_rng(3)

    def weight(rows, cols):
        return ((rng.random((rows, cols), dtype=np.float32) - 0.5) * np.float32(2 / np.sqrt(rows)))

    ws = [weight(2048, 4096), weight(4096, 4096), weight(4096, 256)]  # 32 + 64 + 4 MiB
    g = Graph("big")
    x = g.add_input(TensorType(("batch", 2048), "f32"), "x")
    h = g.op("relu", g.op("matmul", x, g.constant(ws[0])))
    h = g.op("relu", g.op("matmul", h, g.constant(ws[1])))
    g.outputs = [g.op("matmul", h, g.constant(ws[2]))]
    path = ub.save(g, tmp_path / "big.ubq", targets=["host"])
    size = path.stat().st_size
    assert size > 100 * 2**20
    xs = rng.standard_normal((1, 2048)).astype(np.float32)
    np.save(tmp_path / "x.npy", xs)
    h = np.maximum(xs.astype(np.float64) @ ws[0], 0)
    expected = np.maximum(h @ ws[1], 0) @ ws[2]
    del ws, g, h

    script = tmp_path / "rss.py"
    script.write_text(RSS_SCRIPT)
    env = dict(os.environ, UBIQUE_CACHE_DIR=str(tmp_path / "fresh-cache"))
    proc = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert r["info"]["compiled"] == 0, r
    assert relative_error(np.load(tmp_path / "y.npy"), expected) <= REL_TOL
    mib = 2.0**20
    total, weights_part = r["peak"] - r["start"], r["peak"] - r["ready"]
    print(f"\n.ubq of {size / mib:.1f} MiB: ub.load + one run (batch 1) in {r['seconds']:.2f} s; peak RSS "
          f"+{total / mib:.1f} MiB ({total / size:.2f}x the file) from after `import ubique`, "
          f"+{weights_part / mib:.1f} MiB ({weights_part / size:.2f}x) excluding LLVM's host detection; "
          f"VmHWM {r['peak'] / mib:.1f} MiB (ru_maxrss, {r['maxrss'] / mib:.1f} MiB, is not used: Linux carries "
          "it over from the forking pytest process)")
    assert total < 2 * size, r
    # the mapped pages count once; a copy of the weights would add another file size
    assert weights_part < 1.3 * size, r


# ---------------------------------------------------------------------------------------------
# 3. bad files
# ---------------------------------------------------------------------------------------------
class NativeCodeLoaded(BaseException):
    """Raised by the patched loaders (a BaseException: no `except Exception` hides it)."""


@pytest.fixture
def no_native_loading(monkeypatch):
    """Fails the test if anything is dlopen'ed or an Executable is made."""
    get_target()   # host detection (which dlopens libmvec) and the runtime, before the patches
    native.lib()

    def refuse(*args, **kwargs):
        raise NativeCodeLoaded(f"native code loaded: {args[:1]}")

    monkeypatch.setattr(ctypes, "CDLL", refuse)
    monkeypatch.setattr("ubique.runtime.executable.Executable.__init__", refuse)


def read_parts(data: bytes) -> list[list]:
    """[kind, name, bytes] of each section of a well-formed file, in table order."""
    _, _, count, table = mfmod.HEADER.unpack_from(data, 0)
    parts = []
    for k in range(count):
        kind, _, off, length, _, name = mfmod.ENTRY.unpack_from(data, table + k * mfmod.ENTRY.size)
        parts.append([kind, name.rstrip(b"\0").decode(), data[off:off + length]])
    return parts


def assemble(parts, magic=mfmod.MAGIC, version=mfmod.VERSION) -> bytes:
    """A file of these sections with consistent hashes (a forger's file: only the content is bad)."""
    offset = mfmod.HEADER.size + mfmod.ENTRY.size * len(parts)
    out_table, body, offsets = b"", b"", []
    offset += -offset % 64
    start = offset
    for kind, name, blob in parts:
        offsets.append(offset)
        body += b"\0" * (offset - start - len(body)) + blob
        offset += len(blob) + (-len(blob) % 64)
    for (kind, name, blob), off in zip(parts, offsets):
        out_table += mfmod.ENTRY.pack(kind, 0, off, len(blob), hashlib.sha256(blob).digest(), name.encode())
    head = mfmod.HEADER.pack(magic, version, len(parts), mfmod.HEADER.size) + out_table
    return head + b"\0" * (start - len(head)) + body


def section(parts, kind):
    return next(p for p in parts if p[0] == kind)


@pytest.fixture(scope="module")
def good(mixed_files):
    data = mixed_files["host"].read_bytes()
    mf, _ = open_model(mixed_files["host"])
    return data, {s.kind: s for s in mf.sections}


def _load_bad(tmp_path, data: bytes, match: str | None = None):
    path = tmp_path / "bad.ubq"
    path.write_bytes(data)
    with pytest.raises(ub.ModelError, match=match) as e:
        ub.load(path)
    assert str(path) in str(e.value)  # the message names the file
    return str(e.value)


def test_assembled_good_file_loads(good, tmp_path):
    """The forging helper itself: reassembling the good file's sections gives a good file."""
    data, _ = good
    path = tmp_path / "again.ubq"
    path.write_bytes(assemble(read_parts(data)))
    feeds = mixed_feeds(2)
    assert_same(ub.load(path).run(feeds), mixed_reference(feeds), exact=False)


@pytest.mark.parametrize("where", ["empty", "header", "header-1", "table", "weights-header", "weights-middle",
                                   "graph", "code", "end-1"])
def test_truncated_file(good, tmp_path, where, no_native_loading):
    data, secs = good
    w = secs[mfmod.WEIGHTS]
    cut = {"empty": 0, "header": 10, "header-1": 63, "table": 64 + 128 + 40, "weights-header": w.offset + 20,
           "weights-middle": w.offset + w.length // 2, "graph": secs[mfmod.GRAPH].offset + 7,
           "code": secs[mfmod.CODE].offset + secs[mfmod.CODE].length // 2, "end-1": len(data) - 1}[where]
    _load_bad(tmp_path, data[:cut], "truncated")


@pytest.mark.parametrize("kind", ["manifest", "graph", "weights", "weights-header", "code"])
@pytest.mark.parametrize("position", [0.0, 0.5, 1.0])
def test_flipped_byte_in_a_section(good, tmp_path, kind, position, no_native_loading):
    data, secs = good
    s = secs[KIND["weights" if kind == "weights-header" else kind]]
    if kind == "weights-header":
        at = s.offset + 8 + 3  # inside the safetensors JSON header
    else:
        at = s.offset + min(int(s.length * position), s.length - 1)
    bad = bytearray(data)
    bad[at] ^= 0x01
    message = _load_bad(tmp_path, bytes(bad), "sha256")
    assert "corrupt" in message


@pytest.mark.parametrize("field,value,match", [
    ("magic", b"UBQMODEX", "not a ubique model file"),
    # (an ELF file is taken for a `ubique build` library: refused as one built for no machine)
    ("magic", b"\x7fELF\x02\x01\x01\x00", "not a ubique model file|ELF machine"),
    ("version", 2, "version 2"),
    ("version", 0, "version 0"),
    ("count", 0, "expected one"),
    ("count", 100000, "does not fit"),
    ("table", 2**40, "does not fit"),
    ("table", 2**64 - 64, "does not fit"),
])
def test_bad_header(good, tmp_path, field, value, match, no_native_loading):
    data, _ = good
    magic, version, count, table = mfmod.HEADER.unpack_from(data, 0)
    fields = {"magic": magic, "version": version, "count": count, "table": table}
    fields[field] = value
    header = mfmod.HEADER.pack(fields["magic"], fields["version"], fields["count"], fields["table"])
    _load_bad(tmp_path, header + data[64:], match)


@pytest.mark.parametrize("kind", ["manifest", "graph", "weights", "code"])
@pytest.mark.parametrize("how", ["offset-past-end", "length-past-end", "huge", "misaligned"])
def test_section_entry_pointing_outside_the_file(good, tmp_path, kind, how, no_native_loading):
    data, secs = good
    _, _, count, table = mfmod.HEADER.unpack_from(data, 0)
    target = secs[KIND[kind]]
    bad = bytearray(data)
    for k in range(count):
        at = table + k * mfmod.ENTRY.size
        kind_k, r, off, length, digest, name = mfmod.ENTRY.unpack_from(data, at)
        if off != target.offset:
            continue
        off, length = {"offset-past-end": (len(data) + 64 - len(data) % 64, length),
                       "length-past-end": (off, len(data) - off + 1),
                       "huge": (2**64 - 64, 2**63),
                       "misaligned": (off + 8, length)}[how]
        mfmod.ENTRY.pack_into(bad, at, kind_k, r, off, length, digest, name)
    _load_bad(tmp_path, bytes(bad), "outside the file|misaligned")


def test_empty_file_directory_and_missing_path(tmp_path, no_native_loading):
    (tmp_path / "empty.ubq").write_bytes(b"")
    with pytest.raises(ub.ModelError, match="not a ubique model"):
        ub.load(tmp_path / "empty.ubq")
    (tmp_path / "folder.ubq").mkdir()
    with pytest.raises(ub.ModelError, match="cannot read"):
        ub.load(tmp_path / "folder.ubq")
    with pytest.raises(ub.ModelError, match="cannot read"):
        ub.load(tmp_path / "missing.ubq")
    (tmp_path / "text.ubq").write_text("not a model, but longer than a header " * 4)
    with pytest.raises(ub.ModelError, match="not a ubique model file"):
        ub.load(tmp_path / "text.ubq")


def _graph_with_wrong_constant(graph_json: bytes) -> bytes:
    d = json.loads(graph_json)
    node = next(n for n in d["nodes"] if n["op"] == "constant" and n["outputs"][0]["shape"] == [8, 4])
    node["outputs"][0]["shape"] = [800, 4]  # declares a bigger array than the tensor it names
    return json.dumps(d).encode()


def _safetensors_header(blob: bytes, edit) -> bytes:
    (n,) = struct.unpack_from("<Q", blob)
    header = edit(json.loads(blob[8:8 + n]))
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + blob[8 + n:]


def _first_tensor(h: dict) -> dict:
    return h[next(k for k in h if k != "__metadata__")]


def _edit_first(h: dict, **changes) -> dict:
    _first_tensor(h).update(changes)
    return h


def _manifest_edit(edit):
    def apply(blob):
        m = json.loads(blob)
        out = edit(m)
        return json.dumps(m if out is None else out).encode()
    return apply


FORGED = {
    # (section kind, edit of its bytes) or a function of all parts -> parts
    "manifest-not-json": (mfmod.MANIFEST, lambda b: b"{ not json"),
    "manifest-not-an-object": (mfmod.MANIFEST, lambda b: b"[1, 2, 3]"),
    "manifest-not-utf8": (mfmod.MANIFEST, lambda b: b"\xff\xfe{}"),
    "manifest-other-format": (mfmod.MANIFEST, _manifest_edit(lambda m: m.update(format="onnx"))),
    "manifest-code-not-a-list": (mfmod.MANIFEST, _manifest_edit(lambda m: m.update(code="lots"))),
    "manifest-code-entry-not-an-object": (mfmod.MANIFEST, _manifest_edit(lambda m: m.update(code=[7]))),
    "manifest-code-entry-without-fields": (mfmod.MANIFEST, _manifest_edit(
        lambda m: m.update(code=[{"key": m["code"][0]["key"], "sha256": m["code"][0]["sha256"]}]))),
    "manifest-code-weights-unknown": (mfmod.MANIFEST, _manifest_edit(
        lambda m: m["code"][0].update(weights=["tnothere"] * len(m["code"][0]["weights"])))),
    "graph-not-json": (mfmod.GRAPH, lambda b: b[: len(b) // 2]),
    "graph-not-utf8": (mfmod.GRAPH, lambda b: b"\xff" + b[1:]),
    "graph-not-a-graph": (mfmod.GRAPH, lambda b: b'{"format": "ubique.graph", "version": 1}'),
    "graph-unknown-tensor": (mfmod.GRAPH, lambda b: b.replace(b'"tensor":"t', b'"tensor":"x', 1)),
    "graph-constant-type-mismatch": (mfmod.GRAPH, _graph_with_wrong_constant),
    "weights-header-not-json": (mfmod.WEIGHTS, lambda b: b[:8] + b"!" + b[9:]),
    "weights-header-not-an-object": (mfmod.WEIGHTS, lambda b: _safetensors_header(b, lambda h: [1, 2])),
    "weights-header-length-huge": (mfmod.WEIGHTS, lambda b: struct.pack("<Q", 2**62) + b[8:]),
    "weights-tensor-not-an-object": (mfmod.WEIGHTS, lambda b: _safetensors_header(
        b, lambda h: {**h, next(k for k in h if k != "__metadata__"): "x"})),
    "weights-tensor-outside": (mfmod.WEIGHTS, lambda b: _safetensors_header(
        b, lambda h: _edit_first(h, data_offsets=[2**40, 2**40 + 4 * int(np.prod(_first_tensor(h)["shape"]))]))),
    "weights-tensor-size-mismatch": (mfmod.WEIGHTS, lambda b: _safetensors_header(
        b, lambda h: _edit_first(h, shape=[3, 1000]))),
    # end - begin == count * itemsize with a negative count: numpy would read "all the rest"
    "weights-tensor-negative-shape": (mfmod.WEIGHTS, lambda b: _safetensors_header(
        b, lambda h: _edit_first(h, dtype="U8", shape=[-4], data_offsets=[4, 0]))),
    "weights-tensor-reversed-offsets": (mfmod.WEIGHTS, lambda b: _safetensors_header(
        b, lambda h: _edit_first(h, data_offsets=_first_tensor(h)["data_offsets"][::-1]))),
    "weights-tensor-bad-dtype": (mfmod.WEIGHTS, lambda b: _safetensors_header(b, lambda h: _edit_first(h, dtype="Q9"))),
    "no-weights-section": lambda parts: [p for p in parts if p[0] != mfmod.WEIGHTS],
    "two-manifests": lambda parts: parts + [section(parts, mfmod.MANIFEST)],
    "no-graph-section": lambda parts: [p for p in parts if p[0] != mfmod.GRAPH],
    "code-section-missing": lambda parts: [p for p in parts if p[0] != mfmod.CODE],
}


FORGED_MESSAGE = {  # what the message says, where the case name's first word is not in it
    "graph-unknown-tensor": "refers to tensor", "graph-constant-type-mismatch": "type rule gives",
    "no-weights-section": "one weights section, found 0", "two-manifests": "one manifest section, found 2",
    "no-graph-section": "one graph section, found 0", "code-section-missing": "but the file has none",
    "weights-tensor-outside": "does not fit", "weights-tensor-size-mismatch": "does not fit",
    "weights-tensor-negative-shape": "does not fit", "weights-tensor-reversed-offsets": "does not fit",
    "manifest-code-weights-unknown": "malformed", "manifest-code-entry-without-fields": "malformed",
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_file_with_consistent_hashes(good, tmp_path, case, no_native_loading):
    """Hashes only catch accidents: a file whose sections hash right but hold nonsense must
    still give ModelError (not an AttributeError, not a crash) and load no code."""
    data, _ = good
    parts = read_parts(data)
    forge = FORGED[case]
    if callable(forge):
        parts = forge(parts)
    else:
        kind, edit = forge
        p = section(parts, kind)
        p[2] = edit(p[2])
    _load_bad(tmp_path, assemble(parts), FORGED_MESSAGE.get(case, case.split("-")[0]))


def test_code_section_with_a_wrong_sha256_is_never_loaded(good, tmp_path, no_native_loading):
    data, secs = good
    code = secs[mfmod.CODE]
    _, _, count, table = mfmod.HEADER.unpack_from(data, 0)
    # the table's digest of the code section is wrong (the code itself intact)
    bad = bytearray(data)
    for k in range(count):
        at = table + k * mfmod.ENTRY.size
        fields = list(mfmod.ENTRY.unpack_from(data, at))
        if fields[0] == mfmod.CODE:
            fields[4] = bytes(32)
            mfmod.ENTRY.pack_into(bad, at, *fields)
    _load_bad(tmp_path, bytes(bad), "code section .* sha256")
    # a flipped byte in the middle of the ELF
    bad = bytearray(data)
    bad[code.offset + code.length // 3] ^= 0x80
    _load_bad(tmp_path, bytes(bad), "code section .* sha256")


def test_code_swapped_under_a_stale_manifest_is_never_loaded(good, tmp_path, no_native_loading):
    """Another library with a recomputed section hash, but the manifest's sha256 of the
    library is the old one: the loader checks both before writing or loading the code."""
    data, _ = good
    parts = read_parts(data)
    code = section(parts, mfmod.CODE)
    code[2] = code[2][:-16] + b"\x90" * 16
    _load_bad(tmp_path, assemble(parts), "sha256")


def test_host_code_that_does_not_load_is_a_model_error(good, tmp_path):
    """A code section for this host whose hashes all match but which is not a library."""
    data, _ = good
    parts = read_parts(data)
    blob = b"\x7fELF" + b"\x00" * 200
    section(parts, mfmod.CODE)[2] = blob
    manifest = section(parts, mfmod.MANIFEST)
    m = json.loads(manifest[2])
    m["code"][0]["sha256"] = hashlib.sha256(blob).hexdigest()
    manifest[2] = json.dumps(m).encode()
    _load_bad(tmp_path, assemble(parts))


def _foreign_file(tmp_path, blob: bytes) -> Path:
    """The mixed graph with one code section only, for another machine's target key."""
    portable = ub.save(mixed_graph(), tmp_path / "portable.ubq")
    parts = read_parts(portable.read_bytes())
    foreign = get_target(FOREIGN)
    assert foreign.key != HOST_KEY
    manifest = section(parts, mfmod.MANIFEST)
    m = json.loads(manifest[2])
    m["code"] = [{"target": foreign.name, "key": foreign.key, "triple": foreign.triple, "cpu": foreign.cpu,
                  "features": foreign.features, "entry": "ubq_run", "signature": {"inputs": [], "outputs": []},
                  "weights": [], "workspace_size": 0, "contract": None, "dynamic_memory": None,
                  "sha256": hashlib.sha256(blob).hexdigest()}]
    manifest[2] = json.dumps(m).encode()
    path = tmp_path / "foreign.ubq"
    path.write_bytes(assemble(parts + [[mfmod.CODE, foreign.key, blob]]))
    return path


def _forbid_loading(monkeypatch, blob: bytes):
    """Executables may be made, but never from a library holding `blob`."""
    from ubique.runtime.executable import Executable

    original = Executable.__init__
    seen = []

    def checked(self, library, *args, **kwargs):
        assert Path(library).read_bytes() != blob, "the foreign code section was loaded"
        seen.append(library)
        return original(self, library, *args, **kwargs)

    monkeypatch.setattr(Executable, "__init__", checked)
    return seen


def test_foreign_code_only_is_compiled_here(tmp_path, monkeypatch):
    blob = b"\x7fELF foreign code that must never be loaded" * 10
    path = _foreign_file(tmp_path, blob)
    mf, _ = open_model(path)
    assert [e["key"] for e in mf.code_entries()] == [get_target(FOREIGN).key]
    _forbid_loading(monkeypatch, blob)
    model = ub.load(path)
    assert model.target == get_target().name
    for batch in BATCHES:
        feeds = mixed_feeds(batch, seed=5)
        assert_same(model.run(feeds), mixed_reference(feeds), exact=False)


# ---------------------------------------------------------------------------------------------
# 4. code for two architectures in one file (aarch64 under qemu)
# ---------------------------------------------------------------------------------------------
needs_aarch64 = pytest.mark.skipif(
    shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None
    or host_arch() != "x86_64",
    reason="needs an x86_64 host with qemu-user and gcc-aarch64-linux-gnu (scripts/install-system-deps.sh)")

EM_X86_64, EM_AARCH64 = 62, 183


def _elf_machine(blob: bytes) -> int:
    assert blob[:4] == b"\x7fELF"
    return struct.unpack_from("<H", blob, 18)[0]


@needs_aarch64
def test_x86_64_and_aarch64_code_in_one_file(tmp_path, monkeypatch):
    path = ub.save(mixed_graph(), tmp_path / "two.ubq", targets=["x86_64", "aarch64"])
    mf, _ = open_model(path)
    entries = mf.code_entries()
    assert [e["target"] for e in entries] == ["x86_64", "aarch64"]
    assert [e["key"] for e in entries] == [HOST_KEY, get_target("aarch64").key]
    assert sorted(s.name for s in mf.sections if s.kind == mfmod.CODE) == sorted(e["key"] for e in entries)
    assert _elf_machine(mf.code(HOST_KEY)) == EM_X86_64
    arm_blob = mf.code(get_target("aarch64").key)
    assert _elf_machine(arm_blob) == EM_AARCH64
    assert entries[1]["sha256"] == hashlib.sha256(arm_blob).hexdigest()

    before = ub.cache_info()
    host = ub.load(path)
    assert ub.cache_info()["compiled"] == before["compiled"]
    arm = ub.load(path, target="aarch64")
    assert arm.target == "aarch64"
    for batch in (1, 3):
        feeds = mixed_feeds(batch, seed=9)
        expected = host.run(feeds)
        got = arm.run(feeds)
        assert_same(got, expected, exact=False)
        for g, e in zip(got, expected):
            if g.dtype.kind == "f":
                assert relative_error(g, e) <= REL_TOL

    # a file with aarch64 code only loads here by compiling the graph; its code is never loaded
    only_arm = ub.save(mixed_graph(), tmp_path / "arm.ubq", targets=["aarch64"])
    arm_blob = open_model(only_arm)[0].code(get_target("aarch64").key)
    _forbid_loading(monkeypatch, arm_blob)
    feeds = mixed_feeds(4)
    assert_same(ub.load(only_arm).run(feeds), mixed_reference(feeds), exact=False)


@needs_aarch64
def test_lenet_with_aarch64_code_matches_the_host(onnx_models, tmp_path):
    graph = ub.import_onnx(onnx_models["lenet"])
    path = ub.save(graph, tmp_path / "lenet.ubq", targets=[host_arch(), "aarch64"])
    assert len(open_model(path)[0].code_entries()) == 2
    feeds = onnx_feeds("lenet", 2)
    expected = ub.load(path).run(feeds)
    got = ub.load(path, target="aarch64").run(feeds)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and relative_error(g, e) <= REL_TOL
