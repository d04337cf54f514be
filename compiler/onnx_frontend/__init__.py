"""The ONNX frontend: ONNX models -> graph IR (needs the optional `onnx` package)."""
from ubique.compiler.onnx_frontend.importer import import_onnx

__all__ = ["import_onnx"]
