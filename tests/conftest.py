"""Shared test configuration: hypothesis profiles and a private on-disk kernel cache.

Profiles (pick with HYPOTHESIS_PROFILE=dev|ci|thorough; CI=true selects "ci"):
  dev       default: 30 examples per test, random seeds, failures remembered in .hypothesis/
  ci        15 examples per test, derandomized (the same examples every run), no database
  thorough  200 examples per test, for hunting bugs before a release
All of them set deadline=None: the first example of a new shape compiles a kernel (~0.1 s).
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from hypothesis import HealthCheck, settings

# Compiled kernels go to a fresh cache folder per test session (unless the caller chose one),
# so tests never read stale kernels from the user's cache nor fill it up.
if "UBIQUE_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="ubique-test-cache-")
    os.environ["UBIQUE_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.filter_too_much])
settings.register_profile("dev", max_examples=30, **_common)
settings.register_profile("ci", max_examples=15, derandomize=True, database=None, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=200, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))
