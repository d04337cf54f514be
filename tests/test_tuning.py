"""Tuning (compiler/tuning.py records, compiler/tuner.py search, `ubique tune`): records are
keyed by target and CPU, later compiles use them (the scheduled loop IR shows the recorded
tile), tuned code computes what untuned code computes (absurd tiles included), bad records
are ignored, and the CLI prints its table. Shapes are small and budgets a few seconds:
these tests check the mechanism, never which schedule is faster."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from ubique.cli import _duration, main
from ubique.compiler import tuner, tuning
from ubique.compiler.pipeline import compile_graph
from ubique.compiler.schedule import TileKnobs
from ubique.errors import UnsupportedOpError
from ubique.ir.graph import Graph, TensorType
from ubique.ir.loop_printer import print_kernel
from ubique.runtime.executable import load_program
from ubique.targets.registry import get_target, host_target

HOST = host_target()
# quick measurements: the tests check the mechanism, not the timings
FAST = dict(min_sample_s=0.001, samples=2, min_kernel_s=0.0, log=None)
ALWAYS = -1e9  # a margin that stores the best candidate whatever it measured


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Records go to a folder of this test only (other tests must never see them)."""
    monkeypatch.setenv("UBIQUE_CACHE_DIR", str(tmp_path / "cache"))
    yield


ROWS_EXT = 32
_rng = np.random.default_rng(3)
W = (_rng.standard_normal((48, 64)) * 0.1).astype(np.float32)
B = _rng.standard_normal(64).astype(np.float32)


def mlp(rows=ROWS_EXT) -> Graph:
    """relu(x @ W + b): one tunable contraction kernel (rows x 64 output)."""
    g = Graph("mlp")
    x = g.add_input(TensorType((rows, 48), "f32"), "x")
    y = g.op("relu", g.op("add", g.op("matmul", x, g.constant(W)), g.constant(B)))
    y.name = "y"
    g.outputs = [y]
    return g


def x_input(rows=ROWS_EXT, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 48)).astype(np.float32)


def only_tunable(graph, **kw):
    found = tuner.find_tunable(graph, HOST, **kw)
    assert len(found) == 1, [t.name for t in found]
    return found[0]


def kernel_ir(program, graph, sig: str, dims=None) -> str:
    """The scheduled loop IR of the kernel of `program` (compiled from `graph`) whose
    unscheduled signature is `sig`."""
    lowered, _ = tuner.lowered_kernels(graph, HOST, dims=dims)
    assert len(lowered) == len(program.kernels)
    picked = [print_kernel(k.kernel) for (_, lk, _), k in zip(lowered, program.kernels)
              if tuning.kernel_signature(lk.kernel) == sig]
    assert len(picked) == 1
    return picked[0]


def row_tile(ir: str, axis: str = "i0") -> tuple[int | None, int | None]:
    """(row blocks, tail rows) of the register tile in printed loop IR."""
    o = re.search(rf"for {axis}_o in 0\.\.(\d+) ", ir)
    r = re.search(rf"for {axis}_r in 0\.\.(\d+) ", ir)
    return (int(o.group(1)) if o else None), (int(r.group(1)) if r else None)


# ---------------------------------------------------------------------------------------------
def test_finds_the_contraction_and_rebuilds_it_standalone():
    t = only_tunable(mlp())
    assert "matmul" in t.name
    sub, external = tuner.group_graph(t.group)
    assert [tuple(v.shape) for v in sub.inputs] == [tuple(v.shape) for v in external]
    assert any(v.node is not None and v.node.op == "constant" for v in external)  # the weights are inputs
    lowered, _ = tuner.lowered_kernels(sub, HOST, fold=False)
    assert [tuning.kernel_signature(lk.kernel) for _, lk, _ in lowered] == [t.signature]


def test_elementwise_only_graph_has_nothing_to_tune():
    g = Graph("ew")
    x = g.add_input(TensorType((64, 64), "f32"), "x")
    g.outputs = [g.op("relu", x)]
    assert tuner.find_tunable(g, HOST) == []
    result = tuner.tune(g, budget_s=5, **FAST)
    assert result.kernels == [] and result.records == {}
    assert "no tunable kernels" in result.format()


def test_records_are_keyed_by_target_and_cpu_and_used_by_later_compiles():
    g = mlp()
    t = only_tunable(g)
    knobs = TileKnobs(rows=5, vectors=1)
    result = tuner.tune(g, budget_s=30, candidates=[knobs], margin=ALWAYS, **FAST)
    assert result.records == {t.signature: knobs}
    (k,) = result.kernels
    assert k.stored and k.best == knobs and k.default_ms > 0 and k.best_ms > 0 and not k.errors

    path = tuning.records_path(HOST)
    assert result.path == path and path.exists()
    assert HOST.key in path.name and HOST.cpu in path.name
    assert json.loads(path.read_text())[t.signature] == {"rows": 5, "vectors": 1}
    # another CPU (or target) has its own file and does not see this record
    other = dataclasses.replace(HOST, cpu="some-other-cpu")
    assert tuning.records_path(other) != path
    assert tuning.lookup(other, t.lowered.kernel) is None
    assert tuning.lookup(HOST, t.lowered.kernel) == knobs

    # a later compile picks the record up: its loop IR is the one knobs= asks for, not the default's
    recorded = compile_graph(g, HOST)
    forced = compile_graph(g, HOST, knobs={t.signature: knobs})
    default = compile_graph(g, HOST, knobs={})
    assert kernel_ir(recorded, g, t.signature) == kernel_ir(forced, g, t.signature)
    assert kernel_ir(recorded, g, t.signature) != kernel_ir(default, g, t.signature)
    assert row_tile(kernel_ir(recorded, g, t.signature)) == (ROWS_EXT // 5, ROWS_EXT % 5)

    # and computes the same
    x = x_input()
    tuned, untuned = load_program(recorded).run(x)[0], load_program(default).run(x)[0]
    np.testing.assert_allclose(tuned, untuned, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(untuned, np.maximum(x @ W + B, 0), rtol=1e-4, atol=1e-4)


def test_a_tune_invalidates_code_cached_before_it():
    from ubique.build import graph_key

    g = mlp()
    before = graph_key(g, HOST)
    t = only_tunable(g)
    tuner.tune(g, budget_s=30, candidates=[TileKnobs(rows=5, vectors=1)], margin=ALWAYS, **FAST)
    assert tuning.lookup(HOST, t.lowered.kernel) is not None
    assert graph_key(g, HOST) != before   # ub.compile / the jit compile again, with the record


def test_grid_search_within_budget_keeps_results_equal():
    g = mlp()
    t = only_tunable(g)
    grid = tuner.candidate_grid(t.lowered, t.lanes, HOST)
    assert grid and all(k.rows * k.vectors <= HOST.vector_registers - 4 for k in grid)
    assert all(k.vectors * t.lanes <= 64 for k in grid)
    result = tuner.tune(g, budget_s=4, **FAST)
    (k,) = result.kernels
    assert k.default_ms is not None and k.measured >= 1 and not k.errors
    assert result.seconds < 4 + 10  # stops starting measurements once the budget is spent
    # whatever it stored, compiling with it gives the untuned results
    x = x_input(seed=1)
    np.testing.assert_allclose(load_program(compile_graph(g, HOST)).run(x)[0],
                               load_program(compile_graph(g, HOST, knobs={})).run(x)[0], rtol=1e-5, atol=1e-5)


def test_absurd_candidates_still_compute_correct_results():
    g = mlp()
    t = only_tunable(g)
    absurd = [TileKnobs(rows=1, vectors=1), TileKnobs(rows=1, vectors=4), TileKnobs(rows=ROWS_EXT, vectors=4)]
    result = tuner.tune(g, budget_s=30, candidates=absurd, margin=ALWAYS, **FAST)
    (k,) = result.kernels
    assert not k.errors, k.errors
    assert k.measured == 1 + len(absurd) and k.stored
    x = x_input(seed=2)
    expected = np.maximum(x @ W + B, 0)
    for knobs in absurd:
        out = load_program(compile_graph(g, HOST, knobs={t.signature: knobs})).run(x)[0]
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(load_program(compile_graph(g, HOST)).run(x)[0], expected, rtol=1e-4, atol=1e-4)


def test_a_candidate_that_changes_results_is_reported_and_discarded(monkeypatch):
    g = mlp()
    monkeypatch.setattr(tuner, "_same", lambda a, b: False)
    result = tuner.tune(g, budget_s=30, candidates=[TileKnobs(rows=5, vectors=1)], margin=ALWAYS, **FAST)
    (k,) = result.kernels
    assert result.records == {} and not k.stored and k.best is None
    assert len(k.errors) == 1 and "changed the results" in k.errors[0]
    assert "changed the results" in result.format()
    assert not tuning.records_path(HOST).exists()


def test_budget_spent_measures_nothing():
    result = tuner.tune(mlp(), budget_s=0, **FAST)
    (k,) = result.kernels
    assert k.default_ms is None and "budget" in k.note and result.records == {}


@pytest.mark.parametrize("content", [
    "{ not json", "", "[1, 2, 3]", "\x00\xff garbage",
    json.dumps({"SIG": 5}), json.dumps({"SIG": {"rows": -3}}), json.dumps({"SIG": {"rows": "many"}}),
    json.dumps({"SIG": {"rows": 4, "vectors": 3}}), json.dumps({"SIG": {"rows": 10 ** 9}}),
    json.dumps({"SIG": {}}), json.dumps({"SIG": {"rows": 4.5}}), json.dumps({"SIG": {"rows": True}}),
])
def test_corrupt_or_malformed_records_are_ignored(content):
    g = mlp()
    t = only_tunable(g)
    path = tuning.records_path(HOST)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content.replace("SIG", t.signature), errors="surrogateescape")
    assert tuning.lookup(HOST, t.lowered.kernel) is None
    assert tuning.records(HOST) == {}
    assert tuning.records_digest(HOST) == ""
    program = compile_graph(g, HOST)
    assert kernel_ir(program, g, t.signature) == kernel_ir(compile_graph(g, HOST, knobs={}), g, t.signature)
    x = x_input()
    np.testing.assert_allclose(load_program(program).run(x)[0], np.maximum(x @ W + B, 0), rtol=1e-4, atol=1e-4)
    # tuning over a damaged file replaces it with a good one
    tuner.tune(g, budget_s=30, candidates=[TileKnobs(rows=6, vectors=1)], margin=ALWAYS, **FAST)
    assert tuning.lookup(HOST, t.lowered.kernel) == TileKnobs(rows=6, vectors=1)


def test_records_follow_the_file_and_can_be_cleared():
    t = only_tunable(mlp())
    assert tuning.records_digest(HOST) == ""
    tuning.store(HOST, {t.signature: TileKnobs(rows=6, vectors=1)})
    d1 = tuning.records_digest(HOST)
    assert d1 and tuning.lookup(HOST, t.lowered.kernel) == TileKnobs(rows=6, vectors=1)
    # another process rewriting the file is seen
    path = tuning.records_path(HOST)
    path.write_text(json.dumps({t.signature: {"rows": 8, "vectors": 2}, "x" * 24: {"rows": 4, "vectors": 1}}))
    assert tuning.lookup(HOST, t.lowered.kernel) == TileKnobs(rows=8, vectors=2)
    assert tuning.records_digest(HOST) not in ("", d1)
    tuning.forget(HOST, [t.signature])
    assert tuning.lookup(HOST, t.lowered.kernel) is None and len(tuning.records(HOST)) == 1
    assert tuning.clear(HOST) == 1 and not path.exists() and tuning.records(HOST) == {}


def test_symbolic_batch_signature_matches_compile():
    """Tuned with the dims it is compiled with, a symbolic-batch kernel's record is used."""
    g = Graph("mlp_dyn")
    x = g.add_input(TensorType(("batch", 48), "f32"), "x")
    g.outputs = [g.op("matmul", x, g.constant(W))]
    dims = {"batch": (8, 64)}
    t = only_tunable(g, dims=dims)
    knobs = TileKnobs(rows=3, vectors=1)
    result = tuner.tune(g, budget_s=30, dims=dims, candidates=[knobs], margin=ALWAYS, **FAST)
    assert result.records == {t.signature: knobs}, [k.note for k in result.kernels]
    p = compile_graph(g, HOST, dims=dims)
    forced = compile_graph(g, HOST, dims=dims, knobs={t.signature: knobs})
    default = compile_graph(g, HOST, dims=dims, knobs={})
    assert kernel_ir(p, g, t.signature, dims) == kernel_ir(forced, g, t.signature, dims)
    assert kernel_ir(p, g, t.signature, dims) != kernel_ir(default, g, t.signature, dims)
    xs = x_input(rows=13)
    np.testing.assert_allclose(load_program(p).run(xs)[0], xs @ W, rtol=1e-4, atol=1e-4)


def test_only_native_targets_can_be_tuned():
    foreign = "aarch64" if HOST.arch != "aarch64" else "x86_64"
    with pytest.raises(UnsupportedOpError, match="natively"):
        tuner.tune(mlp(), get_target(foreign), budget_s=5, **FAST)


@pytest.mark.parametrize("text, seconds", [("60s", 60), ("2m", 120), ("90", 90), ("1.5m", 90), ("500ms", 0.5),
                                           ("1h", 3600), (" 10 S ", 10)])
def test_budget_durations(text, seconds):
    assert _duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "ten", "-5s", "nan", "inf", "5x"])
def test_bad_budget_durations(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        _duration(text)


# ---------------------------------------------------------------------------------------------
def _tiny_conv_onnx(path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 12, 12])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 12, 12])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "tiny_conv", [x], [y], initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_cli_tune_prints_the_table(tmp_path, capsys):
    path = _tiny_conv_onnx(tmp_path / "tiny.onnx")
    assert main(["tune", str(path), "--budget", "3s"]) == 0
    out = capsys.readouterr().out
    assert "tuning tiny_conv for" in out
    header = next(line for line in out.splitlines() if line.startswith("kernel"))
    for column in ("work", "default ms", "best ms", "knobs", "speedup"):
        assert column in header
    assert "conv2d" in out and "records:" in out and "budget" in out
    assert main(["tune", "--clear"]) == 0
    assert "removed" in capsys.readouterr().out


def test_cli_tune_errors(tmp_path, capsys):
    path = _tiny_conv_onnx(tmp_path / "tiny.onnx")
    foreign = "aarch64" if HOST.arch != "aarch64" else "x86_64"
    assert main(["tune", str(path), "--target", foreign, "--budget", "1s"]) == 2
    assert "natively" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tune", str(path), "--budget", "soon"])
    assert "not a duration" in capsys.readouterr().err


def test_result_comparison_tolerates_rounding_only():
    a = np.random.default_rng(4).standard_normal((8, 8)).astype(np.float32)
    assert tuner._same(a, a.copy()) and tuner._same(a, a * np.float32(1 + 1e-6))
    b = a.copy()
    b[3, 4] += 0.01
    assert not tuner._same(a, b) and not tuner._same(a, a[:4]) and not tuner._same(a, a.astype(np.float64))
    i = np.arange(6, dtype=np.int32)
    assert tuner._same(i, i.copy()) and not tuner._same(i, i + (i == 5))
