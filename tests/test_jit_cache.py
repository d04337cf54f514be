"""The compile caches: `ub.cache_info()` counts, the on-disk cache shared between processes,
recovery from corrupt cache entries, and determinism across thread counts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

import ubique as ub
from ubique.ir import Graph, TensorType
from ubique.runtime import native

# A script that defines a jitted model (matmul + bias + relu + softmax + a weight array), runs it
# on fixed inputs and reports this process's cache counts and the result.
MODEL_SCRIPT = textwrap.dedent('''
    import hashlib, json
    import numpy as np
    import ubique as ub

    BIAS = np.linspace(-1.0, 1.0, 24, dtype=np.float32)

    @ub.jit
    def model(x, w):
        h = ub.relu(x @ w + BIAS)
        return ub.softmax(h, axis=-1), h.sum(axis=0)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 32)).astype(np.float32)
    w = rng.standard_normal((32, 24)).astype(np.float32)
    probs, colsum = model(x, w)
    h = np.maximum(x @ w + BIAS, 0)
    e = np.exp(h - h.max(axis=-1, keepdims=True))
    ref = e / e.sum(axis=-1, keepdims=True)
    err = max(float(np.abs(probs - ref).max()), float(np.abs(colsum - h.sum(axis=0)).max() / 100))
    print("RESULT " + json.dumps({"info": ub.cache_info(), "err": err,
                                  "digest": hashlib.sha256(probs.tobytes() + colsum.tobytes()).hexdigest()}))
''')


def run_script(script: Path, cache_dir: Path) -> dict:
    env = dict(os.environ, UBIQUE_CACHE_DIR=str(cache_dir))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"script failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture
def model_script(tmp_path) -> Path:
    path = tmp_path / "model_script.py"
    path.write_text(MODEL_SCRIPT)
    return path


def module_entries(cache_dir: Path) -> list[Path]:
    return sorted(p.parent for p in (cache_dir / "modules").glob("*/*/module.so"))


def assert_good(result: dict, compiled: int, disk_hits: int):
    info = result["info"]
    assert result["err"] < 1e-5, result
    assert info["compiled"] == compiled, info
    if disk_hits:
        assert info["disk_hits"] >= disk_hits, info
    else:
        assert info["disk_hits"] == 0, info


# ---------------------------------------------------------------------------------------------
# in-process counts
# ---------------------------------------------------------------------------------------------
def _unique_graph():
    """A graph no cache has seen: it embeds a fresh random constant."""
    g = Graph("uniq")
    x = g.add_input(TensorType((4,), "f32"), "x")
    c = np.float32(uuid.uuid4().int % 1000003) / np.float32(7)
    g.outputs = [g.op("mul", x, g.constant(c))]
    return g, c


def test_cache_info_keys():
    info = ub.cache_info()
    assert set(info) == {"compiled", "memory_hits", "disk_hits", "disk_writes"}
    assert all(isinstance(v, int) and v >= 0 for v in info.values())
    info["compiled"] = -1  # a copy: callers cannot corrupt the counters
    assert ub.cache_info()["compiled"] >= 0


def test_cache_info_counts_compile_write_and_memory_hits():
    g, c = _unique_graph()
    x = np.arange(4, dtype=np.float32)
    before = ub.cache_info()
    ex = ub.build(g)
    mid = ub.cache_info()
    assert mid["compiled"] == before["compiled"] + 1
    assert mid["disk_writes"] == before["disk_writes"] + 1
    assert mid["disk_hits"] == before["disk_hits"]
    ex2 = ub.build(g)
    after = ub.cache_info()
    assert ex2 is ex
    assert after["memory_hits"] == mid["memory_hits"] + 1 and after["compiled"] == mid["compiled"]
    np.testing.assert_array_equal(ex.run(x)[0], x * c)


def test_cache_info_counts_jit_calls():
    scale = float(uuid.uuid4().int % 997) + 0.5

    def body(x):
        return x * scale + 1.0

    f = ub.jit(body)
    x = np.ones((3, 5), np.float32)
    before = ub.cache_info()
    f(x)
    mid = ub.cache_info()
    assert mid["compiled"] == before["compiled"] + 1
    f(x)
    f(x)
    after = ub.cache_info()
    assert after["compiled"] == mid["compiled"] and after["memory_hits"] == mid["memory_hits"] + 2
    # a second JitFunction of the same Python function finds the module in memory
    g = ub.jit(body)
    np.testing.assert_allclose(g(x), x * scale + 1)
    final = ub.cache_info()
    assert final["compiled"] == after["compiled"] and final["memory_hits"] == after["memory_hits"] + 1


# ---------------------------------------------------------------------------------------------
# the disk cache across processes
# ---------------------------------------------------------------------------------------------
def test_second_process_loads_from_disk(model_script, tmp_path):
    cache = tmp_path / "cache"
    first = run_script(model_script, cache)
    assert_good(first, compiled=1, disk_hits=0)
    assert first["info"]["disk_writes"] == 1
    assert len(module_entries(cache)) == 1
    second = run_script(model_script, cache)
    assert_good(second, compiled=0, disk_hits=1)
    assert second["info"]["disk_writes"] == 0
    assert second["digest"] == first["digest"]


def test_same_function_in_another_script_hits_the_disk_cache(model_script, tmp_path):
    """The cache key is the computation: the same model defined in a different file (or in
    the same file moved down by an edit) must not be recompiled because its source lines moved."""
    cache = tmp_path / "cache"
    first = run_script(model_script, cache)
    assert_good(first, compiled=1, disk_hits=0)
    other = tmp_path / "elsewhere" / "another_script.py"
    other.parent.mkdir()
    other.write_text("# the same model, two lines further down, in another file\n\n" + MODEL_SCRIPT)
    second = run_script(other, cache)
    assert second["digest"] == first["digest"]
    assert_good(second, compiled=0, disk_hits=1)


def _flip_bytes(path: Path, offset_fraction=0.5, count=64):
    data = bytearray(path.read_bytes())
    start = int(len(data) * offset_fraction)
    for k in range(start, min(start + count, len(data))):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip-module", "flip-module-header", "truncate-module", "delete-module",
                                    "garbage-manifest", "flip-weights"])
def test_corrupt_cache_entry_is_recompiled(model_script, tmp_path, damage):
    cache = tmp_path / "cache"
    first = run_script(model_script, cache)
    assert_good(first, compiled=1, disk_hits=0)
    (entry,) = module_entries(cache)
    so = entry / "module.so"
    if damage == "flip-module":
        _flip_bytes(so)
    elif damage == "flip-module-header":
        _flip_bytes(so, 0.0, 16)
    elif damage == "truncate-module":
        so.write_bytes(so.read_bytes()[:100])
    elif damage == "delete-module":
        so.unlink()
    elif damage == "garbage-manifest":
        (entry / "manifest.json").write_text("{ not json")
    elif damage == "flip-weights":
        _flip_bytes(entry / "weights.bin", 0.0, 8)
    second = run_script(model_script, cache)
    assert_good(second, compiled=1, disk_hits=0)      # recompiled, and right
    assert second["digest"] == first["digest"]
    third = run_script(model_script, cache)            # the rewritten entry is good again
    assert_good(third, compiled=0, disk_hits=1)
    assert third["digest"] == first["digest"]


def test_unloadable_library_with_consistent_manifest_is_recompiled(model_script, tmp_path):
    """A cache entry whose files match their manifest but whose library cannot be loaded
    (e.g. written by a broken toolchain) must be recompiled or give a typed ubique error,
    never leak a raw OSError."""
    import hashlib

    cache = tmp_path / "cache"
    run_script(model_script, cache)
    (entry,) = module_entries(cache)
    so = entry / "module.so"
    so.write_bytes(b"\x7fELF this is not a shared library")
    manifest = json.loads((entry / "manifest.json").read_text())
    manifest["files"]["module.so"] = hashlib.sha256(so.read_bytes()).hexdigest()
    (entry / "manifest.json").write_text(json.dumps(manifest))
    env = dict(os.environ, UBIQUE_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, str(model_script)], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode == 0:
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        assert_good(json.loads(lines[-1][len("RESULT "):]), compiled=1, disk_hits=0)
    else:
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("ubique.errors."), f"untyped failure on a bad cache entry: {last}"


def test_concurrent_processes_share_the_cache(model_script, tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, UBIQUE_CACHE_DIR=str(cache))
    procs = [subprocess.Popen([sys.executable, str(model_script)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    digests = set()
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        result = json.loads([ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])
        assert result["err"] < 1e-5
        assert result["info"]["compiled"] + result["info"]["disk_hits"] >= 1
        digests.add(result["digest"])
    assert len(digests) == 1
    assert len(module_entries(cache)) == 1
    assert not [p for p in (cache / "modules").rglob(".tmp-*")]  # no temporary leftovers
    later = run_script(model_script, cache)
    assert_good(later, compiled=0, disk_hits=1)


# ---------------------------------------------------------------------------------------------
# determinism across thread counts
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def restore_threads():
    n = native.default_pool().num_threads
    yield
    ub.set_num_threads(n)


def test_results_identical_across_thread_counts(restore_threads):
    rng = np.random.default_rng(11)
    a = rng.standard_normal((256, 384)).astype(np.float32)
    b = rng.standard_normal((384, 320)).astype(np.float32)
    c = rng.standard_normal((640, 2048)).astype(np.float32)

    @ub.jit
    def mm(x, y):
        return ub.relu(x @ y + 0.5)

    @ub.jit
    def rows(x):
        return ub.sum(x * x, axis=1), ub.max(x, axis=0), x.mean(axis=1, keepdims=True)

    @ub.jit
    def total(x):
        return ub.sum(x), ub.softmax(x, axis=-1)

    results = {}
    for n in (1, 2, 1):
        ub.set_num_threads(n)
        assert native.default_pool().num_threads == n
        outs = [mm(a, b)] + list(rows(c)) + list(total(c))
        results.setdefault(n, []).append(outs)
    (one_a, one_b), (two,) = results[1], results[2]
    for x, y, z in zip(one_a, one_b, two):
        assert x.tobytes() == y.tobytes() == z.tobytes()
    np.testing.assert_allclose(two[0], np.maximum(a @ b + 0.5, 0), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(two[1], (c * c).sum(axis=1), rtol=1e-4)
    np.testing.assert_allclose(two[4], c.sum(dtype=np.float64), rtol=1e-3, atol=1e-2)
    # the big kernels really are parallel, so the comparison means something
    assert "parallel for" in mm.lower(a, b).loop_ir
    assert "parallel for" in rows.lower(c).loop_ir


def test_set_num_threads_rejects_bad_values(restore_threads):
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError):
            ub.set_num_threads(bad)
