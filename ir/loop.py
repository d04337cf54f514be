"""The loop IR: buffers, loop nests, scalar expressions.

A `Kernel` is a function over buffers (`Buffer`, row-major, rank >= 0) and
symbolic dimension values (`dims`). Its body is a tree of statements: `For` loops
with a kind (serial, parallel, vectorized, unrolled; block and thread on GPU targets),
`Store`s, `Let`, `If`, `Alloc` (a mutable scalar local) with `Assign`, `Seq`, and on
GPU targets `Scratch` (a kernel-local buffer in shared or per-thread memory).
Expressions are scalars: the codegen decides how many lanes a value has.

`Reduce` appears only in op computes (before lowering); lowering turns it into an
`Alloc` accumulator and serial loops. Expressions compare structurally with
`==`; comparisons that build IR use `.lt()`, `.eq()` and friends.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ubique.ir.dtypes import DType

I64 = DType.int64
LOOP_KINDS = ("serial", "parallel", "vectorized", "unrolled", "block", "thread")
SCRATCH_SCOPES = ("shared", "local")
REDUCE_KINDS = ("sum", "prod", "max", "min", "argmax", "argmin")


class Node:
    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def _key(self):
        return (type(self).__name__,) + tuple(
            tuple(x) if isinstance(x, list) else x for x in (getattr(self, f) for f in self._fields))

    def __eq__(self, other):
        return type(self) is type(other) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        from ubique.ir.loop_printer import print_node

        return print_node(self)


# ---------------------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------------------
class Expr(Node):
    __slots__ = ("dtype",)

    def __add__(self, o): return binary("add", self, o)
    def __radd__(self, o): return binary("add", o, self)
    def __sub__(self, o): return binary("sub", self, o)
    def __rsub__(self, o): return binary("sub", o, self)
    def __mul__(self, o): return binary("mul", self, o)
    def __rmul__(self, o): return binary("mul", o, self)
    def __truediv__(self, o): return binary("div", self, o)
    def __rtruediv__(self, o): return binary("div", o, self)
    def __floordiv__(self, o): return binary("floordiv", self, o)
    def __mod__(self, o): return binary("mod", self, o)
    def __neg__(self): return call("neg", self)

    def lt(self, o): return compare("lt", self, o)
    def le(self, o): return compare("le", self, o)
    def gt(self, o): return compare("gt", self, o)
    def ge(self, o): return compare("ge", self, o)
    def eq(self, o): return compare("eq", self, o)
    def ne(self, o): return compare("ne", self, o)


class Const(Expr):
    __slots__ = ("value",)
    _fields = ("value", "dtype")

    def __init__(self, value, dtype: DType):
        if dtype.is_float:
            value = float(value)
        elif dtype.is_bool:
            value = bool(value)
        else:
            value = int(value)
        self.value, self.dtype = value, dtype

    def _key(self):  # NaN compares equal to itself here, and -0.0 differs from 0.0
        v = self.value
        if isinstance(v, float):
            v = ("f", np.float64(v).tobytes())
        return ("Const", v, self.dtype)


class Var(Expr):
    __slots__ = ("name",)
    _fields = ("name", "dtype")

    def __init__(self, name: str, dtype: DType = I64):
        self.name, self.dtype = name, dtype


class Binary(Expr):
    """Arithmetic: add sub mul div floordiv mod max min pow and or xor."""
    __slots__ = ("op", "a", "b")
    _fields = ("op", "a", "b", "dtype")
    OPS = ("add", "sub", "mul", "div", "floordiv", "mod", "max", "min", "pow", "and", "or", "xor")

    def __init__(self, op: str, a: Expr, b: Expr):
        self.op, self.a, self.b, self.dtype = op, a, b, a.dtype


class Compare(Expr):
    __slots__ = ("op", "a", "b")
    _fields = ("op", "a", "b")
    OPS = ("lt", "le", "gt", "ge", "eq", "ne")

    def __init__(self, op: str, a: Expr, b: Expr):
        self.op, self.a, self.b, self.dtype = op, a, b, DType.bool


class Select(Expr):
    __slots__ = ("cond", "a", "b")
    _fields = ("cond", "a", "b")

    def __init__(self, cond: Expr, a: Expr, b: Expr):
        self.cond, self.a, self.b, self.dtype = cond, a, b, a.dtype


class Cast(Expr):
    __slots__ = ("a",)
    _fields = ("dtype", "a")

    def __init__(self, dtype: DType, a: Expr):
        self.dtype, self.a = dtype, a


class Call(Expr):
    """A math intrinsic applied elementwise: see INTRINSICS."""
    __slots__ = ("name", "args")
    _fields = ("name", "args", "dtype")

    def __init__(self, name: str, args: Sequence[Expr], dtype: DType):
        self.name, self.args, self.dtype = name, tuple(args), dtype


INTRINSICS = ("neg", "abs", "exp", "log", "sqrt", "rsqrt", "tanh", "erf", "sin", "cos",
              "floor", "ceil", "isnan", "not",
              "roundeven", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh",
              "log1p", "expm1",
              "fmod")  # fmod(a, b): C's fmod, the remainder with the dividend's sign


class Load(Expr):
    """buffer[indices]; with a `mask`, the value is `other` where the mask is false and the
    memory is not touched there (so the indices may then be out of range)."""
    __slots__ = ("buffer", "indices", "mask", "other")
    _fields = ("buffer", "indices", "mask", "other")

    def __init__(self, buffer: "Buffer", indices: Sequence[Expr], mask: Expr | None = None,
                 other: Expr | None = None):
        self.buffer, self.indices, self.dtype = buffer, tuple(as_expr(i) for i in indices), buffer.dtype
        if mask is not None and isinstance(mask, Const) and mask.value:
            mask = None
        self.mask = mask
        self.other = None if mask is None else (other if other is not None else Const(0, buffer.dtype))


class Reduce(Expr):
    """A reduction over `axes` ((Var, extent) pairs) of `body`; only inside op computes.

    argmax/argmin give the row-major position over the axes, as int64."""
    __slots__ = ("kind", "axes", "body")
    _fields = ("kind", "axes", "body", "dtype")

    def __init__(self, kind: str, axes: Sequence[tuple[Var, Expr]], body: Expr, dtype: DType | None = None):
        assert kind in REDUCE_KINDS, kind
        self.kind, self.axes, self.body = kind, tuple((v, as_expr(e)) for v, e in axes), body
        self.dtype = I64 if kind in ("argmax", "argmin") else (dtype or body.dtype)


# ---------------------------------------------------------------------------------------
# Statements and functions
# ---------------------------------------------------------------------------------------
class Stmt(Node):
    __slots__ = ()


class For(Stmt):
    """A loop over var in [0, extent). `lanes` (vectorized loops only) asks for a vector
    width; 0 lets the codegen use the target's register width.

    GPU kinds (codegen/nvptx.py), with the meaning of a serial loop: a "block" loop (the
    outermost loop of a GPU kernel) spreads its iterations over the thread blocks of the
    grid; a "thread" loop inside it spreads its iterations over the `lanes` threads of a
    block. Code in a block loop outside thread loops is run by every thread of the block
    alike. A thread loop whose whole body is `acc = acc op value` (op: add mul max min) on
    a local declared outside it is a cross-thread reduction. Consecutive thread loops are
    separated by barriers, so a thread loop sees everything the ones before it wrote."""
    __slots__ = ("var", "extent", "body", "kind", "lanes")
    _fields = ("var", "extent", "body", "kind", "lanes")

    def __init__(self, var: Var, extent, body: Stmt, kind: str = "serial", lanes: int = 0):
        assert kind in LOOP_KINDS, kind
        self.var, self.extent, self.body, self.kind, self.lanes = var, as_expr(extent), body, kind, lanes


class Store(Stmt):
    __slots__ = ("buffer", "indices", "value")
    _fields = ("buffer", "indices", "value")

    def __init__(self, buffer: "Buffer", indices: Sequence[Expr], value: Expr):
        self.buffer, self.indices, self.value = buffer, tuple(as_expr(i) for i in indices), value


class Let(Stmt):
    __slots__ = ("var", "value", "body")
    _fields = ("var", "value", "body")

    def __init__(self, var: Var, value: Expr, body: Stmt):
        self.var, self.value, self.body = var, value, body


class Alloc(Stmt):
    """A mutable scalar local `var`, set to `init`, live in `body`."""
    __slots__ = ("var", "init", "body")
    _fields = ("var", "init", "body")

    def __init__(self, var: Var, init: Expr, body: Stmt):
        self.var, self.init, self.body = var, init, body


class Assign(Stmt):
    __slots__ = ("var", "value")
    _fields = ("var", "value")

    def __init__(self, var: Var, value: Expr):
        self.var, self.value = var, value


class If(Stmt):
    __slots__ = ("cond", "then", "else_")
    _fields = ("cond", "then", "else_")

    def __init__(self, cond: Expr, then: Stmt, else_: Stmt | None = None):
        self.cond, self.then, self.else_ = cond, then, else_


class Seq(Stmt):
    __slots__ = ("stmts",)
    _fields = ("stmts",)

    def __init__(self, stmts: Sequence[Stmt]):
        flat: list[Stmt] = []
        for s in stmts:
            flat.extend(s.stmts if isinstance(s, Seq) else [s])
        self.stmts = tuple(flat)


class Scratch(Stmt):
    """A kernel-local buffer, live in `body`, on GPU targets. scope "shared": one per thread
    block, read and written by all its threads (between thread loops: see For); "local":
    one slice per thread, kept in registers where the indices are constant: its first
    index is always the variable of the enclosing thread loop, whose extent is the block's
    thread count."""
    __slots__ = ("buffer", "scope", "body")
    _fields = ("buffer", "scope", "body")

    def __init__(self, buffer: "Buffer", scope: str, body: Stmt):
        assert scope in SCRATCH_SCOPES, scope
        self.buffer, self.scope, self.body = buffer, scope, body


class Buffer(Node):
    """A row-major tensor argument of a kernel."""
    __slots__ = ("name", "dtype", "shape")
    _fields = ("name", "dtype", "shape")

    def __init__(self, name: str, dtype: DType, shape: Sequence):
        self.name, self.dtype, self.shape = name, dtype, tuple(as_expr(s) for s in shape)

    def __getitem__(self, idx) -> Load:
        return Load(self, idx if isinstance(idx, tuple) else (idx,))


class Kernel(Node):
    """A compiled unit: `params` are buffers in ABI order, `dims` the symbolic sizes."""
    __slots__ = ("name", "params", "dims", "body")
    _fields = ("name", "params", "dims", "body")

    def __init__(self, name: str, params: Sequence[Buffer], dims: Sequence[Var], body: Stmt):
        self.name, self.params, self.dims, self.body = name, tuple(params), tuple(dims), body


# ---------------------------------------------------------------------------------------
# Builders that fold constants in index arithmetic
# ---------------------------------------------------------------------------------------
def as_expr(x, dtype: DType = I64) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, (bool, np.bool_)):
        return Const(bool(x), DType.bool)
    if isinstance(x, (int, np.integer)):
        return Const(int(x), dtype if not dtype.is_bool else I64)
    if isinstance(x, (float, np.floating)):
        return Const(float(x), dtype if dtype.is_float else DType.float64)
    raise TypeError(f"cannot make a loop-IR expression from {x!r}")


def _const(e):
    return e.value if isinstance(e, Const) else None


def binary(op: str, a, b) -> Expr:
    a = as_expr(a, b.dtype if isinstance(b, Expr) else I64)
    b = as_expr(b, a.dtype)
    ca, cb = _const(a), _const(b)
    if a.dtype.is_int:  # integer identities only: float x*0 is not 0 for NaN
        if ca is not None and cb is not None and op in _INT_FOLD:
            return Const(_INT_FOLD[op](ca, cb), a.dtype)
        if op == "add" and ca == 0: return b
        if op in ("add", "sub") and cb == 0: return a
        if op == "mul" and (ca == 1 or cb == 0): return b
        if op == "mul" and (cb == 1 or ca == 0): return a
        if op == "floordiv" and cb == 1: return a
        if op == "mod" and cb == 1: return Const(0, a.dtype)
    return Binary(op, a, b)


_INT_FOLD = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
             "floordiv": lambda x, y: x // y, "mod": lambda x, y: x % y, "max": max, "min": min}


def compare(op: str, a, b) -> Expr:
    a = as_expr(a, b.dtype if isinstance(b, Expr) else I64)
    return Compare(op, a, as_expr(b, a.dtype))


def call(name: str, *args, dtype: DType | None = None) -> Expr:
    assert name in INTRINSICS, name
    args = [as_expr(a) for a in args]
    if dtype is None:
        dtype = DType.bool if name in ("isnan", "not") else args[0].dtype
    return Call(name, args, dtype)


def select(cond, a, b) -> Expr:
    a = as_expr(a, b.dtype if isinstance(b, Expr) else I64)
    return Select(as_expr(cond), a, as_expr(b, a.dtype))


def cast(dtype: DType, a: Expr) -> Expr:
    return a if a.dtype is dtype else Cast(dtype, a)


def emax(a, b): return binary("max", a, b)
def emin(a, b): return binary("min", a, b)


def logical_and(a: Expr, b: Expr) -> Expr:
    if _const(a) is True: return b
    if _const(b) is True: return a
    return Binary("and", a, b)


# ---------------------------------------------------------------------------------------
# Traversal
# ---------------------------------------------------------------------------------------
def children(n: Node) -> list[Node]:
    out = []
    for f in n._fields:
        x = getattr(n, f)
        if isinstance(x, Node) and not isinstance(x, Buffer):
            out.append(x)
        elif isinstance(x, tuple):
            for y in x:
                if isinstance(y, tuple):
                    out.extend(z for z in y if isinstance(z, Node))
                elif isinstance(y, Node) and not isinstance(y, Buffer):
                    out.append(y)
    return out


def walk(n: Node):
    """Yields every node of a tree, parents first."""
    stack = [n]
    while stack:
        x = stack.pop()
        yield x
        stack.extend(reversed(children(x)))


def substitute(n, mapping: dict) -> Node:
    """Replaces Var (or any sub-expression) keys of `mapping` throughout `n`."""
    if not mapping:
        return n
    return _Subst(mapping).visit(n)


class Mutator:
    """Rebuilds a tree bottom-up; subclasses override `visit_<Class>`."""

    def visit(self, n):
        m = getattr(self, "visit_" + type(n).__name__, None)
        return m(n) if m else self.generic(n)

    def generic(self, n):
        if isinstance(n, (Const, Var, Buffer)):
            return n
        if isinstance(n, Binary): return binary(n.op, self.visit(n.a), self.visit(n.b))
        if isinstance(n, Compare): return Compare(n.op, self.visit(n.a), self.visit(n.b))
        if isinstance(n, Select): return Select(self.visit(n.cond), self.visit(n.a), self.visit(n.b))
        if isinstance(n, Cast): return Cast(n.dtype, self.visit(n.a))
        if isinstance(n, Call): return Call(n.name, [self.visit(a) for a in n.args], n.dtype)
        if isinstance(n, Load):
            return Load(n.buffer, [self.visit(i) for i in n.indices],
                        None if n.mask is None else self.visit(n.mask), None if n.other is None else self.visit(n.other))
        if isinstance(n, Reduce):
            return Reduce(n.kind, [(v, self.visit(e)) for v, e in n.axes], self.visit(n.body), n.dtype)
        if isinstance(n, For): return For(n.var, self.visit(n.extent), self.visit(n.body), n.kind, n.lanes)
        if isinstance(n, Store): return Store(n.buffer, [self.visit(i) for i in n.indices], self.visit(n.value))
        if isinstance(n, Let): return Let(n.var, self.visit(n.value), self.visit(n.body))
        if isinstance(n, Alloc): return Alloc(n.var, self.visit(n.init), self.visit(n.body))
        if isinstance(n, Assign): return Assign(n.var, self.visit(n.value))
        if isinstance(n, If):
            return If(self.visit(n.cond), self.visit(n.then), None if n.else_ is None else self.visit(n.else_))
        if isinstance(n, Seq): return Seq([self.visit(s) for s in n.stmts])
        if isinstance(n, Scratch): return Scratch(n.buffer, n.scope, self.visit(n.body))
        if isinstance(n, Kernel): return Kernel(n.name, n.params, n.dims, self.visit(n.body))
        raise TypeError(f"unknown loop-IR node {type(n).__name__}")


class _Subst(Mutator):
    def __init__(self, mapping):
        self.mapping = mapping

    def visit(self, n):
        if isinstance(n, Expr) and n in self.mapping:
            return self.mapping[n]
        return self.generic(n)
