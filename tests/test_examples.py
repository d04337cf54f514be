"""The README's demo runs end to end (it needs scikit-learn's bundled digits)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_and_matches_numpy():
    pytest.importorskip("sklearn", reason="the demo needs scikit-learn (pip install -e '.[demo]')")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], capture_output=True, text=True,
                         timeout=600, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    import re

    acc = [line for line in out.stdout.splitlines() if line.startswith("test accuracy")][0]
    ub_acc, np_acc = map(float, re.match(r"test accuracy: ubique ([\d.]+), numpy ([\d.]+)", acc).groups())
    assert ub_acc == np_acc and ub_acc > 0.9, acc
    assert "compiled into" in out.stdout


def test_cli_targets_and_cache(tmp_path):
    env = dict(os.environ, UBIQUE_CACHE_DIR=str(tmp_path))
    run = lambda *a: subprocess.run([sys.executable, "-m", "ubique.cli", *a], capture_output=True,  # noqa: E731
                                    text=True, env=env, timeout=120)
    out = run("targets")
    assert out.returncode == 0 and "host:" in out.stdout and "targets:" in out.stdout \
        and "[built-in" in out.stdout and "backends:" in out.stdout
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "x").write_bytes(b"123")
    out = run("cache", "--clear")
    assert out.returncode == 0 and str(tmp_path) in out.stdout and not any(tmp_path.iterdir())
    assert run("nonsense").returncode != 0
