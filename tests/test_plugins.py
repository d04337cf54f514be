"""Plug-ins: targets and backends from installed packages (entry points) or registered at run
time, custom passes at positions of the pipeline, runtime devices; and what a broken plug-in
does: a clear error naming it, never a broken `import ubique` or other targets.

Entry points are tested with fake installed distributions (a `*.dist-info` folder with an
entry_points.txt on PYTHONPATH) in a subprocess, which is exactly what `pip install` leaves."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ubique as ub
from ubique.codegen.backend import Backend, GeneratedCode, get_backend, register_backend
from ubique.codegen.cpu import LLVMCPUBackend
from ubique.compiler.pipeline import compile_graph
from ubique.ir import loop as L
from ubique.runtime.executable import load_program
from ubique.targets import get_target, host_target


def make_dist(root, name, entry_points: dict[str, dict[str, str]], modules: dict[str, str]):
    """A fake installed distribution `name` under `root` (what pip leaves in site-packages)."""
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for mod, text in modules.items():
        (root / f"{mod}.py").write_text(textwrap.dedent(text))


def run_python(code: str, path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)


GOOD_TARGET = """
import dataclasses
from ubique.targets import host_target

def target():
    return dataclasses.replace(host_target(), name="goodchip")
"""

BROKEN_IMPORT = """
import this_module_does_not_exist
"""

NO_GENERATE = """
from ubique.codegen.backend import Backend

class HalfBackend(Backend):
    name = "half"
"""

WRONG_TYPE = """
def target():
    return "not a target"
"""


def test_plugins_from_entry_points_and_broken_ones(tmp_path):
    make_dist(tmp_path, "good-chip", {"ubique.targets": {"goodchip": "good_chip:target"}}, {"good_chip": GOOD_TARGET})
    make_dist(tmp_path, "broken-chip", {"ubique.targets": {"brokenchip": "broken_chip:target"}},
              {"broken_chip": BROKEN_IMPORT})
    make_dist(tmp_path, "half-backend", {"ubique.backends": {"half": "half_backend:HalfBackend"},
                                         "ubique.targets": {"halfchip": "half_target:target"}},
              {"half_backend": NO_GENERATE,
               "half_target": GOOD_TARGET.replace('name="goodchip"', 'name="halfchip", codegen="half"')})
    make_dist(tmp_path, "wrong-chip", {"ubique.targets": {"wrongchip": "wrong_chip:target"}},
              {"wrong_chip": WRONG_TYPE})
    make_dist(tmp_path, "halfway", {"ubique.targets": {"halfwaychip": "halfway_chip:target"}},
              {"halfway_chip": "import ubique as ub\n"
                               "ub.passes.register('halfway_pass', lambda g, t: 1 / 0, after='cse')\n"
                               "ub.targets.register('halfway-extra', ub.targets.host_target())\n"
                               "raise RuntimeError('half-way through')\n"})
    make_dist(tmp_path, "usurper", {"ubique.targets": {"x86_64": "good_chip:target", "aarch64": "good_chip:target"},
                                    "ubique.backends": {"llvm-cpu": "usurper_backend:Usurper"}},
              {"usurper_backend": "from ubique.codegen.cpu import LLVMCPUBackend\n"
                                  "class Usurper(LLVMCPUBackend):\n    name = 'llvm-cpu'\n"
                                  "    def generate(self, module, target):\n        raise RuntimeError('usurped')\n"})
    r = run_python("""
        import numpy as np
        import ubique as ub                               # plug-ins load lazily: nothing breaks here
        from ubique.targets import plugins
        assert not plugins._loaded, plugins._loaded
        f = ub.jit(lambda x: ub.exp(x) + 1.0)              # other targets keep working
        x = np.linspace(-1, 1, 7).astype(np.float32)
        assert np.allclose(f(x), np.exp(x) + 1.0)
        m = ub.compile(ub.jit(lambda x: x * 2.0).trace(x)[0], target="goodchip")
        assert np.allclose(m.run([x])[0], x * 2)
        origins = ub.targets.origins()
        print("ORIGIN", origins["goodchip"])
        for name in ("brokenchip", "halfchip", "wrongchip"):
            try:
                ub.compile(ub.jit(lambda x: x * 2.0).trace(x)[0], target=name)
            except ub.PluginError as e:
                print("ERROR", name, "|", e)
            else:
                print("NO ERROR", name)
        print("BROKEN", sorted(b.name for b in plugins.broken()))
        # what a broken plug-in registered before failing is taken back
        assert "halfway-extra" not in ub.targets.available()
        assert not [p for p in ub.passes.custom_passes() if p.name == "halfway_pass"]
        # names already taken are never replaced: the host and its backend still work
        assert ub.targets.get_target("aarch64").triple.startswith("aarch64")
        assert np.allclose(ub.jit(lambda x: x - 1.0)(x), x - 1.0)
        print("TAKEN", sorted(b.reason.split(" is already taken")[0].split()[-1] for b in plugins.broken()
                              if "already taken" in b.reason))
    """, tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "ORIGIN plug-in good-chip 0.1 (entry point goodchip = good_chip:target)" in out
    errors = {line.split()[1]: line for line in out.splitlines() if line.startswith("ERROR")}
    assert set(errors) == {"brokenchip", "halfchip", "wrongchip"}, out
    assert "plug-in broken-chip 0.1" in errors["brokenchip"] and "ModuleNotFoundError" in errors["brokenchip"] \
        and "this_module_does_not_exist" in errors["brokenchip"]
    assert "plug-in half-backend 0.1" in errors["halfchip"] and "does not implement generate()" in errors["halfchip"]
    assert "plug-in wrong-chip 0.1" in errors["wrongchip"] and "not a ubique Target" in errors["wrongchip"]
    assert "BROKEN ['aarch64', 'brokenchip', 'half', 'halfwaychip', 'llvm-cpu', 'x86_64']" in out
    assert "TAKEN [\"'aarch64'\", \"'llvm-cpu'\", \"'x86_64'\"]" in out

    # `ubique targets` lists every target with its origin, and the broken plug-ins with why
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "ubique.cli", "targets"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "goodchip" in r.stdout and "[plug-in good-chip 0.1" in r.stdout
    assert "broken plug-in: ubique.targets 'brokenchip': plug-in broken-chip 0.1" in r.stdout


def test_register_a_target_at_run_time():
    t = dataclasses.replace(host_target(), name="runtime-chip")
    ub.targets.register("runtime-chip", t)
    assert get_target("runtime-chip") == t
    assert "test_plugins" in ub.targets.origins()["runtime-chip"]
    with pytest.raises(ub.PluginError, match="must be a Target or a function"):
        ub.targets.register("bad", 42)
    with pytest.raises(ub.UnsupportedOpError, match="unknown target 'nochip'.*registered targets:.*runtime-chip"):
        get_target("nochip")


def test_backend_registry_checks_what_it_is_given():
    class NoName(LLVMCPUBackend):
        name = ""

    with pytest.raises(ub.PluginError, match="sets no `name`"):
        register_backend(NoName)
    with pytest.raises(ub.PluginError, match="is not a ubique.codegen.backend.Backend subclass"):
        register_backend(dict)

    class Missing(Backend):
        name = "missing"

    with pytest.raises(ub.PluginError, match=r"does not implement generate\(\)"):
        register_backend(Missing)
    with pytest.raises(ub.UnsupportedOpError, match="codegen 'nobackend', which no installed backend provides"):
        compile_graph(ub.jit(lambda x: x + 1.0).trace(np.ones(3, np.float32))[0],
                      dataclasses.replace(host_target(), name="nb", codegen="nobackend"))


def test_a_backend_that_fails_or_returns_nonsense_is_named():
    class Crashing(LLVMCPUBackend):
        name = "crashing"

        def generate(self, module, target):
            raise KeyError("oops")

    class NoObject(LLVMCPUBackend):
        name = "noobject"

        def generate(self, module, target):
            return GeneratedCode("c", "int x;")

    register_backend(Crashing)
    register_backend(NoObject)
    graph = ub.jit(lambda x: x + 1.0).trace(np.ones(3, np.float32))[0]
    with pytest.raises(ub.PluginError, match="backend 'crashing' .*failed generating code.*KeyError"):
        compile_graph(graph, dataclasses.replace(host_target(), name="t1", codegen="crashing"))
    with pytest.raises(ub.PluginError, match=r"backend 'noobject' .*generated no object file"):
        compile_graph(graph, dataclasses.replace(host_target(), name="t2", codegen="noobject"))


def test_a_failing_schedule_is_named():
    class BadSchedule(LLVMCPUBackend):
        name = "badschedule"

        def schedule(self, kernel, hints, target):
            return None

    register_backend(BadSchedule)
    graph = ub.jit(lambda x: x + 1.0).trace(np.ones(3, np.float32))[0]
    with pytest.raises(ub.PluginError, match=r"backend 'badschedule' .*schedule returned NoneType"):
        compile_graph(graph, dataclasses.replace(host_target(), name="t3", codegen="badschedule"))


def test_a_subclassed_backend_schedule_is_used():
    seen = []

    class Recording(LLVMCPUBackend):
        name = "recording"

        def schedule(self, kernel, hints, target):
            seen.append((kernel.name, hints.lanes))
            return super().schedule(kernel, dataclasses.replace(hints, lanes=1, threads=1), target)

    register_backend(Recording)
    t = dataclasses.replace(host_target(), name="rec", codegen="recording")
    x = np.random.rand(8, 8).astype(np.float32)
    m = ub.compile(ub.jit(lambda a: ub.tanh(a @ a)).trace(x)[0], target=t)
    np.testing.assert_allclose(m.run([x])[0], np.tanh(x @ x), rtol=2e-6, atol=2e-6)
    assert seen and all(lanes == host_target().vector_bits // 32 for _, lanes in seen)
    assert get_backend("recording") is not get_backend("llvm-cpu")


def test_a_target_on_an_unknown_device_is_refused_clearly(tmp_path):
    t = dataclasses.replace(host_target(), name="npu-chip", device="npu")
    graph = ub.jit(lambda x: x + 1.0).trace(np.ones(3, np.float32))[0]
    with pytest.raises(ub.UnsupportedOpError, match="runs on device 'npu', which has no runtime here"):
        ub.compile(graph, target=t)
    from ubique.runtime.aot import build_library

    with pytest.raises(ub.UnsupportedOpError, match="ubique build makes C-API libraries for CPU targets"):
        build_library(graph, tmp_path / "lib.so", t)


# ---------------------------------------------------------------------------------------------
# custom passes
# ---------------------------------------------------------------------------------------------
def _relu_to_abs(graph, target):
    """A graph pass that changes meaning visibly: relu -> abs (rebuilt node by node)."""
    from ubique.compiler.rewrite import rewrite

    def fn(ng, n, ins):
        return ng.add_node("abs", ins, {}, n.loc).outputs if n.op == "relu" else None
    return rewrite(graph, fn)


@pytest.fixture
def passes():
    registered = []

    def register(name, fn, **kw):
        registered.append(name)
        return ub.passes.register(name, fn, **kw)
    yield register
    for name in registered:
        ub.passes.unregister(name)


def test_graph_pass_runs_at_its_position_for_its_target(passes):
    x = np.linspace(-1, 1, 8).astype(np.float32)
    graph = ub.jit(lambda a: ub.relu(a) * 2.0).trace(x)[0]
    passes("relu_to_abs", _relu_to_abs, after="decompose")
    passes("other_target_only", lambda g, t: pytest.fail("ran for the wrong target"), after="cse", target="aarch64")
    program = compile_graph(graph, host_target())
    names = [r.name for r in program.passes]
    assert names.index("relu_to_abs") == names.index("decompose") + 1 and "other_target_only" not in names
    assert [r.origin for r in program.passes if r.name == "relu_to_abs"][0].startswith("custom pass 'relu_to_abs'")
    np.testing.assert_allclose(load_program(program).run(x)[0], np.abs(x) * 2)
    # the cache key follows the registered passes: ub.compile does not reuse code made without it
    np.testing.assert_allclose(ub.compile(graph).run([x])[0], np.abs(x) * 2)
    f = ub.jit(lambda a: ub.relu(a) * 2.0)       # and a jitted function compiles anew
    np.testing.assert_allclose(f(x), np.abs(x) * 2)
    ub.passes.unregister("relu_to_abs")
    np.testing.assert_allclose(ub.compile(graph).run([x])[0], np.maximum(x, 0) * 2)
    np.testing.assert_allclose(f(x), np.maximum(x, 0) * 2)


def test_embedded_code_made_with_other_plugins_is_not_used(passes, tmp_path):
    from ubique import report

    x = np.linspace(-1, 1, 8).astype(np.float32)
    graph = ub.jit(lambda a: ub.relu(a) * 2.0).trace(x)[0]
    passes("relu_to_abs", _relu_to_abs, after="decompose")
    ub.save(graph, tmp_path / "m.ubq", targets=["host"])
    np.testing.assert_allclose(ub.load(tmp_path / "m.ubq").run([x])[0], np.abs(x) * 2)  # its own code
    ub.passes.unregister("relu_to_abs")
    with report.collect() as events:
        np.testing.assert_allclose(ub.load(tmp_path / "m.ubq").run([x])[0], np.maximum(x, 0) * 2)
    assert any(e.kind == "embedded_rejected" and "compiled with other plug-ins" in e.reason for e in events.events)


def test_loop_pass_after_fusion_and_after_schedule(passes):
    seen = {"fuse": [], "schedule": []}

    def look(kernel, target):
        seen["fuse"].append(kernel.name)
        return kernel

    passes("look_after_fusion", look, after="fusion")
    passes("look_after_schedule", lambda k, t: (seen["schedule"].append(
        any(isinstance(n, L.For) and n.kind == "vectorized" for n in L.walk(k.body))), k)[1], after="schedule")
    x = np.random.rand(4, 64).astype(np.float32)
    program = compile_graph(ub.jit(lambda a: ub.exp(a) + 1.0).trace(x)[0], host_target(),
                            dump_after=["look_after_fusion", "schedule"])
    names = [r.name for r in program.passes]
    assert names.index("fuse") < names.index("look_after_fusion") < names.index("schedule") \
        < names.index("look_after_schedule") < names.index("codegen")
    assert seen["fuse"] == [program.kernels[0].kernel.name] and seen["schedule"] == [True]
    assert program.dumps["look_after_fusion"].startswith("kernel ") and "vectorized" in program.dumps["schedule"]


def test_pass_errors_name_the_pass(passes):
    graph = ub.jit(lambda a: a + 1.0).trace(np.ones(3, np.float32))[0]
    with pytest.raises(ub.PluginError, match="unknown pipeline step 'nowhere'"):
        ub.passes.register("p", lambda g, t: g, after="nowhere")
    with pytest.raises(ub.PluginError, match="exactly one of after= or before="):
        ub.passes.register("p", lambda g, t: g)
    with pytest.raises(ub.PluginError, match="names a built-in step"):
        ub.passes.register("cse", lambda g, t: g, after="dce")
    with pytest.raises(ub.PluginError, match="target='nochip': unknown target"):
        ub.passes.register("p", lambda g, t: g, after="dce", target="nochip")
    passes("crashes", lambda g, t: 1 / 0, after="dce")
    with pytest.raises(ub.PluginError, match=r"custom pass 'crashes' .*\(after dce\) raised ZeroDivisionError"):
        compile_graph(graph, host_target())
    ub.passes.unregister("crashes")
    passes("returns_nothing", lambda g, t: None, before="cse")
    with pytest.raises(ub.PluginError, match=r"\(before cse\) returned NoneType; a graph pass must return a Graph"):
        compile_graph(graph, host_target())
    ub.passes.unregister("returns_nothing")

    def swaps_params(k, t):
        return L.Kernel(k.name, list(reversed(k.params)), k.dims, k.body)
    passes("swaps_params", swaps_params, after="schedule")
    with pytest.raises(ub.PluginError, match="'swaps_params' .*changed the loop's interface"):
        compile_graph(ub.jit(lambda a, b: a + b).trace(np.ones(3, np.float32), np.ones(3, np.float32))[0],
                      host_target())
    ub.passes.unregister("swaps_params")

    def breaks_types(g, t):
        g.nodes[-1].outputs[0].type = dataclasses.replace(g.nodes[-1].outputs[0].type, shape=(99,))
        return g
    passes("breaks_types", breaks_types, after="copy_outputs")
    with pytest.raises(ub.PluginError, match="'breaks_types' .*produced invalid graph IR"):
        compile_graph(graph, host_target())


def test_cli_print_passes_and_dump_after(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.rand(4, 8).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
                          "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    (tmp_path / "mypasses.py").write_text(textwrap.dedent("""
        import ubique as ub
        ub.passes.register("count_nodes", lambda g, t: g, after="cse")
        ub.passes.register("look", lambda k, t: k, after="fusion", target="aarch64")
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "ubique.cli", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
    r = cli("compile", "m.onnx", "-o", "m.ubq", "--import", "mypasses", "--target", "host,aarch64",
            "--dump-after", "look")
    assert r.returncode == 0, r.stderr
    assert "--dump-after look: no step of that name ran for target x86_64" in r.stdout
    assert "// IR after look (target aarch64)" in r.stdout and "kernel ubq_k0" in r.stdout
    r = cli("compile", "m.onnx", "-o", "m.ubq", "--dump-after", "nosuchstep")
    assert r.returncode == 2 and "--dump-after nosuchstep: no step of that name ran for any target" in r.stderr
    r = cli("compile", "m.onnx", "-o", "m.ubq", "--import", "mypasses", "--target", "host,aarch64",
            "--print-passes", "--dump-after", "count_nodes")
    assert r.returncode == 0, r.stderr
    host_part, arm_part = r.stdout.split("pipeline for target aarch64")
    assert "pipeline for target x86_64 (backend llvm-cpu)" in host_part
    for part, has_look in ((host_part, False), (arm_part, True)):
        steps = re.findall(r"^\s*\d+\. (\S+)", part.split("// IR")[0], re.M)
        assert steps[:1] == ["decompose"] and steps[-1] == "codegen", part
        assert steps.index("count_nodes") == steps.index("cse") + 1
        assert ("look" in steps) == has_look
    assert "// IR after count_nodes (target x86_64)" in r.stdout and "matmul" in r.stdout
    r = cli("compile", "m.onnx", "-o", "m.ubq", "--import", "no_such_module")
    assert r.returncode == 2 and "--import no_such_module" in r.stderr
