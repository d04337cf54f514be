"""ubique: a JIT and AOT tensor compiler (graph IR -> loop IR -> native code through LLVM)."""
__version__ = "0.1.0"

from ubique import errors  # noqa: E402  (first: every layer imports it)
from ubique.errors import (  # noqa: E402
    CacheError, DTypeError, ModelError, PluginError, RuntimeFailure, ShapeError, ToolchainError, TraceError, UbiqueError,
    UnsupportedOpError, VerifyError,
)
from ubique.ir.dtypes import DType  # noqa: E402
from ubique.ops import *  # noqa: E402,F401,F403
from ubique.jit import JitFunction, Lowered, jit  # noqa: E402
from ubique.build import build, cache_info  # noqa: E402
from ubique.model import Model, compile, import_onnx  # noqa: E402
from ubique.ubq import load, save  # noqa: E402
from ubique.runtime.native import set_num_threads  # noqa: E402
from ubique.runtime.cuda_array import DeviceArray, to_device  # noqa: E402
from ubique import targets  # noqa: E402
from ubique import custom_ops as op  # noqa: E402
from ubique import passes  # noqa: E402

float32, float64, float16, bfloat16 = DType.float32, DType.float64, DType.float16, DType.bfloat16
int8, uint8, int32, int64, bool_ = DType.int8, DType.uint8, DType.int32, DType.int64, DType.bool
