"""End-to-end: models built with torch in tests/torch_models.py, exported to ONNX at opset 17,
imported and compiled by ubique once, and compared with onnxruntime at several batch
sizes (symbolic batch: no second compilation). Also the importer's error paths.

Accuracy criterion (issue 3): max |ubique - onnxruntime| / max |onnxruntime| <= 1e-4 in float32.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import ubique as ub  # noqa: E402
from torch_models import (BertEncoder, LeNet, LSTMTagger, MLP, MobileNetV2, ResNet18, export,  # noqa: E402
                          randomize_batchnorm)

REL_TOL = 1e-4


def _batch_axes(names, axis=0):
    return {n: {axis: "batch"} for n in names}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    image = torch.randn(1, 3, 224, 224)
    ids, mask = torch.randint(0, 1000, (1, 128)), torch.ones(1, 128, dtype=torch.int64)
    return {
        "resnet18": (export(randomize_batchnorm(ResNet18()), (image,), ["input"], ["logits"],
                            _batch_axes(["input", "logits"])), "image"),
        "mobilenet_v2": (export(randomize_batchnorm(MobileNetV2()), (image,), ["input"], ["logits"],
                                _batch_axes(["input", "logits"])), "image"),
        "bert": (export(BertEncoder(), (ids, mask), ["ids", "mask"], ["hidden", "pooled"],
                        _batch_axes(["ids", "mask", "hidden", "pooled"])), "tokens"),
        "mlp": (export(MLP(), (torch.randn(1, 784),), ["x"], ["y"], _batch_axes(["x", "y"])), "flat"),
        "lenet": (export(LeNet(), (torch.randn(1, 1, 28, 28),), ["x"], ["y"], _batch_axes(["x", "y"])), "digits"),
        "lstm": (export(LSTMTagger(), (torch.randn(12, 1, 32),), ["x"], ["y"], _batch_axes(["x", "y"], 1)),
                 "sequence"),
    }


def _inputs(kind, batch, rng):
    if kind == "image":
        return {"input": rng.standard_normal((batch, 3, 224, 224), np.float32)}
    if kind == "tokens":
        mask = np.ones((batch, 128), np.int64)
        mask[:, 100:] = 0  # padded positions exercise the attention mask
        return {"ids": rng.integers(0, 1000, (batch, 128)).astype(np.int64), "mask": mask}
    if kind == "flat":
        return {"x": rng.standard_normal((batch, 784), np.float32)}
    if kind == "digits":
        return {"x": rng.standard_normal((batch, 1, 28, 28), np.float32)}
    return {"x": rng.standard_normal((12, batch, 32), np.float32)}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "bert", "mlp", "lenet", "lstm"])
def test_model_matches_onnxruntime_at_several_batch_sizes(models, name):
    data, kind = models[name]
    model = ub.compile(ub.import_onnx(data))
    assert any(isinstance(d, str) for spec in model.inputs for d in spec.shape), model.inputs
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    compiled = ub.cache_info()["compiled"]
    for batch in (1, 3, 8):
        feeds = _inputs(kind, batch, rng)
        expected = session.run(None, feeds)
        got = model.run(feeds)
        assert len(got) == len(expected)
        for e, g in zip(expected, got):
            assert g.shape == e.shape and g.dtype == e.dtype
            err = np.max(np.abs(g.astype(np.float64) - e)) / np.max(np.abs(e))
            assert err <= REL_TOL, f"{name} batch {batch}: relative error {err:.2e}"
    assert ub.cache_info()["compiled"] == compiled, "a new batch size must not recompile"


def test_model_description_names_symbolic_sizes(models):
    model = ub.compile(ub.import_onnx(models["bert"][0]))
    assert [s.name for s in model.inputs] == ["ids", "mask"]
    assert model.inputs[0].shape == ("batch", 128) and model.inputs[0].dtype == "i64"
    assert [s.name for s in model.outputs] == ["hidden", "pooled"]
    assert "batch: symbolic" in model.contract


def test_declared_range_is_enforced(models):
    model = ub.compile(ub.import_onnx(models["mlp"][0]), dims={"batch": (1, 4)})
    assert "1 <= batch <= 4" in model.contract
    model.run({"x": np.zeros((4, 784), np.float32)})
    with pytest.raises(ub.ShapeError, match="batch.*outside the compiled range"):
        model.run({"x": np.zeros((5, 784), np.float32)})


def test_run_accepts_a_list_and_rejects_wrong_names(models):
    model = ub.compile(ub.import_onnx(models["mlp"][0]))
    x = np.ones((2, 784), np.float32)
    np.testing.assert_array_equal(model.run([x])[0], model.run({"x": x})[0])
    with pytest.raises(ub.ShapeError, match="missing"):
        model.run({"y": x})


# -- errors -------------------------------------------------------------------------------------
def _tiny_model(op="Relu", **attrs):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    node = helper.make_node(op, ["x"], ["y"], name="the_node", **attrs)
    return helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])


def test_corrupt_and_truncated_files_raise_model_error(tmp_path):
    data = _tiny_model().SerializeToString()
    for k, blob in enumerate([data[: len(data) // 2], b"\x00garbage" * 10, bytes(range(256)) * 3, b""]):
        path = tmp_path / f"bad{k}.onnx"
        path.write_bytes(blob)
        with pytest.raises(ub.ModelError):
            ub.import_onnx(path)
    with pytest.raises(ub.ModelError, match="cannot read"):
        ub.import_onnx(tmp_path / "missing.onnx")


def test_unknown_ops_are_listed_together():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("Frobnicate", ["a"], ["b"], name="f1", domain="com.example"),
             helper.make_node("NonZero", ["b"], ["c"], name="nz"),
             helper.make_node("Frobnicate", ["c"], ["y"], name="f2", domain="com.example")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(ub.UnsupportedOpError) as e:
        ub.import_onnx(model)
    msg = str(e.value)
    assert "com.example::Frobnicate (nodes: f1, f2)" in msg and "NonZero (nodes: nz)" in msg


def _external_model(tmp_path, location):
    from onnx import TensorProto, helper

    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, "offset": "0", "length": "16"}.items():
        entry = w.external_data.add()
        entry.key, entry.value = k, v
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    model = helper.make_model(helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y],
                                                initializer=[w]), opset_imports=[helper.make_opsetid("", 17)])
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_inside_the_model_folder_is_read(tmp_path):
    path = _external_model(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    model = ub.compile(ub.import_onnx(path))
    np.testing.assert_array_equal(model.run({"x": np.ones(4, np.float32)})[0], np.arange(4) + 1)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin", "link.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    path = _external_model(tmp_path, location)
    os.symlink(tmp_path / "secret.bin", path.parent / "link.bin")
    with pytest.raises(ub.ModelError, match="refusing|escapes|not a relative"):
        ub.import_onnx(path)


def test_external_data_range_is_checked(tmp_path):
    path = _external_model(tmp_path, "short.bin")
    (path.parent / "short.bin").write_bytes(b"\0" * 8)  # 16 bytes are declared
    with pytest.raises(ub.ModelError, match="does not fit"):
        ub.import_onnx(path)


def test_shape_deciding_input_needs_a_constant():
    from onnx import TensorProto, helper

    from ubique.compiler.onnx_frontend.importer import NonConstantInput

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])
    s = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g", [x, s], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(NonConstantInput, match="shape"):
        ub.import_onnx(model)
    graph = ub.import_onnx(model, constants={"shape": np.array([3, 4])})
    out = ub.compile(graph).run({"x": np.arange(12, dtype=np.float32).reshape(2, 6)})[0]
    np.testing.assert_array_equal(out, np.arange(12).reshape(3, 4))


def test_cli_run_and_inspect(tmp_path, capsys):
    from ubique.cli import main

    path = tmp_path / "tiny.onnx"
    path.write_bytes(_tiny_model().SerializeToString())
    x = np.array([[-1, 2, -3, 4]], np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(path), "--input", f"x={tmp_path / 'x.npy'}", "--output", str(tmp_path)]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.maximum(x, 0))
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "relu x1" in out and "x: f32[n, 4]" in out
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert main(["inspect", str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_compile_for_a_named_target(models):
    import platform

    graph = ub.import_onnx(models["mlp"][0])
    arch = platform.machine()
    if arch not in ("x86_64", "aarch64"):
        pytest.skip(f"no target named after {arch}")
    x = np.ones((2, 784), np.float32)
    np.testing.assert_array_equal(ub.compile(graph, target=arch).run([x])[0], ub.compile(graph).run([x])[0])
    with pytest.raises(ub.UnsupportedOpError, match="unknown target 'nope'"):
        ub.compile(graph, target="nope")


@pytest.mark.parametrize("name", ["lenet", "bert", "resnet18"])
def test_model_on_aarch64_under_qemu_matches_onnxruntime(models, name):
    """ub.compile(graph, target="aarch64") on this host runs the cross-compiled code through
    the native runtime under qemu-aarch64 (skipped where the emulator or cross compiler is missing)."""
    import shutil

    if shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("needs qemu-user and gcc-aarch64-linux-gnu (scripts/install-system-deps.sh installs them)")
    data, kind = models[name]
    model = ub.compile(ub.import_onnx(data), target="aarch64")
    assert model.target == "aarch64"
    feeds = _inputs(kind, 2, np.random.default_rng(1))
    expected = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    for e, g in zip(expected, model.run(feeds)):
        assert g.shape == e.shape
        assert np.max(np.abs(g.astype(np.float64) - e)) / np.max(np.abs(e)) <= REL_TOL
