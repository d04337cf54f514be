"""The exception hierarchy of ubique: every error ubique raises on purpose is a UbiqueError.

Each class also derives from the built-in exception a Python user would expect
(ValueError for bad shapes, TypeError for bad dtypes, ...), so generic handlers still work.
This module imports nothing from ubique, so every layer can import it.
"""

__all__ = [
    "UbiqueError",
    "ShapeError",
    "DTypeError",
    "UnsupportedOpError",
    "TraceError",
    "VerifyError",
    "ToolchainError",
    "RuntimeFailure",
    "CacheError",
    "ModelError",
    "PluginError",
]


class UbiqueError(Exception):
    """Root of all ubique errors; catch this to handle any of them."""


class ShapeError(UbiqueError, ValueError):
    """Raised when tensor shapes are wrong for an op, a model input or a kernel signature."""


class DTypeError(UbiqueError, TypeError):
    """Raised when a dtype is unsupported or does not match what an op or model expects."""


class UnsupportedOpError(UbiqueError, NotImplementedError):
    """Raised when an op (or an op/attribute/target combination) has no implementation."""


class TraceError(UbiqueError):
    """Raised when tracing a Python function into graph IR meets code it cannot capture."""


class VerifyError(UbiqueError):
    """Raised by the IR verifiers when graph IR or loop IR breaks an invariant."""


class ToolchainError(UbiqueError, RuntimeError):
    """Raised when the C compiler or linker is missing or fails."""


class RuntimeFailure(UbiqueError, RuntimeError):
    """Raised when a kernel or model run returns a nonzero status from native code."""


class CacheError(UbiqueError):
    """Raised when the on-disk cache cannot be created or written, or is given a bad key."""


class ModelError(UbiqueError, ValueError):
    """Raised when a model file (ONNX, .ubq) is corrupt, truncated, malformed or unsafe to load."""


class PluginError(UbiqueError, RuntimeError):
    """Raised when a plug-in (a target, backend, custom op, custom pass or hand-written kernel)
    is broken: it fails to import, lacks a required method or breaks the kernel ABI. The
    message names the plug-in."""
