"""Find and drive C compilers: the host's, or a target's cross compiler (Target.cc). Compile C
sources or link objects into a shared library or an executable; build the native runtime for
a target.

Every output is written atomically (a temporary name in the same folder, then os.replace), so
a concurrent reader never sees a half-written library.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ubique.errors import ToolchainError

if TYPE_CHECKING:
    from ubique.targets.target import Target

__all__ = ["find_cc", "find_target_cc", "compile_c_object", "merge_objects", "compile_c_shared", "compile_c_executable", "link_shared",
           "link_shared_for_target", "build_runtime"]

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


def find_target_cc(target: Target) -> str:
    """Return the C compiler command that builds code for `target`.

    `$UBIQUE_CC_<NAME>` (the target's name in capitals, e.g. UBIQUE_CC_AARCH64) if set, else
    `target.cc`, else (a target with no cc of its own, such as the host) find_cc(). A target
    that runs natively falls back to find_cc() when its named compiler is absent (an AArch64
    machine need not have the triplet-prefixed gcc).

    Raises:
        ToolchainError: the compiler is not on PATH; the message names the Debian package
            (target.cc_package) that provides it and the variable that overrides it.
    """
    env_name = "UBIQUE_CC_" + re.sub(r"\W", "_", target.name).upper()
    override = os.environ.get(env_name, "").strip()
    command = override or target.cc
    if not command:
        return find_cc()
    words = shlex.split(command)
    resolved = shutil.which(words[0])
    if resolved is not None:
        return shlex.join([resolved, *words[1:]])
    if not override and target.runs_natively:
        return find_cc()
    if override:
        raise ToolchainError(
            f"C compiler for target {target.name!r} not found: {env_name} is set to {override!r}, but "
            f"{words[0]!r} is not an executable on PATH; set it to a C compiler for {target.triple}"
            + (f", or unset it to use {target.cc!r}" if target.cc else "")
        )
    install = (f"install the Debian package {target.cc_package} (apt-get install {target.cc_package})"
               if target.cc_package else f"install a C compiler for {target.triple}")
    raise ToolchainError(
        f"C compiler for target {target.name!r} not found: {words[0]!r} is not an executable on PATH; "
        f"{install}, or set {env_name} to a C compiler command for {target.triple}"
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


def link_shared_for_target(objects: Sequence[PathLike], out: PathLike, target: Target) -> Path:
    """Link object files made for `target` into the shared library `out` with the target's
    C compiler (find_target_cc) and the libraries its code calls (target.link_libs).

    Raises:
        ToolchainError: the target's compiler is missing or fails.
    """
    return link_shared(objects, out, libs=target.link_libs, cc=find_target_cc(target))


def compile_c_executable(
    sources: Sequence[PathLike],
    out: PathLike,
    extra_flags: Iterable[str] = (),
    libs: Iterable[str] = (),
    cc: str | None = None,
) -> Path:
    """Compile and link C `sources` (and objects) into the executable `out` (-O2), atomically.

    Raises:
        ToolchainError: the compiler is missing or fails; carries its stderr.
    """
    return _build(cc, ["-O2", *extra_flags], [os.fspath(s) for s in sources], out, libs)


def compile_c_object(source: str, target: Target, flags: Iterable[str] = ("-O2",)) -> bytes:
    """C source text -> a relocatable PIC object for `target`, built with its C compiler
    (find_target_cc). The kernel ABI header is on the include path: `#include
    "ubique_runtime.h"` declares ubq_ctx, ubq_entry_fn and ubq_set_error.

    Raises:
        ToolchainError: the target's compiler is missing or rejects the source (its stderr
            is in the message).
    """
    from ubique.runtime.native import NATIVE_DIR

    with tempfile.TemporaryDirectory(prefix="ubique-cc-") as tmp:
        src = Path(tmp) / "kernels.c"
        src.write_text(source)
        out = _build(find_target_cc(target), ["-c", "-fPIC", "-std=c99", *flags, "-I", str(NATIVE_DIR)],
                     [str(src)], Path(tmp) / "kernels.o", ())
        return out.read_bytes()


def merge_objects(objects: Sequence[bytes], target: Target) -> bytes:
    """Several relocatable objects for `target` as one (a relocatable link, `cc -r`)."""
    if len(objects) == 1:
        return objects[0]
    with tempfile.TemporaryDirectory(prefix="ubique-ld-") as tmp:
        paths = []
        for k, obj in enumerate(objects):
            paths.append(Path(tmp) / f"part{k}.o")
            paths[-1].write_bytes(obj)
        return _build(find_target_cc(target), ["-r", "-nostdlib"], [str(p) for p in paths],
                      Path(tmp) / "merged.o", ()).read_bytes()


def build_runtime(target: Target) -> Path:
    """The native runtime (runtime/native/ubique_runtime.c) built as a shared library for
    `target` with its C compiler: `cache_root()/native/<sha256>/libubique_runtime.so`, keyed
    like runtime/native.py keys the host's (sources, compiler command, flags), so the host
    target shares that build. Built on first use; later calls return the cached file.

    Raises:
        ToolchainError: the target's compiler is missing or fails.
    """
    from ubique.runtime import native  # lazily: native imports this module
    from ubique.runtime.cache import cache_root

    cc = find_target_cc(target)
    digest = hashlib.sha256()
    for part in (native._SOURCE.read_bytes(), native._HEADER.read_bytes(), cc.encode(),
                 " ".join(native._CFLAGS).encode()):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    path = cache_root() / "native" / digest.hexdigest() / native._LIB_NAME
    if not path.is_file():  # written atomically: a file that is there is complete
        compile_c_shared([native._SOURCE], path, (*native._CFLAGS, "-I", str(native.NATIVE_DIR)), libs=(), cc=cc)
    return path


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
