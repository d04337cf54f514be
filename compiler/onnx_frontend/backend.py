"""ubique as an ONNX backend (`onnx.backend.base.Backend`), as the official ONNX
backend test suite drives it: `prepare(model)` imports and compiles once, `run(inputs)`
executes on numpy arrays.
"""
from __future__ import annotations

import numpy as np
from onnx.backend.base import Backend, BackendRep

from ubique.compiler.onnx_frontend.importer import NonConstantInput, import_onnx, upstream_inputs
from ubique.model import compile

MAX_SPECIALIZATIONS = 16


class UbiqueRep(BackendRep):
    """A compiled model. When a graph input decides a shape (ReduceSum's `axes` given
    as an input, say), the model is compiled at run time for that input's value
    (once per distinct value, at most MAX_SPECIALIZATIONS)."""

    def __init__(self, onnx_model, bound: list[str], model=None):
        self.onnx_model = onnx_model
        self.input_names = [i.name for i in onnx_model.graph.input
                            if i.name not in {t.name for t in onnx_model.graph.initializer}]
        self.bound = bound            # graph inputs compiled in as constants
        self.model = model
        self._specialized: dict[tuple, object] = {}

    def run(self, inputs, **kwargs):
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if isinstance(inputs, dict):
            inputs = [inputs[n] for n in self.input_names]
        if self.model is not None:
            return tuple(self.model.run(list(inputs)))
        feeds = dict(zip(self.input_names, inputs))
        key = tuple((n, np.asarray(feeds[n]).tobytes()) for n in self.bound)
        model = self._specialized.get(key)
        if model is None:
            model, self.bound = _compile_bound(self.onnx_model, self.bound, feeds)
            key = tuple((n, np.asarray(feeds[n]).tobytes()) for n in self.bound)
            if len(self._specialized) >= MAX_SPECIALIZATIONS:
                self._specialized.pop(next(iter(self._specialized)))
            self._specialized[key] = model
        return tuple(model.run([feeds[n] for n in self.input_names if n not in self.bound]))


def _compile_bound(onnx_model, bound: list[str], feeds: dict):
    """Imports with the shape-deciding inputs bound to their values, adding inputs to
    the bound set until the import succeeds."""
    bound = list(bound)
    while True:
        try:
            graph = import_onnx(onnx_model, constants={n: np.asarray(feeds[n]) for n in bound})
            return compile(graph), bound
        except NonConstantInput as e:
            more = [n for n in upstream_inputs(onnx_model, e.tensor) if n not in bound]
            if not more:
                raise
            bound += more


class UbiqueBackend(Backend):
    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:
        return device == "CPU"

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> UbiqueRep:
        super().prepare(model, device, **kwargs)
        try:
            return UbiqueRep(model, [], compile(import_onnx(model)))
        except NonConstantInput as e:  # compiled at run time, for the values of these inputs
            return UbiqueRep(model, upstream_inputs(model, e.tensor))

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


prepare = UbiqueBackend.prepare
run_model = UbiqueBackend.run_model
supports_device = UbiqueBackend.supports_device
