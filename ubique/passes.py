"""`ub.passes`: custom graph and loop-IR passes at a position of the pipeline.

    def drop_identities(graph, target):            # a graph pass: Graph -> Graph
        ...
    ub.passes.register("drop_identities", drop_identities, after="decompose")

    def annotate(kernel, target):                  # a loop-IR pass: Kernel -> Kernel
        ...
    ub.passes.register("annotate", annotate, after="fusion", target="mychip")

The pipeline's steps, their order and what a pass at each position receives are described
in compiler/pass_manager.py; `ubique compile --print-passes` shows the pipeline that ran,
`--dump-after NAME` the IR after a step. Custom passes run when compiling for a target, not
on the portable graph a .ubq file keeps.
"""
from ubique.compiler.pass_manager import (CustomPass, GRAPH_PASSES, KERNEL_STAGES, custom_passes,  # noqa: F401
                                          register_pass as register, unregister_pass as unregister)

__all__ = ["register", "unregister", "custom_passes", "CustomPass", "GRAPH_PASSES", "KERNEL_STAGES"]
