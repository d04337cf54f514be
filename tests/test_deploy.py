"""End-to-end deployment (issue 4): one .onnx model, three ways to run it, one answer.

For a ResNet-style CNN (tests/torch_models.py ResNet18, randomised batch norms, 64x64 images,
symbolic batch) and a BERT-style encoder (int64 ids and mask, symbolic batch and sequence):

    ubique compile model.onnx -o m.ubq --target <host>,aarch64     (the CLI, once per model)
    ubique inspect m.ubq                                            the graph, weights, targets
    ub.load("m.ubq").run(...)                                       Python, the embedded host code
    ubique build m.ubq --target <host> -o libm.so                   C on this machine: run_model
    ubique build m.ubq --target aarch64 -o libm-aarch64.so          C on AArch64 under qemu

run_model (examples/c/run_model.c) is the generic C runner: raw input files and shapes in,
raw output files out. Every path must agree with onnxruntime, and with the others, at batch 2
within max|a - b| / max|ref| <= 1e-4 (the criterion of issue 3). The AArch64 path is skipped
where qemu-aarch64 or aarch64-linux-gnu-gcc is missing.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import ubique as ub  # noqa: E402
from ubique.runtime.aot import include_dir  # noqa: E402
from ubique.targets import get_target, host_target  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "c"
CC = shutil.which("cc") or shutil.which("gcc")
HOST = host_target().name
AARCH64 = get_target("aarch64")
EMBEDDED = list(dict.fromkeys([HOST, "aarch64"]))  # the targets `ubique compile --target` embeds
_missing = [] if AARCH64.runs_natively else [t for t in ("qemu-aarch64", "aarch64-linux-gnu-gcc")
                                              if shutil.which(t) is None]
needs_aarch64 = pytest.mark.skipif(bool(_missing), reason=f"{' and '.join(_missing)} not installed, so the "
                                   "AArch64 library cannot be run (Debian: qemu-user, gcc-aarch64-linux-gnu)")
QEMU = [] if AARCH64.runs_natively else list(AARCH64.emulator)  # qemu-aarch64 -L /usr/aarch64-linux-gnu
BATCH = 2
RTOL = 1e-4


def cli(*args):
    """`ubique ARGS...` in a fresh process, as a user would run it."""
    proc = subprocess.run([sys.executable, "-m", "ubique.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"ubique {' '.join(map(str, args))} failed:\n{proc.stderr}"
    return proc.stdout


def run(argv):
    return subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=300)


def rel_err(got, want) -> float:
    """max|got - want| / max|want|, in float64."""
    want = np.asarray(want, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / max(np.max(np.abs(want)), 1e-30))


def check(path: str, model: str, got: list, want: list, against: str) -> None:
    assert len(got) == len(want), f"{model} {path}: {len(got)} outputs, expected {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, f"{model} {path} output {k}: {g.dtype}{g.shape}"
        err = rel_err(g, w)
        print(f"{model}: {path} vs {against}, output {k}: max relative error {err:.2e}")
        assert err <= RTOL, f"{model} {path} output {k}: max relative error {err:.2e} vs {against}"


# -- the models -------------------------------------------------------------------------------
def _resnet():
    from torch_models import ResNet18, export, randomize_batchnorm

    torch.manual_seed(0)
    onnx_bytes = export(randomize_batchnorm(ResNet18()), (torch.zeros(1, 3, 64, 64),), ["input"], ["logits"],
                        {"input": {0: "batch"}, "logits": {0: "batch"}})
    rng = np.random.default_rng(0)
    feeds = {"input": rng.standard_normal((BATCH, 3, 64, 64), np.float32)}
    # same bytes, wrong shape: the C API's message must come out of run_model
    bad = (["2x3x32x128"], "input 'input': expected shape (batch=2, 3, 64, 64), got (2, 3, 32, 128) (axis 2)")
    return onnx_bytes, feeds, bad, "input: f32[batch, 3, 64, 64]", ["conv2d", "max_pool2d", "matmul"]


def _bert():
    from torch_models import BertEncoder, export

    torch.manual_seed(0)
    ids, mask = torch.randint(0, 1000, (1, 16)), torch.ones(1, 16, dtype=torch.int64)
    axes = {"batch": {0: "batch", 1: "seq"}, "pooled": {0: "batch"}}
    onnx_bytes = export(BertEncoder(), (ids, mask), ["ids", "mask"], ["hidden", "pooled"],
                        {"ids": axes["batch"], "mask": axes["batch"], "hidden": axes["batch"],
                         "pooled": axes["pooled"]})
    rng = np.random.default_rng(0)
    seq = 24  # not the exported 16: the sequence length is symbolic
    mask = np.ones((BATCH, seq), np.int64)
    mask[:, 18:] = 0  # padded positions exercise the attention mask
    feeds = {"ids": rng.integers(0, 1000, (BATCH, seq)).astype(np.int64), "mask": mask}
    # the mask's sizes disagree with the ids'
    bad = ([f"{BATCH}x{seq}", f"{2 * BATCH}x{seq // 2}"], f"input 'mask' axis 0: 'batch' = {2 * BATCH}, but an "
           f"earlier axis set 'batch' = {BATCH}")
    return onnx_bytes, feeds, bad, "ids: i64[batch, seq], mask: i64[batch, seq]", ["gather", "matmul", "erf"]


MODELS = {"resnet18": _resnet, "bert": _bert}


@dataclass
class Deployed:
    name: str
    folder: Path
    ubq: Path
    feeds: dict
    shapes: list  # run_model's shape arguments, "2x3x64x64"
    bad: tuple  # (run_model's shape arguments for wrong shapes, the C API's message)
    inputs_line: str  # what `ubique inspect` prints after "inputs:"
    ops: list  # some ops the printed graph must show
    reference: list  # onnxruntime's outputs
    python: list = field(default_factory=list)  # ub.load(m.ubq).run

    def run_model_args(self, shapes=None) -> list:
        args = []
        for (name, _), shape in zip(self.feeds.items(), shapes or self.shapes):
            args += [self.folder / f"{name}.bin", shape]
        return args


@pytest.fixture(scope="module", params=list(MODELS))
def deployed(request, tmp_path_factory) -> Deployed:
    """The model exported to ONNX, compiled ONCE by `ubique compile --target <host>,aarch64`, its
    batch-2 inputs as raw files, onnxruntime's outputs and ub.load(m.ubq)'s outputs."""
    name = request.param
    onnx_bytes, feeds, bad, inputs_line, ops = MODELS[name]()
    d = tmp_path_factory.mktemp(f"deploy-{name}")
    (d / "model.onnx").write_bytes(onnx_bytes)
    out = cli("compile", d / "model.onnx", "-o", d / "m.ubq", "--target", ",".join(EMBEDDED))
    assert f"code for: {', '.join(EMBEDDED)}" in out
    for key, a in feeds.items():
        np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tofile(d / f"{key}.bin")
    shapes = ["x".join(map(str, a.shape)) for a in feeds.values()]
    reference = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]).run(None, feeds)
    dep = Deployed(name, d, d / "m.ubq", feeds, shapes, bad, inputs_line, ops, reference)
    compiled = ub.cache_info()["compiled"]
    model = ub.load(dep.ubq)
    dep.python = model.run(feeds)
    assert ub.cache_info()["compiled"] == compiled, "ub.load compiled the graph instead of using the embedded code"
    return dep


def _build_run_model(folder: Path, compiler: str, name: str) -> Path:
    """examples/c/run_model.c built with `compiler` (through its Makefile where make exists)."""
    exe = folder / name
    flags = "-O2 -std=c99 -Wall -Wextra -Werror"
    if shutil.which("make"):
        proc = run(["make", "-s", "-C", EXAMPLE, "run_model", f"RUN_MODEL={exe}", f"CC={compiler}",
                    f"CFLAGS={flags}", f"UBIQUE={sys.executable} -m ubique.cli"])
    else:
        proc = run([compiler, *flags.split(), f"-I{include_dir()}", "-o", exe, EXAMPLE / "run_model.c", "-ldl"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return exe


@pytest.fixture(scope="module")
def run_model_host(tmp_path_factory) -> Path:
    return _build_run_model(tmp_path_factory.mktemp("run_model"), CC, "run_model")


def _run_c(dep: Deployed, exe: Path, lib: Path, outdir: Path, emulator=()) -> list:
    """run_model on the model's inputs; its outputs read back with onnxruntime's shapes and dtypes."""
    outdir.mkdir(exist_ok=True)
    proc = run([*emulator, exe, lib, *dep.run_model_args(), "-o", outdir])
    assert proc.returncode == 0, f"run_model failed:\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert len(lines) == len(dep.reference), proc.stdout
    outputs = []
    for k, (ref, line) in enumerate(zip(dep.reference, lines)):
        assert line == f"out{k}: f32[{', '.join(map(str, ref.shape))}] -> {outdir}/out{k}.bin", line
        outputs.append(np.fromfile(outdir / f"out{k}.bin", ref.dtype.newbyteorder("<")).astype(ref.dtype)
                       .reshape(ref.shape))
    return outputs


@pytest.fixture(scope="module")
def host_c(deployed, run_model_host) -> tuple[Path, list]:
    """`ubique build m.ubq --target <host>` run by run_model: (the library, its outputs)."""
    lib = deployed.folder / "libm.so"
    assert "weights embedded" in cli("build", deployed.ubq, "--target", HOST, "-o", lib)
    return lib, _run_c(deployed, run_model_host, lib, deployed.folder / "out-host")


# -- the checks -------------------------------------------------------------------------------
def test_inspect_lists_graph_weights_and_targets(deployed):
    from ubique.ubq import open_model

    out = cli("inspect", deployed.ubq)
    mf, graph = open_model(deployed.ubq)
    total = sum(a.nbytes for a in mf.tensors.values())
    # the portable graph's weights are the ONNX initializers (batch norms folded into convolutions)
    initializers = sum(onnx.numpy_helper.to_array(t).nbytes
                       for t in onnx.load_from_string((deployed.folder / "model.onnx").read_bytes()).graph.initializer)
    portable = sum(n.attrs["value"].nbytes for n in graph.nodes if n.op == "constant")
    assert abs(portable - initializers) <= 0.01 * initializers, (portable, initializers)
    # embedded code may add its target's packed copies (channel-blocked conv weights), at most
    # one copy per target (padded channels included)
    assert portable <= total <= portable * (1 + len(EMBEDDED)) * 1.1, (total, portable)
    assert f"weights: {len(mf.tensors)} tensors, {total / 1e6:.2f} MB" in out, out
    for target in EMBEDDED:
        t = get_target(target)
        assert re.search(rf"^code: target {t.name} \({re.escape(t.triple)}, cpu=\S+\) key {t.key} ", out, re.M), out
        assert re.search(rf"^  section code .* {t.key}$", out, re.M), out
    assert f"inputs:  {deployed.inputs_line}\n" in out
    assert re.search(rf"^graph {re.escape(graph.name)}\(%", out, re.M), out  # the graph IR itself
    for op in deployed.ops:
        assert re.search(rf"= {op}\(", out), f"{op} missing from the printed graph"


def test_python_load_matches_onnxruntime(deployed):
    check("python", deployed.name, deployed.python, deployed.reference, "onnxruntime")


def test_c_on_host_matches_onnxruntime_and_python(deployed, host_c, run_model_host):
    lib, outputs = host_c
    check(f"C {HOST}", deployed.name, outputs, deployed.reference, "onnxruntime")
    check(f"C {HOST}", deployed.name, outputs, deployed.python, "python")
    # a failure is one line on stderr with the C API's message, and a nonzero status
    shapes, message = deployed.bad
    proc = run([run_model_host, lib, *deployed.run_model_args(shapes), "-o", deployed.folder])
    assert proc.returncode == 1 and proc.stderr == f"run_model: ubq_model_output_shape: {message}\n", proc.stderr
    proc = run([run_model_host, lib, "-o", deployed.folder])
    assert proc.returncode == 1 and f"has {len(deployed.feeds)} input(s); 0 were given" in proc.stderr


@pytest.fixture(scope="module")
def run_model_aarch64(tmp_path_factory) -> Path:
    gcc = CC if AARCH64.runs_natively else "aarch64-linux-gnu-gcc"
    return _build_run_model(tmp_path_factory.mktemp("run_model_aarch64"), gcc, "run_model-aarch64")


@needs_aarch64
def test_c_on_aarch64_under_qemu_matches(deployed, host_c, run_model_aarch64, run_model_host):
    lib = deployed.folder / "libm-aarch64.so"
    cli("build", deployed.ubq, "--target", "aarch64", "-o", lib)
    assert lib.read_bytes()[18] == 183  # EM_AARCH64
    outputs = _run_c(deployed, run_model_aarch64, lib, deployed.folder / "out-aarch64", QEMU)
    check("C aarch64", deployed.name, outputs, deployed.reference, "onnxruntime")
    check("C aarch64", deployed.name, outputs, deployed.python, "python")
    check("C aarch64", deployed.name, outputs, host_c[1], f"C {HOST}")
    if not AARCH64.runs_natively:  # this machine's runner refuses the AArch64 library, saying why
        proc = run([run_model_host, lib, *deployed.run_model_args(), "-o", deployed.folder])
        assert proc.returncode == 1 and "built for aarch64" in proc.stderr, proc.stderr
