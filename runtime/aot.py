"""Ahead-of-time builds: a model as ONE self-contained shared library for the C API.

`build_library("model.ubq", "libmodel.so", target="aarch64")` (the CLI: `ubique build`)
compiles the model's graph for the target and links, with the target's C compiler:

  * the program's object code (its entry follows the kernel ABI of ubique_runtime.h);
  * the native runtime: native/ubique_runtime.c (thread pool, ubq_call, ubq_plan_memory) and
    native/ubique_model.c (the C API of native/ubique.h on top of a descriptor);
  * the weights, embedded: one blob (every tensor 64-byte aligned) pulled into the library's
    read-only data by an assembler `.incbin`, so a 100 MB model links in about a second;
  * a generated C descriptor (native/ubique_model_desc.h): names, dtypes and shapes of the
    inputs and outputs with their symbolic sizes, the symbols' ranges, the weights' offsets
    in the blob, the entry, the workspace size and, for intermediates of symbolic size, a
    function computing their byte sizes from the dims array plus their lifetimes, so the C
    runtime plans the workspace per call with ubq_plan_memory.

The library exports one symbol, `ubq_model_library` (a `ubq_model_api`, see ubique.h); the
runtime inside is linked with hidden visibility and -Bsymbolic, so several model libraries
(and the Python runtime) live in one process without binding to each other's copies.

`load_library(path)` (and `ub.load("libmodel.so")`) runs such a library for this host from
Python through the very same C API, via cffi.
"""
from __future__ import annotations

import ast
import os
import re
import tempfile
import threading
import weakref
from pathlib import Path

import numpy as np

from ubique.errors import DTypeError, ModelError, RuntimeFailure, ShapeError
from ubique.ir import dims as D
from ubique.model import Model, TensorSpec

NATIVE_DIR = Path(__file__).resolve().parent / "native"
_SOURCES = ("ubique_runtime.c", "ubique_model.c")
_CFLAGS = ("-std=c99", "-pthread", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter")
_LDFLAGS = ("-Wl,-Bsymbolic", "-Wl,-z,noexecstack", "-Wl,--no-undefined")
ALIGN = 64

# ubq_dtype of ubique.h, by ubique's short dtype name
DTYPE_CODES = {"f32": 1, "f64": 2, "f16": 3, "bf16": 4, "i8": 5, "u8": 6, "i32": 7, "i64": 8, "bool": 9}
DTYPE_NAMES = {v: k for k, v in DTYPE_CODES.items()}
MAGIC = 0x4C45444F4D515542  # b"UBQMODEL" little-endian
API_VERSION = 1
# status codes of ubique.h
ERR_NOT_FOUND, ERR_NOT_A_MODEL, ERR_VERSION, ERR_COUNT, ERR_DTYPE, ERR_SHAPE = 4, 5, 6, 7, 8, 9

__all__ = ["build_library", "load_library", "include_dir", "c_dim_expr", "LibraryModel"]


def include_dir() -> Path:
    """The folder holding ubique.h (what `ubique config --include` prints)."""
    return NATIVE_DIR


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------
def build_library(model, out, target=None, *, dims: dict | None = None, keep_sources: Path | None = None) -> Path:
    """Builds `model` (a .ubq file, an .onnx file or a Graph) into the shared library `out` for
    `target` (a name or Target; default: this host). `dims` specialises or bounds symbolic
    sizes as in ub.compile. `keep_sources`: a folder to keep the generated files in.

    Raises:
        ModelError: the model file is invalid.
        ToolchainError: the target's C compiler is missing or fails.
        ShapeError, UnsupportedOpError: the graph cannot be compiled as asked.
    """
    import ubique
    from ubique.compiler.pipeline import compile_graph
    from ubique.ir.graph import Graph
    from ubique.runtime.toolchain import compile_c_shared, find_target_cc
    from ubique.targets.registry import get_target

    t = get_target(target)
    if t.device != "cpu":
        from ubique.errors import UnsupportedOpError

        raise UnsupportedOpError(f"ubique build makes C-API libraries for CPU targets; target {t.name!r} runs on "
                                 f"device {t.device!r}. Use ub.compile / ub.load for it, or `ubique compile "
                                 f"--target {t.name}` to embed its code in a .ubq file")
    graph = model if isinstance(model, Graph) else _read_graph(model)
    cc = find_target_cc(t)  # a missing cross compiler is reported before compiling
    program = compile_graph(graph, t, dims=dims)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="ubique-aot-") as tmp:
        folder = Path(keep_sources) if keep_sources else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        obj = folder / "model.o"
        obj.write_bytes(program.obj)
        blob = folder / "weights.bin"
        offsets = _write_weights(program.weights, blob)
        asm = folder / "weights.s"
        asm.write_text(_weights_asm(blob.resolve()))
        names = [v.name or f"output{k}" for k, v in enumerate(graph.outputs)]
        desc = folder / "descriptor.c"
        desc.write_text(descriptor_source(program, names, offsets, f"ubique {ubique.__version__}",
                                          graph.name or "model"))
        sources = [NATIVE_DIR / s for s in _SOURCES] + [desc, asm, obj]
        compile_c_shared(sources, out, (*_CFLAGS, "-I", str(NATIVE_DIR), *_LDFLAGS), libs=t.link_libs, cc=cc)
    return out


def _read_graph(path):
    from ubique.runtime.model_file import MAGIC as UBQ_MAGIC

    try:
        with open(path, "rb") as f:
            head = f.read(len(UBQ_MAGIC))
    except OSError as e:
        raise ModelError(f"cannot read model {path}: {e.strerror or e}") from None
    if head == UBQ_MAGIC:
        from ubique.ubq import open_model

        return open_model(path)[1]
    if str(path).endswith(".onnx"):
        import ubique as ub

        return ub.import_onnx(path)
    raise ModelError(f"{path}: not a .ubq model file (magic {head!r}) nor an .onnx file; "
                     "make one with `ubique compile model.onnx -o model.ubq`")


def _write_weights(weights, path: Path) -> list[int]:
    """Writes the weights one after another, each at a 64-byte aligned offset; returns them."""
    offsets, pos = [], 0
    with open(path, "wb") as f:
        for w in weights:
            a = np.ascontiguousarray(w)
            pad = -pos % ALIGN
            f.write(b"\0" * pad)
            pos += pad
            offsets.append(pos)
            f.write(memoryview(a.reshape(-1).view(np.uint8)))
            pos += a.nbytes
        f.write(b"\0" * (-pos % ALIGN))
    return offsets


def _weights_asm(blob: Path) -> str:
    """GNU assembler (x86-64 and AArch64 alike) embedding `blob` as ubq_weights_blob."""
    quoted = str(blob).replace("\\", "\\\\").replace('"', '\\"')
    return (
        '\t.section .rodata.ubq_weights,"a"\n'
        "\t.balign 64\n"
        "\t.globl ubq_weights_blob\n"
        "\t.hidden ubq_weights_blob\n"
        "\t.type ubq_weights_blob, %object\n"
        "ubq_weights_blob:\n"
        f'\t.incbin "{quoted}"\n'
        "\t.byte 0\n"  # never an empty object, even without weights
        "\t.size ubq_weights_blob, . - ubq_weights_blob\n"
        '\t.section .note.GNU-stack,"",%progbits\n'
    )


def c_string(text: str) -> str:
    """A C string literal for `text` (UTF-8; every byte outside printable ASCII, quotes,
    backslashes and '?' (trigraphs) escaped in octal)."""
    out = []
    for b in text.encode("utf-8"):
        c = chr(b)
        out.append(c if 32 <= b < 127 and c not in '"\\?' else f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _c_int(v: int) -> str:
    if not -(2 ** 63) <= v < 2 ** 63:
        raise ShapeError(f"size constant {v} does not fit in int64")
    if v == -(2 ** 63):
        return "(-INT64_C(9223372036854775807) - 1)"
    return f"INT64_C({v})"


def c_dim_expr(d, symbols: list[str]) -> str:
    """A dimension (int or dims string of ir/dims.py) as a C int64 expression over `d[i]`
    (the dims array, symbols in the order of `symbols`). Arithmetic is checked: the
    helpers of ubique_model_desc.h set `err` on overflow or division by zero, and `//` is
    Python's floor division (toward negative infinity), not C's truncation."""
    if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
        return _c_int(int(d))
    index = {s: k for k, s in enumerate(symbols)}
    text = str(d)

    def emit(node) -> str:
        if isinstance(node, ast.Name):
            if node.id not in index:
                raise ShapeError(f"size {text!r} uses {node.id!r}, which is not a symbolic size of the compiled "
                                 f"model ({', '.join(symbols) or 'none'})")
            return f"d[{index[node.id]}]"
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return _c_int(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return f"ubq_dim_sub(INT64_C(0), {emit(node.operand)}, &err)"
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
            return emit(node.operand)
        if isinstance(node, ast.BinOp):
            fn = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.FloorDiv: "floordiv"}.get(type(node.op))
            if fn is not None:
                return f"ubq_dim_{fn}({emit(node.left)}, {emit(node.right)}, &err)"
        raise ShapeError(f"size {text!r}: only names, integers, +, -, * and // can be compiled to C")

    try:
        tree = D._ast(text)
    except SyntaxError:
        raise ShapeError(f"invalid size {text!r}") from None
    return emit(tree)


def _array(ctype: str, name: str, values, fmt=str) -> tuple[str, str]:
    """(definition, reference) of a static const C array; NULL for no values."""
    values = list(values)
    if not values:
        return "", "NULL"
    body = ", ".join(fmt(v) for v in values)
    return f"static const {ctype} {name}[] = {{{body}}};\n", name


def descriptor_source(program, output_names: list[str], weight_offsets: list[int], producer: str,
                      name: str) -> str:
    """The C file defining `ubq_model_descriptor` (ubique_model_desc.h) for a Program."""
    contract = program.contract
    symbols = list(contract.symbols)
    sig = program.signature
    lines = ["/* Generated by `ubique build`: the descriptor of one model library. Do not edit. */",
             "#include <stddef.h>", "#include <stdint.h>", '#include "ubique_model_desc.h"', "",
             f"const char ubq_model_name_text[] = {c_string(name)};",
             f"const char ubq_model_producer_text[] = {c_string(producer)};",
             f"const char ubq_model_triple_text[] = {c_string(program.target.triple)};",
             f"extern int32_t {program.entry}(void *const *args, const int64_t *dims, ubq_ctx *ctx);",
             "extern const unsigned char ubq_weights_blob[];", ""]

    tensors = {"inputs": [(n, t) for n, t in sig.inputs],
               "outputs": [(output_names[k] if k < len(output_names) else f"output{k}", t)
                           for k, t in enumerate(sig.outputs)]}
    shape_exprs: list[str] = []
    entries: dict[str, list[str]] = {}
    for kind, items in tensors.items():
        entries[kind] = []
        for k, (tname, t) in enumerate(items):
            tag = f"{kind[:-1]}{k}"
            shape = list(t.shape)
            d1, shp = _array("int64_t", f"{tag}_shape", [d if isinstance(d, int) else -1 for d in shape], _c_int)
            d2, dms = _array("char *const", f"{tag}_dims",
                             [c_string(str(d)) if not isinstance(d, int) else "NULL" for d in shape])
            d3, bnd = _array("int32_t", f"{tag}_bind",
                             [symbols.index(d) if isinstance(d, str) and d in symbols else -1 for d in shape])
            lines.append(d1 + d2 + d3)
            entries[kind].append(f"{{{c_string(tname)}, {DTYPE_CODES[t.dtype.short]}, {len(shape)}, {shp}, "
                                 f"{dms}, {bnd}}}")
            shape_exprs += [c_dim_expr(d, symbols) for d in shape]
    for kind, items in entries.items():
        if items:
            lines.append(f"static const ubq_desc_tensor {kind}[] = {{\n    " + ",\n    ".join(items) + "\n};")
    lines.append("")

    d_sym, sym_ref = _array("char *const", "symbols", [c_string(s) for s in symbols])
    lo = [contract.ranges[s][0] for s in symbols]
    hi = [-1 if contract.ranges[s][1] is None else contract.ranges[s][1] for s in symbols]
    d_lo, lo_ref = _array("int64_t", "symbol_min", lo, _c_int)
    d_hi, hi_ref = _array("int64_t", "symbol_max", hi, _c_int)
    lines.append(d_sym + d_lo + d_hi)

    lines += _function("eval_shapes", shape_exprs)
    d_w, w_ref = _array("int64_t", "weight_offsets", weight_offsets, _c_int)
    lines.append(d_w)

    dyn = program.dynamic_memory
    slot_ref = first_ref = last_ref = "NULL"
    num_slots = 0
    if dyn is not None and dyn.slots:
        first, last = dyn.lifetimes()
        num_slots = len(dyn.slots)
        d_f, first_ref = _array("int32_t", "slot_first", first.tolist())
        d_l, last_ref = _array("int32_t", "slot_last", last.tolist())
        lines.append(d_f + d_l)
        lines += _function("slot_sizes", [c_dim_expr(dyn.sizes[v], symbols) for v in dyn.slots])
        slot_ref = "slot_sizes"

    n_axes = sum(len(t.shape) for _, t in sig.inputs) + sum(len(t.shape) for t in sig.outputs)
    lines.append(f"""const ubq_model_desc ubq_model_descriptor = {{
    ubq_model_name_text, ubq_model_producer_text, ubq_model_triple_text,
    {len(sig.inputs)}, {len(sig.outputs)}, {'inputs' if sig.inputs else 'NULL'}, {'outputs' if sig.outputs else 'NULL'},
    {n_axes},
    {len(symbols)}, {sym_ref}, {lo_ref}, {hi_ref},
    eval_shapes,
    {len(weight_offsets)}, ubq_weights_blob, {w_ref},
    {program.entry},
    {_c_int(program.memory.workspace_size)},
    {num_slots}, {first_ref}, {last_ref}, {slot_ref}
}};
""")
    return "\n".join(lines)


def _function(name: str, exprs: list[str]) -> list[str]:
    """`static int32_t name(const int64_t *d, int64_t *s)` setting s[k] = exprs[k]."""
    body = [f"static int32_t {name}(const int64_t *d, int64_t *s) {{", "    int err = 0;",
            "    (void)d; (void)s;"]
    body += [f"    s[{k}] = {e};" for k, e in enumerate(exprs)]
    body += ["    return err;", "}", ""]
    return body


# ---------------------------------------------------------------------------------------------
# loading from Python (the same C API, through cffi)
# ---------------------------------------------------------------------------------------------
# The structs Python needs, taken from the C API header itself so the two cannot drift apart.
_CDEF_STRUCTS = ("ubq_tensor", "ubq_tensor_info", "ubq_symbol_info", "ubq_model_api")


def _cdef() -> str:
    header = (Path(__file__).parent / "native" / "ubique.h").read_text()
    parts = []
    for name in _CDEF_STRUCTS:
        m = re.search(rf"typedef struct {name} \{{.*?\}} {name};", header, re.S)
        if m is None:
            raise AssertionError(f"ubique.h has no typedef struct {name}")
        parts.append(re.sub(r"/\*.*?\*/", "", m.group(0), flags=re.S))
    # const in C; not const here, so cffi maps it as a global
    return "\n".join(parts) + "\nextern ubq_model_api ubq_model_library;\n"


_ffi = None
_ffi_lock = threading.Lock()

_ELF_MACHINES = {62: "x86_64", 183: "aarch64", 243: "riscv64", 3: "i386", 40: "arm"}


def _get_ffi():
    global _ffi
    with _ffi_lock:
        if _ffi is None:
            import cffi

            ffi = cffi.FFI()
            ffi.cdef(_cdef())
            _ffi = ffi
    return _ffi


def is_elf(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _elf_machine(path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20:
        return None
    code = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return _ELF_MACHINES.get(code, f"ELF machine {code}")


def _check_segments(path: Path) -> None:
    """Refuses what dlopen cannot load safely: not a shared library (ELF64, little-endian), or
    a loadable segment past the end of the file (a truncated copy: dlopen would map it and the
    process would die of SIGBUS on first touch). The same check as ubq_model_load's."""
    import struct

    data = path.read_bytes()[:1 << 16]
    size = path.stat().st_size
    if len(data) < 64 or data[4] != 2 or data[5] != 1:
        raise ModelError(f"{path} is truncated or not a 64-bit little-endian ELF library")
    e_type, = struct.unpack_from("<H", data, 16)
    if e_type != 3:
        raise ModelError(f"{path} is an ELF file but not a shared library; build a model library with `ubique build`")
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    if phentsize < 56 or phoff + phnum * phentsize > min(size, len(data)):
        raise ModelError(f"{path} is truncated or corrupt (its program headers lie outside the file): "
                         "build it again with `ubique build`")
    for k in range(phnum):
        p_type, _, offset, _, _, filesz = struct.unpack_from("<IIQQQQ", data, phoff + k * phentsize)
        if p_type == 1 and offset + filesz > size:
            raise ModelError(f"{path} is truncated or corrupt (a segment of {filesz} bytes at offset {offset} lies "
                             f"past the end of the {size}-byte file): build it again with `ubique build`")


class LibraryExecutable:
    """A model library loaded through its C API (the calls of ubique.h, made via cffi)."""

    def __init__(self, path, num_threads: int = 0):
        from ubique.targets.target import host_arch

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"cannot open model library {self.path}: no such file")
        if not is_elf(self.path):
            raise ModelError(f"{self.path} is not a model library (not an ELF shared library); build one with "
                             "`ubique build MODEL.ubq --target TARGET -o libmodel.so`")
        machine = _elf_machine(self.path)
        if machine is None:
            raise ModelError(f"{self.path} is truncated ({self.path.stat().st_size} bytes)")
        if machine != host_arch():
            raise ModelError(f"{self.path} is built for {machine}; this host runs {host_arch()}: run it there "
                             "through the C API (ubique.h), or build it for this host with `ubique build`")
        _check_segments(self.path)  # dlopen of a truncated library dies of SIGBUS
        ffi = self._ffi = _get_ffi()
        try:
            self._lib = ffi.dlopen(os.fspath(self.path.resolve()), ffi.RTLD_NOW | ffi.RTLD_LOCAL)
        except OSError as e:
            raise ModelError(f"cannot load {self.path} as a shared library: {e}") from None
        try:
            api = ffi.addressof(self._lib, "ubq_model_library")
        except (AttributeError, KeyError, NotImplementedError):
            raise ModelError(f"{self.path} is a shared library but not a ubique model library (it exports no "
                             "ubq_model_library); build one with `ubique build`") from None
        if api.magic != MAGIC:
            raise ModelError(f"{self.path} exports ubq_model_library but it is not a ubique model descriptor")
        if api.api_version != API_VERSION:
            raise ModelError(f"{self.path} implements ubique model API version {api.api_version}; this ubique "
                             f"implements version {API_VERSION}: rebuild it with `ubique build`")
        self._api = api
        impl = ffi.new("void **")
        self._check(api.create(impl, int(num_threads)), "loading the model")
        self._impl = impl[0]
        # destroy the model object while the library is still mapped (the finalizer holds it)
        weakref.finalize(self, _destroy, api, self._impl, self._lib)
        self.name = ffi.string(api.name).decode("utf-8", "replace")
        self.triple = ffi.string(api.triple).decode("utf-8", "replace")
        self.inputs = [self._info(api.input_info, k) for k in range(api.num_inputs(self._impl))]
        self.outputs = [self._info(api.output_info, k) for k in range(api.num_outputs(self._impl))]
        self.symbols = []
        for k in range(api.num_symbols(self._impl)):
            si = ffi.new("ubq_symbol_info *")
            self._check(api.symbol_info(self._impl, k, si), "reading the symbols")
            self.symbols.append((ffi.string(si.name).decode(), int(si.min), None if si.max < 0 else int(si.max)))
        self._np_dtypes = [_np_dtype(dt) for _, _, dt in self.inputs]

    def _info(self, fn, k):
        ffi = self._ffi
        info = ffi.new("ubq_tensor_info *")
        self._check(fn(self._impl, k, info), "reading the signature")
        shape = []
        for a in range(info.rank):
            if info.dims[a] != ffi.NULL:
                shape.append(ffi.string(info.dims[a]).decode())
            else:
                shape.append(int(info.shape[a]))
        return ffi.string(info.name).decode("utf-8", "replace"), tuple(shape), DTYPE_NAMES.get(info.dtype, "?")

    def _check(self, status: int, what: str) -> None:
        if status == 0:
            return
        message = self._ffi.string(self._api.last_error()).decode("utf-8", "replace") or "no message"
        cls = {ERR_COUNT: ShapeError, ERR_SHAPE: ShapeError, ERR_DTYPE: DTypeError}.get(status, RuntimeFailure)
        raise cls(f"{self.path.name}: {message}" if cls is RuntimeFailure else message)

    @property
    def num_threads(self) -> int:
        return int(self._api.num_threads(self._impl))

    def set_num_threads(self, n: int) -> None:
        self._check(self._api.set_num_threads(self._impl, int(n)), "setting the thread count")

    def run(self, *arrays) -> list[np.ndarray]:
        ffi = self._ffi
        if len(arrays) != len(self.inputs):
            names = ", ".join(n for n, _, _ in self.inputs)
            raise ShapeError(f"expected {len(self.inputs)} input(s) ({names}), got {len(arrays)}")
        keep, ins = [], ffi.new("ubq_tensor[]", max(1, len(arrays)))
        for k, (a, (name, _, dt), want) in enumerate(zip(arrays, self.inputs, self._np_dtypes)):
            a = np.asarray(a)
            if want is not None and a.dtype != want and not a.dtype.isnative and a.dtype.newbyteorder("=") == want:
                a = a.astype(want)
            if want is None or a.dtype != want:
                raise DTypeError(f"input {name!r}: expected dtype {want or dt}, got {a.dtype}")
            a = np.ascontiguousarray(a)
            shape = ffi.new("int64_t[]", list(a.shape) or [0])
            keep += [a, shape]
            ins[k].data = ffi.cast("void *", a.ctypes.data) if a.size else ffi.NULL
            ins[k].dtype = DTYPE_CODES[dt]
            ins[k].rank = a.ndim
            ins[k].shape = shape
        outs = ffi.new("ubq_tensor[]", max(1, len(self.outputs)))
        results = []
        for k, (_, shape, dt) in enumerate(self.outputs):
            buf = ffi.new("int64_t[]", max(1, len(shape)))
            self._check(self._api.output_shape(self._impl, ins, len(arrays), k, buf), "sizing the outputs")
            y = np.empty(tuple(buf[a] for a in range(len(shape))), _np_dtype(dt))
            keep.append(buf)
            results.append(y)
            outs[k].data = ffi.cast("void *", y.ctypes.data) if y.size else ffi.NULL
            outs[k].dtype = DTYPE_CODES[dt]
            outs[k].rank = len(shape)
            outs[k].shape = buf
        self._check(self._api.run(self._impl, ins, len(arrays), outs, len(self.outputs)), "running")
        return results


def _destroy(api, impl, lib) -> None:
    api.destroy(impl)
    del lib  # the last reference: cffi unloads the library after the model object is gone


def _np_dtype(short: str):
    from ubique.ir.dtypes import dtype_of

    try:
        return dtype_of(short).to_numpy()
    except (DTypeError, KeyError, ValueError):
        return None


def load_library(path, target=None, dims: dict | None = None, num_threads: int = 0):
    """A Model running the library `path` (built by `ubique build` for this host) through the C
    API. The library's sizes and target were fixed when it was built, so `dims` must be empty
    and `target` this host's."""
    from ubique.targets.registry import get_target

    if dims:
        raise ShapeError(f"{path} is a built model library: its sizes were fixed by `ubique build`; "
                         "load the .ubq file to compile with dims=")
    if target is not None:
        t = get_target(target)
        if not t.runs_natively:
            raise ModelError(f"{path}: a built library runs only on the machine it was built for, not through "
                             f"target {t.name!r} here")
    return LibraryModel(LibraryExecutable(path, num_threads))


class LibraryModel(Model):
    """ub.load("libmodel.so"): the Model interface over a model library's C API."""

    def __init__(self, ex: LibraryExecutable):  # no graph: the library holds compiled code only
        from ubique.runtime.contract import DimContract

        self.graph = None
        self.target = ex.triple
        self._ex = ex
        self._contract = DimContract([s for s, _, _ in ex.symbols], {s: (lo, hi) for s, lo, hi in ex.symbols})
        self.inputs = [TensorSpec(n, s, d) for n, s, d in ex.inputs]
        self.outputs = [TensorSpec(n, s, d) for n, s, d in ex.outputs]
        self.path = ex.path

    def set_num_threads(self, n: int) -> None:
        """Resizes this model's own thread pool (n <= 0: all CPUs)."""
        self._ex.set_num_threads(n)

    @property
    def num_threads(self) -> int:
        return self._ex.num_threads

