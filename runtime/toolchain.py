"""Find and drive the host C compiler: compile C sources or link objects into a shared library.

Every output is written atomically (a temporary name in the same folder, then os.replace), so
a concurrent reader never sees a half-written library.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from ubique.errors import ToolchainError

__all__ = ["find_cc", "compile_c_shared", "link_shared"]

_CANDIDATES = ("cc", "gcc", "clang")
_INSTALL_HINT = "install gcc (apt-get install gcc) or set CC to a C compiler"

PathLike = str | os.PathLike[str]


def find_cc() -> str:
    """Return the C compiler command: `$CC` if set, else the first of cc, gcc, clang on PATH.

    The result is a shell-style command line whose first word is an absolute path
    (CC may carry extra words, e.g. "ccache gcc"). An explicitly set CC that cannot be
    found is an error rather than silently replaced.

    Raises:
        ToolchainError: no compiler was found; the message names what was searched.
    """
    env_cc = os.environ.get("CC", "").strip()
    if env_cc:
        words = shlex.split(env_cc)
        resolved = shutil.which(words[0])
        if resolved is None:
            raise ToolchainError(
                f"C compiler not found: CC is set to {env_cc!r} but {words[0]!r} is not an "
                f"executable on PATH; {_INSTALL_HINT}, or unset CC to search "
                f"{', '.join(_CANDIDATES)}"
            )
        return shlex.join([resolved, *words[1:]])
    for name in _CANDIDATES:
        resolved = shutil.which(name)
        if resolved is not None:
            return resolved
    raise ToolchainError(
        f"C compiler not found: CC is not set and none of {', '.join(_CANDIDATES)} is on "
        f"PATH ({os.environ.get('PATH', '')!r}); {_INSTALL_HINT}"
    )


def compile_c_shared(
    sources: Sequence[PathLike],
    out: PathLike,
    extra_flags: Iterable[str] = (),
    libs: Iterable[str] = ("m",),
    cc: str | None = None,
) -> Path:
    """Compile C `sources` into the shared library `out` (-O2 -fPIC -shared), atomically.

    Args:
        sources: C files.
        out: the library to write; its folder is created if missing.
        extra_flags: more compiler flags (e.g. "-I", include_dir, "-pthread").
        libs: libraries to link, without the "-l".
        cc: compiler command; default find_cc(). Pass a cross compiler here.

    Raises:
        ToolchainError: the compiler is missing or fails; carries its stderr.
    """
    flags = ["-O2", "-fPIC", "-shared", *extra_flags]
    return _build(cc, flags, [os.fspath(s) for s in sources], out, libs)


def link_shared(
    objects: Sequence[PathLike],
    out: PathLike,
    libs: Iterable[str] = ("m",),
    cc: str | None = None,
) -> Path:
    """Link object files into the shared library `out`, atomically.

    Raises:
        ToolchainError: the compiler driver is missing or fails; carries its stderr.
    """
    return _build(cc, ["-shared"], [os.fspath(o) for o in objects], out, libs)


def _build(
    cc: str | None, flags: list[str], inputs: list[str], out: PathLike, libs: Iterable[str]
) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    argv = [*shlex.split(cc or find_cc()), *flags, "-o", str(tmp), *inputs]
    argv += [f"-l{lib}" for lib in libs]
    try:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True)
        except OSError as exc:
            raise ToolchainError(f"could not run the C compiler {argv[0]!r}: {exc}; "
                                 f"{_INSTALL_HINT}") from exc
        if proc.returncode != 0:
            raise ToolchainError(
                f"C compiler failed (exit {proc.returncode}) building {out.name}\n"
                f"command: {shlex.join(argv)}\n{proc.stderr.strip()}"
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
