"""The packages ubique installs (one per layer folder, see DESIGN.md) and where they live."""
from __future__ import annotations

import importlib
from pathlib import Path

SUBPACKAGES = ("ubique", "ubique.ir", "ubique.compiler", "ubique.codegen", "ubique.targets", "ubique.runtime")


def package_dirs() -> list[Path]:
    """The folders of ubique's packages (with the package-dir mapping they are siblings)."""
    return [Path(importlib.import_module(name).__file__).resolve().parent for name in SUBPACKAGES]
