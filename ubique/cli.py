"""The `ubique` command line: `ubique compile`, `ubique build`, `ubique run`, `ubique inspect`,
`ubique tune`, `ubique targets`, `ubique conformance`, `ubique cache [--clear]`,
`ubique config --include`, `ubique --version`."""
from __future__ import annotations

import argparse
import shutil
import sys


def _targets(args) -> int:
    from ubique import targets
    from ubique.codegen.backend import available_backends
    from ubique.errors import UbiqueError
    from ubique.targets import plugins

    host = targets.host_target()
    print(f"host: {host.describe()}")
    enabled = [f[1:] for f in host.features.split(",") if f.startswith("+")]
    print(f"  features: {' '.join(enabled) or '(none reported)'}")
    print(f"  vector math: {host.vector_math or 'scalar libm'}")
    print("targets:")
    for name, origin in targets.origins().items():
        try:
            t = targets.get_target(name)
            what = f"{t.triple}, codegen {t.codegen}, device {t.device}"
        except UbiqueError as e:
            what = f"unusable: {e}"
        print(f"  {name:<14} {what}  [{origin}]")
    print("backends:")
    for name, origin in available_backends().items():
        print(f"  {name:<14} [{origin}]")
    for b in plugins.broken():
        print(f"broken plug-in: {b.group} {b.name!r}: {b.where}: {b.reason}")
    return 0


def _import_modules(args) -> None:
    """--import MODULE: modules defining custom ops, passes or targets, imported first."""
    import importlib

    from ubique.errors import PluginError

    for name in getattr(args, "imports", None) or []:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 -- the user's module: report, do not crash
            raise PluginError(f"--import {name}: importing it raised {type(e).__name__}: {e}") from e


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


def _reporting(args, force: bool = False):
    """Collects the compile events of this command when --report is given (or `force`)."""
    import contextlib

    from ubique import report

    return report.collect() if getattr(args, "report", False) or force else contextlib.nullcontext()


def _print_report(events, **seconds) -> None:
    if events is not None:
        print()
        print(events.format(top=10))
        extra = ", ".join(f"{k} {v:.3f} s" for k, v in seconds.items())
        if extra:
            print(f"outside the compiler: {extra}")


def _run(args) -> int:
    import time

    import numpy as np

    import ubique as ub

    dims = _parse_dims(args.dims)
    with _reporting(args) as events:
        if _is_ubq(args.model):
            model = ub.load(args.model, args.target, dims=dims or None)
        else:
            t0 = time.perf_counter()
            graph = ub.import_onnx(args.model)
            t_import = time.perf_counter() - t0
            model = ub.compile(graph, args.target, dims=dims)
        feeds = _load_inputs(model, args.input)
        t0 = time.perf_counter()
        outputs = model.run(feeds)
        t_run = time.perf_counter() - t0
    for spec, out in zip(model.outputs, outputs):
        if args.output:
            path = f"{args.output.rstrip('/')}/{spec.name.replace('/', '_')}.npy"
            np.save(path, out)
            print(f"{spec.name}: {out.dtype}{list(out.shape)} -> {path}")
        else:
            print(f"{spec.name}: {out.dtype}{list(out.shape)}")
            print(np.array2string(out, threshold=args.max_elements, precision=6))
    _print_report(events, **({} if _is_ubq(args.model) else {"onnx import": t_import}), run=t_run)
    return 0


def _compile(args) -> int:
    import time

    import ubique as ub
    from ubique.compiler.pass_manager import dumping

    targets = [t for t in (args.target or "").split(",") if t]
    dump_after = [n for n in (args.dump_after or []) if n]
    with _reporting(args, force=args.print_passes or bool(dump_after)) as events, dumping(dump_after):
        t0 = time.perf_counter()
        graph = ub.import_onnx(args.model)
        t_import = time.perf_counter() - t0
        path = ub.save(graph, args.output, targets=targets, dims=_parse_dims(args.dims) or None)
        programs = list(events.programs) if events is not None else []
        if (args.print_passes or dump_after) and not targets:  # show what the host would run
            from ubique.compiler.pipeline import compile_graph
            from ubique.targets.registry import host_target

            programs.append(compile_graph(graph, host_target(), dims=_parse_dims(args.dims) or None))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB; code for: {', '.join(targets) or 'no target (portable)'})")
    for program in programs:
        if args.print_passes:
            _print_passes(program)
        _print_dumps(program, dump_after)
    never = [n for n in dump_after if programs and not any(n in p.dumps for p in programs)]
    if never:
        from ubique.errors import UbiqueError

        raise UbiqueError(f"--dump-after {', '.join(never)}: no step of that name ran for any target; the steps: "
                          + ", ".join(r.name for r in programs[0].passes))
    if args.report:
        _print_report(events, **{"onnx import": t_import})
    return 0


def _print_passes(program) -> None:
    print(f"\npipeline for target {program.target.name} (backend {program.target.codegen}):")
    for k, r in enumerate(program.passes, 1):
        print(f"  {k:>2}. {r.name:<22} {r.level:<7} {r.seconds * 1e3:9.2f} ms  {r.origin}")


def _print_dumps(program, names) -> None:
    for name in names:
        if name not in program.dumps:
            ran = ", ".join(r.name for r in program.passes)
            print(f"\n// --dump-after {name}: no step of that name ran for target {program.target.name} "
                  f"(the steps: {ran})")
            continue
        print(f"\n// IR after {name} (target {program.target.name})")
        print(program.dumps[name])


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
            if e.get("language") == "ptx":  # GPU code: the PTX text (--ptx: all of it) and its launches
                from ubique.runtime.cuda import describe_blob

                text = describe_blob(mf.code(e["key"]), full=args.ptx)
                print("\n".join("  " + line for line in text.splitlines()))
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


def _duration(text: str) -> float:
    """--budget: "60s", "2m", "1h", "500ms" or plain seconds ("90", "1.5")."""
    t = text.strip().lower()
    for suffix, scale in (("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if t.endswith(suffix) and t[:-len(suffix)].strip():
            t, unit = t[:-len(suffix)].strip(), scale
            break
    else:
        unit = 1.0
    try:
        value = float(t) * unit
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration; expected e.g. 60s, 2m, 90")
    return value


def _tune(args) -> int:
    import ubique as ub
    from ubique.compiler.tuner import tune
    from ubique.targets.registry import get_target

    target = get_target(args.target)
    if _is_ubq(args.model):
        from ubique.ubq import open_model

        _, graph = open_model(args.model)
    else:
        graph = ub.import_onnx(args.model)
    result = tune(graph, target, budget_s=args.budget, dims=_parse_dims(args.dims) or None,
                  log=(lambda s: None) if args.quiet else print, store=not args.dry_run)
    print()
    print(result.format())
    if result.records:
        print(f"later compiles for {target.name} on this CPU ({target.cpu}) use them; "
              f"`ubique tune --clear` or `ubique cache --clear` removes them")
    return 0


def _tune_clear(args) -> int:
    from ubique.compiler import tuning
    from ubique.targets.registry import get_target

    n = tuning.clear(get_target(args.target) if args.target else None)
    print(f"removed {n} tuning record file(s)")
    return 0


def main(argv=None) -> int:
    import ubique

    parser = argparse.ArgumentParser(prog="ubique", description="ubique tensor compiler")
    parser.add_argument("--version", action="version", version=f"ubique {ubique.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    targets_p = sub.add_parser("targets", help="show the host target, the registered targets and backends")
    targets_p.set_defaults(fn=_targets)
    cache = sub.add_parser("cache", help="show (or --clear) the compiled-code cache")
    cache.add_argument("--clear", action="store_true")
    cache.set_defaults(fn=_cache)
    comp = sub.add_parser("compile", help="compile an ONNX model into a .ubq model file")
    comp.add_argument("model", help="an .onnx file")
    comp.add_argument("-o", "--output", required=True, help="the .ubq file to write")
    comp.add_argument("--target", default="", help="comma-separated targets to embed code for (e.g. x86_64,aarch64)")
    comp.add_argument("--dims", nargs="*", metavar="NAME=SIZE|LO:HI", help="specialise or bound symbolic sizes")
    comp.add_argument("--report", action="store_true",
                      help="print compile times per pass and per kernel, cache events and why each compilation ran")
    comp.add_argument("--print-passes", action="store_true",
                      help="print the pipeline that ran for each target: every pass and stage, built-in or custom")
    comp.add_argument("--dump-after", action="append", metavar="NAME",
                      help="print the IR after the step NAME (a graph pass, a custom pass, fuse, schedule or "
                           "codegen); repeatable")
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
    run.add_argument("--report", action="store_true",
                     help="print compile times per pass and per kernel, cache events and why each compilation ran")
    run.set_defaults(fn=_run)
    tune_p = sub.add_parser("tune", help="measure schedule choices of a model's kernels on this machine and "
                                         "record the fastest for later compiles")
    tune_p.add_argument("model", nargs="?", help="an .onnx or .ubq file")
    tune_p.add_argument("--budget", type=_duration, default=60.0, metavar="TIME",
                        help="time to spend measuring: 60s, 2m, 90 (seconds); default 60s")
    tune_p.add_argument("--target", default=None,
                        help="target name (default: this host); it must run natively on this machine")
    tune_p.add_argument("--dims", nargs="*", metavar="NAME=SIZE|LO:HI",
                        help="specialise or bound symbolic sizes, as you will when compiling")
    tune_p.add_argument("--dry-run", action="store_true", help="measure and print, but store no records")
    tune_p.add_argument("--quiet", action="store_true", help="print only the final table")
    tune_p.add_argument("--clear", action="store_true",
                        help="remove the tuning records (of --target, else of every target) instead of tuning")
    tune_p.set_defaults(fn=lambda a: _tune_clear(a) if a.clear else
                        (_tune(a) if a.model else tune_p.error("a model file is required (or --clear)")))
    inspect = sub.add_parser("inspect", help="show a model's graph IR and the ops it uses")
    inspect.add_argument("model", help="an .onnx or .ubq file")
    inspect.add_argument("--summary", action="store_true", help="inputs, outputs and op counts only")
    inspect.add_argument("--ptx", action="store_true", help="print the whole PTX text of embedded GPU code")
    inspect.set_defaults(fn=_inspect)
    conf = sub.add_parser("conformance", help="run the generated per-op conformance suite on a target "
                                              "against the host backend and print a pass table", add_help=False)
    conf.set_defaults(fn=None)
    for p in (targets_p, comp, build, run, tune_p, inspect):
        p.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                       help="import MODULE first (it defines custom ops, passes or targets); repeatable")
    args, rest = parser.parse_known_args(argv)
    if args.command == "conformance":
        from ubique.testing import cli_main

        return cli_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        _import_modules(args)
        return args.fn(args)
    except ubique.UbiqueError as e:
        print(f"ubique: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
