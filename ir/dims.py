"""Shape dimensions: ints, or symbolic expressions over named dimensions.

A symbolic dimension is stored in a TensorType as a canonical string, such as
`"batch"`, `"batch*seq"`, `"2*seq + 1"` or `"(seq + 1)//2"`. `Sym` is the algebra
behind those strings: polynomials with integer coefficients over symbol names,
where a floor division that does not divide exactly becomes an opaque atom.
Equal dimensions have equal strings, so shape checks stay string comparisons,
and every dimension can be evaluated for concrete sizes (`evaluate`) or turned
into a loop-IR expression (`to_expr`) that kernels compute from the `dims` array
of the kernel ABI.

`Sym` objects also work inside numpy object arrays, which is how the ONNX importer
folds shape arithmetic (Shape -> Gather -> Concat -> Reshape) at import time.
"""
from __future__ import annotations

import ast
import functools
import math
import threading
from typing import Iterable, Union

from ubique.errors import ShapeError

Dim = Union[int, str]
Monomial = tuple  # sorted tuple of atom names; () is the constant term


class Sym:
    """An integer polynomial over symbol names (atoms); immutable."""

    __slots__ = ("terms",)

    def __init__(self, terms: dict):
        self.terms = {m: c for m, c in terms.items() if c != 0}

    @staticmethod
    def of(d) -> "Sym":
        if isinstance(d, Sym):
            return d
        if isinstance(d, str):
            return _parse(d)
        if isinstance(d, bool) or int(d) != d:
            raise ShapeError(f"dimension {d!r} is not an integer")
        return Sym({(): int(d)})

    # -- queries ------------------------------------------------------------------------
    @property
    def is_const(self) -> bool:
        return all(m == () for m in self.terms)

    @property
    def const(self) -> int:
        return self.terms.get((), 0)

    def atoms(self) -> set[str]:
        return {a for m in self.terms for a in m}

    def dim(self) -> Dim:
        """The canonical dimension: an int when constant, else the canonical string."""
        return self.const if self.is_const else str(self)

    # -- arithmetic ---------------------------------------------------------------------
    def __add__(self, o):
        o = Sym.of(o)
        t = dict(self.terms)
        for m, c in o.terms.items():
            t[m] = t.get(m, 0) + c
        return Sym(t)

    __radd__ = __add__

    def __neg__(self):
        return Sym({m: -c for m, c in self.terms.items()})

    def __sub__(self, o):
        return self + (-Sym.of(o))

    def __rsub__(self, o):
        return Sym.of(o) - self

    def __mul__(self, o):
        o = Sym.of(o)
        t: dict = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in o.terms.items():
                m = tuple(sorted(m1 + m2))
                t[m] = t.get(m, 0) + c1 * c2
        return Sym(t)

    __rmul__ = __mul__

    def __floordiv__(self, o):
        o = Sym.of(o)
        if o.is_const:
            k = o.const
            if k == 0:
                raise ShapeError("dimension arithmetic: division by zero")
            if all(c % k == 0 for c in self.terms.values()):
                return Sym({m: c // k for m, c in self.terms.items()})
            if self.is_const:
                return Sym({(): self.const // k})
        elif len(o.terms) == 1:  # divide by a monomial that divides every term
            (mo, co), = o.terms.items()
            out = {}
            for m, c in self.terms.items():
                rest = list(m)
                try:
                    for a in mo:
                        rest.remove(a)
                except ValueError:
                    break
                if c % co:
                    break
                out[tuple(rest)] = c // co
            else:
                return Sym(out)
        return Sym({(f"({self})//({o})" if not o.is_const else f"({self})//{o.const}",): 1})

    def __rfloordiv__(self, o):
        return Sym.of(o) // self

    def __truediv__(self, o):  # numpy object arrays divide with `/` in ONNX Div on ints
        return self // o

    def __mod__(self, o):
        return self - (self // o) * o

    def __eq__(self, o):
        try:
            return self.terms == Sym.of(o).terms
        except (ShapeError, TypeError, ValueError):
            return NotImplemented

    def __hash__(self):
        return hash(tuple(sorted(self.terms.items())))

    def __int__(self):
        if not self.is_const:
            raise ShapeError(f"dimension {self} is symbolic where a static size is needed")
        return self.const

    __index__ = __int__

    def __repr__(self):
        return f"Sym({str(self)!r})"

    def __str__(self):
        if not self.terms:
            return "0"
        parts = []
        for k, m in enumerate(sorted(self.terms, key=lambda m: (-len(m), m))):
            c = self.terms[m]
            # an opaque atom such as "(n + 1)//2" needs parentheses next to another factor or
            # after a leading minus: "2*(n + 1)//2" would read back as (2*(n + 1))//2
            wrap = len(m) > 1 or abs(c) != 1 or (k == 0 and c < 0)
            body = "*".join(f"({a})" if wrap and not a.isidentifier() else a for a in m)
            if not m:
                text = str(abs(c))
            elif abs(c) == 1:
                text = body
            else:
                text = f"{abs(c)}*{body}"
            parts.append(("-" if c < 0 else "+", text))
        first_sign, first = parts[0]
        out = ("-" if first_sign == "-" else "") + first
        for sign, text in parts[1:]:
            out += f" {sign} {text}"
        return out


_parse_lock = threading.Lock()


@functools.lru_cache(maxsize=4096)
def _ast(text: str):
    """The parsed expression of a dimension string (cached; parsing is serialised because
    CPython 3.11's ast.parse is not safe to run on several threads at once)."""
    with _parse_lock:
        return ast.parse(text, mode="eval").body


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Sym:
    try:
        tree = _ast(text)
    except SyntaxError:
        raise ShapeError(f"invalid dimension {text!r}: expected a name or an expression such as 'batch*seq'") from None
    return _from_ast(tree, text)


def _from_ast(node, text) -> Sym:
    if isinstance(node, ast.Name):
        return Sym({(node.id,): 1})
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return Sym({(): node.value})
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_from_ast(node.operand, text)
    if isinstance(node, ast.BinOp):
        a, b = _from_ast(node.left, text), _from_ast(node.right, text)
        ops = {ast.Add: Sym.__add__, ast.Sub: Sym.__sub__, ast.Mult: Sym.__mul__, ast.FloorDiv: Sym.__floordiv__}
        if type(node.op) in ops:
            return ops[type(node.op)](a, b)
    raise ShapeError(f"invalid dimension {text!r}: only names, integers, +, -, * and // are allowed")


# -- dimension helpers used by shape rules ------------------------------------------------------
def norm(d) -> Dim:
    """Canonical form of a dimension (int, str or Sym)."""
    return Sym.of(d).dim() if not isinstance(d, int) or isinstance(d, bool) else int(d)


def is_static(d) -> bool:
    return isinstance(d, int) and not isinstance(d, bool)


def add(a, b) -> Dim:
    return (Sym.of(a) + b).dim()


def sub(a, b) -> Dim:
    return (Sym.of(a) - b).dim()


def mul(a, b) -> Dim:
    return (Sym.of(a) * b).dim()


def floordiv(a, b) -> Dim:
    return (Sym.of(a) // b).dim()


def prod(dims: Iterable) -> Dim:
    out = Sym.of(1)
    for d in dims:
        out = out * d
    return out.dim()


def symbols(d) -> set[str]:
    """Base symbol names a dimension depends on."""
    if isinstance(d, int):
        return set()
    out = set()
    for atom in Sym.of(d).atoms():
        out |= ({atom} if atom.isidentifier() else {n.id for n in ast.walk(_ast(atom))
                                                    if isinstance(n, ast.Name)})
    return out


def shape_symbols(shapes: Iterable) -> set[str]:
    return {s for shape in shapes for d in shape for s in symbols(d)}


def evaluate(d, env: dict) -> int:
    """The size of dimension `d` for concrete symbol values `env`."""
    if isinstance(d, int):
        return d
    try:
        return _fold(_ast(d), lambda name: int(env[name]), int)
    except KeyError as e:
        raise ShapeError(f"dimension {d!r} needs a value for {e.args[0]!r}") from None


def substitute(d, env: dict) -> Dim:
    """`d` with the symbols named in `env` replaced by their values (others kept)."""
    if isinstance(d, int):
        return d
    return Sym.of(_fold(_ast(d), lambda name: Sym.of(env.get(name, name)), Sym.of)).dim()


def to_expr(d):
    """A dimension as a loop-IR int64 expression over the symbol Vars."""
    from ubique.ir import loop as L

    if isinstance(d, int):
        return L.Const(int(d), L.I64)
    return _fold(_ast(d), L.Var, lambda c: L.Const(c, L.I64))


def _fold(node, name, const):
    """Evaluates a parsed dimension with `name(symbol)` and `const(int)` as leaves; the
    operators are Python's, so the leaves may be ints, Syms or loop-IR expressions."""
    if isinstance(node, ast.Name):
        return name(node.id)
    if isinstance(node, ast.Constant):
        return const(node.value)
    if isinstance(node, ast.UnaryOp):
        return const(0) - _fold(node.operand, name, const)
    a, b = _fold(node.left, name, const), _fold(node.right, name, const)
    if isinstance(node.op, ast.Add):
        return a + b
    if isinstance(node.op, ast.Sub):
        return a - b
    if isinstance(node.op, ast.Mult):
        return a * b
    return a // b


def static_size(shape, what: str = "tensor") -> int:
    """Element count of a static shape; ShapeError naming `what` if a dim is symbolic."""
    if any(not isinstance(d, int) for d in shape):
        raise ShapeError(f"{what}: shape {tuple(shape)} must be static here")
    return math.prod(shape)
