"""`ub.compile(graph) -> Model`: the one inference interface for compiled graphs.

A Model runs a graph on numpy arrays given as a dict (by input name) or a list, and
describes its inputs and outputs (names, shapes with symbolic sizes by name, dtypes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ubique import report
from ubique.errors import ShapeError
from ubique.ir.graph import Graph


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple          # ints, or symbolic sizes by name ("batch")
    dtype: str

    def __str__(self):
        return f"{self.name}: {self.dtype}[{', '.join(str(d) for d in self.shape)}]"


class Model:
    def __init__(self, graph: Graph, executable, target, signature, contract):
        self.graph = graph
        self.target = target
        self._ex = executable
        self._contract = contract
        sig = signature
        self.inputs = [TensorSpec(name, tuple(t.shape), t.dtype.short) for name, t in sig.inputs]
        self.outputs = [TensorSpec(v.name or f"output{k}", tuple(t.shape), t.dtype.short)
                        for k, (v, t) in enumerate(zip(graph.outputs, sig.outputs))]

    @property
    def contract(self) -> str:
        """What the compiler specialised and which sizes stay symbolic (with their ranges)."""
        c = self._contract
        return c.describe() if c is not None else "all dimensions static"

    def run(self, inputs) -> list[np.ndarray]:
        """Runs on a dict {input name: array} or a list of arrays in input order. On a GPU
        target, inputs may be arrays already on the GPU (`ub.to_device`, CUDA tensors of
        other libraries); the outputs then stay there too (runtime/cuda_array.py)."""
        if isinstance(inputs, dict):
            names = [s.name for s in self.inputs]
            unknown = sorted(set(inputs) - set(names))
            missing = [n for n in names if n not in inputs]
            if unknown or missing:
                raise ShapeError(f"model inputs are {names}; "
                                 + (f"missing {missing}" if missing else "")
                                 + ("; " if missing and unknown else "")
                                 + (f"unknown {unknown}" if unknown else ""))
            arrays = [inputs[n] for n in names]
        elif isinstance(inputs, np.ndarray) or hasattr(inputs, "__cuda_array_interface__"):
            arrays = [inputs]  # one array (on the host or a GPU)
        else:
            arrays = list(inputs)
        return self._ex.run(*arrays)

    __call__ = run

    def __repr__(self):
        ins = ", ".join(map(str, self.inputs))
        outs = ", ".join(map(str, self.outputs))
        return f"<ubique.Model ({ins}) -> ({outs}) on {self.target}>"


def compile(graph: Graph, target=None, *, dims: dict | None = None) -> Model:
    """Compiles a graph (from `import_onnx` or built by hand) for `target` (default: this host).

    `dims` declares symbolic sizes: `{"batch": (1, 64)}` bounds one (runs outside the range are
    refused), `{"batch": 8}` specialises it. The model runs at any size within the contract
    without compiling again.

    A target this machine cannot run (`target="aarch64"` on x86-64) runs through the native
    runtime under the target's emulator (qemu), to check a build before shipping it."""
    from ubique.build import build
    from ubique.targets.registry import get_target

    t = get_target(target)
    if t.device != "cpu":
        from ubique.compiler.pipeline import compile_graph
        from ubique.runtime.devices import get_device

        device = get_device(t.device, t)
        program = compile_graph(graph, t, dims=dims)
        report.record("compiled", graph.name, t.name, t.key, f"target {t.name} runs on device {t.device} "
                      "(not cached)", program=program)
        runnable = device.load(program)
        return Model(graph, runnable, t.name, program.signature, program.contract)
    if t.runs_natively:
        ex = build(graph, t, dims=dims)
        return Model(graph, ex, t.name, ex.signature, ex.contract)
    from ubique.compiler.pipeline import compile_graph
    from ubique.runtime.emulator import EmulatedProgram

    program = compile_graph(graph, t, dims=dims)
    report.record("compiled", graph.name, t.name, t.key, f"target {t.name} does not run on this machine: compiled "
                  "for its emulator (not cached)", program=program)
    return Model(graph, EmulatedProgram(program), t.name, program.signature, program.contract)


def import_onnx(source, constants: dict | None = None) -> Graph:
    """An ONNX model (path, bytes or onnx.ModelProto) as a ubique graph (needs `pip install ubique[onnx]`).

    Named sizes of the model's inputs ("batch", "seq") stay symbolic. `constants` binds graph
    inputs to fixed values, for inputs that decide shapes (a Reshape's target fed as an input)."""
    from ubique.compiler.onnx_frontend import import_onnx as _import

    return _import(source, constants)
