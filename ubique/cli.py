"""The `ubique` command line: `ubique targets`, `ubique cache [--clear]`, `ubique --version`."""
from __future__ import annotations

import argparse
import shutil
import sys


def _targets(args) -> int:
    from ubique import targets

    host = targets.host_target()
    print(f"host: {host.describe()}")
    enabled = [f[1:] for f in host.features.split(",") if f.startswith("+")]
    print(f"  features: {' '.join(enabled) or '(none reported)'}")
    print(f"  vector math: {host.vector_math or 'scalar libm'}")
    print("registered: " + ", ".join(targets.available()))
    return 0


def _cache(args) -> int:
    from ubique.runtime.cache import cache_root

    root = cache_root()
    files = [p for p in root.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"cache: {root} ({len(files)} files, {size / 1e6:.1f} MB); set UBIQUE_CACHE_DIR to move it")
    if args.clear:
        for child in root.iterdir():
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        print("cleared")
    return 0


def main(argv=None) -> int:
    import ubique

    parser = argparse.ArgumentParser(prog="ubique", description="ubique tensor compiler")
    parser.add_argument("--version", action="version", version=f"ubique {ubique.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("targets", help="show the host target and the registered targets").set_defaults(fn=_targets)
    cache = sub.add_parser("cache", help="show (or --clear) the compiled-code cache")
    cache.add_argument("--clear", action="store_true")
    cache.set_defaults(fn=_cache)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except ubique.UbiqueError as e:
        print(f"ubique: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
