"""Loop IR -> LLVM IR (through llvmlite.ir), for CPU targets.

Every kernel becomes `i32 @name(i8** args, i64* dims, %ubq_ctx* ctx)`: the kernel
ABI documented in runtime/native/ubique_runtime.h.

Vectorized loops are vectorized here, not by LLVM: the body is emitted once with
the loop variable as a vector of `lanes` consecutive values (loads and stores
whose address moves by one element per lane become vector loads and stores;
others become per-lane accesses), and once more as a scalar loop for the tail.
Parallel loops are outlined into `void @task(i64 begin, i64 end, i8* closure)`
and handed to `ctx->parallel_for`.

float16 and bfloat16 values are widened to float32 when loaded and rounded when
stored or explicitly cast, so fused chains keep float32 intermediates.
"""
from __future__ import annotations

import math
import struct

import llvmlite.ir as ir
import numpy as np

from ubique.errors import UnsupportedOpError
from ubique.ir import loop as L
from ubique.ir.dtypes import DType
from ubique.ir.loop_analysis import (lane_coefficient, linear_index, reduction_identity, reduction_update,
                                     widest_element_bits)
from ubique.targets.target import host_arch

I1, I8, I16, I32, I64 = (ir.IntType(n) for n in (1, 8, 16, 32, 64))
F32, F64, F16 = ir.FloatType(), ir.DoubleType(), ir.HalfType()
VOIDP = I8.as_pointer()
TASK_FN = ir.FunctionType(ir.VoidType(), [I64, I64, VOIDP])
# Mirrors struct ubq_ctx in ubique_runtime.h.
CTX = ir.global_context.get_identified_type("struct.ubq_ctx")
PARALLEL_FOR = ir.FunctionType(I32, [CTX.as_pointer(), TASK_FN.as_pointer(), VOIDP, I64])
CTX.set_body(I32, I32, VOIDP, PARALLEL_FOR.as_pointer(), VOIDP, I64)
ENTRY_FN = ir.FunctionType(I32, [VOIDP.as_pointer(), I64.as_pointer(), CTX.as_pointer()])

_STORAGE = {DType.float32: F32, DType.float64: F64, DType.float16: F16, DType.bfloat16: I16,
            DType.int8: I8, DType.uint8: I8, DType.int32: I32, DType.int64: I64, DType.bool: I8}
# libm functions used where LLVM has no intrinsic; called once per lane
_LIBM = {"tanh": ("tanhf", "tanh"), "erf": ("erff", "erf")}
_LIBM.update({f: (f + "f", f) for f in ("tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh",
                                        "atanh", "log1p", "expm1")})
# functions glibc's libmvec provides as vector calls (x86-64, glibc >= 2.35: all of these are
# in libmvec.so.1 as _ZGV{b,d,e}N{4,8,16}v_<f>f and _ZGV{b,d,e}N{2,4,8}v_<f>; AArch64 has them
# as _ZGVnN4v_<f>f and _ZGVnN2v_<f> only in newer glibc, so the aarch64 target does not use them)
_LIBMVEC = {"exp": "exp", "log": "log", "sin": "sin", "cos": "cos", "tanh": "tanh", "erf": "erf", "pow": "pow"}
_LIBMVEC.update({f: f for f in ("tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh",
                                "log1p", "expm1")})
# the vector function ABI's ISA letter per architecture and register width in bits
# (_ZGV<isa>N<lanes>v_<fn>): x86-64 SSE/AVX2/AVX-512, AArch64 AdvSIMD (NEON). An architecture
# without an entry gets no libmvec calls (scalar libm per lane instead).
_VECTOR_ABI_ISA = {"x86_64": {128: "b", 256: "d", 512: "e"}, "aarch64": {128: "n"}}
_INTRINSIC = {"exp": "llvm.exp", "log": "llvm.log", "sqrt": "llvm.sqrt", "sin": "llvm.sin",
              "cos": "llvm.cos", "floor": "llvm.floor", "ceil": "llvm.ceil", "abs": "llvm.fabs",
              "roundeven": "llvm.roundeven"}


def storage_type(dt: DType) -> ir.Type:
    return _STORAGE[dt]


def value_type(dt: DType) -> ir.Type:
    """The LLVM type a value of `dt` has in registers."""
    if dt in (DType.float16, DType.bfloat16):
        return F32
    if dt is DType.bool:
        return I1
    return _STORAGE[dt]


def _vec(t: ir.Type, lanes):
    return ir.VectorType(t, lanes) if lanes else t


def _round_scalar(value: float, dt: DType) -> float:
    if dt is DType.float16:
        return float(np.float16(value))
    if dt is DType.bfloat16:
        bits = struct.unpack("<I", struct.pack("<f", np.float32(value)))[0]
        if math.isnan(value):
            return float("nan")
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return struct.unpack("<f", struct.pack("<I", bits))[0]
    if dt is DType.float32:
        return float(np.float32(value))
    return value


class _Local:
    __slots__ = ("ptr", "lanes")

    def __init__(self, ptr, lanes):
        self.ptr, self.lanes = ptr, lanes


class FunctionEmitter:
    """Emits the statements of one LLVM function (a kernel or an outlined parallel task)."""

    def __init__(self, module: "ModuleEmitter", func: ir.Function, kernel: L.Kernel, prologue):
        """`prologue(builder)` emits the loads of (args, dims, ctx, {captured name: value})."""
        self.m = module
        self.func = func
        self.kernel = kernel
        self.alloca_block = func.append_basic_block("allocas")
        self.b = ir.IRBuilder(func.append_basic_block("body"))
        self.args_ptr, self.dims_ptr, self.ctx_ptr, captured = prologue(self.b)
        self.env: dict[str, object] = dict(captured)
        self.lanes = 0            # >0 while emitting the vector body of a vectorized loop
        self.vec_var = None       # name of that loop's variable
        self.vec_base = None      # its scalar value at lane 0
        self.contract = False     # allow FMA contraction (reduction updates only)
        self.buffers = {}
        for k, buf in enumerate(kernel.params):
            raw = self.b.load(self.b.gep(self.args_ptr, [ir.Constant(I64, k)]), name=f"{buf.name}.raw")
            self.buffers[buf.name] = self.b.bitcast(raw, self.storage(buf.dtype).as_pointer(), name=buf.name)
        for k, v in enumerate(kernel.dims):
            self.env[v.name] = self.b.load(self.b.gep(self.dims_ptr, [ir.Constant(I64, k)]), name=v.name)

    def finish(self):
        ir.IRBuilder(self.alloca_block).branch(self.func.blocks[1])

    # -- helpers ---------------------------------------------------------------------------
    def alloca(self, typ, name):
        with self.b.goto_block(self.alloca_block):
            return self.b.alloca(typ, name=name)

    def splat(self, v, lanes):
        if isinstance(v.type, ir.VectorType) or not lanes:
            return v
        undef = ir.Constant(ir.VectorType(v.type, lanes), ir.Undefined)
        one = self.b.insert_element(undef, v, ir.Constant(I32, 0))
        return self.b.shuffle_vector(one, undef, ir.Constant(ir.VectorType(I32, lanes), [0] * lanes))

    def unify(self, *vals):
        lanes = max((v.type.count for v in vals if isinstance(v.type, ir.VectorType)), default=0)
        return [self.splat(v, lanes) for v in vals], lanes

    def intrinsic(self, name, args, ret=None):
        t = args[0].type
        suffix = f"v{t.count}{_scalar_name(t.element)}" if isinstance(t, ir.VectorType) else _scalar_name(t)
        fn = self.m.declare(f"{name}.{suffix}", ir.FunctionType(ret or t, [a.type for a in args]))
        return self.b.call(fn, args)

    def per_lane(self, fn, vals, lanes, out_type):
        """Applies a scalar-emitting `fn` to each lane of vector operands."""
        if not lanes:
            return fn(*vals)
        acc = ir.Constant(ir.VectorType(out_type, lanes), ir.Undefined)
        for k in range(lanes):
            idx = ir.Constant(I32, k)
            lane = [self.b.extract_element(v, idx) for v in vals]
            acc = self.b.insert_element(acc, fn(*lane), idx)
        return acc

    # -- expressions -----------------------------------------------------------------------
    def expr(self, e: L.Expr):
        m = getattr(self, "e_" + type(e).__name__)
        return m(e)

    def e_Const(self, e: L.Const):
        t = value_type(e.dtype)
        if e.dtype.is_float:
            return ir.Constant(t, _round_scalar(e.value, e.dtype))
        if e.dtype.is_bool:
            return ir.Constant(I1, int(e.value))
        return ir.Constant(t, e.value & ((1 << e.dtype.bits) - 1))

    def e_Var(self, e: L.Var):
        try:
            v = self.env[e.name]
        except KeyError:
            raise UnsupportedOpError(f"codegen: variable {e.name} is not defined in kernel {self.kernel.name}")
        if isinstance(v, _Local):
            return self.b.load(v.ptr)
        return v

    def e_Binary(self, e: L.Binary):
        (a, b), lanes = self.unify(self.expr(e.a), self.expr(e.b))
        if e.op in ("floordiv", "mod") and isinstance(e.b, L.Const) and e.b.value > 0 and _nonneg(e.a):
            # index arithmetic on non-negative values: C division is floor division
            return self.b.sdiv(a, b) if e.op == "floordiv" else self.b.srem(a, b)
        return self.binop(e.op, a, b, e.a.dtype)

    def binop(self, op: str, a, b, dt: DType):
        """`a op b` on registers of dtype `dt` (scalars or vectors of equal shape)."""
        lanes = a.type.count if isinstance(a.type, ir.VectorType) else 0
        if dt.is_float:
            if op in ("add", "sub", "mul", "div"):
                r = getattr(self.b, {"add": "fadd", "sub": "fsub", "mul": "fmul", "div": "fdiv"}[op])(a, b)
                if self.contract and op in ("add", "mul"):
                    r.flags.append("contract")
                return r
            if op == "pow":
                if lanes and self.m.vector_math == "libmvec":
                    call = self.libmvec_call("pow", [a, b], lanes)
                    if call is not None:
                        return call
                return self.intrinsic("llvm.pow", [a, b])
            if op in ("max", "min"):  # numpy semantics: NaN in either operand propagates
                pick_a = self.b.fcmp_ordered(">" if op == "max" else "<", a, b)
                a_nan = self.b.fcmp_unordered("uno", a, a)  # else b: b's NaN propagates too
                return self.b.select(self.b.or_(pick_a, a_nan), a, b)
            raise UnsupportedOpError(f"codegen: float op {op}")
        if dt.is_bool and op in ("and", "or", "xor"):
            return getattr(self.b, op + "_" if op != "xor" else "xor")(a, b)
        signed = dt.is_signed
        if op in ("add", "sub", "mul"):
            return getattr(self.b, op)(a, b)
        if op in ("and", "or", "xor"):
            return getattr(self.b, op + "_" if op != "xor" else "xor")(a, b)
        if op in ("max", "min"):
            pred = (">" if op == "max" else "<")
            c = self.b.icmp_signed(pred, a, b) if signed else self.b.icmp_unsigned(pred, a, b)
            return self.b.select(c, a, b)
        if op in ("floordiv", "mod"):
            return self._floor_divmod(a, b, op, signed)
        if op == "pow":
            return self._int_pow(a, b, dt)
        raise UnsupportedOpError(f"codegen: integer op {op}")

    def _floor_divmod(self, a, b, op, signed):
        """Python semantics: the quotient rounds toward -inf, the remainder takes b's sign."""
        if not signed:
            return self.b.udiv(a, b) if op == "floordiv" else self.b.urem(a, b)
        q, r = self.b.sdiv(a, b), self.b.srem(a, b)
        zero = ir.Constant(a.type, 0) if not isinstance(a.type, ir.VectorType) else \
            ir.Constant(a.type, [0] * a.type.count)
        fix = self.b.and_(self.b.icmp_signed("!=", r, zero),
                          self.b.icmp_signed("!=", self.b.icmp_signed("<", r, zero), self.b.icmp_signed("<", b, zero)))
        if op == "floordiv":
            return self.b.sub(q, self.b.zext(fix, q.type))
        return self.b.select(fix, self.b.add(r, b), r)

    def _int_pow(self, a, b, dt):
        """Exponentiation by squaring, as a loop that runs while any lane's exponent has bits
        left (a fully unrolled 63-step chain made LLVM's optimiser crawl on some kernels)."""
        vec = isinstance(a.type, ir.VectorType)
        one = ir.Constant(a.type, [1] * a.type.count if vec else 1)
        zero = ir.Constant(a.type, [0] * a.type.count if vec else 0)
        b_ = self.b
        exp0 = b_.select(b_.icmp_signed("<", b, zero), zero, b) if dt.is_signed else b
        pre = b_.block
        head, body, done = (b_.append_basic_block(f"ipow.{n}") for n in ("head", "body", "done"))
        b_.branch(head)
        b_.position_at_end(head)
        result, base, exp = b_.phi(a.type), b_.phi(a.type), b_.phi(a.type)
        for phi, init in ((result, one), (base, a), (exp, exp0)):
            phi.add_incoming(init, pre)
        left = b_.icmp_unsigned("!=", exp, zero)
        if vec:
            left = self.intrinsic("llvm.vector.reduce.or", [left], ir.IntType(1))
        b_.cbranch(left, body, done)
        b_.position_at_end(body)
        bit = b_.icmp_unsigned("!=", b_.and_(exp, one), zero)
        result.add_incoming(b_.select(bit, b_.mul(result, base), result), body)
        base.add_incoming(b_.mul(base, base), body)
        exp.add_incoming(b_.lshr(exp, one), body)
        b_.branch(head)
        b_.position_at_end(done)
        out = result
        if dt.is_signed:  # numpy raises for negative exponents; we define the result as 0 (1 for base 1)
            neg = b_.icmp_signed("<", b, zero)
            out = b_.select(neg, b_.select(b_.icmp_signed("==", a, one), one, zero), out)
        return out

    def e_Compare(self, e: L.Compare):
        (a, b), _ = self.unify(self.expr(e.a), self.expr(e.b))
        dt = e.a.dtype
        sym = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}[e.op]
        if dt.is_float:
            return self.b.fcmp_unordered(sym, a, b) if e.op == "ne" else self.b.fcmp_ordered(sym, a, b)
        if dt.is_signed:
            return self.b.icmp_signed(sym, a, b)
        return self.b.icmp_unsigned(sym, a, b)

    def e_Select(self, e: L.Select):
        (c, a, b), _ = self.unify(self.expr(e.cond), self.expr(e.a), self.expr(e.b))
        return self.b.select(c, a, b)

    def e_Cast(self, e: L.Cast):
        return self.convert(self.expr(e.a), e.a.dtype, e.dtype)

    def convert(self, v, src: DType, dst: DType):
        if src is dst:
            return v
        lanes = v.type.count if isinstance(v.type, ir.VectorType) else 0
        T = _vec(value_type(dst), lanes)
        b = self.b
        if dst.is_bool:
            if src.is_float:
                return b.fcmp_unordered("!=", v, _zero(v.type))
            return b.icmp_unsigned("!=", v, _zero(v.type))
        if src.is_bool:
            return b.uitofp(v, T) if dst.is_float else b.zext(v, T)
        if dst.is_float:
            if src.is_float:
                out = v
                if src is DType.float64 and dst is DType.float16:  # one rounding, not two
                    if self.m.soft_half:
                        return self.half_to_f32(self.f64_to_half(v, lanes), lanes)
                    return b.fpext(b.fptrunc(v, _vec(F16, lanes)), T)
                if value_type(src) != value_type(dst):
                    out = b.fpext(v, T) if value_type(dst) == F64 else b.fptrunc(v, T)
            else:
                out = b.sitofp(v, T) if src.is_signed else b.uitofp(v, T)
            return self.round_to(out, dst)
        if src.is_float:  # saturating: NaN -> 0, out of range -> the nearest bound
            name = "llvm.fptosi.sat" if dst.is_signed else "llvm.fptoui.sat"
            t = v.type
            suffix_dst = f"v{lanes}i{dst.bits}" if lanes else f"i{dst.bits}"
            suffix_src = f"v{lanes}{_scalar_name(t.element if lanes else t)}" if lanes else _scalar_name(t)
            fn = self.m.declare(f"{name}.{suffix_dst}.{suffix_src}", ir.FunctionType(T, [t]))
            return b.call(fn, [v])
        if src.bits > dst.bits:
            return b.trunc(v, T)
        if src.bits < dst.bits:
            return b.sext(v, T) if src.is_signed else b.zext(v, T)
        return v

    def round_to(self, v, dt: DType):
        """Rounds a float32/64 register value to dt's precision (float16/bfloat16 live in float32)."""
        lanes = v.type.count if isinstance(v.type, ir.VectorType) else 0
        if dt is DType.float16:
            if self.m.soft_half:
                return self.half_to_f32(self.f32_to_half(v, lanes), lanes)
            h = self.b.fptrunc(v, _vec(F16, lanes))
            return self.b.fpext(h, _vec(F32, lanes))
        if dt is DType.bfloat16:
            return self.bf16_to_f32(self.f32_to_bf16(v, lanes), lanes)
        return v

    def f32_to_bf16(self, v, lanes):
        b = self.b
        c = lambda x, t=I32: ir.Constant(_vec(t, lanes), [x] * lanes if lanes else x)  # noqa: E731
        bits = b.bitcast(v, _vec(I32, lanes))
        rounding = b.add(c(0x7FFF), b.and_(b.lshr(bits, c(16)), c(1)))
        rounded = b.lshr(b.add(bits, rounding), c(16))
        is_nan = b.fcmp_unordered("uno", v, v)
        out = b.select(is_nan, c(0x7FC0), rounded)
        return b.trunc(out, _vec(I16, lanes))

    # float16 <-> float32 with integer operations, for targets whose C runtime lacks the
    # conversion routines LLVM would call (RISC-V without Zfhmin and a libgcc before 13).
    # Round to nearest even; NaN stays NaN (quiet), overflow gives inf, as the instructions do.
    def f32_to_half(self, v, lanes):
        b = self.b
        c = lambda x, t=I32: ir.Constant(_vec(t, lanes), [x] * lanes if lanes else x)  # noqa: E731
        bits = b.bitcast(v, _vec(I32, lanes))
        sign = b.and_(bits, c(0x80000000))
        mag = b.xor(bits, sign)
        # subnormal halves: the FPU rounds when the magic constant is added (exact below 2^-14)
        magic = c(((127 - 15) + (23 - 10) + 1) << 23)
        sub = b.sub(b.bitcast(b.fadd(b.bitcast(mag, _vec(F32, lanes)), b.bitcast(magic, _vec(F32, lanes))),
                              _vec(I32, lanes)), magic)
        odd = b.and_(b.lshr(mag, c(13)), c(1))
        normal = b.lshr(b.add(b.add(mag, c(((15 - 127) << 23) + 0xFFF)), odd), c(13))
        big = b.select(b.icmp_unsigned(">", mag, c(0x7F800000)), c(0x7E00), c(0x7C00))  # NaN, inf/overflow
        out = b.select(b.icmp_unsigned(">=", mag, c((127 + 16) << 23)), big,
                       b.select(b.icmp_unsigned("<", mag, c(113 << 23)), sub, normal))
        return b.trunc(b.or_(out, b.lshr(sign, c(16))), _vec(I16, lanes))

    def f64_to_half(self, v, lanes):
        """float64 -> float16 rounded once: to float32 rounding to odd (sticky last bit), then
        to float16 rounding to nearest even, which is exact for 13 spare bits."""
        b = self.b
        c = lambda x: ir.Constant(_vec(I32, lanes), [x] * lanes if lanes else x)  # noqa: E731
        f = b.fptrunc(v, _vec(F32, lanes))
        back = b.fpext(f, _vec(F64, lanes))
        bits = b.bitcast(f, _vec(I32, lanes))
        away = b.fcmp_ordered(">", b.call(self.m.declare(f"llvm.fabs.{'v%df64' % lanes if lanes else 'f64'}",
                                                         ir.FunctionType(back.type, [back.type])), [back]),
                              b.call(self.m.declare(f"llvm.fabs.{'v%df64' % lanes if lanes else 'f64'}",
                                                    ir.FunctionType(v.type, [v.type])), [v]))
        toward_zero = b.select(away, b.sub(bits, c(1)), bits)  # |f| > |v|: one ulp back
        inexact = b.fcmp_ordered("!=", back, v)
        odd = b.select(inexact, b.or_(toward_zero, c(1)), bits)
        finite = b.fcmp_ordered("<", b.call(self.m.declare(f"llvm.fabs.{'v%df32' % lanes if lanes else 'f32'}",
                                                           ir.FunctionType(f.type, [f.type])), [f]),
                                ir.Constant(f.type, [float("inf")] * lanes if lanes else float("inf")))
        return self.f32_to_half(b.bitcast(b.select(finite, odd, bits), _vec(F32, lanes)), lanes)

    def half_to_f32(self, h, lanes):
        b = self.b
        c = lambda x: ir.Constant(_vec(I32, lanes), [x] * lanes if lanes else x)  # noqa: E731
        u = b.zext(h, _vec(I32, lanes))
        sign = b.shl(b.and_(u, c(0x8000)), c(16))
        em = b.and_(u, c(0x7FFF))
        special = b.or_(c(0x7F800000), b.shl(b.and_(em, c(0x3FF)), c(13)))          # inf, NaN
        normal = b.add(b.shl(em, c(13)), c(0x38000000))                                 # rebias
        scale = ir.Constant(_vec(F32, lanes), [2.0 ** -24] * lanes if lanes else 2.0 ** -24)
        sub = b.bitcast(b.fmul(b.uitofp(em, _vec(F32, lanes)), scale), _vec(I32, lanes))  # em * 2^-24
        bits = b.select(b.icmp_unsigned(">=", em, c(0x7C00)), special,
                        b.select(b.icmp_unsigned(">=", em, c(0x400)), normal, sub))
        return b.bitcast(b.or_(bits, sign), _vec(F32, lanes))

    def storage(self, dt: DType) -> ir.Type:
        """The memory type of dt's elements (float16 as i16 where conversions are in software)."""
        return I16 if dt is DType.float16 and self.m.soft_half else storage_type(dt)

    def bf16_to_f32(self, v, lanes):
        wide = self.b.shl(self.b.zext(v, _vec(I32, lanes)), ir.Constant(_vec(I32, lanes), [16] * lanes if lanes else 16))
        return self.b.bitcast(wide, _vec(F32, lanes))

    def e_Call(self, e: L.Call):
        args = [self.expr(a) for a in e.args]
        args, lanes = self.unify(*args)
        x = args[0]
        dt = e.args[0].dtype
        name = e.name
        if name == "neg":
            return self.b.fneg(x) if dt.is_float else self.b.sub(_zero(x.type), x)
        if name == "not":
            return self.b.not_(x)
        if name == "isnan":
            return self.b.fcmp_unordered("uno", x, x) if dt.is_float else _const_like(x.type, 0, I1)
        if name == "abs" and not dt.is_float:
            if not dt.is_signed:
                return x
            return self.b.select(self.b.icmp_signed("<", x, _zero(x.type)), self.b.sub(_zero(x.type), x), x)
        if not dt.is_float:
            raise UnsupportedOpError(f"codegen: {name} of {dt.name}")
        if name == "rsqrt":
            return self.b.fdiv(_const_like(x.type, 1.0), self.intrinsic("llvm.sqrt", [x]))
        if name == "fmod":  # LLVM's frem is C's fmod
            return self.b.frem(x, args[1])
        if lanes and self.m.vector_math == "libmvec":
            call = self.libmvec_call(name, args, lanes)
            if call is not None:
                return call
        if name in _INTRINSIC:
            return self.intrinsic(_INTRINSIC[name], [x])
        if name in _LIBM:
            scalar_t = x.type.element if lanes else x.type
            cname = _LIBM[name][0 if scalar_t == F32 else 1]
            fn = self.m.declare(cname, ir.FunctionType(scalar_t, [scalar_t]), pure=True)
            return self.per_lane(lambda s: self.b.call(fn, [s]), [x], lanes, scalar_t)
        raise UnsupportedOpError(f"codegen: intrinsic {name}")

    def libmvec_call(self, name, args, lanes):
        """A call into glibc's libmvec (vector ABI names _ZGV<isa>N<lanes>v_<fn>), or None."""
        if name not in _LIBMVEC:
            return None
        elem = args[0].type.element
        elem_bits = 32 if elem == F32 else 64
        width = min(lanes, self.m.vector_bits // elem_bits)  # lanes per call: one register
        isa = _VECTOR_ABI_ISA.get(self.m.arch, {}).get(width * elem_bits)
        if isa is None or lanes % width:
            return None
        vt = ir.VectorType(elem, width)
        symbol = f"_ZGV{isa}N{width}{'v' * len(args)}_{_LIBMVEC[name]}{'f' if elem == F32 else ''}"
        fn = self.m.declare(symbol, ir.FunctionType(vt, [vt] * len(args)), pure=True)
        if width == lanes:
            return self.b.call(fn, args)
        # a wide (multi-register) vector: one call per register-sized piece
        pieces = []
        for start in range(0, lanes, width):
            sel = ir.Constant(ir.VectorType(I32, width), list(range(start, start + width)))
            pieces.append(self.b.call(fn, [self.b.shuffle_vector(a, a, sel) for a in args]))
        while len(pieces) > 1:
            n = pieces[0].type.count
            sel = ir.Constant(ir.VectorType(I32, 2 * n), list(range(2 * n)))
            pieces = [self.b.shuffle_vector(pieces[k], pieces[k + 1], sel) for k in range(0, len(pieces), 2)]
        return pieces[0]

    def e_Load(self, e: L.Load):
        buf = e.buffer
        flat = linear_index(buf, e.indices)
        base = self.buffers[buf.name]
        st = self.storage(buf.dtype)
        mask = None if e.mask is None else self.expr(e.mask)
        other = None if e.mask is None else self.to_storage(self.expr(e.other), buf.dtype)
        if self.lanes:
            lanes = self.lanes
            coeff = lane_coefficient(flat, self.vec_var, self.varying_names())
            varying_mask = mask is not None and isinstance(mask.type, ir.VectorType)
            if coeff != 0 or varying_mask:
                vt = ir.VectorType(st, lanes)
                vmask = self.splat(mask, lanes) if mask is not None else ir.Constant(ir.VectorType(I1, lanes), [1] * lanes)
                passthru = self.splat(other, lanes) if other is not None else ir.Constant(vt, ir.Undefined)
                align = ir.Constant(I32, buf.dtype.itemsize)
                if coeff == 1:
                    ptr = self.b.bitcast(self.b.gep(base, [self.scalar_index(flat)]), vt.as_pointer())
                    if mask is None:
                        raw = self.b.load(ptr, align=buf.dtype.itemsize)
                    else:
                        fn = self.m.declare(f"llvm.masked.load.v{lanes}{_scalar_name(st)}.p0",
                                            ir.FunctionType(vt, [vt.as_pointer(), I32, vmask.type, vt]))
                        raw = self.b.call(fn, [ptr, align, vmask, passthru])
                else:
                    idx = self.splat(self.expr(flat), lanes)
                    ptrs = self.vector_pointers(base, idx, st, lanes)
                    fn = self.m.declare(f"llvm.masked.gather.v{lanes}{_scalar_name(st)}.v{lanes}p0",
                                        ir.FunctionType(vt, [ptrs.type, I32, vmask.type, vt]))
                    raw = self.b.call(fn, [ptrs, align, vmask, passthru])
                return self.from_storage(raw, buf.dtype, lanes)
        if mask is None:
            raw = self.b.load(self.b.gep(base, [self.expr(flat)]))
        else:  # the memory must not be touched where the mask is false: branch
            with self.b.if_else(mask) as (then, otherwise):
                with then:
                    loaded = self.b.load(self.b.gep(base, [self.expr(flat)]))
                    then_block = self.b.block
                with otherwise:
                    else_block = self.b.block
            raw = self.b.phi(st)
            raw.add_incoming(loaded, then_block)
            raw.add_incoming(other, else_block)
        return self.from_storage(raw, buf.dtype, 0)

    def vector_pointers(self, base, idx, st, lanes):
        """<lanes x T*> for base + idx (a vector of element indices)."""
        vi64 = ir.VectorType(I64, lanes)
        size = ir.Constant(vi64, [max(1, _bits(st) // 8)] * lanes)
        addr = self.b.add(self.splat(self.b.ptrtoint(base, I64), lanes), self.b.mul(idx, size))
        return self.b.inttoptr(addr, ir.VectorType(st.as_pointer(), lanes))

    def from_storage(self, raw, dt: DType, lanes):
        if dt is DType.float16:
            if self.m.soft_half:
                return self.half_to_f32(raw, lanes)
            return self.b.fpext(raw, _vec(F32, lanes))
        if dt is DType.bfloat16:
            return self.bf16_to_f32(raw, lanes)
        if dt is DType.bool:
            return self.b.icmp_unsigned("!=", raw, _zero(raw.type))
        return raw

    def to_storage(self, v, dt: DType):
        lanes = v.type.count if isinstance(v.type, ir.VectorType) else 0
        if dt is DType.float16:
            if self.m.soft_half:
                return self.f32_to_half(v, lanes)
            return self.b.fptrunc(v, _vec(F16, lanes))
        if dt is DType.bfloat16:
            return self.f32_to_bf16(v, lanes)
        if dt is DType.bool:
            return self.b.zext(v, _vec(I8, lanes))
        return v

    def scalar_index(self, flat: L.Expr):
        """Emits `flat` with the vector loop variable at its lane-0 value."""
        saved = self.lanes
        self.lanes = 0
        self.env[self.vec_var], keep = self.vec_base, self.env[self.vec_var]
        try:
            return self.expr(flat)
        finally:
            self.env[self.vec_var] = keep
            self.lanes = saved

    def varying_names(self) -> set[str]:
        return {k for k, v in self.env.items()
                if (isinstance(v, _Local) and v.lanes) or (not isinstance(v, _Local) and isinstance(v.type, ir.VectorType))}

    def e_Reduce(self, e):
        raise UnsupportedOpError("codegen: Reduce must be lowered to loops before codegen")

    # -- statements ------------------------------------------------------------------------
    def stmt(self, s: L.Stmt):
        getattr(self, "s_" + type(s).__name__)(s)

    def s_Seq(self, s: L.Seq):
        for x in s.stmts:
            self.stmt(x)

    def s_Let(self, s: L.Let):
        self.env[s.var.name] = self.expr(s.value)
        self.stmt(s.body)
        del self.env[s.var.name]

    def s_Alloc(self, s: L.Alloc):
        t = _vec(value_type(s.var.dtype), self.lanes)
        ptr = self.alloca(t, s.var.name)
        self.b.store(self.splat(self.expr(s.init), self.lanes), ptr)
        self.env[s.var.name] = _Local(ptr, self.lanes)
        self.stmt(s.body)
        del self.env[s.var.name]

    def s_Assign(self, s: L.Assign):
        local = self.env[s.var.name]
        self.contract = True
        try:
            v = self.expr(s.value)
        finally:
            self.contract = False
        self.b.store(self.splat(v, local.lanes), local.ptr)

    def s_Store(self, s: L.Store):
        buf = s.buffer
        flat = linear_index(buf, s.indices)
        value = self.to_storage(self.expr(s.value), buf.dtype)
        base = self.buffers[buf.name]
        if self.lanes:
            coeff = lane_coefficient(flat, self.vec_var, self.varying_names())
            value = self.splat(value, self.lanes)
            if coeff == 1:
                ptr = self.b.gep(base, [self.scalar_index(flat)])
                self.b.store(value, self.b.bitcast(ptr, value.type.as_pointer()), align=buf.dtype.itemsize)
                return
            idx = self.splat(self.expr(flat), self.lanes)
            for k in range(self.lanes):
                lane = ir.Constant(I32, k)
                self.b.store(self.b.extract_element(value, lane),
                             self.b.gep(base, [self.b.extract_element(idx, lane)]))
            return
        self.b.store(value, self.b.gep(base, [self.expr(flat)]))

    def s_If(self, s: L.If):
        cond = self.expr(s.cond)
        if isinstance(cond.type, ir.VectorType):
            raise UnsupportedOpError("codegen: an if whose condition differs per lane cannot be vectorized")
        if s.else_ is None:
            with self.b.if_then(cond):
                self.stmt(s.then)
        else:
            with self.b.if_else(cond) as (then, other):
                with then:
                    self.stmt(s.then)
                with other:
                    self.stmt(s.else_)

    def s_For(self, s: L.For):
        if s.kind == "parallel" and not self.lanes:
            return self.m.emit_parallel(self, s)
        if s.kind == "vectorized" and not self.lanes and self.m.lanes_for(s) > 1:
            if reduction_update(s) is not None:
                return self.vector_reduction_loop(s)
            return self.vector_loop(s)
        extent = self.expr(s.extent)
        if isinstance(extent.type, ir.VectorType):
            raise UnsupportedOpError("codegen: a loop extent may not depend on a vectorized variable")
        if s.kind == "unrolled" and isinstance(s.extent, L.Const) and s.extent.value <= 64:
            for k in range(s.extent.value):
                self.env[s.var.name] = ir.Constant(I64, k)
                self.stmt(s.body)
            del self.env[s.var.name]
            return
        self.counted_loop(s.var.name, ir.Constant(I64, 0), extent, 1, lambda: self.stmt(s.body))

    def counted_loop(self, name, start, stop, step, body, on_index=None):
        """for (i = start; i < stop; i += step) body(); the variable is bound to `name`."""
        b = self.b
        pre = b.block
        head = b.append_basic_block(f"{name}.head")
        loop = b.append_basic_block(f"{name}.body")
        exit_ = b.append_basic_block(f"{name}.exit")
        b.branch(head)
        b.position_at_end(head)
        i = b.phi(I64, name=name)
        i.add_incoming(start, pre)
        b.cbranch(b.icmp_signed("<", i, stop), loop, exit_)
        b.position_at_end(loop)
        if on_index:
            on_index(i)
        else:
            self.env[name] = i
        body()
        nxt = b.add(i, ir.Constant(I64, step))
        i.add_incoming(nxt, b.block)
        b.branch(head)
        b.position_at_end(exit_)
        self.env.pop(name, None)

    def vector_reduction_loop(self, s: L.For):
        """acc = acc op value over a vectorized loop: vector partial results (reassociated),
        combined across lanes at the end, then the scalar tail."""
        acc, op = reduction_update(s)
        scalar_local = self.env[acc.name]
        lanes = s.lanes or self.m.lanes_for(s)
        vt = ir.VectorType(value_type(acc.dtype), lanes)
        vec_local = _Local(self.alloca(vt, acc.name + ".vec"), lanes)
        ident = self.e_Const(reduction_identity(op, acc.dtype))
        self.b.store(self.splat(ident, lanes), vec_local.ptr)
        extent = self.expr(s.extent)
        stop = self.b.sub(extent, self.b.srem(extent, ir.Constant(I64, lanes)))
        ramp = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))
        name = s.var.name

        def bind(i):
            self.vec_base = i
            self.env[name] = self.b.add(self.splat(i, lanes), ramp)

        def body():
            self.lanes, self.vec_var = lanes, name
            self.env[acc.name] = vec_local
            try:
                self.stmt(s.body)
            finally:
                self.lanes, self.vec_var, self.vec_base = 0, None, None
                self.env[acc.name] = scalar_local

        self.counted_loop(name, ir.Constant(I64, 0), stop, lanes, body, on_index=bind)
        v = self.b.load(vec_local.ptr)
        width = lanes
        while width > 1:  # tree reduction across lanes
            width //= 2
            lo = self.b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, width), list(range(width))))
            hi = self.b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, width), list(range(width, 2 * width))))
            v = self.binop(op, lo, hi, acc.dtype)
        total = self.b.extract_element(v, ir.Constant(I32, 0))
        self.b.store(self.binop(op, self.b.load(scalar_local.ptr), total, acc.dtype), scalar_local.ptr)
        self.counted_loop(name, stop, extent, 1, lambda: self.stmt(s.body))

    def vector_loop(self, s: L.For):
        """Vector iterations at the requested width, then at the register width, then scalars."""
        base = self.m.lanes_for(s)
        # the requested width, the register width, then half of it for short tails
        widths = ([s.lanes] if s.lanes > base else []) + [base] + ([base // 2] if base >= 8 else [])
        extent = self.expr(s.extent)
        static = s.extent.value if isinstance(s.extent, L.Const) else None
        name = s.var.name
        start, static_start = ir.Constant(I64, 0), 0
        for lanes in widths:
            if static is not None and static - static_start < lanes:
                continue
            rem = self.b.srem(self.b.sub(extent, start), ir.Constant(I64, lanes))
            stop = self.b.sub(extent, rem)
            ramp = ir.Constant(ir.VectorType(I64, lanes), list(range(lanes)))

            def bind(i, lanes=lanes, ramp=ramp):
                self.vec_base = i
                self.env[name] = self.b.add(self.splat(i, lanes), ramp)

            def vec_body(lanes=lanes):
                self.lanes, self.vec_var = lanes, name
                try:
                    self.stmt(s.body)
                finally:
                    self.lanes, self.vec_var, self.vec_base = 0, None, None

            self.counted_loop(name, start, stop, lanes, vec_body, on_index=bind)
            start = stop
            if static is not None:
                static_start = static - (static - static_start) % lanes
        if static is None or static_start < static:
            self.counted_loop(name, start, extent, 1, lambda: self.stmt(s.body))


def _nonneg(e: L.Expr) -> bool:
    """True if `e` is built from loop variables and non-negative constants by + * // %."""
    if isinstance(e, L.Const):
        return e.value >= 0
    if isinstance(e, L.Var):
        return True  # loop variables and dimension sizes
    if isinstance(e, L.Binary) and e.op in ("add", "mul", "floordiv", "mod", "min", "max"):
        return _nonneg(e.a) and _nonneg(e.b)
    return False


def _bits(t) -> int:
    return {F32: 32, F64: 64, F16: 16}.get(t, getattr(t, "width", 0))


def _scalar_name(t):
    if t == F32:
        return "f32"
    if t == F64:
        return "f64"
    if t == F16:
        return "f16"
    return f"i{t.width}"


def _zero(t):
    return _const_like(t, 0)


def _const_like(t, value, elem=None):
    if isinstance(t, ir.VectorType):
        e = elem or t.element
        return ir.Constant(ir.VectorType(e, t.count), [value] * t.count)
    return ir.Constant(elem or t, value)


class ModuleEmitter:
    """Owns one llvmlite module: kernels, their outlined tasks, declarations, the model entry."""

    def __init__(self, name: str, vector_bits: int, triple: str = "", data_layout: str = "",
                 vector_math: str = "", soft_half: bool = False):
        self.vector_math = vector_math
        self.soft_half = soft_half  # float16 conversions with integer operations (see f32_to_half)
        self.module = ir.Module(name=name)
        self.module.triple = triple
        self.arch = triple.split("-", 1)[0] if triple else host_arch()  # "x86_64", "aarch64", ...
        self.module.data_layout = data_layout
        self.vector_bits = vector_bits
        self._tasks = 0

    def declare(self, name, fnty, pure: bool = False):
        """A function declaration; `pure` math functions let LLVM merge repeated calls."""
        existing = self.module.globals.get(name)
        if existing is not None:
            return existing
        fn = ir.Function(self.module, fnty, name)
        if pure:
            fn.attributes.add("nounwind")
            fn.attributes.add("readnone")
        return fn

    def lanes_for(self, loop: L.For) -> int:
        """Vector width for a loop: the target's register width over the widest element it touches."""
        return max(1, self.vector_bits // widest_element_bits(loop.body))

    def declare_kernel(self, name: str) -> ir.Function:
        """An external kernel (defined elsewhere, with the kernel ABI) the entry calls."""
        return ir.Function(self.module, ENTRY_FN, name)

    def add_kernel(self, kernel: L.Kernel) -> ir.Function:
        func = ir.Function(self.module, ENTRY_FN, kernel.name)
        args, dims, ctx = func.args
        args.name, dims.name, ctx.name = "args", "dims", "ctx"
        em = FunctionEmitter(self, func, kernel, lambda b: (args, dims, ctx, {}))
        em.stmt(kernel.body)
        em.b.ret(ir.Constant(I32, 0))
        em.finish()
        return func

    def emit_parallel(self, outer: FunctionEmitter, loop: L.For):
        """Outlines `loop`'s body into a task and calls ctx->parallel_for over its extent."""
        captured = sorted(_free_vars(loop) - {v.name for v in outer.kernel.dims})
        for name in captured:
            v = outer.env.get(name)
            if v is None or isinstance(v, _Local) or v.type != I64:
                raise UnsupportedOpError(f"codegen: a parallel loop may only capture int64 loop variables ({name})")
        closure_t = ir.LiteralStructType([VOIDP.as_pointer(), I64.as_pointer()] + [I64] * len(captured))
        self._tasks += 1
        task = ir.Function(self.module, TASK_FN, f"{outer.kernel.name}.task{self._tasks}")
        task.linkage = "internal"
        begin, end, raw = task.args

        def prologue(b):
            cl = b.bitcast(raw, closure_t.as_pointer())
            slots = [b.load(b.gep(cl, [ir.Constant(I32, 0), ir.Constant(I32, k)])) for k in range(2 + len(captured))]
            return slots[0], slots[1], None, dict(zip(captured, slots[2:]))

        inner = FunctionEmitter(self, task, outer.kernel, prologue)
        inner.counted_loop(loop.var.name, begin, end, 1, lambda: inner.stmt(loop.body))
        inner.b.ret_void()
        inner.finish()

        # caller: fill the closure on the stack and hand the task to the pool
        b = outer.b
        closure = outer.alloca(closure_t, "closure")
        slots = [outer.args_ptr, outer.dims_ptr] + [outer.env[name] for name in captured]
        for k, v in enumerate(slots):
            b.store(v, b.gep(closure, [ir.Constant(I32, 0), ir.Constant(I32, k)]))
        ctx = outer.ctx_ptr
        pf = b.load(b.gep(ctx, [ir.Constant(I32, 0), ir.Constant(I32, 3)]))
        b.call(pf, [ctx, task, b.bitcast(closure, VOIDP), outer.expr(loop.extent)])

    def add_entry(self, name: str, steps, num_io: int) -> ir.Function:
        """The model entry: calls each kernel with pointers into `args` (inputs, outputs,
        weights) or the workspace. `steps` is a list of (kernel function, [(kind, n)]) with
        kind "io" (args[n]), "ws" (workspace + n bytes) or "wsdyn" (workspace + table[n] bytes,
        where the int64 table is args[num_io]: offsets planned at run time for symbolic shapes)."""
        func = ir.Function(self.module, ENTRY_FN, name)
        args, dims, ctx = func.args
        b = ir.IRBuilder(func.append_basic_block("entry"))
        ws = b.load(b.gep(ctx, [ir.Constant(I32, 0), ir.Constant(I32, 4)]), name="workspace")
        width = max((len(refs) for _, refs in steps), default=1)
        arr = b.alloca(ir.ArrayType(VOIDP, width), name="kargs")
        base = b.bitcast(arr, VOIDP.as_pointer())
        table = None
        if any(kind == "wsdyn" for _, refs in steps for kind, _ in refs):
            table = b.bitcast(b.load(b.gep(args, [ir.Constant(I64, num_io)])), I64.as_pointer(), name="offsets")
        for k, (kfn, refs) in enumerate(steps):
            for slot, (kind, n) in enumerate(refs):
                if kind == "io":
                    p = b.load(b.gep(args, [ir.Constant(I64, n)]))
                elif kind == "wsdyn":
                    p = b.gep(ws, [b.load(b.gep(table, [ir.Constant(I64, n)]))])
                else:
                    p = b.gep(ws, [ir.Constant(I64, n)])
                b.store(p, b.gep(base, [ir.Constant(I64, slot)]))
            status = b.call(kfn, [base, dims, ctx])
            failed = b.icmp_signed("!=", status, ir.Constant(I32, 0))
            with b.if_then(failed, likely=False):
                b.ret(status)
        b.ret(ir.Constant(I32, 0))
        return func


def _free_vars(s: L.Stmt) -> set[str]:
    bound, used = set(), set()
    for n in L.walk(s):
        if isinstance(n, (L.For, L.Let, L.Alloc)):
            bound.add(n.var.name)
        elif isinstance(n, L.Var):
            used.add(n.name)
        if isinstance(n, (L.Load, L.Store)):
            for d in n.buffer.shape:
                used |= {v.name for v in L.walk(d) if isinstance(v, L.Var)}
    return used - bound
