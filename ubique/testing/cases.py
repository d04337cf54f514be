"""Cases: one-op graph nodes to check, made from an op's Sample for every dtype it accepts."""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ubique.errors import UbiqueError

from .dtypes import _FLOATS, DTYPES, _available_dtypes, _dtype_name
from .samples import Draw, Fixed, Sample, sample_for

# float32 gets `cases` cases per op, every other accepted dtype one (cast: every target dtype);
# the case of each float dtype that also carries NaN, +-inf and +-0 among its inputs
_SPECIALS_CASE = {"float32": 1, "float64": 0, "float16": 0, "bfloat16": 1}


@dataclass
class Case:
    """One graph node to check: op, attributes, input values (constants as Fixed)."""
    op: str
    dtype: str
    index: int
    inputs: list
    attrs: dict
    sample: Sample
    specials: bool
    num_outputs: int = 1

    @property
    def label(self) -> str:
        return f"{self.dtype} case {self.index}"

    def describe(self) -> str:
        shapes = ", ".join(("const " if isinstance(a, Fixed) else "")
                           + f"{_dtype_name(_value(a))}{tuple(_value(a).shape)}" for a in self.inputs)
        attrs = {k: v for k, v in self.attrs.items() if k != "value"}
        extra = " with NaN/inf/+-0 inputs" if self.specials else ""
        return f"{self.op}({shapes}){' ' + repr(attrs) if attrs else ''}{extra}"

    def feeds(self) -> list[np.ndarray]:
        return [a for a in self.inputs if not isinstance(a, Fixed)]

    def add_to(self, g, prefix: str) -> list:
        from ubique.ir.dtypes import dtype_of
        from ubique.ir.graph import TensorType

        values = []
        for j, a in enumerate(self.inputs):
            if isinstance(a, Fixed):
                values.append(g.constant(a.value, dtype_of(a.value.dtype)))
            else:
                values.append(g.add_input(TensorType(a.shape, dtype_of(a.dtype)), f"{prefix}_{j}"))
        return g.add_node(self.op, values, dict(self.attrs)).outputs


def _value(a):
    return a.value if isinstance(a, Fixed) else a


def make_cases(name: str, opdef, seed: int = 0, cases: int = 3) -> tuple[list[Case], str]:
    """The cases of one op (and, when there are none, why)."""
    from ubique.ir.graph import Graph

    sample = sample_for(name, opdef)
    if sample is None:
        if opdef.kind == "source":
            return [], "a source op without a sample (ubique.testing.SAMPLES)"
        req = sorted(a for a, s in opdef.attrs.items() if s.required)
        return [], (f"no sample for this {opdef.kind} op (required attributes: {', '.join(req) or 'none'}, "
                    f"inputs: {opdef.num_inputs}); add one to ubique.testing.SAMPLES")
    dtypes = [d for d in (sample.dtypes or DTYPES) if d in _available_dtypes()]
    out: list[Case] = []
    why = ""
    for dtype in dtypes:
        j = DTYPES.index(dtype) if dtype in DTYPES else len(DTYPES)  # (stable with or without bfloat16)
        if sample.all_variants:
            n = max(cases, sample.variants) if dtype == "float32" else sample.variants
        else:
            n = max(1, cases) if dtype == "float32" else 1
        for k in range(n):
            variant = k if sample.all_variants else j + k
            specials = dtype in _FLOATS and (sample.specials == "always"
                                             or (bool(sample.specials) and k == _SPECIALS_CASE[dtype]))
            rng = np.random.default_rng([seed, zlib.crc32(name.encode()), j, k])
            try:
                inputs, attrs = sample.make(Draw(rng, dtype, variant, specials))
                case = Case(name, dtype, k, list(inputs), dict(attrs), sample, specials)
                outs = case.add_to(Graph("probe"), "x")  # the op's type rule accepts it
            except UbiqueError as e:
                why = why or f"{dtype}: {e}"
                continue
            except Exception as e:  # noqa: BLE001 -- a sample bug: say so instead of crashing the suite
                why = why or f"{dtype}: making the sample raised {type(e).__name__}: {e}"
                continue
            case.num_outputs = len(outs)
            out.append(case)
    return out, ("" if out else f"no dtype among {', '.join(dtypes)} gave a valid case ({why})")
