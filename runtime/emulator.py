"""Run a Program compiled for another architecture (e.g. aarch64) under its emulator.

The program's object code is linked into a shared library with the target's C compiler
(Target.cc); a small driver (native/ubq_run_driver.c), built for the target and linked with
the target's build of the native runtime, loads it, reads the inputs and weights from raw
files, calls the entry through `ubq_call` and writes the outputs to files. The driver runs
under `target.emulator` (qemu-aarch64 -L /usr/aarch64-linux-gnu), or directly where the
target runs natively. This checks cross-compiled code on this host; it is not a fast path.

    program = compile_graph(graph, get_target("aarch64"))
    outputs = run_program(program, x, w)                 # one run
    with EmulatedProgram(program) as p:                  # link once, run many times
        a, b = p.run(x1), p.run(x2)
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ubique.errors import RuntimeFailure, ToolchainError
from ubique.ir.dims import evaluate
from ubique.runtime.cache import cache_root
from ubique.runtime.contract import bind
from ubique.runtime.toolchain import build_runtime, compile_c_executable, find_target_cc, link_shared_for_target
from ubique.targets.target import Target, host_arch

__all__ = ["EmulatedProgram", "run_program", "emulator_command", "build_driver"]

_DRIVER = Path(__file__).resolve().parent / "native" / "ubq_run_driver.c"


def emulator_command(target: Target) -> list[str]:
    """The command prefix that runs `target`'s executables here: [] where it runs natively,
    else target.emulator with its program resolved on PATH.

    Raises:
        ToolchainError: the emulator is not installed (names its Debian package), or the
            target has none.
    """
    if target.runs_natively:
        return []
    if not target.emulator:
        raise ToolchainError(f"target {target.name!r} ({target.arch}) cannot run on this {host_arch()} host "
                             "and names no emulator (Target.emulator)")
    program = shutil.which(target.emulator[0])
    if program is None:
        package = target.emulator_package or target.emulator[0]
        raise ToolchainError(f"{target.emulator[0]} not found: code for target {target.name!r} runs on this "
                             f"{host_arch()} host only under it; install {package} (apt-get install {package})")
    return [program, *target.emulator[1:]]


def build_driver(target: Target) -> Path:
    """The driver executable for `target`, built with the target's C compiler on first use and
    cached (`cache_root()/native/<sha256>/ubq_run_driver`); it finds the target's build of the
    runtime (toolchain.build_runtime) through its rpath.

    Raises:
        ToolchainError: the target's compiler is missing or fails.
    """
    runtime = build_runtime(target)
    cc = find_target_cc(target)
    digest = hashlib.sha256(b"|".join([_DRIVER.read_bytes(), str(runtime).encode(), cc.encode()])).hexdigest()
    path = cache_root() / "native" / digest / "ubq_run_driver"
    if not path.is_file():
        flags = ("-std=c99", "-Wall", "-Wextra", "-I", str(_DRIVER.parent), "-L", str(runtime.parent),
                 f"-Wl,-rpath,{runtime.parent}")
        compile_c_executable([_DRIVER], path, flags, libs=("ubique_runtime", "dl"), cc=cc)
    return path


class EmulatedProgram:
    """A compiled Program made runnable here through the driver: linked once, run many times.

    `threads` sizes the driver's thread pool (0: all CPUs the emulator reports). Files live
    in a temporary folder removed by close() (or leaving a `with` block).
    """

    def __init__(self, program, threads: int = 2, timeout: float | None = 300):
        self.program = program
        self.threads = int(threads)
        self.timeout = timeout
        self._prefix = emulator_command(program.target)
        self._driver = build_driver(program.target)
        self._tmp = tempfile.TemporaryDirectory(prefix="ubique-emu-")
        folder = Path(self._tmp.name)
        with tempfile.TemporaryDirectory(prefix="ubique-link-") as tmp:
            obj = Path(tmp) / "module.o"
            obj.write_bytes(program.obj)
            self._library = link_shared_for_target([obj], folder / "module.so", program.target)
        self._weights = []
        for k, w in enumerate(program.weights):
            self._weights.append(folder / f"weight{k}.bin")
            np.ascontiguousarray(w).tofile(self._weights[-1])
        sig = program.signature
        self._in_specs = [(name, tuple(t.shape), t.dtype.to_numpy()) for name, t in sig.inputs]
        self._out_specs = [(tuple(t.shape), t.dtype.to_numpy()) for t in sig.outputs]

    def run(self, *arrays) -> list[np.ndarray]:
        """Runs the program on numpy inputs (checked like Executable.run); returns its outputs."""
        inputs = self._check(arrays)
        symbols = self.program.contract.symbols
        env = bind(self.program.contract, [s[:2] for s in self._in_specs], [a.shape for a in inputs]) if symbols else {}
        folder = Path(self._tmp.name)
        args = []
        for k, a in enumerate(inputs):
            path = folder / f"input{k}.bin"
            a.tofile(path)
            args.append(f"in:{path}")
        outputs = []
        for k, (shape, dtype) in enumerate(self._out_specs):
            shape = tuple(evaluate(d, env) for d in shape)
            path = folder / f"output{k}.bin"
            outputs.append((path, shape, dtype))
            args.append(f"out:{int(np.prod(shape, dtype=np.int64)) * dtype.itemsize}:{path}")
        args += [f"in:{w}" for w in self._weights]
        workspace = self.program.memory.workspace_size
        if self.program.dynamic_memory is not None:  # offsets of symbolic intermediates: one more arg
            table, workspace = self.program.dynamic_memory.plan(env)
            table.astype(np.int64).tofile(folder / "offsets.bin")
            args.append(f"in:{folder / 'offsets.bin'}")
        dims = ",".join(str(env[s]) for s in symbols) or "-"
        argv = [*self._prefix, str(self._driver), str(self._library), self.program.entry, str(workspace),
                str(self.threads), dims, *args]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeFailure(f"{self._where()} did not finish within {self.timeout} s") from None
        if proc.returncode != 0:
            raise RuntimeFailure(f"{self._where()} failed (exit status {proc.returncode}):\n"
                                 f"{(proc.stderr or proc.stdout).strip() or '(no message)'}")
        return [np.fromfile(path, dtype).reshape(shape) for path, shape, dtype in outputs]

    def _check(self, arrays) -> list[np.ndarray]:
        from ubique.runtime.executable import check_input_arrays

        return check_input_arrays(arrays, self._in_specs, bool(self.program.contract.symbols))

    def _where(self) -> str:
        how = f" under {Path(self._prefix[0]).name}" if self._prefix else ""
        return f"running {self.program.entry} for target {self.program.target.name!r}{how}"

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> EmulatedProgram:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_program(program, *inputs, threads: int = 2) -> list[np.ndarray]:
    """Runs a compiled Program once on numpy inputs (see EmulatedProgram); returns its outputs."""
    with EmulatedProgram(program, threads) as p:
        return p.run(*inputs)
