"""Rewrites of optimised LLVM IR that steer around known bugs of the LLVM that llvmlite ships.

Each rewrite keeps the IR's meaning exactly; it only changes how an operation is spelled so
that the buggy code path in LLVM's instruction selection is not taken.

Single-lane masked stores (LLVM 22, x86 with AVX-512 BW/VL): the X86 DAG combiner folds
`masked.store(trunc v, <one constant lane>)` into a truncating masked store, then turns the
one-lane store into a scalar store of the *untruncated* element: a `<4 x i8>` store of lane
0 becomes an 8-byte `movq`, writing 7 bytes past the lane (heap corruption). The loop
vectoriser makes such stores for guarded loops whose trip count is known, e.g. `for i in
0..64: if i < 37: out[i] = u8(x[i])`. A masked store with one constant lane is the same as
extracting that lane and storing it, which is what `split_single_lane_masked_stores` writes.
"""
from __future__ import annotations

import re

__all__ = ["split_single_lane_masked_stores"]

# `[tail ]call void @llvm.masked.store.v<N><T>.p0(<N x T> VALUE, ptr [attrs] PTR, <N x i1> <MASK>)[ #k][, !md...]`
# for element types of whole bytes (an <N x i1> vector is bit-packed in memory: a lane is no
# addressable element, so such stores are left alone)
_MASKED_STORE = re.compile(
    r"^(?P<indent>[ \t]*)(?:tail |notail |musttail )?call void "
    r"@llvm\.masked\.store\.v(?P<n>\d+)(?:i8|i16|i32|i64|f16|bf16|f32|f64)\.p0\("
    r"<(?P=n) x (?P<type>i8|i16|i32|i64|half|bfloat|float|double)> (?P<value>%[-\w.$]+), "
    r"ptr(?: (?:noundef|nonnull|noalias|align \d+))* (?P<ptr>%[-\w.$]+), "
    r"<(?P=n) x i1> <(?P<mask>[^>]*)>\)(?: #\d+)?(?:, !.*)?$",
    re.M)


def split_single_lane_masked_stores(text: str) -> str:
    """`text` (LLVM IR) with every masked store whose mask is a constant with exactly one
    lane set replaced by an extractelement and a plain store of that lane (see the module
    docstring). Where there is none, `text` itself comes back (the same object)."""
    if "@llvm.masked.store." not in text:
        return text
    count = 0

    def rewrite(m: re.Match) -> str:
        nonlocal count
        lanes = [lane.strip() for lane in m["mask"].split(",")]
        on = [k for k, lane in enumerate(lanes) if lane == "i1 true"]
        if len(lanes) != int(m["n"]) or len(on) != 1 or any(lane not in ("i1 true", "i1 false") for lane in lanes):
            return m[0]
        lane, ty, indent = on[0], m["type"], m["indent"]
        count += 1
        tmp = f"%ubq.ms{count}"
        return (f"{indent}{tmp}.v = extractelement <{m['n']} x {ty}> {m['value']}, i64 {lane}\n"
                f"{indent}{tmp}.p = getelementptr {ty}, ptr {m['ptr']}, i64 {lane}\n"
                f"{indent}store {ty} {tmp}.v, ptr {tmp}.p, align 1")

    out = _MASKED_STORE.sub(rewrite, text)
    return out if count else text
