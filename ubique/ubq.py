"""`ub.save(graph, "m.ubq", targets=[...])` and `ub.load("m.ubq")`: the portable model file.

The file keeps the graph after the target-independent passes (constants folded, batch
norms folded into convolutions), its weights once each (named by content), and, per
requested target, the compiled shared library with what the runtime needs to call it.
`load` memory-maps the file, uses the embedded code for this machine when its target key
and hash match, and otherwise compiles the graph here (through the compile cache).
See runtime/model_file.py for the layout and docs/ubq-format.md for the specification.
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

import ubique
from ubique import report
from ubique.errors import ModelError, UbiqueError
from ubique.ir.graph import Graph
from ubique.ir.serialize import dumps, loads

FORMAT = "ubique.model"


def _content_name(a: np.ndarray) -> str:
    a = np.require(a, requirements="C")
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.reshape(-1).view(np.uint8))
    return "t" + h.hexdigest()[:24]


def save(graph: Graph, path, targets=(), dims: dict | None = None) -> Path:
    """Writes `graph` to a .ubq file, with precompiled code for each target in `targets`
    (names or Targets; none: a portable file that is compiled where it is loaded)."""
    from ubique.build import plugin_fingerprint
    from ubique.compiler.pipeline import compile_graph, optimize_graph
    from ubique.custom_ops import custom_op_names
    from ubique.runtime.model_file import write
    from ubique.runtime.toolchain import link_shared_for_target
    from ubique.targets.registry import get_target

    timings: dict[str, float] = {}
    portable = optimize_graph(graph, timings=timings)
    report.record("passes", graph.name, "portable", "", "ub.save: target-independent passes of the graph the file "
                  "keeps", timings=timings)
    for new, old in zip(portable.outputs, graph.outputs):  # output copies keep the user's names
        new.name = old.name or new.name
    weights: dict[str, np.ndarray] = {}
    by_id: dict[int, tuple[str, np.ndarray]] = {}  # (keeps the array: its id is not reused)

    def store(a: np.ndarray) -> str:
        known = by_id.get(id(a))
        if known is None:
            known = by_id[id(a)] = (_content_name(a), a)
            weights.setdefault(known[0], a)
        return known[0]

    graph_json = dumps(portable, store=store)
    code, entries = [], []
    for spec in targets:
        target = get_target(spec)
        t0 = time.perf_counter()
        program = compile_graph(portable, target, dims=dims)
        t_link = time.perf_counter()
        if target.device == "cpu":
            with tempfile.TemporaryDirectory(prefix="ubique-save-") as tmp:
                obj = Path(tmp) / "module.o"
                obj.write_bytes(program.obj)
                library = link_shared_for_target([obj], Path(tmp) / "module.so", target).read_bytes()
        else:  # the device's own form of the code (PTX text and its launch table for "cuda")
            library = _device(target).code_blob(program)
        report.record("compiled", graph.name, target.name, target.key, f"ub.save: code for target {target.name} "
                      "embedded in the file (always compiled)", program=program, seconds=time.perf_counter() - t0,
                      link=time.perf_counter() - t_link)
        code.append((target.key, library))
        entries.append({"target": target.name, "key": target.key, "triple": target.triple, "cpu": target.cpu,
                        "features": target.features, "device": target.device, "language": program.code.language,
                        "plugins": plugin_fingerprint(portable, target),
                        "entry": program.entry,
                        "signature": program.signature.to_json(),
                        "weights": [store(w) for w in program.weights],
                        "workspace_size": program.memory.workspace_size, "contract": program.contract.to_json(),
                        "dynamic_memory": program.dynamic_memory.to_json() if program.dynamic_memory else None,
                        "sha256": hashlib.sha256(library).hexdigest()})
    manifest = {"format": FORMAT, "version": 1, "producer": f"ubique {ubique.__version__}",
                "name": graph.name,
                "inputs": [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype.short} for v in portable.inputs],
                "outputs": [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype.short}
                            for v in portable.outputs],
                "custom_ops": custom_op_names(portable),
                "code": entries}
    return write(path, graph_json, weights, manifest, code)


def open_model(path):
    """(ModelFile, graph) of a .ubq file; the graph's constants are views of the mapping."""
    from ubique.ir.registry import all_ops
    from ubique.runtime.model_file import ModelFile

    mf = ModelFile(path)
    if mf.manifest.get("format") != FORMAT:
        raise ModelError(f"{path}: manifest format {mf.manifest.get('format')!r}, expected {FORMAT!r}")

    def load(name):
        try:
            return mf.tensors[name]
        except KeyError:
            raise ModelError(f"{path}: the graph refers to tensor {name!r}, which the weights section lacks") from None

    text = mf.graph_json()  # a missing or corrupt graph section: its own ModelError
    missing = [n for n in mf.manifest.get("custom_ops", []) if n not in all_ops()]
    if missing:
        raise ModelError(f"{path}: the model uses custom op(s) {', '.join(missing)}, not registered in this "
                         "process. Custom ops are stored by name: import the module that defines them "
                         "(ub.op.define) before loading the file")
    try:
        graph = loads(text, load=load)
    except UbiqueError as e:
        raise ModelError(f"{path}: the graph section is invalid: {e}") from None
    return mf, graph


def load(path, target=None, dims: dict | None = None):
    """A Model from a .ubq file: its embedded code for this machine when present and intact,
    else the graph compiled here. The weights are used in place (memory-mapped).
    A model library built by `ubique build` for this host (an ELF file) runs through the C API."""
    from ubique.model import Model, compile
    from ubique.runtime.aot import is_elf, load_library
    from ubique.targets.registry import get_target

    if is_elf(path):  # a model library built by `ubique build`: run through its C API
        return load_library(path, target, dims)
    from ubique.build import plugin_fingerprint

    mf, graph = open_model(path)
    t = get_target(target)
    entry = next((e for e in mf.code_entries() if e.get("key") == t.key), None)
    if entry is not None and entry.get("plugins", plugin_fingerprint(graph, t)) != plugin_fingerprint(graph, t):
        why = (f"{path}: the embedded code for {t.name} was compiled with other plug-ins (backend, custom passes "
               "or custom ops differ from this process's): compiled here")
        report.record("embedded_rejected", graph.name, t.name, t.key, why)
        with report.context(why):
            return compile(graph, t, dims=dims)
    if entry is not None and not dims and t.device != "cpu":  # e.g. embedded PTX, run by the CUDA driver
        blob = _verified_code(mf, entry)
        try:
            runnable = _device(t).load_blob(blob, entry, [mf.tensors[n] for n in entry["weights"]], name=graph.name)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{mf.path}: the code entry for {entry.get('target')!r} is malformed: "
                             f"{type(e).__name__}: {e}") from None
        report.record("embedded", graph.name, t.name, t.key, f"{path}: sha256 {entry['sha256'][:12]} verified")
        return Model(graph, runnable, t.name, runnable.signature, runnable.contract)
    if entry is None or dims or not t.runs_natively:
        with report.context(_why_not_embedded(path, mf, graph, t, entry, dims)):
            return compile(graph, t, dims=dims)
    try:
        ex = _executable(mf, entry)
    except ModelError as e:
        report.record("embedded_rejected", graph.name, t.name, t.key, str(e))
        raise
    report.record("embedded", graph.name, t.name, t.key, f"{path}: sha256 {entry['sha256'][:12]} verified")
    return Model(graph, ex, t.name, ex.signature, ex.contract)


def _why_not_embedded(path, mf, graph: Graph, t, entry, dims) -> str:
    """Why `load` compiles the graph instead of using the file's code (recorded as a rejection
    when the file has code)."""
    entries = mf.code_entries()
    if not entries:
        return f"{path}: portable file (no embedded code)"
    if entry is not None and dims:
        why = f"{path}: dims {dims} given: the embedded code for {t.name} was built without them"
    elif entry is not None:
        why = f"{path}: target {t.name} does not run on this machine: compiled for its emulator, not its embedded code"
    else:
        same = [e for e in entries if e.get("target") == t.name]
        why = (f"{path}: embedded code for target {t.name} is for another target key ({same[0].get('key')}; this "
               f"machine: {t.key})" if same else
               f"{path}: embedded code is for {', '.join(str(e.get('target')) for e in entries)}, not for "
               f"{t.name} (key {t.key})")
    report.record("embedded_rejected", graph.name, t.name, t.key, why)
    return why


def _device(target):
    """The runtime device of a target whose code is not a CPU library; it must be able to
    embed its code (`code_blob`) and load it back (`load_blob`)."""
    from ubique.errors import UnsupportedOpError
    from ubique.runtime.devices import get_device

    device = get_device(target.device, target)
    if not (hasattr(device, "code_blob") and hasattr(device, "load_blob")):
        raise UnsupportedOpError(f"device {target.device!r} of target {target.name!r} cannot embed its code in "
                                 "a .ubq file (it has no code_blob/load_blob)")
    return device


def _verified_code(mf, entry: dict) -> bytes:
    blob = mf.code(entry["key"])  # verified against its sha256 before it is ever loaded
    if blob is None:
        raise ModelError(f"{mf.path}: the manifest lists code for {entry.get('target')!r} but the file has none")
    if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
        raise ModelError(f"{mf.path}: the code section for {entry.get('target')!r} does not match the sha256 "
                         "its manifest entry records (the file is corrupt)")
    return blob


def _executable(mf, entry: dict):
    from ubique.compiler.pipeline import Signature
    from ubique.runtime.contract import DimContract
    from ubique.runtime.executable import Executable
    from ubique.runtime.memory import DynamicMemory

    blob = _verified_code(mf, entry)
    try:
        weights = [mf.tensors[n] for n in entry["weights"]]
        with tempfile.TemporaryDirectory(prefix="ubique-load-") as tmp:
            lib = Path(tmp) / "module.so"
            lib.write_bytes(blob)
            dynamic = entry.get("dynamic_memory")
            return Executable(lib, entry["entry"], Signature.from_json(entry["signature"]), weights,
                              entry["workspace_size"], DimContract.from_json(entry["contract"]),
                              DynamicMemory.from_json(dynamic) if dynamic else None)
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise ModelError(f"{mf.path}: the code entry for {entry.get('target')!r} is malformed: "
                         f"{type(e).__name__}: {e}") from None
