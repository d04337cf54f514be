"""The compile-time report (ubique/report.py, `ubique compile --report`): every graph pass and
stage of Program.timings and every kernel is listed, cache hits are recorded (memory and
disk), and every compilation says why it ran (a cache miss, a disk entry that failed to load,
a jit function called with a new input signature, changed dims, a .ubq file whose code
cannot be used)."""
from __future__ import annotations

import importlib
import threading
import uuid
from collections import OrderedDict

import numpy as np
import pytest

import ubique as ub
from ubique import report
from ubique.ir import Graph, TensorType

build_mod = importlib.import_module("ubique.build")  # (ub.build is the function)


def unique_graph(name: str = "rep", rows: int | str = 4) -> tuple[Graph, np.float32]:
    """A small graph no cache has seen (a fresh random constant): matmul + bias + relu + sum."""
    c = np.float32(uuid.uuid4().int % 1000003) / np.float32(7)
    g = Graph(name)
    x = g.add_input(TensorType((rows, 8), "f32"), "x")
    w = np.linspace(-1, 1, 8 * 6, dtype=np.float32).reshape(8, 6)
    h = g.op("relu", g.op("add", g.op("matmul", x, g.constant(w)), g.constant(c)))
    g.outputs = [h, g.op("sum", h, axes=[1])]
    return g, c


def only(events, kind):
    found = [e for e in events if e.kind == kind]
    assert len(found) == 1, [(e.kind, e.reason) for e in events]
    return found[0]


# ---------------------------------------------------------------------------------------------
# passes, kernels, totals
# ---------------------------------------------------------------------------------------------
def test_report_lists_every_pass_and_every_kernel():
    g, _ = unique_graph()
    with report.collect() as c:
        ub.compile(g)
    ev = only(c, "compiled")
    program = ev.program
    assert program is not None and c.programs == [program]
    assert ev.reason == "not in the memory or disk cache"
    assert ev.name == "rep" and ev.target == ub.targets.host_target().name and len(ev.key) == 64
    assert ev.timings == {**program.timings, "link": ev.timings["link"]}  # + linking, outside the pipeline
    assert ev.seconds >= sum(ev.timings.values()) > 0
    text = c.format(top=1000)
    lines = text.splitlines()
    # every pass / stage, in the pipeline's order (the order of Program.timings)
    positions = []
    for name in program.timings:
        hits = [k for k, line in enumerate(lines) if line.split() and line.split()[0] == name]
        assert hits, f"pass {name!r} missing from the report:\n{text}"
        positions.append(hits[0])
    assert positions == sorted(positions)
    for stage in ("lower", "codegen"):
        assert stage in program.timings
    assert any(line.split()[:1] == ["link"] for line in lines)
    # every kernel, sorted by time, with its estimated work
    kernel_lines = []
    for lk in program.kernels:
        (k,) = [k for k, line in enumerate(lines) if line.split() and line.split()[0] == lk.kernel.name]
        assert f"{lk.work:,d}" in lines[k]
        kernel_lines.append((k, lk.seconds))
    ordered = [s for _, s in sorted(kernel_lines)]
    assert ordered == sorted(ordered, reverse=True)
    assert f"all {len(program.kernels)} kernels" in text
    assert "code generation (llvm-cpu backend, whole module)" in text
    assert "compile report: 1 compilation," in text
    assert "not in the memory or disk cache" in text


def test_top_n_kernels_and_a_summary_line():
    g, _ = unique_graph()
    with report.collect() as c:
        ub.compile(g)
    n = len(c.programs[0].kernels)
    if n < 2:
        pytest.skip("the graph fused into one kernel")
    text = c.format(top=1)
    assert f"kernels by time (1 of {n})" in text
    assert f"({n - 1} more kernels)" in text and f"all {n} kernels" in text


# ---------------------------------------------------------------------------------------------
# cache events
# ---------------------------------------------------------------------------------------------
def test_second_compile_of_the_same_graph_is_a_memory_hit():
    g, c = unique_graph()
    x = np.ones((4, 8), np.float32)
    with report.collect() as col:
        m1 = ub.compile(g)
        m2 = ub.compile(g)
        ub.compile(g)
    assert [e.kind for e in col] == ["compiled", "memory_hit"]
    hit = only(col, "memory_hit")
    assert hit.count == 2 and hit.key == only(col, "compiled").key
    np.testing.assert_array_equal(m1.run([x])[0], m2.run([x])[0])
    text = col.format()
    assert "memory hit x2" in text and "cache: 2 memory hits" in text
    # the process-wide log has them too, without the Program (it holds the weights)
    logged = [e for e in report.events() if e.key == hit.key]
    assert {e.kind for e in logged} >= {"compiled", "memory_hit"}
    assert all(e.program is None for e in logged)


def test_disk_hit_in_a_process_whose_memory_cache_is_empty(monkeypatch):
    g, _ = unique_graph()
    ub.build(g)
    monkeypatch.setattr(build_mod, "_memory", OrderedDict())
    with report.collect() as c:
        ub.build(g)
    assert [e.kind for e in c] == ["disk_hit"]
    assert "disk hit" in c.format()


def test_disk_entry_that_fails_to_load_gives_the_reason(monkeypatch):
    g, _ = unique_graph()
    ub.build(g)
    monkeypatch.setattr(build_mod, "_memory", OrderedDict())
    real = build_mod._load_entry
    calls = []

    def failing_once(entry, weights=None):
        calls.append(entry)
        if len(calls) == 1:
            raise OSError("cannot map module.so")
        return real(entry, weights)

    monkeypatch.setattr(build_mod, "_load_entry", failing_once)
    with report.collect() as c:
        ub.build(g)
    ev = only(c, "compiled")
    assert ev.reason == "disk cache entry failed to load: OSError: cannot map module.so"
    assert "disk cache entry failed to load" in c.format()


def test_threads_compile_once_and_the_rest_are_memory_hits():
    g, _ = unique_graph()
    with report.collect() as c:
        threads = [threading.Thread(target=ub.build, args=(g,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert only(c, "compiled")
    assert only(c, "memory_hit").count == 3


# ---------------------------------------------------------------------------------------------
# why a compilation ran
# ---------------------------------------------------------------------------------------------
def test_jit_new_shape_gives_the_recompile_reason():
    scale = float(uuid.uuid4().int % 997) + 0.25

    @ub.jit
    def scaled(x, y):
        return x * scale + y

    a, b = np.ones((3, 5), np.float32), np.ones((4, 5), np.float32)
    with report.collect() as c:
        scaled(a, a)
        scaled(b, b)
        scaled(a, a)
    first, second = c.of_kind("compiled")
    assert first.reason.startswith("jit scaled: first call, input signature (x: f32[3, 5], y: f32[3, 5])")
    assert "not in the memory or disk cache" in first.reason
    assert second.reason.startswith("jit scaled: new input signature (shapes/dtypes) (x: f32[4, 5], y: f32[4, 5])")
    assert "changed: x f32[3, 5] -> f32[4, 5], y f32[3, 5] -> f32[4, 5]" in second.reason
    assert "previous signatures: (x: f32[3, 5], y: f32[3, 5])" in second.reason
    assert second.program is not None and second.name == "scaled"
    reused = only(c, "memory_hit")
    assert "specialisation (x: f32[3, 5], y: f32[3, 5]) reused" in reused.reason
    assert "new input signature" in c.format()


def test_jit_new_dtype_and_static_argument():
    @ub.jit
    def f(x, k):
        return x * k

    tag = uuid.uuid4().int % 1000 + 0.5
    with report.collect() as c:
        f(np.ones(3, np.float32), tag)
        f(np.ones(3, np.float64), tag)
    second = c.of_kind("compiled")[1]
    assert "changed: x f32[3] -> f64[3]" in second.reason and f"k={tag!r}" in second.reason


def test_jit_lower_always_compiles():
    @ub.jit
    def g(x):
        return x + float(uuid.uuid4().int % 991)

    with report.collect() as c:
        g.lower(np.ones(2, np.float32))
    assert only(c, "compiled").reason.startswith("jit g.lower(); compile_program always compiles")


def test_changed_dims_are_the_reason():
    g = Graph("dims")
    x = g.add_input(TensorType(("batch", 4), "f32"), "x")
    g.outputs = [g.op("mul", x, g.constant(np.float32(uuid.uuid4().int % 1009)))]
    with report.collect() as c:
        ub.compile(g, dims={"batch": (1, 8)})
        ub.compile(g, dims={"batch": 4})
    first, second = c.of_kind("compiled")
    assert first.reason == "not in the memory or disk cache"
    assert second.reason.startswith("dims changed: now {batch=4}, before {batch=(1, 8)}")


# ---------------------------------------------------------------------------------------------
# .ubq files
# ---------------------------------------------------------------------------------------------
def test_ubq_embedded_code_used_or_rejected_with_reason(tmp_path):
    g, _ = unique_graph("filed", rows="batch")
    with report.collect() as c:
        path = ub.save(g, tmp_path / "m.ubq", targets=["host"])
    assert [e.kind for e in c] == ["passes", "compiled"]
    assert "embedded in the file" in c.of_kind("compiled")[0].reason
    assert set(c.of_kind("passes")[0].timings) <= set(c.programs[0].timings)
    with report.collect() as c:
        ub.load(path)
    assert [e.kind for e in c] == ["embedded"]
    with report.collect() as c:
        ub.load(path, dims={"batch": 2})
    rejected = only(c, "embedded_rejected")
    assert "dims {'batch': 2} given" in rejected.reason
    assert only(c, "compiled").reason.startswith(rejected.reason)
    portable = ub.save(g, tmp_path / "p.ubq")
    with report.collect() as c:
        ub.load(portable)
    assert not c.of_kind("embedded_rejected")
    assert c.events[0].reason.startswith(f"{portable}: portable file (no embedded code)")


def test_ubq_code_for_another_target_key_is_the_reason():
    from ubique.ubq import _why_not_embedded

    class FakeFile:
        def code_entries(self):
            return [{"target": host.name, "key": "0123456789abcdef"}]

    host = ub.targets.host_target()
    with report.collect() as c:
        why = _why_not_embedded("m.ubq", FakeFile(), Graph("x"), host, None, None)
    assert why == (f"m.ubq: embedded code for target {host.name} is for another target key (0123456789abcdef; "
                   f"this machine: {host.key})")
    assert only(c, "embedded_rejected").reason == why


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def _mlp_onnx(path):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(int(uuid.uuid4().int % 2**32))
    inits = [numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["z"]),
             helper.make_node("Softmax", ["z"], ["y"], axis=-1)]
    model = helper.make_model(helper.make_graph(nodes, "mlp", [x], [y], initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def test_cli_compile_report(tmp_path, capsys):
    pytest.importorskip("onnx")
    from ubique.cli import main

    onnx_path = _mlp_onnx(tmp_path / "mlp.onnx")
    with report.collect() as c:  # the same events the command reports, with their Programs
        assert main(["compile", str(onnx_path), "-o", str(tmp_path / "m.ubq"), "--target", "host", "--report"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrote ") and "compile report: 1 compilation," in out
    (program,) = c.programs
    for name in program.timings:
        assert f"\n  {name} " in out, name
    for lk in program.kernels:
        assert lk.kernel.name in out
    assert "code generation (llvm-cpu backend, whole module)" in out and "onnx import" in out
    assert "ub.save: code for target" in out and "(always compiled)" in out

    # without --report: no report
    assert main(["compile", str(onnx_path), "-o", str(tmp_path / "p.ubq")]) == 0
    assert "compile report" not in capsys.readouterr().out


def test_cli_run_report(tmp_path, capsys):
    pytest.importorskip("onnx")
    from ubique.cli import main

    onnx_path = _mlp_onnx(tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", np.ones((2, 16), np.float32))
    feed = f"x={tmp_path / 'x.npy'}"
    assert main(["run", str(onnx_path), "--input", feed, "--report"]) == 0
    out = capsys.readouterr().out
    assert "y: float32[2, 8]" in out and "not in the memory or disk cache" in out
    assert main(["run", str(onnx_path), "--input", feed, "--report"]) == 0  # same graph: a cache hit
    out = capsys.readouterr().out
    assert "compile report: 0 compilations" in out and ("memory hit" in out or "disk hit" in out)
    assert main(["compile", str(onnx_path), "-o", str(tmp_path / "m.ubq"), "--target", "host"]) == 0
    capsys.readouterr()
    assert main(["run", str(tmp_path / "m.ubq"), "--input", feed, "--report"]) == 0
    out = capsys.readouterr().out
    assert "embedded code used 1x" in out and "sha256" in out


def test_report_states_the_peak_activation_memory():
    g, _ = unique_graph()
    with report.collect() as c:
        ub.compile(g)
    plan = only(c, "compiled").program.memory
    text = c.format()
    assert f"activation memory (static plan): {plan.workspace_size / 1e6:.2f} MB peak" in text, text
