"""Which official ONNX node tests cover the op types ubique imports, and which are excluded.

`covered_tests()` maps every node test shipped in the `onnx` package whose op type is
in IMPORTED_OPS to that op type (an `_expanded` test counts for the op it expands).
EXCLUDED lists what does not pass yet, each with its reason; tests/test_onnx_conformance.py
runs everything else through onnx.backend.test.BackendTest.
"""
from __future__ import annotations

import re

# The op types issue 3 asks for (the denominator of the conformance figure).
IMPORTED_OPS = frozenset("""
Conv ConvTranspose BatchNormalization Gemm MatMul
Add Sub Mul Div Pow Abs Neg Exp Log Sqrt Reciprocal Floor Ceil Round Sign Relu Sigmoid Tanh
Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh Max Min Sum Mean Equal Less Greater
LessOrEqual GreaterOrEqual And Or Xor Not Mod IsNaN IsInf
Clip HardSigmoid HardSwish LeakyRelu PRelu Elu Selu Celu Softplus Softsign Mish ThresholdedRelu Shrink
Softmax LogSoftmax LayerNormalization Erf Gelu
ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceSumSquare ArgMax ArgMin
Reshape Flatten Transpose Squeeze Unsqueeze Concat Split Slice Gather GatherElements Expand Tile Where
Cast Pad MaxPool AveragePool GlobalAveragePool GlobalMaxPool Resize Einsum TopK CumSum Range
ConstantOfShape Identity Dropout LSTM GRU
""".split())

# name pattern -> reason. Keep each entry specific; remove it when the case passes.
EXCLUDED: dict[str, str] = {}


def covered_tests() -> dict[str, str]:
    """{test name: op type} for the official node tests of IMPORTED_OPS."""
    from onnx.backend.test.loader import load_model_tests

    base_op: dict[str, str] = {}
    expanded = []
    for t in load_model_tests(kind="node"):
        if "_expanded" in t.name:
            expanded.append(t.name)
            continue
        ops = [n.op_type for n in t.model.graph.node]
        base_op[t.name] = ops[-1] if len(set(ops)) != 1 else ops[0]
    out = {name: op for name, op in base_op.items() if op in IMPORTED_OPS}
    for name in expanded:
        base = re.sub(r"_expanded(_ver\d+)?$", "", name)
        if base_op.get(base) in IMPORTED_OPS:
            out[name] = base_op[base]
    return out


def exclusion_reason(name: str) -> str | None:
    for pattern, reason in EXCLUDED.items():
        if re.fullmatch(pattern, name):
            return reason
    return None
