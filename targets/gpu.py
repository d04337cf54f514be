"""NVIDIA GPU targets: PTX text from LLVM's NVPTX backend (codegen/nvptx.py), run by the CUDA
driver (runtime/cuda.py).

    "cuda"        the GPU of this machine: its compute capability picks the architecture
                  (sm_80 for an A100, sm_90 for an H100, ...); sm_80 where no GPU or driver
                  is found, so compiling never needs one
    "cuda-sm80"   Ampere (A100) and later: PTX ISA 7.0
    "cuda-sm90"   Hopper (H100/H200) and later: PTX ISA 7.8

PTX for an older architecture runs on newer GPUs (the driver compiles it for the device), so
"cuda-sm80" code also runs on an H100, without Hopper-only instructions. The PTX ISA version
is the lowest one the architecture needs, so older drivers accept the code too.
"""
from __future__ import annotations

import functools

from ubique.targets.target import Target

__all__ = ["ARCHITECTURES", "cuda_target", "cuda_sm80_target", "cuda_sm90_target", "cuda_emulated_target",
           "target_for_arch"]

TRIPLE = "nvptx64-nvidia-cuda"

# compute capability -> (LLVM CPU name, PTX ISA feature: the lowest version that knows the
# architecture, streaming multiprocessors of the usual part, for the schedules' work sizing)
ARCHITECTURES = {
    (7, 5): ("sm_75", "+ptx63", 40),
    (8, 0): ("sm_80", "+ptx70", 108),
    (8, 6): ("sm_86", "+ptx71", 84),
    (8, 7): ("sm_87", "+ptx74", 16),
    (8, 9): ("sm_89", "+ptx78", 128),
    (9, 0): ("sm_90", "+ptx78", 132),
    (10, 0): ("sm_100", "+ptx86", 148),
    (12, 0): ("sm_120", "+ptx87", 84),
}


def target_for_arch(name: str, cc: tuple[int, int], sm_count: int = 0) -> Target:
    """A cuda Target for compute capability `cc`: the newest architecture in ARCHITECTURES
    that is not newer than the device (its PTX runs there)."""
    usable = [k for k in ARCHITECTURES if k <= tuple(cc)] or [min(ARCHITECTURES)]
    cpu, ptx, sms = ARCHITECTURES[max(usable)]
    return Target(name=name, triple=TRIPLE, cpu=cpu, features=ptx, vector_bits=32, codegen="nvptx",
                  device="cuda", num_cores=sm_count or sms)


def cuda_sm80_target() -> Target:
    return target_for_arch("cuda-sm80", (8, 0))


def cuda_sm90_target() -> Target:
    return target_for_arch("cuda-sm90", (9, 0))


@functools.lru_cache(maxsize=None)
def cuda_target() -> Target:
    """The GPU of this machine (device 0), or sm_80 where there is none (or no driver): the
    compile never needs the driver; running does (runtime/cuda.py says what is missing)."""
    from ubique.runtime import cuda

    info = cuda.probe_device()
    if info is None:
        return target_for_arch("cuda", (8, 0))
    return target_for_arch("cuda", info.compute_capability, info.multiprocessors)


def cuda_emulated_target() -> Target:
    """sm_80 code generation whose GPU-scheduled loop IR runs serially on this CPU
    (runtime/cuda.py, device "cuda-emulator"): checks the GPU schedules without a GPU."""
    t = target_for_arch("cuda-emulated", (8, 0))
    return Target(name=t.name, triple=t.triple, cpu=t.cpu, features=t.features, vector_bits=t.vector_bits,
                  codegen=t.codegen, device="cuda-emulator", num_cores=t.num_cores)
