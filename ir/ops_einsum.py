"""einsum (numpy / ONNX Einsum semantics) as a composite of transpose, reshape, slice, sum and matmul.

Operands are contracted pairwise from left to right: each pair becomes one batched
matmul (batch labels, then the labels of the left operand, times the labels of the
right one, contracting the shared labels nobody needs later), or a broadcasting
multiply when no label is contracted. Labels that only one
operand has and nobody needs are summed away first; repeated labels in one operand
take the diagonal (a strided slice of the flattened pair of axes).
"""
from __future__ import annotations

from ubique.errors import ShapeError, VerifyError
from ubique.ir import dims as D
from ubique.ir.dtypes import promote
from ubique.ir.graph import TensorType
from ubique.ir.registry import Attr, OpDef, register

_ELL = "..."


def _ell(k: int) -> str:
    return f"#{k}"  # label of the k-th broadcast (ellipsis) dimension: never a letter


def _parse_term(op_eq: str, term: str, where: str) -> list:
    """Letters and at most one '...' -> list of labels (the ellipsis kept as '...')."""
    labels, k = [], 0
    while k < len(term):
        if term.startswith(_ELL, k):
            if _ELL in labels:
                raise VerifyError(f"einsum: {where} of {op_eq!r} has more than one ellipsis")
            labels.append(_ELL)
            k += 3
            continue
        c = term[k]
        if not (c.isascii() and c.isalpha()):
            raise VerifyError(f"einsum: invalid character {c!r} in {where} of {op_eq!r} "
                              f"(labels are letters a-z, A-Z, with at most one '...')")
        labels.append(c)
        k += 1
    return labels


def parse_equation(equation: str, shapes) -> tuple[list[list[str]], list[str], dict]:
    """Labels of each operand (ellipses expanded to '#k' labels), output labels, label sizes."""
    eq = equation.replace(" ", "")
    if eq.count("->") > 1:
        raise VerifyError(f"einsum: equation {equation!r} has more than one '->'")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise VerifyError(f"einsum: equation {equation!r} has {len(terms)} operand term(s) "
                          f"but {len(shapes)} input(s) were given")
    raw = [_parse_term(equation, t, f"operand {n}") for n, t in enumerate(terms)]
    n_ell = []
    for n, (labels, shape) in enumerate(zip(raw, shapes)):
        named = len([x for x in labels if x != _ELL])
        e = len(shape) - named
        if e < 0 or (e > 0 and _ELL not in labels):
            raise VerifyError(f"einsum: operand {n} has rank {len(shape)} but its term {terms[n]!r} "
                              f"names {named} ax{'is' if named == 1 else 'es'}")
        n_ell.append(e)
    E = max(n_ell, default=0)
    operands = []
    for labels, e in zip(raw, n_ell):
        out = []
        for x in labels:
            out.extend([_ell(E - e + j) for j in range(e)] if x == _ELL else [x])
        operands.append(out)

    sizes: dict = {}
    for n, (labels, shape) in enumerate(zip(operands, shapes)):
        for x, d in zip(labels, shape):
            if x not in sizes or sizes[x] == 1 and x.startswith("#"):
                sizes[x] = d
            elif sizes[x] != d and not (x.startswith("#") and d == 1):
                what = "broadcast dimension" if x.startswith("#") else f"label {x!r}"
                raise ShapeError(f"einsum: {what} has size {sizes[x]} in one operand and {d} in operand {n} "
                                 f"(equation {equation!r})")

    if arrow:
        out_raw = _parse_term(equation, rhs, "the output")
        if len(set(out_raw)) != len(out_raw):
            raise VerifyError(f"einsum: output {rhs!r} of {equation!r} repeats a label")
        if E and _ELL not in out_raw:  # numpy refuses to sum broadcast dimensions away
            raise VerifyError(f"einsum: the operands of {equation!r} have broadcast ('...') dimensions, "
                              f"so the output term needs '...' too")
        output = []
        for x in out_raw:
            if x == _ELL:
                output.extend(_ell(j) for j in range(E))
            elif x not in sizes:
                raise VerifyError(f"einsum: output label {x!r} of {equation!r} appears in no operand")
            else:
                output.append(x)
    else:  # implicit output: broadcast dims, then the labels used once, in alphabetical (ASCII) order
        counts: dict = {}
        for labels in operands:
            for x in labels:
                counts[x] = counts.get(x, 0) + 1
        output = [_ell(j) for j in range(E)] + sorted(x for x, c in counts.items() if c == 1 and not x.startswith("#"))
    return operands, output, sizes


def _einsum_infer(ts, attrs):
    _, output, sizes = parse_equation(attrs["equation"], [t.shape for t in ts])
    dtype = ts[0].dtype
    for t in ts[1:]:
        dtype = promote(dtype, t.dtype)
    return [TensorType(tuple(sizes[x] for x in output), dtype)]


# -- decomposition --------------------------------------------------------------------------------
class _Operand:
    def __init__(self, value, labels):
        self.value, self.labels = value, list(labels)

    def size(self, x):
        return self.value.shape[self.labels.index(x)]


def _reshape(g, v, shape):
    shape = tuple(shape)
    return v if tuple(v.shape) == shape else g.op("reshape", v, shape=shape)


def _transpose(g, a: _Operand, order) -> _Operand:
    perm = tuple(a.labels.index(x) for x in order)
    if perm == tuple(range(len(perm))):
        return _Operand(a.value, order)
    return _Operand(g.op("transpose", a.value, perm=perm), order)


def _sum_out(g, a: _Operand, drop) -> _Operand:
    axes = tuple(k for k, x in enumerate(a.labels) if x in drop)
    if not axes:
        return a
    return _Operand(g.op("sum", a.value, axes=axes), [x for x in a.labels if x not in drop])


def _diagonals(g, a: _Operand) -> _Operand:
    """Takes the diagonal over each label repeated within one operand."""
    while len(set(a.labels)) != len(a.labels):
        x = next(x for x in a.labels if a.labels.count(x) > 1)
        p = a.labels.index(x)
        q = a.labels.index(x, p + 1)
        rest = [k for k in range(len(a.labels)) if k not in (p, q)]
        n = a.value.shape[p]
        v = a.value if rest + [p, q] == list(range(len(rest) + 2)) else \
            g.op("transpose", a.value, perm=tuple(rest + [p, q]))
        lead = tuple(v.shape[:-2])
        if not D.is_static(n):
            raise ShapeError(f"einsum: the diagonal over label {x!r} needs a static size, got {n!r}")
        flat = _reshape(g, v, lead + (n * n,))
        # element (i, i) of the flattened pair sits at i * (n + 1)
        diag = g.op("slice", flat, begin=(0,) * len(lead) + (0,), end=tuple(lead) + (n * n,),
                    step=(1,) * len(lead) + (n + 1,))
        a = _Operand(diag, [a.labels[k] for k in rest] + [x])
    return a


def _contract(g, a: _Operand, b: _Operand, keep: set) -> _Operand:
    """a * b summed over their shared labels not in `keep`, as one batched matmul."""
    a = _sum_out(g, a, {x for x in a.labels if x not in keep and x not in b.labels})
    b = _sum_out(g, b, {x for x in b.labels if x not in keep and x not in a.labels})
    # (a contracted label has the same size on both sides: only '...' dimensions broadcast, and
    # they are always in the output, so they are batch labels here, which matmul broadcasts)
    batch = [x for x in a.labels if x in b.labels and x in keep]
    contr = [x for x in a.labels if x in b.labels and x not in keep]
    a_only = [x for x in a.labels if x not in b.labels]
    b_only = [x for x in b.labels if x not in a.labels]
    a = _transpose(g, a, batch + a_only + contr)
    b = _transpose(g, b, batch + contr + b_only)
    nb = len(batch)
    if not contr:  # nothing to sum: a broadcasting product (outer or elementwise)
        av = _reshape(g, a.value, tuple(a.value.shape) + (1,) * len(b_only))
        bv = _reshape(g, b.value, tuple(b.value.shape[:nb]) + (1,) * len(a_only) + tuple(b.value.shape[nb:]))
        return _Operand(g.op("mul", av, bv), batch + a_only + b_only)

    def prod(op, labels):
        return D.prod(op.size(x) for x in labels)

    m, k, n = prod(a, a_only), prod(a, contr), prod(b, b_only)
    av = _reshape(g, a.value, tuple(a.value.shape[:nb]) + (m, k))
    bv = _reshape(g, b.value, tuple(b.value.shape[:nb]) + (k, n))
    out = g.op("matmul", av, bv)
    shape = tuple(out.shape[:nb]) + tuple(a.size(x) for x in a_only) + tuple(b.size(x) for x in b_only)
    return _Operand(_reshape(g, out, shape), batch + a_only + b_only)


def _einsum_decompose(g, ins, attrs):
    operands, output, _ = parse_equation(attrs["equation"], [v.shape for v in ins])
    ops = [_diagonals(g, _Operand(v, labels)) for v, labels in zip(ins, operands)]
    out = set(output)
    # labels nobody else needs are summed away before any contraction
    ops = [_sum_out(g, op, {x for x in op.labels if x not in out
                            and not any(x in o.labels for o in ops[:i] + ops[i + 1:])})
           for i, op in enumerate(ops)]
    while len(ops) > 1:
        a, b, rest = ops[0], ops[1], ops[2:]
        keep = out.union(*(o.labels for o in rest))
        ops = [_contract(g, a, b, keep)] + rest
    res = _sum_out(g, ops[0], {x for x in ops[0].labels if x not in out})
    res = _transpose(g, res, output)
    return [res.value]


register(OpDef("einsum", "composite", _einsum_infer, attrs={"equation": Attr("str", required=True)},
               decompose=_einsum_decompose, num_inputs=(1, -1),
               doc="numpy.einsum / ONNX Einsum: explicit ('ij,jk->ik') or implicit ('ij,jk') output, '...' "
                   "broadcast dimensions, repeated labels in one operand take the diagonal; no operand "
                   "reordering (left-to-right pairwise contraction via matmul)"))
