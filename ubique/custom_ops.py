"""`ub.op`: operators defined outside ubique, compiled for every target like built-in ones.

    import ubique as ub
    from ubique import op

    @op.define("my_swish", attrs={"beta": 1.0}, onnx="com.example::MySwish")
    def my_swish(x, beta):                      # one output element, in the loop-IR
        return x * op.sigmoid(x * beta)         # expression language (ubique.ir.loop)

    y = my_swish(t, beta=2.0)                   # in @ub.jit functions, or on numpy arrays

The decorated function is the op's *compute*: for an elementwise op (the default kind) it
receives the input elements (loop-IR expressions, numpy broadcasting applied, float16 and
bfloat16 widened to float32) and the attributes as keyword arguments, and returns the
output element. Other kinds (`kind="injective"` or `"reduce"`) receive `(ctx, index)` like
the built-in ops of ir/ops_*.py (`ctx.input(i, index)`, `ubique.ir.loop.Reduce`). `infer`
gives the type/shape rule (default for elementwise: the broadcast shape and the first
input's dtype, or `dtype=`).

Every target compiles that one definition. A target may also get a hand-written kernel
(C source or LLVM IR for CPU targets, PTX text for the cuda targets) that replaces the
generated one there::

    @my_swish.kernel(target="x86_64", language="c")
    def _(spec):                                # spec: KernelSpec (name, types, attrs)
        n = spec.output.size
        return f'''int32_t {spec.name}(void *const *args, const int64_t *dims, ubq_ctx *ctx) {{
            const float *x = args[0]; float *y = args[1];
            for (int64_t i = 0; i < {n}; i++) y[i] = x[i] / (1.0f + expf(-{spec.attrs["beta"]}f * x[i]));
            return 0; }}'''

Hand kernels follow the kernel ABI (runtime/native/ubique_runtime.h): args are the inputs,
then the output; they are used for static shapes (the generated kernel otherwise) and
checked against the ABI signature before use. A PTX kernel is a whole PTX module whose
`.entry {name}` takes one `.param .u64` device pointer per input and one for the output,
launched with `grid` blocks of `block` threads (`.kernel(..., block=, grid=)`: ints or
functions of the KernelSpec; default 256 threads, one per output element). In ONNX models the op is found by its
`onnx` domain and type; in .ubq files it is stored by name, so the module defining it must
be imported before `ub.load`.
"""
from __future__ import annotations

import hashlib
import inspect
import operator
from dataclasses import dataclass
from typing import Callable

from ubique.errors import PluginError, UnsupportedOpError
from ubique.ir import loop as L
from ubique.ir.dtypes import DType, dtype_of
from ubique.ir.graph import TensorType
from ubique.ir.registry import Attr, OpDef, all_ops, broadcast_shapes, get_op, register
from ubique.targets import plugins
from ubique.targets.plugins import code_fingerprint, note_change

__all__ = ["define", "undefine", "get", "CustomOp", "KernelSpec", "lookup_onnx", "custom_op_names", "fingerprint",
           "exp", "log", "tanh", "sqrt", "erf", "sin", "cos", "abs", "sigmoid", "maximum", "minimum", "where",
           "less", "greater", "cast", "const"]

_ONNX: dict[tuple[str, str], str] = {}       # (domain, op_type) -> op name
_CUSTOM: dict[str, "CustomOp"] = {}


def _restore(state) -> None:
    ops, onnx = state
    for name in [n for n in _CUSTOM if n not in ops]:
        undefine(name)
    _ONNX.clear()
    _ONNX.update(onnx)


plugins.undoable(lambda: (dict(_CUSTOM), dict(_ONNX)), _restore)


# ---- the expression language, for computes -------------------------------------------------
def exp(x): return L.call("exp", x)
def log(x): return L.call("log", x)
def tanh(x): return L.call("tanh", x)
def sqrt(x): return L.call("sqrt", x)
def erf(x): return L.call("erf", x)
def sin(x): return L.call("sin", x)
def cos(x): return L.call("cos", x)
def abs(x): return L.call("abs", x)  # noqa: A001 -- mirrors numpy's name
def sigmoid(x): return 1.0 / (1.0 + L.call("exp", -x))
def maximum(a, b): return L.emax(a, b)
def minimum(a, b): return L.emin(a, b)
def where(cond, a, b): return L.select(cond, a, b)
def less(a, b): return L.compare("lt", a, b)
def greater(a, b): return L.compare("gt", a, b)
def cast(dtype, x): return L.cast(dtype_of(dtype), x)
def const(value, like: L.Expr): return L.Const(value, like.dtype)


@dataclass(frozen=True)
class KernelSpec:
    """What a hand-written kernel is generated for: the function `name` to define, the
    input and output types (static shapes), the node's attributes and the target."""
    name: str
    inputs: tuple[TensorType, ...]
    output: TensorType
    attrs: dict
    target: object


@dataclass
class _HandKernel:
    target: str            # a target name or architecture ("x86_64", "aarch64", "c", "cuda", ...)
    language: str          # "c", "llvm" or "ptx"
    make: Callable         # KernelSpec -> source text
    origin: str
    text: str | None = None  # the source given as text (`source=`), if it was
    block: object = None   # PTX: threads per block, an int or KernelSpec -> int
    grid: object = None    # PTX: blocks, an int or KernelSpec -> int (default: one thread per output element)

    def fingerprint(self) -> str:
        launch = "".join(f":{code_fingerprint(v) if callable(v) else v}" for v in (self.block, self.grid))
        return (f"{self.target}:{self.language}:{self.text if self.text is not None else code_fingerprint(self.make)}"
                + launch)

    def launch_shape(self, spec: "KernelSpec") -> tuple[int, int]:
        """(grid, block) of a PTX kernel for `spec` (see CustomOp.kernel)."""
        block = _launch_size(self.block(spec) if callable(self.block) else self.block, 256)
        if not isinstance(block, int) or not 0 < block <= 1024:
            raise PluginError(f"{self.origin}: block must be 1 to 1024 threads, not {block!r}")
        grid = _launch_size(self.grid(spec) if callable(self.grid) else self.grid, -(-max(spec.output.size, 1) // block))
        if not isinstance(grid, int) or not 0 < grid < 2 ** 31:
            raise PluginError(f"{self.origin}: grid must be 1 to 2**31-1 blocks, not {grid!r}")
        return grid, block


def _launch_size(value, default: int):
    """An int launch size (numpy integers too), `default` for None; anything else comes back as
    it is, for the range check to name."""
    if value is None:
        return default
    try:
        return operator.index(value)
    except TypeError:
        return value


class HandKernels:
    """The hand-written kernels of one op, by target (OpDef.kernels)."""

    def __init__(self, op: str):
        self.op = op
        self.kernels: list[_HandKernel] = []

    def for_node(self, node, target, languages) -> Callable | None:
        """fn(kernel name) -> ExternKernel for this node on `target`, or None (no hand kernel
        for it in a language its backend takes, or symbolic shapes)."""
        from ubique.codegen.backend import ExternKernel

        chosen = next((k for k in reversed(self.kernels)
                       if k.target in (target.name, target.arch) and k.language in languages), None)
        types = [v.type for v in node.inputs] + [node.output.type]
        if chosen is None or not all(t.is_static for t in types):
            return None

        def make(name: str) -> ExternKernel:
            spec = KernelSpec(name, tuple(types[:-1]), types[-1], dict(node.attrs), target)
            try:
                source = chosen.make(spec)
            except Exception as e:  # noqa: BLE001 -- the user's generator: say whose
                raise PluginError(f"{chosen.origin}: making the {chosen.language} kernel raised "
                                  f"{type(e).__name__}: {e}") from e
            if not isinstance(source, str):
                raise PluginError(f"{chosen.origin}: the kernel generator returned {type(source).__name__}, not "
                                  "source text")
            grid, block = chosen.launch_shape(spec) if chosen.language == "ptx" else (0, 0)
            return ExternKernel(name, chosen.language, source, chosen.origin, len(types), grid, block)
        return make

    def fingerprint(self) -> str:
        return ",".join(k.fingerprint() for k in self.kernels)


class CustomOp:
    """A defined op: call it on tensors (in traced functions) or numpy arrays."""

    def __init__(self, opdef: OpDef, fn: Callable, infer: Callable | None, origin: str):
        self.opdef = opdef
        self.name = opdef.name
        self.origin = origin
        self._sources = (fn, infer)
        self.__doc__ = opdef.doc

    def __call__(self, *args, **attrs):
        from ubique.ops import apply

        return apply(self.name, args, **attrs)

    def kernel(self, target: str, language: str = "c", source: str | None = None, *, block=None, grid=None):
        """Adds a hand-written kernel for `target` (a target name or architecture). Give
        `source` (text with `{name}` where the function name goes), or decorate a function
        `spec -> source text` (see KernelSpec).

        A PTX kernel (`language="ptx"`, GPU targets: "cuda", "cuda-sm90", ... or "nvptx64"
        for all) is launched with `grid` blocks of `block` threads: ints, or functions of the
        KernelSpec; by default 256 threads and one thread per output element."""
        if language not in ("c", "llvm", "ptx"):
            raise PluginError(f"op {self.name}: unknown kernel language {language!r} (use 'c', 'llvm' or 'ptx')")
        if language != "ptx" and (block is not None or grid is not None):
            raise PluginError(f"op {self.name}: block= and grid= are the launch shape of a 'ptx' kernel; a "
                              f"{language!r} kernel has none")

        caller = inspect.currentframe().f_back
        called_at = f"{caller.f_code.co_filename}:{caller.f_lineno}"

        def add(make):
            where = called_at if source is not None else _where(make)
            origin = f"hand-written {language} kernel of op {self.name!r} for {target} ({where})"
            self.opdef.kernels.kernels.append(_HandKernel(target, language, make, origin, source, block, grid))
            note_change()
            return make
        if source is not None:
            add(lambda spec, text=source: text.replace("{name}", spec.name))
            return self
        return add

    def fingerprint(self) -> str:
        parts = [self.name, repr(sorted(self.opdef.attrs.items())), self.opdef.kind,
                 *(code_fingerprint(f) for f in self._sources if f is not None), self.opdef.kernels.fingerprint()]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def __repr__(self):
        return f"<ubique custom op {self.name} ({self.origin})>"


def define(name: str, *, kind: str = "elementwise", infer: Callable | None = None, attrs: dict | None = None,
           num_inputs: int | tuple | None = None, dtype=None, onnx: "str | tuple[str, str] | None" = None,
           doc: str = "", replace: bool = False, dtypes=None):
    """Decorator: defines op `name` from its compute (see the module docstring).

    attrs       {name: default value or ubique.ir.registry.Attr}; an attribute without a
                default is given as Attr(type, required=True)
    infer       fn(input types, attrs) -> TensorType (or a list): the type/shape rule
    num_inputs  input count (default: the compute's positional parameters, elementwise)
    dtype       output dtype of an elementwise op (default: the first input's)
    onnx        "domain::OpType" (or a pair) under which ONNX models use it
    replace     redefine a custom op of this name (a notebook cell run again)
    dtypes      input dtypes the op takes (e.g. ("f32", "f64", "f16", "bf16")); others are a
                DTypeError naming them. Default: any dtype the compute handles

    Raises:
        PluginError: the name is taken, the kind is unknown or no type rule can be made.
    """
    def deco(fn: Callable) -> CustomOp:
        origin = f"custom op {name!r} ({_where(fn)})"
        if replace and name in _CUSTOM:
            undefine(name)
        if name in all_ops():
            raise PluginError(f"{origin}: an op named {name!r} is already registered ("
                              f"{'built-in' if name not in _CUSTOM else _CUSTOM[name].origin}); pick another name"
                              + (" (or define(..., replace=True))" if name in _CUSTOM else ""))
        if kind not in ("elementwise", "injective", "reduce"):
            raise PluginError(f"{origin}: kind must be 'elementwise', 'injective' or 'reduce', got {kind!r}")
        specs = {k: v if isinstance(v, Attr) else _attr_of(origin, k, v) for k, v in (attrs or {}).items()}
        if kind == "elementwise":
            params = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in specs]
            arity = num_inputs if num_inputs is not None else len(params)
            compute = _elementwise_compute(fn, origin)
            rule = infer or _elementwise_infer(name, dtype)
        else:
            if infer is None:
                raise PluginError(f"{origin}: a {kind} op needs infer= (its type/shape rule)")
            arity = num_inputs if num_inputs is not None else 1
            compute, rule = fn, infer
        if dtypes is not None:
            rule = _accepting(name, tuple(dtype_of(d) for d in dtypes), rule)
        opdef = OpDef(name, kind, _as_list(rule), attrs=specs, compute=compute, num_inputs=arity,
                      doc=doc or (fn.__doc__ or "").strip())
        opdef.kernels = HandKernels(name)
        register(opdef)
        op = CustomOp(opdef, fn, infer, origin)
        _CUSTOM[name] = op
        note_change()
        if onnx is not None:
            domain, op_type = onnx.split("::") if isinstance(onnx, str) else onnx
            _ONNX[(domain, op_type)] = name
        return op
    return deco


def _elementwise_compute(fn: Callable, origin: str) -> Callable:
    def compute(ctx, index):
        out = ctx.out_type.dtype
        work = DType.float32 if out in (DType.float16, DType.bfloat16) else out
        xs = []
        for i, t in enumerate(ctx.in_types):
            x = ctx.input_bcast(i, index)
            xs.append(L.cast(DType.float32, x) if t.dtype in (DType.float16, DType.bfloat16) else x)
        try:
            value = fn(*xs, **ctx.attrs)
        except Exception as e:  # noqa: BLE001 -- the user's compute: say whose
            raise PluginError(f"{origin}: its compute raised {type(e).__name__}: {e}") from e
        if not isinstance(value, L.Expr):
            value = L.as_expr(value, work)
        for n in L.walk(value):  # e.g. a Python float met an integer input
            if isinstance(n, (L.Binary, L.Compare)) and n.a.dtype is not n.b.dtype:
                from ubique.errors import DTypeError

                raise DTypeError(f"{origin}: for inputs of dtype {', '.join(t.dtype.short for t in ctx.in_types)} "
                                 f"its compute mixes {n.a.dtype.short} and {n.b.dtype.short} in `{n.op}`; cast "
                                 "(ub.op.cast) or declare the dtypes it takes: define(..., dtypes=(...))")
        return L.cast(out, value)
    return compute


def _accepting(name: str, dtypes: tuple, rule: Callable) -> Callable:
    def infer(types, attrs):
        bad = [t.dtype.short for t in types if t.dtype not in dtypes]
        if bad:
            from ubique.errors import DTypeError

            raise DTypeError(f"{name}: takes {', '.join(d.short for d in dtypes)} inputs, got {', '.join(bad)}")
        return rule(types, attrs)
    return infer


def _elementwise_infer(name: str, dtype) -> Callable:
    def infer(types, attrs):
        dtypes = {t.dtype for t in types}
        if dtype is None and len(dtypes) > 1:
            from ubique.errors import DTypeError

            raise DTypeError(f"{name}: inputs have dtypes {', '.join(sorted(d.short for d in dtypes))}; "
                             "cast them to one dtype first")
        return TensorType(broadcast_shapes(name, *(t.shape for t in types)),
                          dtype_of(dtype) if dtype is not None else types[0].dtype)
    return infer


def _as_list(rule: Callable) -> Callable:
    def infer(types, attrs):
        out = rule(types, attrs)
        return list(out) if isinstance(out, (list, tuple)) else [out]
    return infer


def _attr_of(origin: str, name: str, default) -> Attr:
    for t, kind in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if isinstance(default, t):
            return Attr(kind, default)
    if isinstance(default, (list, tuple)):
        return Attr("ints" if all(isinstance(v, int) for v in default) else "floats", tuple(default))
    raise PluginError(f"{origin}: cannot tell the type of attribute {name!r} from its default {default!r}; "
                      "give an ubique.ir.registry.Attr")


def _where(fn) -> str:
    try:
        return f"{inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]}"
    except (OSError, TypeError):
        return getattr(fn, "__module__", "?")


# ---- lookups for the frontends, the model file and the cache -------------------------------
def lookup_onnx(domain: str, op_type: str) -> str | None:
    """The op name an ONNX (domain, op_type) maps to, or None."""
    return _ONNX.get((domain, op_type))


def custom_op_names(graph) -> list[str]:
    """Custom ops the graph uses, sorted."""
    return sorted({n.op for n in graph.nodes if n.op in _CUSTOM})


def fingerprint(graph) -> str:
    """Of the definitions of the custom ops `graph` uses (part of the compiled-code cache key)."""
    return ",".join(_CUSTOM[name].fingerprint() for name in custom_op_names(graph))


def describe_missing(name: str) -> str:
    return (f"op {name!r} is not registered in this process. Custom ops are stored by name: import the module "
            f"that defines it (ub.op.define({name!r}, ...)) first")


def check_registered(names) -> None:
    """Raises UnsupportedOpError for the first name that is not a registered op."""
    for name in names:
        try:
            get_op(name)
        except UnsupportedOpError:
            raise UnsupportedOpError(describe_missing(name)) from None


def get(name: str) -> CustomOp:
    """The custom op defined as `name`."""
    try:
        return _CUSTOM[name]
    except KeyError:
        raise UnsupportedOpError(f"{name!r} is not a custom op; defined: {', '.join(sorted(_CUSTOM)) or 'none'}") \
            from None


def undefine(name: str) -> None:
    """Removes a custom op (tests, notebooks re-running a definition)."""
    from ubique.ir.registry import unregister

    op = _CUSTOM.pop(name, None)
    if op is None:
        raise UnsupportedOpError(f"{name!r} is not a custom op")
    unregister(name)
    note_change()
    for key in [k for k, v in _ONNX.items() if v == name]:
        del _ONNX[key]
