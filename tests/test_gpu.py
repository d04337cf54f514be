"""The GPU target (targets "cuda", "cuda-sm80", "cuda-sm90"; compiler/gpu_schedule.py,
codegen/nvptx.py, codegen/cuda_toolkit.py, runtime/cuda.py).

What runs everywhere (no GPU needed):
* PTX: every op of the registry (the conformance kit's cases) and every test model compile to
  PTX for sm_80 and sm_90, and ptxas assembles it for both (skipped where ptxas is missing);
* the GPU schedules: the GPU-scheduled loop IR run serially on this CPU (device
  "cuda-emulator", compiler/gpu_schedule.serial_form) matches numpy / onnxruntime: elementwise,
  reductions across threads, shared-memory tiled matmul and convolution (implicit GEMM)
  with every kind of edge tile, symbolic sizes, whole models, a sample of the conformance kit;
* the GPU loop kinds in the verifier and the printer;
* the runtime: without a driver compiling works and running raises RuntimeFailure saying
  what is missing; through a stand-in libcuda (built here with the C compiler: device memory
  is host memory, a launch runs the kernel's serial form) the whole launch path runs:
  buffers, workspace, weights, symbolic sizes, the CUDA graph replayed once per run.

What needs a GPU (skipped with the reason otherwise): the same models and ops run on it and
compared with numpy / onnxruntime.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from pathlib import Path

import numpy as np
import pytest

import ubique as ub
from ubique.codegen import cuda_toolkit, nvptx
from ubique.compiler import gpu_schedule
from ubique.compiler.pipeline import compile_graph
from ubique.errors import RuntimeFailure, VerifyError
from ubique.ir import loop as L
from ubique.ir.dtypes import DType
from ubique.ir.loop_printer import print_kernel
from ubique.ir.loop_verify import verify_kernel
from ubique.runtime import cuda
from ubique.targets import gpu

F32 = DType.float32


# float math in GPU code comes from the CUDA toolkit's libdevice (codegen/cuda_toolkit.py);
# without it most models cannot be compiled for the GPU, and these tests have nothing to check
if cuda_toolkit.find_libdevice() is None:
    pytest.skip("libdevice.10.bc (CUDA toolkit, or pip nvidia-cuda-nvcc) not found: GPU code generation needs it "
                "for math functions", allow_module_level=True)
PTXAS = cuda_toolkit.find_ptxas()
needs_ptxas = pytest.mark.skipif(PTXAS is None, reason="ptxas not found (CUDA toolkit or pip nvidia-cuda-nvcc)")
GPU = cuda.probe_device()
needs_gpu = pytest.mark.skipif(GPU is None, reason="no CUDA GPU or driver on this machine")
ARCHS = ("sm_80", "sm_90")
TARGET_OF = {"sm_80": "cuda-sm80", "sm_90": "cuda-sm90"}


def trace(fn, *args):
    return ub.jit(fn).trace(*args)[0]


def emulate(fn, *args, dims=None):
    """fn compiled for the GPU and run serially on this CPU, and the host's result."""
    g = trace(fn, *args)
    got = ub.compile(g, target="cuda-emulated", dims=dims).run(list(args))
    want = ub.jit(fn)(*args)
    return got, (list(want) if isinstance(want, (tuple, list)) else [want])


def assert_close(got, want, rtol=2e-5, atol=2e-5):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        scale = max(1.0, float(np.abs(b).max())) if b.size and b.dtype.kind == "f" else 1.0
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * scale)


def kinds(program) -> dict[str, str]:
    """kernel name -> the schedule it got: gemm / block-reduce / thread-per-output / single."""
    out = {}
    for lk in program.kernels:
        body = lk.kernel.body
        threads = [n for n in L.walk(body) if isinstance(n, L.For) and n.kind == "thread"]
        if any(isinstance(n, L.Scratch) for n in L.walk(body)):
            out[lk.kernel.name] = "gemm"
        elif any(isinstance(t.body, L.Assign) for t in threads):
            out[lk.kernel.name] = "block-reduce"
        elif threads:
            out[lk.kernel.name] = "thread-per-output"
        else:
            out[lk.kernel.name] = "single"
    return out


RNG = np.random.default_rng(7)


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


# ---- targets, backend, code ------------------------------------------------------------------
def test_targets():
    for name, cpu, ptx in (("cuda-sm80", "sm_80", "+ptx70"), ("cuda-sm90", "sm_90", "+ptx78")):
        t = ub.targets.get_target(name)
        assert (t.triple, t.cpu, t.features, t.codegen, t.device, t.vector_bits) == (
            "nvptx64-nvidia-cuda", cpu, ptx, "nvptx", "cuda", 32)
        assert not t.runs_natively
    from ubique.codegen.backend import get_backend

    assert get_backend("nvptx").layout_lanes(ub.targets.get_target("cuda-sm80")) == 0
    assert gpu.target_for_arch("x", (8, 9)).cpu == "sm_89"
    assert gpu.target_for_arch("x", (9, 5)).cpu == "sm_90"      # newest known arch not above the device
    assert gpu.target_for_arch("x", (12, 1)).cpu == "sm_120"
    t = ub.targets.get_target("cuda")
    assert t.cpu == ("sm_80" if GPU is None else t.cpu) and t.device == "cuda"


def test_compile_makes_ptx_without_a_driver():
    x = rand(33, 47)
    program = compile_graph(trace(lambda x: ub.tanh(x) * 2.0 + 1.0, x), ub.targets.get_target("cuda-sm80"))
    code = program.code
    assert code.language == "ptx" and code.obj == b"" and program.asm == code.source == program.source
    assert ".version 7.0" in code.source and ".target sm_80" in code.source and ".entry" in code.source
    assert "__nv_tanhf" not in code.source  # libdevice is linked in and inlined: no calls remain
    (launch,) = code.extras["launches"]
    assert launch["block"] == 256 and launch["grid"] == -(-33 * 47 // 256) and launch["dims"] == 0
    assert [k for k, _ in launch["buffers"]] == ["arg", "arg"]
    assert f".entry {launch['kernel']}(" in code.source and ".maxntid 256" in code.source
    sm90 = compile_graph(trace(lambda x: x * 2.0, x), ub.targets.get_target("cuda-sm90")).source
    assert ".version 7.8" in sm90 and ".target sm_90" in sm90


def test_symbolic_sizes_become_kernel_parameters():
    from ubique.ir.graph import Graph, TensorType

    g = Graph("sym")
    x = g.add_input(TensorType(("batch", 8), DType.float32), "x")
    g.outputs = [g.add_node("exp", [x], {}).outputs[0]]
    program = compile_graph(g, ub.targets.get_target("cuda-sm80"))
    (launch,) = program.code.extras["launches"]
    assert launch["dims"] == 1 and "batch" in str(launch["grid"])
    assert nvptx.evaluate_size(launch["grid"], {"batch": 100}) == -(-800 // 256)
    assert ".param .u64" in program.source


def test_jit_lower_asm_is_ptx():
    f = ub.jit(lambda a, b: ub.relu(a @ b), target="cuda-sm80")
    a, b = rand(64, 64), rand(64, 64)
    try:
        low = f.lower(a, b)
    except ub.UbiqueError as e:  # (until ubique/build.py and ubique/jit.py hand device targets to the device)
        pytest.skip(f"ub.jit(...).lower for device targets needs the build.py/jit.py change: {e}")
    assert ".target sm_80" in low.asm and low.source == low.asm


# ---- the GPU loop IR: printer, verifier, serial form --------------------------------------------
OUT = L.Buffer("out", F32, [512])
IN = L.Buffer("x", F32, [512])


def _k(body, params=(IN, OUT)):
    return L.Kernel("k", list(params), [], body)


def test_printer_and_serial_form():
    b, t = L.Var("b"), L.Var("t")
    tile = L.Buffer("tile", F32, [256])
    body = L.Scratch(tile, "shared", L.For(b, 2, L.Seq([
        L.For(t, 256, L.Store(tile, [t], IN[b * 256 + t]), "thread", 256),
        L.For(L.Var("u"), 256, L.Store(OUT, [b * 256 + L.Var("u")], L.Load(tile, [L.Var("u")]) * 2.0),
              "thread", 256)]), "block"))
    k = _k(body)
    verify_kernel(k)
    text = print_kernel(k)
    assert "  shared tile: f32[256]\n  block for b in 0..2 {" in text and "thread(256) for t in 0..256 {" in text
    serial, scratch = gpu_schedule.serial_form(k)
    assert scratch == [tile] and serial.params[-1] == tile
    assert all(n.kind == "serial" for n in L.walk(serial.body) if isinstance(n, L.For))
    verify_kernel(serial)


def _bad_kernels():
    b, t, u = L.Var("b"), L.Var("t"), L.Var("u")
    acc = L.Var("acc", F32)
    store = L.Store(OUT, [t], L.Const(1.0, F32))
    local = L.Buffer("regs", F32, [256, 4])
    return {
        "block-in-loop": (L.For(u, 2, L.For(b, 2, L.Store(OUT, [b], L.Const(0.0, F32)), "block")), "outermost"),
        "thread-outside-block": (L.For(t, 4, store, "thread", 32), "not inside a block loop"),
        "thread-in-thread": (L.For(b, 1, L.For(u, 2, L.For(t, 4, store, "thread", 32), "thread", 32), "block"),
                             "nested in thread loop"),
        "thread-without-lanes": (L.For(b, 1, L.For(t, 4, store, "thread"), "block"), "lanes"),
        "parallel-in-block": (L.For(b, 1, L.For(t, 4, store, "parallel"), "block"), "inside a block loop"),
        "racy-assign": (L.For(b, 1, L.Alloc(acc, L.Const(0.0, F32), L.For(t, 4, L.Seq([
            L.Assign(acc, acc + 1.0), store]), "thread", 32)), "block"), "reduce across threads"),
        "local-wrong-index": (L.Scratch(local, "local", L.For(b, 1, L.For(t, 256, L.Store(local, [b, 0],
                                                                                          L.Const(0.0, F32)),
                                                                          "thread", 256), "block")),
                              "indexed first by the variable"),
        "two-block-loops": (L.Seq([L.For(b, 1, L.Store(OUT, [b], L.Const(0.0, F32)), "block"),
                                   L.For(u, 1, L.Store(OUT, [u], L.Const(0.0, F32)), "block")]), "at most one"),
    }


@pytest.mark.parametrize("case", sorted(_bad_kernels()))
def test_verifier_rejects_bad_gpu_kernels(case):
    body, words = _bad_kernels()[case]
    with pytest.raises(VerifyError, match=words):
        verify_kernel(_k(body))


def test_verifier_accepts_a_cross_thread_reduction():
    b, t, acc = L.Var("b"), L.Var("t"), L.Var("acc", F32)
    verify_kernel(_k(L.For(b, 1, L.Alloc(acc, L.Const(0.0, F32), L.Seq([
        L.For(t, 512, L.Assign(acc, acc + IN[t]), "thread", 256), L.Store(OUT, [b], acc)])), "block")))


# ---- the schedules, run serially on the CPU ----------------------------------------------------
@pytest.mark.parametrize("shape", [(1,), (255,), (256,), (1000, 3), (7, 5, 300)])
def test_elementwise(shape):
    x = rand(*shape)
    got, want = emulate(lambda x: ub.sigmoid(x) * x + ub.erf(x), x)
    assert_close(got, want)


@pytest.mark.parametrize("m,k,n", [(64, 64, 64), (100, 70, 130), (257, 33, 129), (128, 256, 256), (16, 513, 48)])
def test_matmul_tiles(m, k, n):
    a, b, bias = rand(m, k), rand(k, n), rand(n)
    got, want = emulate(lambda a, b, c: ub.relu(a @ b + c), a, b, bias)
    assert_close(got, want, rtol=1e-4)
    program = compile_graph(trace(lambda a, b, c: ub.relu(a @ b + c), a, b, bias), ub.targets.get_target("cuda-sm90"))
    assert list(kinds(program).values()) == ["gemm"]


def test_batched_and_transposed_matmul():
    a, b, w = rand(3, 33, 70), rand(3, 70, 45), rand(40, 70)
    got, want = emulate(lambda a, b: a @ b, a, b)
    assert_close(got, want, rtol=1e-4)
    got, want = emulate(lambda a, w: a @ ub.transpose(w), a, w)  # x @ W^T: W is contiguous along k
    assert_close(got, want, rtol=1e-4)


@pytest.mark.parametrize("stride,padding,kernel", [(1, 1, 3), (2, 1, 3), (1, 0, 1), (2, 3, 7)])
def test_conv_as_implicit_gemm(stride, padding, kernel):
    x, w, b = rand(2, 32, 19, 17), rand(24, 32, kernel, kernel), rand(24)
    fn = lambda x, w, b: ub.relu(ub.conv2d(x, w, stride=stride, padding=padding) + ub.reshape(b, (24, 1, 1)))  # noqa: E731
    got, want = emulate(fn, x, w, b)
    assert_close(got, want, rtol=1e-4)
    assert "gemm" in kinds(compile_graph(trace(fn, x, w, b), ub.targets.get_target("cuda-sm80"))).values()


def test_two_contractions_in_one_kernel():
    """ResNet's downsampling block fuses a 3x3 convolution with the 1x1 shortcut: two
    accumulators in one tiled kernel."""
    x, w1, w2 = rand(2, 16, 14, 14), rand(32, 16, 3, 3), rand(32, 16, 1, 1)
    fn = lambda x, w1, w2: ub.relu(ub.conv2d(x, w1, stride=2, padding=1) + ub.conv2d(x, w2, stride=2))  # noqa: E731
    program = compile_graph(trace(fn, x, w1, w2), ub.targets.get_target("cuda-sm80"))
    accumulators = [n.buffer.shape[1].value for lk in program.kernels for n in L.walk(lk.kernel.body)
                    if isinstance(n, L.Scratch) and n.scope == "local"]
    assert accumulators == [2], print_kernel(program.kernels[0].kernel)
    got, want = emulate(fn, x, w1, w2)
    assert_close(got, want, rtol=1e-4)


@pytest.mark.parametrize("shape,axis", [((64, 1000), -1), ((3, 5000), 1), ((4096, 40), 1), ((2000, 7), 0),
                                        ((17, 19, 23), (0, 2))])
def test_reductions(shape, axis):
    x = rand(*shape)
    got, want = emulate(lambda x: (x.sum(axis=axis), x.max(axis=axis), ub.argmax(x, axis=axis if isinstance(
        axis, int) else 0)), x)
    assert_close(got, want, rtol=1e-4)


def test_block_reduce_schedule_is_used_for_rows():
    x = rand(64, 1000)
    program = compile_graph(trace(lambda x: ub.softmax(x, axis=-1), x), ub.targets.get_target("cuda-sm80"))
    assert "block-reduce" in kinds(program).values()
    loops = [n for lk in program.kernels for n in L.walk(lk.kernel.body) if isinstance(n, L.For)
             and n.kind == "thread" and isinstance(n.body, L.Assign)]
    assert loops and all(n.lanes == 64 for n in loops)
    got, want = emulate(lambda x: (ub.softmax(x, axis=-1), ub.layer_norm(x, axis=-1)), x)
    assert_close(got, want, rtol=1e-4)


def test_full_reduction_one_block():
    x = rand(3001)
    got, want = emulate(lambda x: (x.sum(), x.max(), ub.mean(x * x)), x)
    assert_close(got, want, rtol=1e-4)


def test_symbolic_batch():
    from ubique.ir.graph import Graph, TensorType

    w = rand(96, 80)
    g = Graph("sym")
    x = g.add_input(TensorType(("batch", 96), DType.float32), "x")
    h = g.add_node("matmul", [x, g.constant(w, DType.float32)], {}).outputs[0]
    g.outputs = [g.add_node("softmax", [g.add_node("tanh", [h], {}).outputs[0]], {"axis": -1}).outputs[0]]
    m = ub.compile(g, target="cuda-emulated", dims={"batch": (1, 512)})
    for batch in (1, 37, 300):
        xs = rand(batch, 96)
        e = np.exp(np.tanh(xs @ w) - np.tanh(xs @ w).max(-1, keepdims=True))
        np.testing.assert_allclose(m.run([xs])[0], e / e.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)


CONFORMANCE_OPS = ("erf", "pow", "cast", "where", "prod", "argmax", "matmul", "conv2d", "max_pool2d",
                   "softmax", "layer_norm", "gather", "cumsum", "topk", "lstm", "resize", "conv_transpose2d",
                   "transpose")


def test_conformance_sample_through_gpu_schedules():
    """Every dtype of a sample of ops (the conformance kit) through the GPU schedules; the whole
    table: `ubique conformance --target cuda-emulated`."""
    ut = pytest.importorskip("ubique.testing")
    ops = [o for o in CONFORMANCE_OPS if o in ut.op_names()]
    report = ut.run_conformance("cuda-emulated", ops=ops, cases=1)
    assert report.passed, report.table()


# ---- PTX for every op and every model, assembled by ptxas --------------------------------------
@pytest.fixture(scope="module")
def all_ops_graph():
    ut = pytest.importorskip("ubique.testing")
    from ubique.ir.registry import get_op

    cases = []
    for name in ut.op_names():
        cases += ut.make_cases(name, get_op(name), cases=1)[0]
    assert len(cases) > 500
    return ut._graph(cases)[0]


@needs_ptxas
@pytest.mark.parametrize("arch", ARCHS)
def test_every_op_assembles(all_ops_graph, arch):
    """The kit's cases of every registry op, every dtype, in one graph: its PTX for `arch`
    assembles, and the sm_80 PTX also assembles for sm_90 (it runs on newer GPUs)."""
    program = compile_graph(all_ops_graph, ub.targets.get_target(TARGET_OF[arch]))
    assert program.num_kernels > 500
    cuda_toolkit.ptxas_check(program.source, arch)
    if arch == "sm_80":
        cuda_toolkit.ptxas_check(program.source, "sm_90")


def _export_models():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from torch_models import BertEncoder, LeNet, LSTMTagger, MLP, MobileNetV2, ResNet18, export, randomize_batchnorm

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    image = torch.randn(1, 3, 224, 224)
    ids = torch.randint(0, 1000, (1, 128))
    ax = lambda names, axis=0: {n: {axis: "batch"} for n in names}  # noqa: E731
    mask = np.ones((2, 128), np.int64)
    mask[:, 100:] = 0
    return {
        "mlp": (export(MLP(), (torch.randn(1, 784),), ["x"], ["y"], ax(["x", "y"])),
                {"x": rng.standard_normal((3, 784), np.float32)}),
        "lenet": (export(LeNet(), (torch.randn(1, 1, 28, 28),), ["x"], ["y"], ax(["x", "y"])),
                  {"x": rng.standard_normal((2, 1, 28, 28), np.float32)}),
        "lstm": (export(LSTMTagger(), (torch.randn(12, 1, 32),), ["x"], ["y"], ax(["x", "y"], 1)),
                 {"x": rng.standard_normal((12, 2, 32), np.float32)}),
        "bert": (export(BertEncoder(), (ids, torch.ones(1, 128, dtype=torch.int64)), ["ids", "mask"],
                        ["hidden", "pooled"], ax(["ids", "mask", "hidden", "pooled"])),
                 {"ids": rng.integers(0, 1000, (2, 128)).astype(np.int64), "mask": mask}),
        "resnet18": (export(randomize_batchnorm(ResNet18()), (image,), ["input"], ["logits"],
                            ax(["input", "logits"])), {"input": rng.standard_normal((1, 3, 224, 224), np.float32)}),
        "mobilenet_v2": (export(randomize_batchnorm(MobileNetV2()), (image,), ["input"], ["logits"],
                                ax(["input", "logits"])),
                         {"input": rng.standard_normal((1, 3, 224, 224), np.float32)}),
    }


@pytest.fixture(scope="module")
def models():
    return _export_models()


MODELS = ("mlp", "lenet", "lstm", "bert", "resnet18", "mobilenet_v2")


def _reference(onnx_bytes, feeds):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(onnx_bytes).run(None, feeds)


def _assert_model_close(got, want, rel=1e-4):
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= rel * max(np.abs(b).max(), 1e-30)


@needs_ptxas
@pytest.mark.parametrize("name", MODELS)
def test_model_ptx_assembles(models, name):
    """Each model's PTX for sm_80 assembles for sm_80 and sm_90; its sm_90 PTX for sm_90
    (MobileNetV2, the slowest to compile, only through its sm_80 PTX)."""
    graph = ub.import_onnx(models[name][0])
    for arch in ARCHS[:1] if name == "mobilenet_v2" else ARCHS:
        program = compile_graph(graph, ub.targets.get_target(TARGET_OF[arch]))
        cuda_toolkit.ptxas_check(program.source, arch)
        if arch == "sm_80":
            cuda_toolkit.ptxas_check(program.source, "sm_90")


@pytest.mark.parametrize("name", [m for m in MODELS if m != "mobilenet_v2"])  # (its layers: ResNet's and BERT's)
def test_model_through_gpu_schedules(models, name):
    onnx_bytes, feeds = models[name]
    got = ub.compile(ub.import_onnx(onnx_bytes), target="cuda-emulated").run(feeds)
    _assert_model_close(got, _reference(onnx_bytes, feeds))


# ---- the runtime without a GPU ------------------------------------------------------------------
@pytest.fixture
def libcuda(monkeypatch):
    """Points the runtime at another driver library: libcuda("path") -> resets the loaded one."""
    def use(path):
        monkeypatch.setenv("UBIQUE_LIBCUDA", str(path))
        cuda.reset_driver()
    yield use
    monkeypatch.delenv("UBIQUE_LIBCUDA", raising=False)
    cuda.reset_driver()


def test_no_driver_compiles_then_fails_clearly(libcuda, tmp_path):
    libcuda(tmp_path / "libcuda.so.1")
    assert cuda.probe_device() is None
    gpu.cuda_target.cache_clear()
    try:
        assert ub.targets.get_target("cuda").cpu == "sm_80"  # no GPU to ask: the default architecture
    finally:
        gpu.cuda_target.cache_clear()
    x = rand(8, 8)
    model = ub.compile(trace(lambda x: x * 2.0, x), target="cuda")  # compiling needs no driver
    with pytest.raises(RuntimeFailure, match="no CUDA driver: .*libcuda.so.1 could not be loaded.*NVIDIA driver"):
        model.run([x])
    with pytest.raises(RuntimeFailure, match="no CUDA driver"):  # the same answer on every try
        model.run([x])


def test_not_a_driver_library(libcuda):
    libcuda(ctypes.util.find_library("m") or "libm.so.6")
    with pytest.raises(RuntimeFailure, match="is not a CUDA driver library: it has no cuInit"):
        cuda.driver()


@pytest.fixture(scope="module")
def fake_driver(tmp_path_factory):
    from ubique.runtime.toolchain import compile_c_shared

    source = tmp_path_factory.mktemp("fake") / "fake_cuda.c"
    source.write_text(_FAKE_CUDA_C)
    return compile_c_shared([source], source.with_name("libfakecuda.so"), ("-Wall",), libs=())


def test_driver_without_a_gpu(libcuda, fake_driver, monkeypatch):
    monkeypatch.setenv("FAKE_CUDA_NO_DEVICE", "1")
    libcuda(fake_driver)
    with pytest.raises(RuntimeFailure, match="found no GPU .*CUDA_ERROR_NO_DEVICE: no CUDA-capable device"):
        cuda.driver()
    x = rand(4)
    with pytest.raises(RuntimeFailure, match="found no GPU"):
        ub.compile(trace(lambda x: x + 1.0, x), target="cuda-sm80").run([x])


class _FakeGPU:
    """Runs the launches the stand-in driver receives: each kernel's serial form, compiled for
    this CPU, called on the "device" pointers (host memory there). `program`: one Program, or a
    list of them whose kernels have distinct names."""

    def __init__(self, program, lib_path, tmp_path):
        from ubique.codegen.cpu import compile_llvm_ir
        from ubique.codegen.llvm_emit import ModuleEmitter
        from ubique.runtime import native
        from ubique.runtime.executable import link_program_object

        host = ub.targets.host_target()
        mod = ModuleEmitter("fake_gpu", host.vector_bits, host.triple)
        self.kernels = {}
        for lk in [lk for p in (program if isinstance(program, list) else [program]) for lk in p.kernels]:
            assert nvptx.ptx_name(lk.kernel.name) not in self.kernels, lk.kernel.name
            serial, scratch = gpu_schedule.serial_form(lk.kernel)
            mod.add_kernel(serial)
            arrays = [np.zeros(int(np.prod([d.value for d in b.shape])) * b.dtype.itemsize + 8, np.uint8)
                      for b in scratch]
            self.kernels[nvptx.ptx_name(lk.kernel.name)] = (serial, len(lk.kernel.params), arrays)
        so = link_program_object(compile_llvm_ir(str(mod.module), host).obj, tmp_path / "fake_gpu.so")
        native.lib()
        self.dll = ctypes.CDLL(os.fspath(so))
        self.native = native
        self.calls = []
        self.driver = ctypes.CDLL(os.fspath(lib_path))
        self.hook = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                                     ctypes.POINTER(ctypes.c_void_p))(self._launch)
        self.driver.fake_set_hook(self.hook)
        self.errors = []
        self.extra = {}  # kernel name -> fn(grid, block, params): runs a launch of hand-written PTX

    def _launch(self, name, grid, block, params):
        try:
            name = name.decode()
            self.calls.append((name, grid, block))
            if name in self.extra:  # a stand-in for a hand-written PTX kernel
                return self.extra[name](grid, block, params)
            kernel, n, scratch = self.kernels[name]
            ptrs = [ctypes.cast(params[k], ctypes.POINTER(ctypes.c_uint64))[0] for k in range(n)]
            dims = [ctypes.cast(params[n + k], ctypes.POINTER(ctypes.c_int64))[0] for k in range(len(kernel.dims))]
            args = self.native.make_pointer_array(n + len(scratch))
            for k, p in enumerate(ptrs):
                args[k] = self.native.ffi.cast("void *", p)
            for k, a in enumerate(scratch):
                args[n + k] = self.native.ffi.cast("void *", a.ctypes.data)
            fn = ctypes.cast(getattr(self.dll, kernel.name), ctypes.c_void_p).value
            dims_ptr = self.native.make_dims_array(dims) if dims else self.native.ffi.NULL
            self.native.call_entry(fn, args, dims_ptr, 0)
        except BaseException as e:  # noqa: BLE001 -- (a callback cannot raise into C)
            self.errors.append(e)


def _symbolic_model():
    from ubique.ir.graph import Graph, TensorType

    w, v = rand(48, 64), rand(64, 40)
    g = Graph("fake")
    x = g.add_input(TensorType(("batch", 48), DType.float32), "x")
    h = g.add_node("relu", [g.add_node("matmul", [x, g.constant(w, DType.float32)], {}).outputs[0]], {}).outputs[0]
    y = g.add_node("matmul", [h, g.constant(v, DType.float32)], {}).outputs[0]
    g.outputs = [g.add_node("softmax", [y], {"axis": -1}).outputs[0], g.add_node("sum", [h], {"axes": [1]}).outputs[0]]

    def reference(xs):
        hs = np.maximum(xs @ w, 0)
        ys = hs @ v
        e = np.exp(ys - ys.max(-1, keepdims=True))
        return [e / e.sum(-1, keepdims=True), hs.sum(1)]
    return g, reference


@pytest.mark.parametrize("graphs", ["1", "0"])
def test_launch_path_through_a_stand_in_driver(libcuda, fake_driver, tmp_path, monkeypatch, graphs):
    """The whole run path (context, module, weights, device buffers, workspace, symbolic sizes,
    launches captured in a CUDA graph or launched one by one, copies) against a stand-in
    libcuda whose launches run the kernels' serial forms on this CPU."""
    monkeypatch.setenv("UBIQUE_CUDA_GRAPHS", graphs)
    libcuda(fake_driver)
    g, reference = _symbolic_model()
    program = compile_graph(g, ub.targets.get_target("cuda-sm90"), dims={"batch": (1, 256)})
    fake = _FakeGPU(program, fake_driver, tmp_path)
    runnable = cuda.CudaDevice().load(program)
    n_kernels = len(program.code.extras["launches"])
    for batch in (5, 130, 5):
        xs = rand(batch, 48)
        before = (fake.driver.fake_launches(), fake.driver.fake_graph_launches())
        got = runnable.run(xs)
        assert not fake.errors, fake.errors
        for a, b in zip(got, reference(xs)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        launches = fake.driver.fake_launches() - before[0]
        assert launches == n_kernels
        assert fake.driver.fake_graph_launches() - before[1] == (1 if graphs == "1" else 0)
    assert {name for name, _, _ in fake.calls} == {launch["kernel"] for launch in program.code.extras["launches"]}
    assert all(0 < grid <= nvptx.MAX_GRID and block in (32, 64, 128, 256, 1024) for _, grid, block in fake.calls)
    plan = runnable.upload(rand(7, 48))
    assert runnable.time_launches(plan, repeat=3) == pytest.approx(1e-3 / 3)
    runnable.close()
    assert fake.driver.fake_live_allocations() == 0


def test_model_file_code_round_trip(libcuda, fake_driver, tmp_path):
    libcuda(fake_driver)
    x, w = rand(20, 30), rand(30, 50)
    program = compile_graph(trace(lambda x, w: ub.tanh(x @ w), x, w), ub.targets.get_target("cuda-sm80"))
    blob = cuda.code_blob(program)
    text = cuda.describe_blob(blob)
    assert "PTX for sm_80" in text and ".target sm_80" in text and "launches" in text
    assert cuda.describe_blob(blob, full=True) == program.source
    entry = {"signature": program.signature.to_json(), "workspace_size": program.memory.workspace_size,
             "contract": program.contract.to_json(), "dynamic_memory": None}
    fake = _FakeGPU(program, fake_driver, tmp_path)
    runnable = cuda.program_from_blob(blob, entry, program.weights)
    np.testing.assert_allclose(runnable.run(x, w)[0], np.tanh(x @ w), rtol=1e-4, atol=1e-5)
    assert not fake.errors
    with pytest.raises(ub.ModelError, match="not a ubique.cuda-ptx entry"):
        cuda.program_from_blob(b"\x7fELF...", entry, [])


class _ForeignCudaArray:
    """What a PyTorch CUDA tensor or a CuPy array shows: __cuda_array_interface__ only."""

    def __init__(self, owner, **changes):
        self.owner = owner
        self.__cuda_array_interface__ = {**owner.__cuda_array_interface__, **changes}


def test_device_arrays_through_a_stand_in_driver(libcuda, fake_driver, tmp_path):
    """Inputs already on the GPU are copied on the device, and outputs stay there as DeviceArrays;
    objects with a __cuda_array_interface__ are inputs too; bad ones get clear errors."""
    libcuda(fake_driver)
    g, reference = _symbolic_model()
    target = ub.targets.get_target("cuda-sm90")
    xs = rand(9, 48)
    g2 = trace(lambda y: y * 2.0, reference(xs)[0])
    fake = _FakeGPU([compile_graph(g, target, dims={"batch": (1, 64)}), compile_graph(g2, target)], fake_driver,
                    tmp_path)
    model = ub.compile(g, target=target, dims={"batch": (1, 64)})
    xd = ub.to_device(xs)
    assert isinstance(xd, ub.DeviceArray) and xd.shape == (9, 48) and xd.dtype == np.float32 and xd.device == "cuda:0"
    assert repr(xd) == "<ubique.DeviceArray float32[9, 48] on cuda:0>" and len(xd) == 9
    np.testing.assert_array_equal(np.asarray(xd), xs)
    cai = xd.__cuda_array_interface__
    assert cai["data"] == (xd.ptr, False) and cai["typestr"] == "<f4" and cai["version"] == 3

    model.run([xs])  # (the first run uploads the weights)
    htod = fake.driver.fake_htod()
    outs = model.run({"x": xd})
    assert not fake.errors, fake.errors
    assert {type(o) for o in outs} == {ub.DeviceArray}
    assert fake.driver.fake_htod() == htod  # nothing crossed from the host
    for got, want in zip(outs, reference(xs)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    first = outs[0].numpy()
    model.run([ub.to_device(rand(9, 48))])  # outputs are new arrays, not the plan's buffers
    np.testing.assert_array_equal(outs[0].numpy(), first)

    # a second model reads the first one's output where it is; host inputs still give numpy outputs
    double = ub.compile(g2, target=target)
    twice = double.run(outs[0])[0]
    assert isinstance(twice, ub.DeviceArray)
    np.testing.assert_allclose(twice.numpy(), first * 2, rtol=1e-6)
    assert type(double.run([first])[0]) is np.ndarray

    # another library's CUDA array, written on the legacy default stream (1): waited for, then read
    waits = fake.driver.fake_default_stream_waits(1)
    foreign = _ForeignCudaArray(xd, stream=1)
    np.testing.assert_allclose(model.run([foreign])[0].numpy(), reference(xs)[0], rtol=1e-4, atol=1e-5)
    assert fake.driver.fake_default_stream_waits(1) == waits + 1
    with pytest.raises(ub.ShapeError, match="not C-contiguous .*contiguous"):
        model.run([_ForeignCudaArray(xd, shape=(48, 9), strides=(4, 192))])
    with pytest.raises(ub.DTypeError, match="input 'x': expected dtype float32, got float64"):
        model.run([_ForeignCudaArray(xd, typestr="<f8", shape=(9, 24))])
    with pytest.raises(ub.ShapeError, match="batch"):
        model.run([ub.to_device(rand(65, 48))])
    with pytest.raises(ub.ShapeError, match=r"input 'y': expected shape \(9, 40\), got \(3, 3\)"):
        double.run([ub.to_device(rand(3, 3))])
    fake.driver.fake_set_ordinal(1)
    try:
        with pytest.raises(RuntimeFailure, match="input 'x' is on cuda:1, the model runs on cuda:0"):
            model.run([foreign])
    finally:
        fake.driver.fake_set_ordinal(0)
    with pytest.raises(RuntimeFailure, match="unknown device 'gpu'"):
        ub.to_device(xs, "gpu")
    assert ub.to_device(np.float32(3)).shape == () and ub.to_device(np.float32(3)).numpy() == 3
    swapped = ub.to_device(xs.astype(">f4"))
    assert swapped.dtype == np.float32 and (swapped.numpy() == xs).all()
    one = ub.to_device(xs[:1])  # a size-1 axis may have any stride
    np.testing.assert_allclose(model.run([_ForeignCudaArray(one, strides=(12345, 4))])[1].numpy(), reference(xs[:1])[1],
                               rtol=1e-4)
    with pytest.raises(RuntimeFailure, match="stream 0, which version 3 of the interface disallows"):
        model.run([_ForeignCudaArray(xd, stream=0)])
    gone = ub.to_device(xs)
    gone.free()
    for use in (gone.numpy, lambda: model.run([gone]), lambda: gone.__cuda_array_interface__):
        with pytest.raises(RuntimeFailure, match=r"float32\[9, 48\] on cuda:0> was freed"):
            use()
    with pytest.raises(ValueError, match="always copies"):
        np.asarray(xd, copy=False) if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else xd.__array__(copy=False)

    del outs, got, twice, xd, foreign, model, double, swapped, one, gone
    import gc

    gc.collect()
    assert fake.driver.fake_live_allocations() == 0


# ---- hand-written PTX kernels of custom ops ------------------------------------------------------
# out[i] = a * x[i] + b over the output's n elements, one thread each (the default launch shape)
_AXPB_PTX = """
.version 7.0
.target sm_80
.address_size 64

// a hand-written kernel: {name}
.visible .entry {name}(
    .param .u64 x_param,
    .param .u64 out_param
)
{{
    .reg .pred %p<2>;
    .reg .b32 %r<6>;
    .reg .f32 %f<3>;
    .reg .b64 %rd<6>;

    ld.param.u64 %rd1, [x_param];
    ld.param.u64 %rd2, [out_param];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mad.lo.s32 %r4, %r1, %r2, %r3;
    setp.ge.s32 %p1, %r4, {n};
    @%p1 bra DONE;
    mul.wide.s32 %rd3, %r4, 4;
    add.s64 %rd4, %rd1, %rd3;
    ld.global.nc.f32 %f1, [%rd4];
    fma.rn.f32 %f2, %f1, {a}, {b};
    add.s64 %rd5, %rd2, %rd3;
    st.global.f32 [%rd5], %f2;
DONE:
    ret;
}}
"""


def _ptx_float(v: float) -> str:
    return "0f" + np.float32(v).view(np.uint32).tobytes()[::-1].hex().upper()


@pytest.fixture
def axpb_op():
    """A custom op (a * x + b, float32) with a hand-written PTX kernel for the cuda targets."""
    from ubique import op

    name = f"axpb_{os.getpid()}_{time.monotonic_ns()}"

    @op.define(name, attrs={"a": 2.0, "b": 1.0}, dtypes=("f32",))
    def axpb(x, a, b):
        return x * a + b

    def ptx(spec):
        return _AXPB_PTX.format(name=spec.name, n=spec.output.size, a=_ptx_float(spec.attrs["a"]),
                                b=_ptx_float(spec.attrs["b"]))
    for target in ("cuda", "cuda-sm80", "cuda-sm90"):
        axpb.kernel(target, "ptx", block=128)(ptx)
    yield axpb
    op.undefine(name)


def _ptx_modules(program) -> list[dict]:
    return program.code.extras["modules"]


def test_hand_written_ptx_kernel_is_launched_from_its_own_module(axpb_op, libcuda, fake_driver, tmp_path):
    """The hand kernel replaces the generated one: its own PTX module, its launch shape (128
    threads, one per output element), the right buffers; the rest of the model is generated."""
    x = rand(5, 301)
    g = trace(lambda x: ub.tanh(axpb_op(x * 3.0, a=0.5, b=-1.0)), x)
    program = compile_graph(g, ub.targets.get_target("cuda-sm90"))
    (module,) = _ptx_modules(program)
    assert module["ptx"].count(".entry") == 1 and axpb_op.name in module["origin"]
    hand = [launch for launch in program.code.extras["launches"] if launch.get("module")]
    assert hand == [{"kernel": module["kernel"], "buffers": hand[0]["buffers"], "grid": -(-x.size // 128),
                     "block": 128, "dims": 0, "module": 1}]
    assert f".entry {module['kernel']}(" not in program.source  # not generated as well
    text = cuda.describe_blob(cuda.code_blob(program))
    assert f"{module['kernel']}: grid 12 x 128 threads (hand-written PTX: " in text
    assert module["ptx"] in cuda.describe_blob(cuda.code_blob(program), full=True)
    asm = ub.jit(lambda x: ub.tanh(axpb_op(x * 3.0, a=0.5, b=-1.0)), target="cuda-sm90").lower(x).asm
    assert f".entry {module['kernel']}(" in asm and "hand-written kernel" in asm

    libcuda(fake_driver)
    fake = _FakeGPU(program, fake_driver, tmp_path)

    def run_axpb(grid, block, params):  # the stand-in for the PTX: reads and writes the launch's pointers
        x_ptr, out_ptr = (ctypes.cast(params[k], ctypes.POINTER(ctypes.c_uint64))[0] for k in range(2))
        src = np.ctypeslib.as_array(ctypes.cast(x_ptr, ctypes.POINTER(ctypes.c_float)), (x.size,))
        dst = np.ctypeslib.as_array(ctypes.cast(out_ptr, ctypes.POINTER(ctypes.c_float)), (x.size,))
        assert grid * block >= x.size
        dst[:] = src * np.float32(0.5) - np.float32(1.0)
    fake.extra[module["kernel"]] = run_axpb
    got = cuda.CudaDevice().load(program).run(x)[0]
    assert not fake.errors, fake.errors
    np.testing.assert_allclose(got, np.tanh((x * 3) * 0.5 - 1), rtol=1e-5, atol=1e-6)
    assert (module["kernel"], 12, 128) in fake.calls


def test_a_module_the_driver_rejects_leaves_nothing_behind(axpb_op, libcuda, fake_driver):
    """The driver's error names the hand-written kernel; what the set-up made is released, and
    the next try fails the same way."""
    x = rand(40)
    axpb_op.kernel("cuda-sm80", "ptx")(lambda spec: "// FAKE_REJECT\n" + _AXPB_PTX.format(
        name=spec.name, n=spec.output.size, a=_ptx_float(1), b=_ptx_float(0)))
    libcuda(fake_driver)
    drv = ctypes.CDLL(os.fspath(fake_driver))
    runnable = cuda.CudaDevice().load(compile_graph(trace(lambda x: axpb_op(ub.exp(x)), x),
                                                    ub.targets.get_target("cuda-sm80")))
    for _ in range(2):
        with pytest.raises(RuntimeFailure, match=f"rejected the PTX of ubq_k1_{axpb_op.name} .hand-written ptx"):
            runnable.run(x)
        assert drv.fake_live_modules() == 0 and drv.fake_live_allocations() == 0


@needs_ptxas
@pytest.mark.parametrize("arch", ARCHS)
def test_hand_written_ptx_assembles(axpb_op, arch):
    x = rand(1000)
    program = compile_graph(trace(lambda x: axpb_op(x) * x, x), ub.targets.get_target(TARGET_OF[arch]))
    for text in [program.source] + [m["ptx"] for m in _ptx_modules(program)]:
        cuda_toolkit.ptxas_check(text, arch, PTXAS)


def test_hand_written_ptx_is_checked_against_the_abi(axpb_op):
    from ubique import op

    x = rand(64)
    target = ub.targets.get_target("cuda-sm80")
    name = f"bad_{os.getpid()}_{time.monotonic_ns()}"

    @op.define(name)
    def bad(x):
        return x + 1.0
    try:
        cases = [
            (".visible .entry {name}(.param .u64 a, .param .u64 b) { ret; }", "not a whole PTX module"),
            (".version 7.0\n.target sm_80\n.address_size 64\n.visible .entry other(.param .u64 a) { ret; }",
             r"defines no `.entry ubq_\w+\(...\)`.*\.param \.u64 in0, \.param \.u64 out"),
            (".version 7.0\n.target sm_80\n.address_size 64\n.visible .entry {name}(.param .u64 a) { ret; }",
             r"takes \(\.param \.u64 a\); the kernel ABI on GPUs"),
            (".version 7.0\n.target sm_80\n.address_size 64\n.visible .entry {name}(.param .u64 a, .param .f32 b)"
             " { ret; }", r"takes \(\.param \.u64 a, \.param \.f32 b\)"),
            (".version 7.8\n.target sm_90\n.address_size 64\n.visible .entry {name}(.param .u64 a, .param .u64 b)"
             " { ret; }", "is for sm_90, which target 'cuda-sm80' .sm_80. cannot run"),
        ]
        for source, message in cases:
            ub.op.get(name).opdef.kernels.kernels.clear()
            bad.kernel("cuda-sm80", "ptx", source=source)
            with pytest.raises(ub.PluginError, match=message) as e:
                compile_graph(trace(lambda x: bad(x), x), target)
            assert name in str(e.value) and "hand-written ptx kernel" in str(e.value)
        with pytest.raises(ub.PluginError, match="block must be 1 to 1024 threads, not 2048"):
            ub.op.get(name).opdef.kernels.kernels.clear()
            bad.kernel("cuda-sm80", "ptx", block=2048)(lambda spec: cases[0][0])
            compile_graph(trace(lambda x: bad(x), x), target)
        with pytest.raises(ub.PluginError, match="block must be 1 to 1024 threads, not 0"):
            ub.op.get(name).opdef.kernels.kernels.clear()
            bad.kernel("cuda-sm80", "ptx", block=0)(lambda spec: cases[0][0])
            compile_graph(trace(lambda x: bad(x), x), target)
        with pytest.raises(ub.PluginError, match="block= and grid= are the launch shape of a 'ptx' kernel"):
            bad.kernel("x86_64", "c", block=64)
        ub.op.get(name).opdef.kernels.kernels.clear()  # the pointer attributes PTX allows; numpy sizes
        bad.kernel("cuda-sm80", "ptx", block=np.int64(32), grid=lambda spec: np.int32(2))(
            lambda spec: ".version 7.0\n.target sm_80\n.address_size 64\n.visible .entry " + spec.name
            + "(.param .u64 .ptr .global .align 16 a, .param .u64 .ptr.global.align 4 b) { ret; }")
        launch = compile_graph(trace(lambda x: bad(x), x), target).code.extras["launches"][0]
        assert (launch["grid"], launch["block"]) == (2, 32) and type(launch["block"]) is int
    finally:
        op.undefine(name)


def test_a_ptx_kernel_for_every_cuda_target_leaves_the_emulator_on_the_generated_kernel(axpb_op):
    """Registered for the architecture ("nvptx64"), a PTX kernel is used by every cuda target
    whose device runs PTX; cuda-emulated runs loop IR on the CPU and takes the op's compute."""
    x = rand(3, 77)
    axpb_op.kernel("nvptx64", "ptx")(lambda spec: _AXPB_PTX.format(name=spec.name, n=spec.output.size,
                                                                  a=_ptx_float(9), b=_ptx_float(9)))
    g = trace(lambda x: axpb_op(x, a=3.0, b=-2.0), x)
    assert _ptx_modules(compile_graph(g, ub.targets.get_target("cuda-sm90")))
    assert not _ptx_modules(compile_graph(g, ub.targets.get_target("cuda-emulated")))
    np.testing.assert_allclose(ub.compile(g, target="cuda-emulated").run([x])[0], x * 3 - 2, rtol=1e-6)


# ---- on a GPU -----------------------------------------------------------------------------------
@needs_gpu
def test_gpu_device_info():
    assert GPU.compute_capability >= (7, 5) and GPU.multiprocessors > 0
    assert ub.targets.get_target("cuda").cpu == gpu.target_for_arch("x", GPU.compute_capability).cpu


@needs_gpu
@pytest.mark.parametrize("target", ["cuda", "cuda-sm80"])
def test_gpu_ops(target):
    a, b, x = rand(300, 200), rand(200, 170), rand(77, 1000)
    cases = [
        (lambda x: ub.sigmoid(x) * x + ub.erf(x), (x,)),
        (lambda x: (x.sum(axis=1), x.max(axis=0), ub.argmax(x, axis=1), x.sum()), (x,)),
        (lambda x: (ub.softmax(x, axis=-1), ub.layer_norm(x, axis=-1)), (x,)),
        (lambda a, b: ub.relu(a @ b), (a, b)),
        (lambda x, w: ub.conv2d(x, w, stride=2, padding=1), (rand(4, 16, 33, 31), rand(32, 16, 3, 3))),
    ]
    for fn, args in cases:
        got = ub.compile(trace(fn, *args), target=target).run(list(args))
        want = ub.jit(fn)(*args)
        assert_close(got, list(want) if isinstance(want, (tuple, list)) else [want], rtol=1e-4, atol=1e-4)


@needs_gpu
@pytest.mark.parametrize("name", MODELS)
def test_gpu_models(models, name):
    onnx_bytes, feeds = models[name]
    model = ub.compile(ub.import_onnx(onnx_bytes), target="cuda")
    reference = _reference(onnx_bytes, feeds)
    _assert_model_close(model.run(feeds), reference)
    t0 = time.perf_counter()
    _assert_model_close(model.run(feeds), reference)  # the replayed graph
    assert time.perf_counter() - t0 < 60


@needs_gpu
def test_gpu_hand_written_ptx_matches_the_generated_kernel(axpb_op):
    x = rand(3, 1000) - 0.5
    g = trace(lambda x: axpb_op(x, a=1.5, b=0.25) * x, x)
    target = ub.targets.get_target("cuda")
    hand = compile_graph(g, target)
    generated = compile_graph(g, target, hand_kernels=False)
    assert _ptx_modules(hand) and not _ptx_modules(generated)
    got, want = (cuda.CudaDevice().load(p).run(x)[0] for p in (hand, generated))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got, (x * 1.5 + 0.25) * x, rtol=1e-6, atol=1e-7)


@needs_gpu
def test_gpu_device_arrays_stay_on_the_gpu():
    a, w = rand(64, 200), rand(200, 100)
    first = ub.compile(trace(lambda a, w: ub.relu(a @ w), a, w), target="cuda")
    second = ub.compile(trace(lambda h: ub.softmax(h, axis=-1), np.maximum(a @ w, 0)), target="cuda")
    h = first.run([ub.to_device(a), ub.to_device(w)])[0]
    assert isinstance(h, ub.DeviceArray)
    y = second.run(h)[0]
    want = np.exp(np.maximum(a @ w, 0) - np.maximum(a @ w, 0).max(-1, keepdims=True))
    np.testing.assert_allclose(y.numpy(), want / want.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():  # another library's CUDA memory, both ways
        t = torch.as_tensor(y, device="cuda")
        np.testing.assert_array_equal(t.cpu().numpy(), y.numpy())
        back = second.run(torch.as_tensor(np.maximum(a @ w, 0), device="cuda"))[0]
        np.testing.assert_allclose(back.numpy(), y.numpy(), rtol=1e-6)


# The stand-in driver (compiled by the `fake_driver` fixture): device memory is host memory,
# a launch calls the hook the test installs, graph capture records launches for replay.
_FAKE_CUDA_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef void (*hook_fn)(const char *name, unsigned grid, unsigned block, void **params);
static hook_fn hook;
static long n_launches, n_graph_launches, n_allocs, n_modules;
long fake_live_modules(void) { return n_modules; }
void fake_set_hook(hook_fn h) { hook = h; }
long fake_launches(void) { return n_launches; }
long fake_graph_launches(void) { return n_graph_launches; }
long fake_live_allocations(void) { return n_allocs; }

CUresult cuInit(unsigned flags) { const char *e = getenv("FAKE_CUDA_NO_DEVICE"); (void)flags; return e && *e == '1' ? 100 : 0; }
CUresult cuDriverGetVersion(int *v) { *v = 12040; return 0; }
CUresult cuGetErrorName(CUresult r, const char **s) {
    *s = r == 100 ? "CUDA_ERROR_NO_DEVICE" : r == 500 ? "CUDA_ERROR_NOT_FOUND" : r == 1 ? "CUDA_ERROR_INVALID_VALUE"
       : "CUDA_ERROR_UNKNOWN";
    return 0;
}
CUresult cuGetErrorString(CUresult r, const char **s) {
    *s = r == 100 ? "no CUDA-capable device is detected" : r == 500 ? "named symbol not found" : "invalid argument";
    return 0;
}
CUresult cuDeviceGetCount(int *n) { *n = 1; return 0; }
CUresult cuDeviceGet(int *d, int i) { if (i != 0) return 101; *d = 0; return 0; }
CUresult cuDeviceGetName(char *s, int len, int d) { (void)d; snprintf(s, len, "Fake GPU"); return 0; }
CUresult cuDeviceGetAttribute(int *v, int attr, int d) {
    (void)d; *v = attr == 75 ? 9 : attr == 76 ? 0 : attr == 16 ? 132 : 0; return 0;
}
CUresult cuDeviceTotalMem_v2(size_t *b, int d) { (void)d; *b = (size_t)80 << 30; return 0; }
CUresult cuDevicePrimaryCtxRetain(void **c, int d) { (void)d; *c = (void *)0x1; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int d) { (void)d; return 0; }
CUresult cuCtxSetCurrent(void *c) { return c ? 0 : 1; }
CUresult cuCtxSynchronize(void) { return 0; }

typedef struct { char *ptx; } module_t;
typedef struct { char name[256]; } func_t;
CUresult cuModuleLoadDataEx(void **m, const char *image, unsigned n, int *opts, void **vals) {
    (void)n; (void)opts; (void)vals;
    if (!strstr(image, ".version") || !strstr(image, ".entry") || strstr(image, "FAKE_REJECT")) return 218;
    n_modules++;
    module_t *mod = malloc(sizeof *mod);
    mod->ptx = strdup(image);
    *m = mod;
    return 0;
}
CUresult cuModuleUnload(void *m) { module_t *mod = m; n_modules--; free(mod->ptx); free(mod); return 0; }
CUresult cuModuleGetFunction(void **f, void *m, const char *name) {
    module_t *mod = m;
    char pat[300];
    snprintf(pat, sizeof pat, ".entry %s(", name);
    if (!strstr(mod->ptx, pat)) return 500;
    func_t *fn = calloc(1, sizeof *fn);
    strncpy(fn->name, name, 255);
    *f = fn;
    return 0;
}
CUresult cuMemAlloc_v2(uint64_t *p, size_t n) {
    void *q = aligned_alloc(256, (n + 255) / 256 * 256);
    if (!q) return 2;
    n_allocs++;
    *p = (uint64_t)(uintptr_t)q;
    return 0;
}
CUresult cuMemFree_v2(uint64_t p) { n_allocs--; free((void *)(uintptr_t)p); return 0; }
static long n_htod, n_dtod, n_stream_waits[3];
static int ordinal;
long fake_htod(void) { return n_htod; }
long fake_dtod(void) { return n_dtod; }
long fake_default_stream_waits(int s) { return n_stream_waits[s]; }
void fake_set_ordinal(int o) { ordinal = o; }
CUresult cuMemcpyHtoD_v2(uint64_t d, const void *s, size_t n) { n_htod++; memcpy((void *)(uintptr_t)d, s, n); return 0; }
CUresult cuMemcpyDtoD_v2(uint64_t d, uint64_t s, size_t n) { n_dtod++; memcpy((void *)(uintptr_t)d, (const void *)(uintptr_t)s, n); return 0; }
CUresult cuMemcpyDtoDAsync_v2(uint64_t d, uint64_t s, size_t n, void *st) { (void)st; return cuMemcpyDtoD_v2(d, s, n); }
CUresult cuPointerGetAttribute(void *v, int attr, uint64_t p) {
    if (attr != 9 || !p) return 1;
    *(int *)v = ordinal;
    return 0;
}
CUresult cuMemcpyDtoH_v2(void *d, uint64_t s, size_t n) { memcpy(d, (const void *)(uintptr_t)s, n); return 0; }
CUresult cuMemcpyHtoDAsync_v2(uint64_t d, const void *s, size_t n, void *st) { (void)st; return cuMemcpyHtoD_v2(d, s, n); }
CUresult cuMemcpyDtoHAsync_v2(void *d, uint64_t s, size_t n, void *st) { (void)st; return cuMemcpyDtoH_v2(d, s, n); }
CUresult cuMemsetD8_v2(uint64_t d, unsigned char v, size_t n) { memset((void *)(uintptr_t)d, v, n); return 0; }

typedef struct { func_t *fn; unsigned grid, block; void **params; } launch_t;
typedef struct { launch_t items[4096]; int n; } graph_t;
static graph_t *capturing;
static CUresult run(func_t *fn, unsigned grid, unsigned block, void **params) {
    n_launches++;
    if (hook) hook(fn->name, grid, block, params);
    return 0;
}
CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void *stream, void **params, void **extra) {
    (void)stream;
    if (!gx || !bx || bx > 1024 || gy != 1 || gz != 1 || by != 1 || bz != 1 || shared || extra) return 1;
    if (capturing) {
        if (capturing->n == 4096) return 1;
        launch_t *l = &capturing->items[capturing->n++];
        l->fn = f; l->grid = gx; l->block = bx; l->params = params;  /* (the caller keeps them alive) */
        return 0;
    }
    return run(f, gx, bx, params);
}
CUresult cuStreamCreate(void **s, unsigned flags) { (void)flags; *s = malloc(1); return 0; }
CUresult cuStreamDestroy_v2(void *s) { free(s); return 0; }
CUresult cuStreamSynchronize(void *s) { if ((uintptr_t)s == 1 || (uintptr_t)s == 2) n_stream_waits[(uintptr_t)s]++; return 0; }
CUresult cuStreamBeginCapture_v2(void *s, int mode) { (void)s; (void)mode; capturing = calloc(1, sizeof *capturing); return 0; }
CUresult cuStreamEndCapture(void *s, void **g) { (void)s; *g = capturing; capturing = NULL; return 0; }
CUresult cuGraphInstantiateWithFlags(void **e, void *g, unsigned long long flags) { (void)flags; *e = g; return 0; }
CUresult cuGraphLaunch(void *e, void *s) {
    graph_t *g = e;
    (void)s;
    n_graph_launches++;
    for (int k = 0; k < g->n; k++) run(g->items[k].fn, g->items[k].grid, g->items[k].block, g->items[k].params);
    return 0;
}
CUresult cuGraphExecDestroy(void *e) { (void)e; return 0; }
CUresult cuGraphDestroy(void *g) { free(g); return 0; }
CUresult cuEventCreate(void **e, unsigned flags) { (void)flags; *e = malloc(1); return 0; }
CUresult cuEventDestroy_v2(void *e) { free(e); return 0; }
CUresult cuEventRecord(void *e, void *s) { (void)e; (void)s; return 0; }
CUresult cuEventSynchronize(void *e) { (void)e; return 0; }
CUresult cuEventElapsedTime(float *ms, void *a, void *b) { (void)a; (void)b; *ms = 1.0f; return 0; }
"""
