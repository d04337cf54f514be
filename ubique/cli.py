"""The `ubique` command line: `ubique compile`, `ubique build`, `ubique run`, `ubique inspect`,
`ubique targets`, `ubique cache [--clear]`, `ubique config --include`, `ubique --version`."""
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


def _parse_dims(items) -> dict:
    """--dims batch=1:64 seq=128  ->  {"batch": (1, 64), "seq": 128}"""
    from ubique.errors import ShapeError

    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            lo, colon, hi = value.partition(":")
            out[name] = (int(lo), int(hi) if hi else None) if colon else int(value)
        except ValueError:
            raise ShapeError(f"--dims {item!r}: expected NAME=SIZE or NAME=LO:HI") from None
        if not sep or not name:
            raise ShapeError(f"--dims {item!r}: expected NAME=SIZE or NAME=LO:HI")
    return out


def _load_inputs(model, items) -> dict:
    import numpy as np

    from ubique.errors import ShapeError

    feeds = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep:
            raise ShapeError(f"--input {item!r}: expected NAME=FILE.npy")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ShapeError(f"--input {name}: cannot read {path!r} as a .npy array: {e}") from None
    return feeds


def _is_ubq(path: str) -> bool:
    from ubique.runtime.model_file import MAGIC

    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _run(args) -> int:
    import numpy as np

    import ubique as ub

    dims = _parse_dims(args.dims)
    if _is_ubq(args.model):
        model = ub.load(args.model, args.target, dims=dims or None)
    else:
        model = ub.compile(ub.import_onnx(args.model), args.target, dims=dims)
    outputs = model.run(_load_inputs(model, args.input))
    for spec, out in zip(model.outputs, outputs):
        if args.output:
            path = f"{args.output.rstrip('/')}/{spec.name.replace('/', '_')}.npy"
            np.save(path, out)
            print(f"{spec.name}: {out.dtype}{list(out.shape)} -> {path}")
        else:
            print(f"{spec.name}: {out.dtype}{list(out.shape)}")
            print(np.array2string(out, threshold=args.max_elements, precision=6))
    return 0


def _compile(args) -> int:
    import ubique as ub

    targets = [t for t in (args.target or "").split(",") if t]
    path = ub.save(ub.import_onnx(args.model), args.output, targets=targets, dims=_parse_dims(args.dims) or None)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB; code for: {', '.join(targets) or 'no target (portable)'})")
    return 0


def _build(args) -> int:
    from ubique.runtime.aot import build_library

    path = build_library(args.model, args.output, args.target, dims=_parse_dims(args.dims) or None,
                         keep_sources=args.keep_sources)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, weights embedded; C API: "
          f"#include <ubique.h> from `ubique config --include`, link with -ldl)")
    return 0


def _config(args) -> int:
    from ubique.runtime.aot import include_dir

    if args.include or not args.libs:
        print(include_dir())
    if args.libs:
        print("-ldl")
    return 0


def _inspect(args) -> int:
    import collections

    import ubique as ub

    if _is_ubq(args.model):
        from ubique.runtime.model_file import KIND_NAMES
        from ubique.ubq import open_model

        mf, graph = open_model(args.model)
        print(f"model file: {args.model} ({mf.size / 1e6:.2f} MB, {mf.manifest.get('producer')})")
        for sec in mf.sections:
            print(f"  section {KIND_NAMES.get(sec.kind, sec.kind):8s} {sec.length:>12,d} bytes  sha256 "
                  f"{sec.sha256.hex()[:16]}  {sec.name}")
        weights = sum(a.nbytes for a in mf.tensors.values())
        print(f"weights: {len(mf.tensors)} tensors, {weights / 1e6:.2f} MB")
        for e in mf.code_entries():
            print(f"code: target {e['target']} ({e['triple']}, cpu={e['cpu']}) key {e['key']} "
                  f"sha256 {e['sha256'][:16]}")
        if not mf.code_entries():
            print("code: none (portable: compiled where it is loaded)")
    else:
        graph = ub.import_onnx(args.model)
    print(f"inputs:  {', '.join(f'{v.name}: {v.type}' for v in graph.inputs)}")
    print(f"outputs: {', '.join(f'{v.name}: {v.type}' for v in graph.outputs)}")
    counts = collections.Counter(n.op for n in graph.nodes if n.op != "constant")
    weights = sum(n.attrs["value"].nbytes for n in graph.nodes if n.op == "constant")
    from ubique.compiler.symbolic import graph_symbols

    symbols = graph_symbols(graph)
    print(f"symbolic sizes: {', '.join(symbols) if symbols else 'none'}")
    print(f"ops ({sum(counts.values())} nodes, {weights / 1e6:.2f} MB of constants): "
          + ", ".join(f"{op} x{k}" for op, k in counts.most_common()))
    if not args.summary:
        print()
        print(graph)
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
    comp = sub.add_parser("compile", help="compile an ONNX model into a .ubq model file")
    comp.add_argument("model", help="an .onnx file")
    comp.add_argument("-o", "--output", required=True, help="the .ubq file to write")
    comp.add_argument("--target", default="", help="comma-separated targets to embed code for (e.g. x86_64,aarch64)")
    comp.add_argument("--dims", nargs="*", metavar="NAME=SIZE|LO:HI", help="specialise or bound symbolic sizes")
    comp.set_defaults(fn=_compile)
    build = sub.add_parser("build", help="build a model into one self-contained shared library for the C API")
    build.add_argument("model", help="a .ubq (or .onnx) file")
    build.add_argument("-o", "--output", required=True, help="the shared library to write (libmodel.so)")
    build.add_argument("--target", default=None, help="target name (default: this host; e.g. x86_64, aarch64)")
    build.add_argument("--dims", nargs="*", metavar="NAME=SIZE|LO:HI", help="specialise or bound symbolic sizes")
    build.add_argument("--keep-sources", metavar="DIR", help="keep the generated descriptor and weights in DIR")
    build.set_defaults(fn=_build)
    config = sub.add_parser("config", help="show where the C API header is (for building C programs)")
    config.add_argument("--include", action="store_true", help="print the folder holding ubique.h")
    config.add_argument("--libs", action="store_true", help="print the libraries a C program links (-ldl)")
    config.set_defaults(fn=_config)
    run = sub.add_parser("run", help="compile a model and run it on .npy inputs")
    run.add_argument("model", help="an .onnx or .ubq file")
    run.add_argument("--input", action="append", metavar="NAME=FILE.npy", help="one per model input")
    run.add_argument("--output", metavar="DIR", help="save outputs as DIR/<name>.npy instead of printing")
    run.add_argument("--target", default=None, help="target name (default: this host)")
    run.add_argument("--dims", nargs="*", metavar="NAME=SIZE|LO:HI", help="specialise or bound symbolic sizes")
    run.add_argument("--max-elements", type=int, default=100, help="print arrays in full up to this size")
    run.set_defaults(fn=_run)
    inspect = sub.add_parser("inspect", help="show a model's graph IR and the ops it uses")
    inspect.add_argument("model", help="an .onnx or .ubq file")
    inspect.add_argument("--summary", action="store_true", help="inputs, outputs and op counts only")
    inspect.set_defaults(fn=_inspect)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except ubique.UbiqueError as e:
        print(f"ubique: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
