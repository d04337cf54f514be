"""Loop IR -> portable C99 text, with the numerics of ubique's LLVM backend (codegen/llvm_emit.py):

* float32 stays float32 (`expf`, `f`-suffixed constants; compiled without FP contraction);
* float16 and bfloat16 are stored as uint16_t and live in float registers: widened when
  loaded, rounded (to nearest even) when stored or cast, so fused chains keep float32
  intermediates;
* integer floordiv/mod round toward -inf (Python), integer arithmetic wraps (the object is
  compiled with -fwrapv), int ** negative is 0 (1 for base 1);
* max/min propagate NaN from either operand (numpy); float -> int casts saturate (NaN -> 0);
* bool values are 0/1 ints, stored as one byte.

Parallel loops run serially (the kernel ABI lets a kernel ignore ctx->parallel_for);
vectorized and unrolled loops are plain loops that the C compiler may vectorize or unroll.
"""
from __future__ import annotations

import math
import re

import numpy as np

from ubique.errors import UnsupportedOpError
from ubique.ir import loop as L
from ubique.ir.dtypes import DType

_STORAGE = {DType.float32: "float", DType.float64: "double", DType.float16: "uint16_t",
            DType.bfloat16: "uint16_t", DType.int8: "int8_t", DType.uint8: "uint8_t",
            DType.int32: "int32_t", DType.int64: "int64_t", DType.bool: "uint8_t"}
# helper-name suffix per dtype of a value in registers (float16/bfloat16 live in float)
_SUFFIX = {DType.float32: "f32", DType.float64: "f64", DType.float16: "f32", DType.bfloat16: "f32",
           DType.int8: "i8", DType.uint8: "u8", DType.int32: "i32", DType.int64: "i64", DType.bool: "b"}
_LIBM = {"exp": "exp", "log": "log", "sqrt": "sqrt", "sin": "sin", "cos": "cos", "floor": "floor",
         "ceil": "ceil", "abs": "fabs", "roundeven": "nearbyint", "fmod": "fmod", "tanh": "tanh", "erf": "erf"}
_LIBM.update({f: f for f in ("tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh",
                             "log1p", "expm1")})
_CMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
_ARITH = {"add": "+", "sub": "-", "mul": "*", "div": "/", "and": "&", "or": "|", "xor": "^"}
_RESERVED = set("""auto break case char const continue default do double else enum extern float for goto if
inline int long register restrict return short signed sizeof static struct switch typedef union unsigned void
volatile while args dims ctx kargs ws offsets status pow powf NAN INFINITY""".split())
_RESERVED |= set(_LIBM.values()) | {f + "f" for f in _LIBM.values()}

PRELUDE = r"""#include <stdint.h>
#include <math.h>
#include "ubique_runtime.h"

/* ---- float16 / bfloat16 storage: values live in float, rounded to nearest even ---- */
typedef union { float f; uint32_t u; } ubq_bits32;
static inline float ubq_h2f(uint16_t h) {
    ubq_bits32 r;
    uint32_t em = h & 0x7fffu;
    if (em >= 0x7c00u) r.u = 0x7f800000u | ((em & 0x3ffu) << 13);      /* inf, NaN */
    else if (em >= 0x0400u) r.u = (em << 13) + 0x38000000u;             /* normal: rebias */
    else r.f = (float)em * 5.9604644775390625e-8f;                      /* subnormal: em * 2^-24 */
    r.u |= (uint32_t)(h & 0x8000u) << 16;
    return r.f;
}
static inline uint16_t ubq_f2h(float f) {
    ubq_bits32 b;
    uint32_t sign, x;
    b.f = f;
    sign = (b.u >> 16) & 0x8000u;
    x = b.u & 0x7fffffffu;
    if (x >= 0x47800000u) return (uint16_t)(sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u));
    if (x < 0x38800000u) {          /* half subnormal: let the FPU round to a multiple of 2^-24 */
        ubq_bits32 t;
        t.u = x;
        t.f += 0.5f;
        return (uint16_t)(sign | (t.u - 0x3f000000u));
    }
    x += 0xc8000fffu + ((x >> 13) & 1u);    /* exponent -112, round half to even */
    return (uint16_t)(sign | (x >> 13));
}
static inline uint16_t ubq_d2h(double d) {  /* one rounding: round-to-odd float, then half */
    ubq_bits32 b;
    b.f = (float)d;
    if ((double)b.f != d && d == d && !(b.u & 1u)) {
        if (fabs((double)b.f) > fabs(d)) b.u -= 1u; else b.u += 1u;
    }
    return ubq_f2h(b.f);
}
static inline float ubq_bf2f(uint16_t h) { ubq_bits32 b; b.u = (uint32_t)h << 16; return b.f; }
static inline uint16_t ubq_f2bf(float f) {
    ubq_bits32 b;
    b.f = f;
    if (f != f) return 0x7fc0u;
    return (uint16_t)((b.u + 0x7fffu + ((b.u >> 16) & 1u)) >> 16);
}
static inline float ubq_rh(float f) { return ubq_h2f(ubq_f2h(f)); }
static inline float ubq_rbf(float f) { return ubq_bf2f(ubq_f2bf(f)); }

/* ---- max/min (NaN propagates), floor division, integer power, saturating casts ---- */
#define UBQ_FLOAT(T, S) \
    static inline T ubq_max_##S(T a, T b) { return (a > b || a != a) ? a : b; } \
    static inline T ubq_min_##S(T a, T b) { return (a < b || a != a) ? a : b; }
UBQ_FLOAT(float, f32)
UBQ_FLOAT(double, f64)
#define UBQ_INT(T, U, S) \
    static inline T ubq_max_##S(T a, T b) { return a > b ? a : b; } \
    static inline T ubq_min_##S(T a, T b) { return a < b ? a : b; } \
    static inline T ubq_abs_##S(T a) { return (T)(a < 0 ? -a : a); } \
    static inline T ubq_floordiv_##S(T a, T b) { \
        T q = (T)(a / b), r = (T)(a % b); return (T)((r != 0 && (r < 0) != (b < 0)) ? q - 1 : q); } \
    static inline T ubq_floormod_##S(T a, T b) { \
        T r = (T)(a % b); return (T)((r != 0 && (r < 0) != (b < 0)) ? r + b : r); } \
    static inline T ubq_ipow_##S(T a, T b) { \
        U result = 1, base = (U)a, e = (U)(b < 0 ? 0 : b); \
        while (e) { if (e & 1u) result = (U)(result * base); base = (U)(base * base); e >>= 1; } \
        return b < 0 ? (T)(a == 1) : (T)result; }
UBQ_INT(int8_t, uint8_t, i8)
UBQ_INT(int32_t, uint32_t, i32)
UBQ_INT(int64_t, uint64_t, i64)
UBQ_INT(int, unsigned, b)
static inline uint8_t ubq_max_u8(uint8_t a, uint8_t b) { return a > b ? a : b; }
static inline uint8_t ubq_min_u8(uint8_t a, uint8_t b) { return a < b ? a : b; }
static inline uint8_t ubq_ipow_u8(uint8_t a, uint8_t b) {
    unsigned result = 1, base = a;
    while (b) { if (b & 1u) result = (uint8_t)(result * base); base = (uint8_t)(base * base); b >>= 1; }
    return (uint8_t)result;
}
#define UBQ_SAT(T, S, LO, HI) \
    static inline T ubq_sat_##S(double x) { return x != x ? 0 : x <= (double)(LO) ? (LO) : x >= (double)(HI) ? (HI) : (T)x; }
UBQ_SAT(int8_t, i8, INT8_MIN, INT8_MAX)
UBQ_SAT(uint8_t, u8, 0, UINT8_MAX)
UBQ_SAT(int32_t, i32, INT32_MIN, INT32_MAX)
UBQ_SAT(int64_t, i64, INT64_MIN, INT64_MAX)
"""

ABI = "(void *const *args, const int64_t *dims, ubq_ctx *ctx)"


def value_type(dt: DType) -> str:
    """The C type of a value of `dt` in registers."""
    if dt in (DType.float16, DType.bfloat16):
        return "float"
    return "int" if dt is DType.bool else _STORAGE[dt]


def round_scalar(value: float, dt: DType) -> float:
    """A float constant rounded to `dt` the way the LLVM backend rounds it."""
    if dt is DType.float16:
        return float(np.float16(value))
    if dt is DType.bfloat16:
        if math.isnan(value):
            return value
        bits = int(np.array(value, np.float32).view(np.uint32))
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000) & 0xFFFFFFFF
        return float(np.array(bits, np.uint32).view(np.float32))
    if dt is not DType.float64:
        return float(np.float32(value))
    return value


def identifier(name: str) -> str:
    ident = re.sub(r"\W", "_", name)
    return ident if ident and not ident[0].isdigit() and not ident.startswith("ubq_") else "v_" + ident


def _nonneg(e: L.Expr) -> bool:
    """As llvm_emit: built from loop variables and non-negative constants by + * // % min max."""
    if isinstance(e, L.Const):
        return e.value >= 0
    if isinstance(e, L.Var):
        return True
    if isinstance(e, L.Binary) and e.op in ("add", "mul", "floordiv", "mod", "min", "max"):
        return _nonneg(e.a) and _nonneg(e.b)
    return False


class KernelWriter:
    """Writes one kernel as a C function with the kernel ABI."""

    def __init__(self, kernel: L.Kernel, cname: str):
        self.kernel, self.cname = kernel, cname
        self.lines: list[str] = []
        self.scopes: list[set[str]] = [set()]
        self.env: dict[str, str] = {}        # loop-IR variable -> C identifier
        self.buffers: dict[str, str] = {}    # buffer name -> C pointer

    def fresh(self, name: str) -> str:
        base = identifier(name)
        taken = set().union(*self.scopes) | _RESERVED
        ident, k = base, 1
        while ident in taken:
            ident, k = f"{base}_{k}", k + 1
        self.scopes[-1].add(ident)
        return ident

    def emit(self, line: str) -> None:
        self.lines.append("    " * len(self.scopes) + line)

    def write(self) -> str:
        k = self.kernel
        for n, buf in enumerate(k.params):
            c = self.buffers[buf.name] = self.fresh(buf.name)
            self.emit(f"{_STORAGE[buf.dtype]} *{c} = ({_STORAGE[buf.dtype]} *)args[{n}];")
        for n, v in enumerate(k.dims):
            c = self.env[v.name] = self.fresh(v.name)
            self.emit(f"const int64_t {c} = dims[{n}];")
        self.emit("(void)dims; (void)ctx;")
        self.stmt(k.body)
        self.emit("return 0;")
        return "\n".join([f"static int32_t {self.cname}{ABI} {{", *self.lines, "}"])

    # -- statements ------------------------------------------------------------------------
    def stmt(self, s: L.Stmt) -> None:
        getattr(self, "s_" + type(s).__name__)(s)

    def block(self, s: L.Stmt, head: str, bind: L.Var | None = None) -> None:
        """`head {` s `}`; `bind` is declared in the new scope (a loop variable)."""
        self.scopes.append(set())
        if bind is not None:
            self.env[bind.name] = self.fresh(bind.name)
            head = head.replace("@", self.env[bind.name])
        self.lines.append("    " * (len(self.scopes) - 1) + head + " {")
        self.stmt(s)
        self.scopes.pop()
        self.emit("}")

    def s_Seq(self, s: L.Seq) -> None:
        for x in s.stmts:
            self.stmt(x)

    def s_For(self, s: L.For) -> None:
        if s.kind == "parallel":
            self.emit("/* parallel loop, run serially: the ABI lets a kernel ignore ctx->parallel_for */")
        elif s.kind == "vectorized":
            self.emit(f"/* {s.kind} loop: a plain loop the C compiler may {s.kind[:-2]}e */")
        saved = self.env.get(s.var.name)
        extent = self.expr(s.extent)
        self.block(s.body, f"for (int64_t @ = 0; @ < {extent}; @++)", s.var)
        self._restore(s.var.name, saved)

    def _restore(self, name: str, saved) -> None:
        if saved is None:
            self.env.pop(name, None)
        else:
            self.env[name] = saved

    def _bind(self, s, qualifier: str) -> None:
        value = self.expr(s.value if isinstance(s, L.Let) else s.init)
        saved = self.env.get(s.var.name)
        c = self.fresh(s.var.name)
        self.emit(f"{qualifier}{value_type(s.var.dtype)} {c} = {value};")
        self.env[s.var.name] = c
        self.stmt(s.body)
        self._restore(s.var.name, saved)

    def s_Let(self, s: L.Let) -> None:
        self._bind(s, "const ")

    def s_Alloc(self, s: L.Alloc) -> None:
        self._bind(s, "")

    def s_Assign(self, s: L.Assign) -> None:
        self.emit(f"{self.var(s.var.name)} = {self.expr(s.value)};")

    def s_Store(self, s: L.Store) -> None:
        value = self.to_storage(self.expr(s.value), s.buffer.dtype)
        self.emit(f"{self.buffers[s.buffer.name]}[{self.index(s.buffer, s.indices)}] = {value};")

    def s_If(self, s: L.If) -> None:
        self.block(s.then, f"if ({self.expr(s.cond)})")
        if s.else_ is not None:
            self.lines[-1] += " else {"
            self.scopes.append(set())
            self.stmt(s.else_)
            self.scopes.pop()
            self.emit("}")

    # -- expressions -----------------------------------------------------------------------
    def var(self, name: str) -> str:
        try:
            return self.env[name]
        except KeyError:
            raise UnsupportedOpError(f"C codegen: variable {name} is not defined in kernel {self.kernel.name}") from None

    def index(self, buf: L.Buffer, indices) -> str:
        flat = L.Const(0, L.I64)  # row-major, with the IR builders' constant folding
        for i, d in zip(indices, buf.shape):
            flat = flat * d + i
        return self.expr(flat)

    def expr(self, e: L.Expr) -> str:
        return getattr(self, "e_" + type(e).__name__)(e)

    def e_Var(self, e: L.Var) -> str:
        return self.var(e.name)

    def e_Const(self, e: L.Const, typed: bool = False) -> str:
        dt, v = e.dtype, e.value
        if dt.is_float:
            v = round_scalar(v, dt)
            suffix = "" if dt is DType.float64 else "f"
            if math.isnan(v):
                text = "NAN"
            elif math.isinf(v):
                text = "INFINITY" if v > 0 else "(-INFINITY)"
            else:
                text = (repr(v) if dt is DType.float64 else str(np.float32(v))) + suffix
                text = f"({text})" if text.startswith("-") else text
            return f"(double){text}" if dt is DType.float64 and text[0] in "N(I" else text
        if dt.is_bool:
            return str(int(v))
        if dt is DType.int64 and (typed or not -2 ** 31 <= v < 2 ** 31):
            return "(-INT64_C(9223372036854775807) - 1)" if v == -2 ** 63 else f"INT64_C({v})"
        if dt is DType.int32 and v == -2 ** 31:
            return "(-2147483647 - 1)"
        return str(v) if v >= 0 else f"({v})"

    def operands(self, e) -> tuple[str, str]:
        both = isinstance(e.a, L.Const) and isinstance(e.b, L.Const)  # keep int64 constants typed
        return tuple(self.e_Const(x, both) if isinstance(x, L.Const) else self.expr(x) for x in (e.a, e.b))

    def e_Binary(self, e: L.Binary) -> str:
        a, b = self.operands(e)
        dt, op, s = e.a.dtype, e.op, _SUFFIX[e.a.dtype]
        if op in ("floordiv", "mod") and isinstance(e.b, L.Const) and e.b.value > 0 and _nonneg(e.a):
            return f"({a} {'/' if op == 'floordiv' else '%'} {b})"  # index arithmetic: C division is floor
        if op in ("max", "min"):
            return f"ubq_{op}_{s}({a}, {b})"
        if dt.is_float:
            if op == "pow":
                return f"pow{'' if dt is DType.float64 else 'f'}({a}, {b})"
            if op not in ("add", "sub", "mul", "div"):
                raise UnsupportedOpError(f"C codegen: float op {op}")
            return f"({a} {_ARITH[op]} {b})"
        if op == "pow":
            return f"ubq_ipow_{s}({a}, {b})"
        if op in ("floordiv", "mod"):
            if not dt.is_signed:
                return f"(({value_type(dt)})({a} {'/' if op == 'floordiv' else '%'} {b}))"
            return f"ubq_floor{'div' if op == 'floordiv' else 'mod'}_{s}({a}, {b})"
        if op not in _ARITH or op == "div":
            raise UnsupportedOpError(f"C codegen: integer op {op}")
        text = f"({a} {_ARITH[op]} {b})"
        if dt.is_bool:
            return f"({text} & 1)"
        return f"(({value_type(dt)}){text})" if dt.bits < 32 else text

    def e_Compare(self, e: L.Compare) -> str:
        a, b = self.operands(e)
        return f"({a} {_CMP[e.op]} {b})"

    def e_Select(self, e: L.Select) -> str:
        return f"({self.expr(e.cond)} ? {self.expr(e.a)} : {self.expr(e.b)})"

    def e_Cast(self, e: L.Cast) -> str:
        return self.convert(self.expr(e.a), e.a.dtype, e.dtype)

    def convert(self, v: str, src: DType, dst: DType) -> str:
        if src is dst:
            return v
        if dst.is_bool:
            return f"({v} != 0)"
        if dst.is_float:
            if src is DType.float64 and dst is DType.float16:  # one rounding, not two
                return f"ubq_h2f(ubq_d2h({v}))"
            if value_type(src) != value_type(dst):
                v = f"(({value_type(dst)}){v})"
            return self.round_to(v, dst) if not src.is_bool else v
        if src.is_float:  # saturating: NaN -> 0, out of range -> the nearest bound
            return f"ubq_sat_{_SUFFIX[dst]}({v})"
        return f"(({value_type(dst)}){v})"

    @staticmethod
    def round_to(v: str, dt: DType) -> str:
        return {DType.float16: f"ubq_rh({v})", DType.bfloat16: f"ubq_rbf({v})"}.get(dt, v)

    def e_Call(self, e: L.Call) -> str:
        args = [self.expr(a) for a in e.args]
        x, dt, name = args[0], e.args[0].dtype, e.name
        if name == "neg":
            return f"(-{x})" if dt.is_float or dt.bits >= 32 else f"(({value_type(dt)})-{x})"
        if name == "not":
            return f"(!{x})" if dt.is_bool else f"(({value_type(dt)})~{x})"
        if name == "isnan":
            return f"({x} != {x})" if dt.is_float else "0"
        if name == "abs" and not dt.is_float:
            return f"ubq_abs_{_SUFFIX[dt]}({x})" if dt.is_signed else x
        if not dt.is_float or (name not in _LIBM and name != "rsqrt"):
            raise UnsupportedOpError(f"C codegen: intrinsic {name} of {dt.name}")
        f = "" if dt is DType.float64 else "f"
        if name == "rsqrt":
            return f"(1.0{f} / sqrt{f}({x}))"
        return f"{_LIBM[name]}{f}({', '.join(args)})"

    def e_Load(self, e: L.Load) -> str:
        buf = e.buffer
        raw = f"{self.buffers[buf.name]}[{self.index(buf, e.indices)}]"
        if e.mask is not None:  # C's ?: touches the memory only where the mask holds
            raw = f"({self.expr(e.mask)} ? {raw} : {self.to_storage(self.expr(e.other), buf.dtype)})"
        return {DType.float16: f"ubq_h2f({raw})", DType.bfloat16: f"ubq_bf2f({raw})",
                DType.bool: f"({raw} != 0)"}.get(buf.dtype, raw)

    @staticmethod
    def to_storage(v: str, dt: DType) -> str:
        return {DType.float16: f"ubq_f2h({v})", DType.bfloat16: f"ubq_f2bf({v})",
                DType.bool: f"((uint8_t){v})"}.get(dt, v)

    def e_Reduce(self, e) -> str:
        raise UnsupportedOpError("C codegen: Reduce must be lowered to loops before codegen")


def module_source(module, kernel_names: dict[str, str]) -> str:
    """The whole translation unit: prelude, kernels, externs as given, then the entry."""
    parts = [PRELUDE]
    parts += [KernelWriter(k, kernel_names[k.name]).write() for k in module.kernels]
    parts += [f"/* hand-written kernel {x.name} ({x.origin}) */\n{x.source}" for x in module.externs]
    parts.append(entry_source(module, kernel_names))
    return "\n\n".join(parts) + "\n"


def entry_source(module, kernel_names: dict[str, str]) -> str:
    width = max((len(s.buffers) for s in module.steps), default=1)
    lines = [f"int32_t {module.entry}{ABI} {{",
             "    char *ws = (char *)ctx->workspace;",
             f"    void *kargs[{max(width, 1)}];",
             "    int32_t status;"]
    if module.has_offset_table:
        lines.append(f"    const int64_t *offsets = (const int64_t *)args[{module.num_args}];")
    lines.append("    (void)ws;")
    for step in module.steps:
        for slot, ref in enumerate(step.buffers):
            where = {"arg": f"args[{ref.index}]", "workspace": f"ws + {ref.index}",
                     "table": f"ws + offsets[{ref.index}]"}[ref.kind]
            lines.append(f"    kargs[{slot}] = {where};")
        fn = kernel_names.get(step.kernel, step.kernel)
        lines.append(f"    if ((status = {fn}(kargs, dims, ctx)) != 0) return status;")
    lines += ["    return 0;", "}"]
    return "\n".join(lines)
