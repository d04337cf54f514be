"""Readable text form of the loop IR (golden tests pin it)."""
from __future__ import annotations

from ubique.ir import loop as L

_INFIX = {"add": ("+", 4), "sub": ("-", 4), "mul": ("*", 5), "div": ("/", 5), "floordiv": ("//", 5),
          "mod": ("%", 5), "and": ("&&", 2), "or": ("||", 1), "xor": ("^", 3)}
_CMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def print_expr(e: L.Expr, prec: int = 0) -> str:
    if isinstance(e, L.Const):
        if e.dtype.is_float:
            return repr(e.value) if e.dtype.short in ("f32", "f64") else f"{e.value!r}:{e.dtype.short}"
        if e.dtype.is_bool:
            return "true" if e.value else "false"
        return str(e.value) if e.dtype is L.I64 else f"{e.value}:{e.dtype.short}"
    if isinstance(e, L.Var):
        return e.name
    if isinstance(e, L.Binary) and e.op in _INFIX:
        sym, p = _INFIX[e.op]
        s = f"{print_expr(e.a, p)} {sym} {print_expr(e.b, p + 1)}"
        return f"({s})" if p < prec else s
    if isinstance(e, L.Binary):
        return f"{e.op}({print_expr(e.a)}, {print_expr(e.b)})"
    if isinstance(e, L.Compare):
        s = f"{print_expr(e.a, 4)} {_CMP[e.op]} {print_expr(e.b, 4)}"
        return f"({s})" if prec > 0 else s
    if isinstance(e, L.Select):
        return f"select({print_expr(e.cond)}, {print_expr(e.a)}, {print_expr(e.b)})"
    if isinstance(e, L.Cast):
        return f"{e.dtype.short}({print_expr(e.a)})"
    if isinstance(e, L.Call):
        return f"{e.name}({', '.join(print_expr(a) for a in e.args)})"
    if isinstance(e, L.Load):
        ref = f"{e.buffer.name}[{', '.join(print_expr(i) for i in e.indices)}]"
        return ref if e.mask is None else f"masked({ref}, {print_expr(e.mask)}, {print_expr(e.other)})"
    if isinstance(e, L.Reduce):
        axes = ", ".join(f"{v.name} < {print_expr(x)}" for v, x in e.axes)
        return f"{e.kind}[{axes}]({print_expr(e.body)})"
    raise TypeError(type(e).__name__)


def print_stmt(s: L.Stmt, indent: int = 1) -> list[str]:
    pad = "  " * indent
    if isinstance(s, L.Seq):
        return [line for x in s.stmts for line in print_stmt(x, indent)]
    if isinstance(s, L.For):
        kind = "" if s.kind == "serial" else s.kind + (f"({s.lanes})" if s.lanes else "") + " "
        return ([f"{pad}{kind}for {s.var.name} in 0..{print_expr(s.extent)} {{"]
                + print_stmt(s.body, indent + 1) + [pad + "}"])
    if isinstance(s, L.Store):
        idx = ", ".join(print_expr(i) for i in s.indices)
        return [f"{pad}{s.buffer.name}[{idx}] = {print_expr(s.value)}"]
    if isinstance(s, L.Let):
        return [f"{pad}let {s.var.name}: {s.var.dtype.short} = {print_expr(s.value)}"] + print_stmt(s.body, indent)
    if isinstance(s, L.Alloc):
        return [f"{pad}var {s.var.name}: {s.var.dtype.short} = {print_expr(s.init)}"] + print_stmt(s.body, indent)
    if isinstance(s, L.Assign):
        return [f"{pad}{s.var.name} = {print_expr(s.value)}"]
    if isinstance(s, L.Scratch):
        b = s.buffer
        return ([f"{pad}{s.scope} {b.name}: {b.dtype.short}[{', '.join(print_expr(d) for d in b.shape)}]"]
                + print_stmt(s.body, indent))
    if isinstance(s, L.If):
        out = [f"{pad}if {print_expr(s.cond)} {{"] + print_stmt(s.then, indent + 1)
        if s.else_ is not None:
            out += [pad + "} else {"] + print_stmt(s.else_, indent + 1)
        return out + [pad + "}"]
    raise TypeError(type(s).__name__)


def print_kernel(k: L.Kernel) -> str:
    params = ", ".join(
        f"{b.name}: {b.dtype.short}[{', '.join(print_expr(d) for d in b.shape)}]" for b in k.params)
    dims = f" dims({', '.join(v.name for v in k.dims)})" if k.dims else ""
    return "\n".join([f"kernel {k.name}({params}){dims} {{"] + print_stmt(k.body) + ["}"])


def print_node(n) -> str:
    if isinstance(n, L.Kernel):
        return print_kernel(n)
    if isinstance(n, L.Stmt):
        return "\n".join(print_stmt(n, 0))
    if isinstance(n, L.Buffer):
        return f"Buffer({n.name}: {n.dtype.short})"
    return print_expr(n)
