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

# name pattern (re.fullmatch) -> reason. Keep each entry specific; remove it when the case passes.
_NO_DTYPE = "ubique has no {} dtype (its integer dtypes are int8, uint8, int32, int64)"
EXCLUDED: dict[str, str] = {
    # element types ubique does not have
    r"test_\w+_(u?int16|uint32|uint64)(_expanded)?": _NO_DTYPE.format("int16/uint16/uint32/uint64"),
    r"test_mod_mixed_sign_int16": _NO_DTYPE.format("int16"),
    r"test_pow_types_float32_uint(32|64)": _NO_DTYPE.format("uint32/uint64"),
    r"test_top_k_uint64": _NO_DTYPE.format("uint64"),
    r"test_equal_string(_broadcast)?": "string tensors are not supported",
    r"test_cast_(no_saturate_)?\w*(FLOAT8|FLOAT4|INT4|UINT4|INT2|UINT2)\w*":
        "8-, 4- and 2-bit element types (float8 variants, float4, int4/uint4, int2/uint2) are not supported",
    r"test_cast_e8m0_\w+": "the float8 e8m0 element type is not supported",
    # other value kinds
    r"test_identity_(opt|sequence)": "optional and sequence values are not supported (tensors only)",
    # training-mode semantics (ubique imports models for inference)
    r"test_training_dropout\w*": "Dropout in training mode is random; inference mode only",
    r"test_batchnorm_(epsilon|example)_training_mode": "BatchNormalization training mode (running statistics "
                                                      "update) is not supported; inference only",
    # 3-D spatial ops: conv2d/pooling are 2-D (1-D runs as 2-D)
    r"test_(averagepool|maxpool|convtranspose)_3d\w*": "3-D spatial pooling/convolution is not supported yet",
    r"test_maxpool_with_argmax_2d_precomputed_(pads|strides)": "MaxPool's Indices output is not supported",
    # Resize variants
    r"test_resize_\w+_antialias": "Resize with antialias=1 is not supported (refused at import)",
    r"test_resize_tf_crop_and_resize\w*": "Resize's tf_crop_and_resize mode (roi input) is not supported",
    # control flow
    r"test_range_\w+_expanded": "the expanded Range form uses the Loop op (control flow is not supported)",
    # numpy semantics of empty reductions
    r"test_reduce_(max|min|log_sum_exp)_empty_set(_bool)?":
        "max/min over an empty axis raise ShapeError (numpy semantics) where ONNX returns -inf/+inf",
}


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
