"""The C API (runtime/native/ubique.h) and `ubique build`: a LeNet-style CNN exported from torch
to ONNX, `ubique compile` -> .ubq, `ubique build` -> one self-contained shared library, run by
the C example (examples/c/classify.c) and by a C test of the API's error paths
(tests/c/test_c_api.c), natively and for aarch64 under qemu; compared with ub.load(...).run and
onnxruntime. Also: ub.load of a built library (the same C API through cffi), the translation of
symbolic sizes to C, and the CLI's errors.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ubique as ub
from ubique.errors import DTypeError, ModelError, ShapeError
from ubique.ir.dims import evaluate
from ubique.runtime.aot import build_library, c_dim_expr, include_dir
from ubique.targets import get_target, host_target

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "c"
TESTS_C = Path(__file__).resolve().parent / "c"
INCLUDE = include_dir()
CC = shutil.which("cc") or shutil.which("gcc")
AARCH64 = get_target("aarch64")
_missing = [t for t in ("qemu-aarch64", "aarch64-linux-gnu-gcc") if shutil.which(t) is None]
needs_cross = pytest.mark.skipif(bool(_missing) and not AARCH64.runs_natively,
                                 reason=f"{' and '.join(_missing)} not installed (Debian: qemu-user, "
                                        "gcc-aarch64-linux-gnu)")
QEMU = [] if AARCH64.runs_natively else list(AARCH64.emulator)
RTOL = 1e-4


def cli(*args, env=None, check=True):
    out = subprocess.run([sys.executable, "-m", "ubique.cli", *map(str, args)], capture_output=True, text=True,
                         env=env or dict(os.environ), timeout=300)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def run(argv, **kw):
    return subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=300, **kw)


def cc(sources, out, *flags, compiler=None):
    proc = run([compiler or CC, "-O1", "-std=c99", "-Wall", "-Wextra", "-Werror", f"-I{INCLUDE}", *flags, "-o", out,
                *sources, "-ldl"])
    assert proc.returncode == 0, proc.stderr
    return out


def close(got, want):
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
    assert err <= RTOL, f"relative error {err}"


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """LeNet with a symbolic batch: .onnx, .ubq (CLI), the host library (CLI, batch in [1, 8]),
    inputs at batch 1 and 3 and onnxruntime's outputs."""
    from torch_models import LeNet, export

    d = tmp_path_factory.mktemp("c_api")
    torch.manual_seed(0)
    model = LeNet()
    onnx_bytes = export(model, (torch.zeros(1, 1, 28, 28),), ["image"], ["logits"],
                        dynamic={"image": {0: "batch"}, "logits": {0: "batch"}})
    (d / "lenet.onnx").write_bytes(onnx_bytes)
    cli("compile", d / "lenet.onnx", "-o", d / "lenet.ubq")
    out = cli("build", d / "lenet.ubq", "--target", host_target().name, "-o", d / "liblenet.so",
              "--dims", "batch=1:8", "--keep-sources", d / "src")
    assert "weights embedded" in out.stdout
    rng = np.random.default_rng(0)
    x = {b: rng.standard_normal((b, 1, 28, 28)).astype(np.float32) for b in (1, 3)}
    for b, a in x.items():
        a.tofile(d / f"in{b}.bin")
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    ref = {b: sess.run(None, {"image": a})[0] for b, a in x.items()}
    return d, x, ref


def test_library_is_self_contained_with_embedded_weights(lenet):
    d, _, _ = lenet
    lib = (d / "liblenet.so").read_bytes()
    blob = (d / "src" / "weights.bin").read_bytes()
    offset = lib.find(blob)
    assert len(blob) > 200_000 and offset >= 0, "the weights blob is not embedded"
    if shutil.which("readelf"):
        dynamic = run(["readelf", "-d", "-W", d / "liblenet.so"]).stdout
        needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic))
        allowed = re.compile(r"lib(c|m|mvec|pthread|dl)\.so\.\d+|ld-linux.*")
        assert needed and all(allowed.fullmatch(n) for n in needed), needed  # no Python, no ubique runtime .so
    if shutil.which("nm"):
        exported = run(["nm", "-D", "--defined-only", d / "liblenet.so"]).stdout
        undefined = run(["nm", "-D", "--undefined-only", d / "liblenet.so"]).stdout
        assert " ubq_model_library" in exported
        assert "ubq_call" not in exported and "ubq_set_error" not in exported  # the runtime inside is hidden
        assert "ubq_" not in undefined


def test_classify_example_matches_python_and_onnxruntime(lenet, tmp_path):
    d, x, ref = lenet
    exe = tmp_path / "classify"
    if shutil.which("make"):  # the example's own Makefile, asking `ubique config --include`
        proc = run(["make", "-C", EXAMPLE, f"TARGET={exe}", f"UBIQUE={sys.executable} -m ubique.cli"])
        assert proc.returncode == 0, proc.stderr
    else:
        cc([EXAMPLE / "classify.c"], exe)
    proc = run([exe, d / "liblenet.so", d / "in3.bin", 2])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    python = ub.load(d / "liblenet.so").run([x[3]])[0]
    compiled = ub.load(d / "lenet.ubq").run([x[3]])[0]
    close(python, ref[3])
    close(compiled, ref[3])
    for line, row in zip(lines, ref[3]):
        k, score = re.fullmatch(r"class (\d+) score (\S+)", line).groups()
        assert int(k) == int(np.argmax(row)) and abs(float(score) - row.max()) <= 1e-4 * np.abs(row).max()
    # errors are one line on stderr, never a crash
    proc = run([exe, d / "lenet.ubq", d / "in3.bin"])
    assert proc.returncode == 1 and "a .ubq model file" in proc.stderr and "ubique build" in proc.stderr
    (tmp_path / "odd.bin").write_bytes(b"\0" * (4 * 785))
    proc = run([exe, d / "liblenet.so", tmp_path / "odd.bin"])
    assert proc.returncode == 1 and "not a multiple of 784" in proc.stderr


def _truncated(lib: Path, folder: Path) -> Path:
    cut = folder / f"truncated-{lib.name}"
    cut.write_bytes(lib.read_bytes()[:lib.stat().st_size // 2])
    return cut


def _c_test_programs(folder: Path, compiler: str | None, suffix: str, shared_flags=("-shared", "-fPIC")):
    """test_c_api, a plain library and a wrong-version library, built by `compiler`."""
    exe = cc([TESTS_C / "test_c_api.c"], folder / f"test_c_api{suffix}", compiler=compiler)
    plain = folder / f"plain{suffix}.so"
    proc = run([compiler or CC, *shared_flags, "-o", plain, TESTS_C / "plain.c"])
    assert proc.returncode == 0, proc.stderr
    wrong = folder / f"wrong_version{suffix}.so"
    proc = run([compiler or CC, *shared_flags, f"-I{INCLUDE}", "-o", wrong, TESTS_C / "wrong_version.c"])
    assert proc.returncode == 0, proc.stderr
    return exe, plain, wrong


def _check_c_test(proc, d, folder, ref, suffix):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout and proc.stdout.strip().endswith("0 failures")
    for b in (1, 3):
        got = np.fromfile(folder / f"out{b}{suffix}.bin", np.float32).reshape(b, 10)
        close(got, ref[b])


def test_c_api_error_paths_and_symbolic_batch(lenet, tmp_path):
    d, _, ref = lenet
    exe, plain, wrong = _c_test_programs(tmp_path, None, "")
    proc = run([exe, d / "liblenet.so", d / "lenet.ubq", plain, wrong, _truncated(d / "liblenet.so", tmp_path),
                d / "in1.bin", d / "in3.bin", tmp_path / "out1.bin", tmp_path / "out3.bin"])
    _check_c_test(proc, d, tmp_path, ref, "")


def test_python_load_of_a_built_library(lenet):
    d, x, ref = lenet
    m = ub.load(d / "liblenet.so")
    assert [str(s) for s in m.inputs] == ["image: f32[batch, 1, 28, 28]"]
    assert [str(s) for s in m.outputs] == ["logits: f32[batch, 10]"]
    assert "1 <= batch <= 8" in m.contract
    for b in (1, 3):
        close(m.run({"image": x[b]})[0], ref[b])
    m.set_num_threads(1)
    assert m.num_threads == 1
    close(m.run([x[3]])[0], ref[3])
    m.set_num_threads(2)
    # runs from several threads at once, at different batch sizes (one plan cache, one pool)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: (k % 2, m.run([x[1 + 2 * (k % 2)]])[0]), range(24)))
    for k, got in results:
        np.testing.assert_array_equal(got, m.run([x[1 + 2 * k]])[0])
    with pytest.raises(DTypeError, match="expected dtype float32, got float64"):
        m.run([x[1].astype(np.float64)])
    with pytest.raises(ShapeError, match=r"outside the range \[1, 8\]"):
        m.run([np.zeros((9, 1, 28, 28), np.float32)])
    with pytest.raises(ShapeError, match=r"expected shape \(batch=1, 1, 28, 28\), got \(1, 1, 28, 27\)"):
        m.run([np.zeros((1, 1, 28, 27), np.float32)])
    with pytest.raises(ShapeError, match="expected 1 input"):
        m.run([x[1], x[1]])
    with pytest.raises(ShapeError, match="sizes were fixed"):
        ub.load(d / "liblenet.so", dims={"batch": 2})
    with pytest.raises(ModelError, match="truncated"):  # dlopen would die of SIGBUS on it
        ub.load(_truncated(d / "liblenet.so", d))
    with pytest.raises(ModelError, match="not a ubique model library"):
        ub.load(next(p for p in map(Path, ("/lib/x86_64-linux-gnu/libm.so.6", "/lib/aarch64-linux-gnu/libm.so.6",
                                           "/usr/lib/libm.so.6")) if p.exists()))


def test_static_model_with_two_inputs_and_outputs(tmp_path):
    """No symbolic sizes: the static workspace plan, several inputs and outputs, names."""
    w = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)

    def f(x, y):
        h = ub.relu(x @ w)
        return h * y, ub.sum(h, axis=1)

    x = np.random.default_rng(2).standard_normal((4, 16)).astype(np.float32)
    y = np.random.default_rng(3).standard_normal((4, 8)).astype(np.float32)
    graph, _ = ub.jit(f).trace(x, y)
    ub.save(graph, tmp_path / "f.ubq")
    lib = build_library(tmp_path / "f.ubq", tmp_path / "libf.so")
    m = ub.load(lib)
    assert [s.shape for s in m.inputs] == [(4, 16), (4, 8)] and len(m.outputs) == 2
    a, b = m.run([x, y])
    h = np.maximum(x @ w, 0)
    np.testing.assert_allclose(a, h * y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b, h.sum(1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ShapeError, match=r"input 'y': expected shape \(4, 8\), got \(4, 9\)"):
        m.run([x, np.zeros((4, 9), np.float32)])


def test_symbolic_sizes_translate_to_c_with_floor_division(tmp_path):
    exprs = ["batch", "2*seq + 1", "(seq - 7)//2", "-batch//3", "(batch - seq)//(seq + 1)", "batch*seq - 5*batch",
             "-(seq//4) + 3"]
    symbols = ["batch", "seq"]
    values = [(1, 1), (3, 10), (0, 2), (7, 3), (2, 9), (100, 1)]
    body = "\n".join(f'    s[{k}] = {c_dim_expr(e, symbols)};' for k, e in enumerate(exprs))
    src = tmp_path / "dims.c"
    src.write_text(f"""#include <stdio.h>
#include "ubique_model_desc.h"
static int eval(const int64_t *d, int64_t *s) {{ int err = 0;
{body}
    return err; }}
int main(void) {{
    static const int64_t v[][2] = {{{', '.join(f'{{{a}, {b}}}' for a, b in values)}}};
    int64_t s[{len(exprs)}];
    for (unsigned i = 0; i < sizeof v / sizeof v[0]; i++) {{
        if (eval(v[i], s)) return 1;
        for (int k = 0; k < {len(exprs)}; k++) printf("%lld ", (long long)s[k]);
        printf("\\n");
    }}
    return 0;
}}
""")
    exe = cc([src], tmp_path / "dims")
    proc = run([exe])
    assert proc.returncode == 0, proc.stderr
    want = [" ".join(str(evaluate(e, dict(zip(symbols, v)))) for e in exprs) for v in values]
    assert [line.strip() for line in proc.stdout.splitlines()] == want
    # overflow and division by zero are reported, not undefined behaviour
    src.write_text(f"""#include "ubique_model_desc.h"
int main(void) {{
    const int64_t d[1] = {{INT64_C(4611686018427387904)}};
    int err = 0;
    int64_t s = {c_dim_expr("4*n", ["n"])};
    if (!err) return 1;
    err = 0;
    s = ubq_dim_floordiv(INT64_C(5), INT64_C(0), &err) + s;
    return err ? 0 : 2;
}}
""")
    assert run([cc([src], tmp_path / "ovf")]).returncode == 0
    with pytest.raises(ShapeError, match="not a symbolic size"):
        c_dim_expr("batch + other", ["batch"])


def test_cli_build_errors(tmp_path):
    out = cli("build", tmp_path / "missing.ubq", "-o", tmp_path / "lib.so", check=False)
    assert out.returncode == 2 and "missing.ubq" in out.stderr
    (tmp_path / "junk.ubq").write_bytes(b"not a model")
    out = cli("build", tmp_path / "junk.ubq", "-o", tmp_path / "lib.so", check=False)
    assert out.returncode == 2 and "not a .ubq model file" in out.stderr
    assert Path(cli("config", "--include").stdout.strip()) == INCLUDE and (INCLUDE / "ubique.h").is_file()


@needs_cross
def test_aarch64_library_under_qemu(lenet, tmp_path):
    """The same model built for aarch64: classify and the API test cross-built, run under qemu."""
    d, _, ref = lenet
    lib = build_library(d / "lenet.ubq", tmp_path / "liblenet-aarch64.so", "aarch64", dims={"batch": (1, 8)})
    assert lib.read_bytes()[18] == 183  # EM_AARCH64
    with pytest.raises(ModelError, match="built for aarch64"):
        ub.load(lib)
    gcc = "aarch64-linux-gnu-gcc" if not AARCH64.runs_natively else None
    exe = tmp_path / "classify-aarch64"
    if shutil.which("make"):
        proc = run(["make", "-C", EXAMPLE, f"TARGET={exe}", f"CC={gcc or CC}",
                    f"UBIQUE={sys.executable} -m ubique.cli"])
        assert proc.returncode == 0, proc.stderr
    else:
        cc([EXAMPLE / "classify.c"], exe, compiler=gcc)
    proc = run([*QEMU, exe, lib, d / "in3.bin", 2])
    assert proc.returncode == 0, proc.stderr
    for line, row in zip(proc.stdout.splitlines(), ref[3]):
        k, score = re.fullmatch(r"class (\d+) score (\S+)", line).groups()
        assert int(k) == int(np.argmax(row)) and abs(float(score) - row.max()) <= 1e-4 * np.abs(row).max()
    exe, plain, wrong = _c_test_programs(tmp_path, gcc, "-aarch64")
    proc = run([*QEMU, exe, lib, d / "lenet.ubq", plain, wrong, _truncated(lib, tmp_path), d / "in1.bin",
                d / "in3.bin", tmp_path / "out1-aarch64.bin", tmp_path / "out3-aarch64.bin"])
    _check_c_test(proc, d, tmp_path, ref, "-aarch64")
    # a host program refuses the aarch64 library with a clear message
    if not AARCH64.runs_natively:
        host_exe = cc([EXAMPLE / "classify.c"], tmp_path / "classify-host")
        proc = run([host_exe, lib, d / "in3.bin"])
        assert proc.returncode == 1 and "built for aarch64" in proc.stderr
