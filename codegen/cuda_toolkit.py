"""The CUDA toolkit's files on disk, for the nvptx backend: libdevice.10.bc (the math library
as LLVM bitcode, linked into kernels that call float functions) and ptxas (the PTX assembler,
with which the tests check the emitted PTX). Neither is needed to run PTX: the driver
(runtime/cuda.py) compiles it for the GPU.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ubique.errors import ToolchainError

__all__ = ["find_libdevice", "libdevice_bytes", "find_ptxas", "ptxas_check"]


def _libdevice_candidates():
    env = os.environ.get("UBIQUE_LIBDEVICE")
    if env:
        yield Path(env)
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            yield Path(os.environ[var]) / "nvvm" / "libdevice" / "libdevice.10.bc"
    yield Path("/usr/local/cuda/nvvm/libdevice/libdevice.10.bc")
    yield from sorted(Path("/usr/local").glob("cuda-*/nvvm/libdevice/libdevice.10.bc"), reverse=True)
    yield Path("/usr/lib/nvidia-cuda-toolkit/libdevice/libdevice.10.bc")
    ptxas = shutil.which("ptxas")
    if ptxas:
        yield Path(ptxas).resolve().parent.parent / "nvvm" / "libdevice" / "libdevice.10.bc"
    try:  # Python packages that ship it: nvidia-cuda-nvcc, triton
        import importlib.util

        for pkg, rel in (("nvidia.cuda_nvcc", "nvvm/libdevice/libdevice.10.bc"),
                         ("nvidia.cu13", "nvvm/libdevice/libdevice.10.bc"),
                         ("triton", "backends/nvidia/lib/libdevice.10.bc")):
            spec = importlib.util.find_spec(pkg)
            for loc in (spec.submodule_search_locations or []) if spec else []:
                yield Path(loc) / rel
    except (ImportError, ValueError):
        pass


@functools.lru_cache(maxsize=None)
def find_libdevice() -> Path | None:
    """libdevice.10.bc (the CUDA toolkit's math library as LLVM bitcode): $UBIQUE_LIBDEVICE,
    $CUDA_HOME, /usr/local/cuda*, next to ptxas, or a Python package that ships it."""
    for p in _libdevice_candidates():
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=1)
def libdevice_bytes(path: Path) -> bytes:
    return path.read_bytes()


def find_ptxas() -> str | None:
    """The ptxas executable ($UBIQUE_PTXAS, PATH, $CUDA_HOME/bin, /usr/local/cuda/bin), or None."""
    env = os.environ.get("UBIQUE_PTXAS")
    if env:
        return env if Path(env).is_file() else None
    found = shutil.which("ptxas")
    if found:
        return found
    for base in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if base and (Path(base) / "bin" / "ptxas").is_file():
            return str(Path(base) / "bin" / "ptxas")
    return None


def ptxas_check(ptx: str, arch: str, ptxas: str | None = None) -> str:
    """Assembles PTX text for `arch` ("sm_80") with ptxas; returns its messages (warnings).

    Raises:
        ToolchainError: ptxas is not installed, or rejects the PTX (with its messages).
    """
    ptxas = ptxas or find_ptxas()
    if ptxas is None:
        raise ToolchainError("ptxas not found: install the CUDA toolkit (or pip install nvidia-cuda-nvcc) "
                             "or set UBIQUE_PTXAS")
    with tempfile.TemporaryDirectory(prefix="ubique-ptx-") as tmp:
        src = Path(tmp) / "module.ptx"
        src.write_text(ptx)
        proc = subprocess.run([ptxas, f"-arch={arch}", "-o", str(Path(tmp) / "module.cubin"), str(src)],
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"ptxas -arch={arch} rejected the PTX:\n{(proc.stderr or proc.stdout).strip()}")
    return (proc.stderr + proc.stdout).strip()
