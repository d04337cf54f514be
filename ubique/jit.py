"""`@ub.jit`: trace a Python function per (shapes, dtypes), compile it, run it natively."""
from __future__ import annotations

import functools
import inspect
import struct
from dataclasses import dataclass

import numpy as np

from ubique import build as _build
from ubique import report
from ubique.compiler.pipeline import Program
from ubique.targets import plugins
from ubique.compiler.tracer import Tensor, Tracer
from ubique.errors import DTypeError, TraceError
from ubique.ir.dtypes import dtype_of
from ubique.ir.graph import Graph, TensorType


# specialisations kept per jitted function; older ones are recompiled (or reloaded from
# the disk cache) when needed again
SPECIALISATIONS = 128


@dataclass
class Lowered:
    """What the compiler made for one specialisation: every IR and the machine code."""
    program: Program

    graph_ir = property(lambda self: self.program.graph_ir)
    loop_ir = property(lambda self: self.program.loop_ir)
    llvm_ir = property(lambda self: self.program.llvm_ir)
    source = property(lambda self: self.program.source)
    passes = property(lambda self: list(self.program.passes))  # the pipeline that ran  # the backend's code text (LLVM IR, C, PTX)
    asm = property(lambda self: self.program.asm)
    num_kernels = property(lambda self: self.program.num_kernels)
    timings = property(lambda self: dict(self.program.timings))


def _is_array(a) -> bool:
    return isinstance(a, (np.ndarray, np.generic))


class JitFunction:
    def __init__(self, fn, target=None):
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.target = target
        self._signature = inspect.signature(fn)
        self._params = list(self._signature.parameters)
        self._cache: dict[tuple, tuple] = {}  # spec -> (executable, output structure)
        self._plugin_changes = plugins.changes()

    def _spec(self, args) -> tuple:
        spec = []
        for k, a in enumerate(args):
            if _is_array(a):
                spec.append((a.shape, a.dtype))
            elif isinstance(a, float):  # by bits: -0.0 and 0.0 differ, NaN equals itself
                spec.append(("static", float, struct.pack("<d", a)))
            elif isinstance(a, (bool, int)):
                spec.append(("static", type(a), a))  # Python numbers are baked in as constants
            else:
                name = self._params[k] if k < len(self._params) else f"#{k}"
                raise TraceError(f"{self.__name__}: argument {name!r} must be a numpy array or a Python number, "
                                 f"got {type(a).__name__}")
        return tuple(spec)

    def trace(self, *args) -> tuple[Graph, object]:
        tracer = Tracer(getattr(self.fn, "__name__", "main"))
        traced = []
        for k, a in enumerate(args):
            if _is_array(a):
                try:
                    dt = dtype_of(a.dtype)
                except DTypeError as e:
                    name = self._params[k] if k < len(self._params) else f"#{k}"
                    raise DTypeError(f"argument {name!r}: {e}") from None
                name = self._params[k] if k < len(self._params) else f"arg{k}"
                traced.append(tracer.input(TensorType(np.shape(a), dt), name))
            else:
                traced.append(a)
        result = self.fn(*traced)
        outputs, structure = _flatten(result, tracer)
        tracer.graph.outputs = outputs
        return tracer.graph, structure

    def _remember(self, spec, entry):
        """Keeps the newest SPECIALISATIONS entries (dicts keep insertion order)."""
        self._cache.pop(spec, None)
        self._cache[spec] = entry
        if len(self._cache) > SPECIALISATIONS:
            del self._cache[next(iter(self._cache))]
        return entry

    def _positional(self, args, kwargs) -> tuple:
        if not kwargs:
            return args
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TraceError(f"{self.__name__}: {e}") from None
        bound.apply_defaults()
        if bound.kwargs:
            raise TraceError(f"{self.__name__}: keyword-only parameters ({', '.join(bound.kwargs)}) are not "
                             "supported by ub.jit; make them positional")
        return bound.args

    def lower(self, *args, **kwargs) -> Lowered:
        args = self._positional(args, kwargs)
        graph, structure = self.trace(*args)
        with report.context(f"jit {self.__name__}.lower()"):
            program = _build.compile_program(graph, self.target)
        if program.target.device == "cpu":
            self._remember(self._spec(args), (_build.build(graph, self.target), structure))
        return Lowered(program)

    def __call__(self, *args, **kwargs):
        if kwargs:
            args = self._positional(args, kwargs)
        spec = self._spec(args)
        if self._plugin_changes != plugins.changes():  # a target, backend, pass or op changed: compile anew
            self._cache.clear()
            self._plugin_changes = plugins.changes()
        hit = self._cache.get(spec)
        if hit is None:
            graph, structure = self.trace(*args)
            with report.context(report.jit_reason(self, spec)):
                hit = self._remember(spec, (_runnable(graph, self.target), structure))
        else:
            _build.count_memory_hit()
            report.jit_hit(self, spec, self.target)
        executable, structure = hit
        outs = executable.run(*(a for a in args if _is_array(a)))
        return _unflatten(outs, structure)


def _runnable(graph, target):
    """What runs `graph` on `target`: the cached native Executable for CPU targets, the device's
    runnable (e.g. runtime/cuda.CudaProgram) for targets of another device."""
    from ubique.targets.registry import get_target

    t = get_target(target)
    if t.device == "cpu":
        return _build.build(graph, t)
    from ubique.model import compile

    return compile(graph, t)._ex


def _flatten(result, tracer):
    """Outputs as graph values plus how to rebuild the returned structure."""
    if isinstance(result, (tuple, list)):
        values = []
        for r in result:
            values.append(_output_value(r, tracer))
        return values, type(result)
    return [_output_value(result, tracer)], None


def _output_value(r, tracer):
    if isinstance(r, Tensor):
        return r.value
    if _is_array(r) or isinstance(r, (bool, int, float)):
        return tracer.constant(np.asarray(r))
    raise TraceError(f"a jitted function must return tensors (or a tuple/list of them), got {type(r).__name__}")


def _unflatten(outs, structure):
    if structure is None:
        return outs[0]
    return structure(outs)


def jit(fn=None, *, target=None):
    """Decorator: compile `fn` on first call for each (shapes, dtypes) of its array arguments."""
    if fn is None:
        return lambda f: JitFunction(f, target)
    return JitFunction(fn, target)
