"""Loop IR verifier: scoping, index ranks, dtypes and loop-kind nesting, with precise messages.

GPU kernels (block and thread loops, Scratch buffers: see ir/loop.py) are checked for what
their code generator relies on: one block loop, outermost; thread loops directly in its
uniform code (not nested in each other), no CPU parallel or vectorized loops inside it;
assignments from a thread loop to a local declared outside it only as a whole-body
reduction update; per-thread ("local") scratch indexed first by the thread loop variable."""
from __future__ import annotations

from ubique.errors import VerifyError
from ubique.ir import loop as L
from ubique.ir.loop_analysis import reduction_update


def verify_kernel(k: L.Kernel) -> None:
    params = {}
    for b in k.params:
        if b.name in params:
            raise VerifyError(f"kernel {k.name}: two parameters named {b.name!r}")
        params[b.name] = b
    scope = {v.name for v in k.dims}
    _Verifier(k, params).stmt(k.body, scope, locals_=set(), in_vector=False, in_parallel=False)


class _Verifier:
    def __init__(self, k, params):
        self.k, self.params = k, params
        self.vector_loop = None      # innermost enclosing vectorized loop
        self.vector_outer = set()    # locals declared outside it
        self.parallel_outer = set()  # locals declared outside the enclosing parallel loop
        self.scratch = {}            # name -> (Buffer, scope) of the Scratch buffers in scope
        self.depth = 0               # enclosing loops
        self.block_loops = 0         # block loops seen
        self.in_block = False
        self.thread_loop = None      # innermost enclosing thread loop
        self.thread_outer = set()    # locals declared outside it

    def fail(self, msg):
        raise VerifyError(f"kernel {self.k.name}: {msg}")

    def expr(self, e: L.Expr, scope):
        for n in L.walk(e):
            if isinstance(n, L.Var) and n.name not in scope:
                self.fail(f"variable {n.name!r} is used outside its scope")
            if isinstance(n, L.Load):
                self.access(n.buffer, n.indices)
                if n.mask is not None and (not n.mask.dtype.is_bool or n.other.dtype is not n.buffer.dtype):
                    self.fail(f"masked load of {n.buffer.name} needs a bool mask and an other value of "
                              f"dtype {n.buffer.dtype.short}")
            if isinstance(n, L.Reduce):
                self.fail("Reduce must be lowered to loops before the kernel is final")
            if isinstance(n, (L.Binary, L.Compare)) and n.a.dtype is not n.b.dtype:
                self.fail(f"operands of {n.op} have different dtypes "
                          f"({n.a.dtype.short} and {n.b.dtype.short}) in {e!r}")
            if isinstance(n, L.Select) and (n.a.dtype is not n.b.dtype or not n.cond.dtype.is_bool):
                self.fail(f"select needs a bool condition and equal branch dtypes in {e!r}")

    def access(self, buf, indices):
        scratch = self.scratch.get(buf.name)
        if scratch is not None and scratch[0] == buf:
            if scratch[1] == "local" and (self.thread_loop is None or not indices
                                          or indices[0] != self.thread_loop.var):
                self.fail(f"per-thread scratch buffer {buf.name} must be indexed first by the variable of the "
                          "enclosing thread loop")
        elif buf.name not in self.params or self.params[buf.name] != buf:
            self.fail(f"buffer {buf.name!r} is not a parameter of the kernel")
        if len(indices) != len(buf.shape):
            self.fail(f"buffer {buf.name} has rank {len(buf.shape)} but is indexed with {len(indices)} indices")
        for i in indices:
            if not i.dtype.is_int:
                self.fail(f"index {i!r} of {buf.name} is {i.dtype.short}, not an integer")

    def stmt(self, s, scope, locals_, in_vector, in_parallel):
        if isinstance(s, L.Seq):
            for x in s.stmts:
                self.stmt(x, scope, locals_, in_vector, in_parallel)
        elif isinstance(s, L.For):
            self.expr(s.extent, scope)
            if s.var.name in scope:
                self.fail(f"loop variable {s.var.name!r} shadows another variable")
            if s.kind == "parallel" and (in_vector or in_parallel):
                self.fail(f"parallel loop {s.var.name} is nested in a parallel or vectorized loop")
            self.gpu_loop(s)
            saved = (self.vector_loop, self.vector_outer, self.parallel_outer, self.in_block, self.thread_loop,
                     self.thread_outer)
            if s.kind == "vectorized" and not in_vector:
                self.vector_loop, self.vector_outer = s, set(locals_)
            if s.kind == "parallel":
                self.parallel_outer = set(locals_)
            if s.kind == "block":
                self.in_block = True
            if s.kind == "thread":
                self.thread_loop, self.thread_outer = s, set(locals_)
            self.depth += 1
            self.stmt(s.body, scope | {s.var.name}, locals_, in_vector or s.kind == "vectorized",
                      in_parallel or s.kind == "parallel")
            self.depth -= 1
            (self.vector_loop, self.vector_outer, self.parallel_outer, self.in_block, self.thread_loop,
             self.thread_outer) = saved
        elif isinstance(s, L.Store):
            self.access(s.buffer, s.indices)
            for i in s.indices:
                self.expr(i, scope)
            self.expr(s.value, scope)
            if s.value.dtype is not s.buffer.dtype:
                self.fail(f"store of a {s.value.dtype.short} value into {s.buffer.name} ({s.buffer.dtype.short})")
        elif isinstance(s, (L.Let, L.Alloc)):
            value = s.value if isinstance(s, L.Let) else s.init
            self.expr(value, scope)
            if value.dtype is not s.var.dtype:
                self.fail(f"{s.var.name} is {s.var.dtype.short} but is set to a {value.dtype.short} value")
            self.stmt(s.body, scope | {s.var.name},
                      locals_ | ({s.var.name} if isinstance(s, L.Alloc) else set()), in_vector, in_parallel)
        elif isinstance(s, L.Assign):
            if s.var.name not in locals_:
                self.fail(f"assignment to {s.var.name!r}, which is not a local declared with var")
            if in_parallel and s.var.name in self.parallel_outer:
                self.fail(f"{s.var.name} is assigned by every iteration of a parallel loop (a data race); "
                          "declare it inside the loop")
            if self.thread_loop is not None and s.var.name in self.thread_outer and not (
                    self.thread_loop.body is s and reduction_update(self.thread_loop) is not None):
                self.fail(f"{s.var.name} is declared outside thread loop {self.thread_loop.var.name} and assigned "
                          "inside it; only a loop whose whole body is `acc = acc op value` (op: add mul max min) "
                          "can reduce across threads")
            if in_vector and s.var.name in self.vector_outer and not (
                    self.vector_loop.body is s and reduction_update(self.vector_loop) is not None):
                self.fail(f"{s.var.name} is declared outside vectorized loop {self.vector_loop.var.name} and "
                          "assigned inside it; only a loop whose whole body is `acc = acc op value` "
                          "(op: add mul max min) can be vectorized that way")
            self.expr(s.value, scope)
            if s.value.dtype is not s.var.dtype:
                self.fail(f"{s.var.name} is {s.var.dtype.short} but is assigned a {s.value.dtype.short} value")
        elif isinstance(s, L.Scratch):
            b = s.buffer
            if b.name in self.params or b.name in self.scratch:
                self.fail(f"scratch buffer {b.name!r} shadows another buffer")
            for d in b.shape:
                if not isinstance(d, L.Const) or d.value < 1:
                    self.fail(f"scratch buffer {b.name} needs a static shape of positive sizes")
            if s.scope == "local" and len(b.shape) < 1:
                self.fail(f"per-thread scratch buffer {b.name} needs a leading thread axis")
            self.scratch[b.name] = (b, s.scope)
            self.stmt(s.body, scope, locals_, in_vector, in_parallel)
            del self.scratch[b.name]
        elif isinstance(s, L.If):
            self.expr(s.cond, scope)
            self.stmt(s.then, scope, locals_, in_vector, in_parallel)
            if s.else_ is not None:
                self.stmt(s.else_, scope, locals_, in_vector, in_parallel)
        else:
            self.fail(f"unknown statement {type(s).__name__}")

    def gpu_loop(self, s: L.For) -> None:
        """Nesting rules of the GPU loop kinds."""
        if s.kind == "block":
            if self.depth:
                self.fail(f"block loop {s.var.name} is nested in another loop; it must be the kernel's outermost loop")
            self.block_loops += 1
            if self.block_loops > 1:
                self.fail(f"block loop {s.var.name}: a kernel has at most one block loop")
        elif s.kind == "thread":
            if not self.in_block:
                self.fail(f"thread loop {s.var.name} is not inside a block loop")
            if self.thread_loop is not None:
                self.fail(f"thread loop {s.var.name} is nested in thread loop {self.thread_loop.var.name}")
            if s.lanes < 1:
                self.fail(f"thread loop {s.var.name} needs its block's thread count (lanes >= 1)")
        elif s.kind in ("parallel", "vectorized") and self.in_block:
            self.fail(f"{s.kind} loop {s.var.name} is inside a block loop (GPU kernels use thread loops)")
