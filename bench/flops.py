"""FLOP counts of a model: the multiply-adds of its conv2d, conv_transpose2d and matmul nodes.

Counted on ubique's imported graph IR (`ub.import_onnx`, before any pass), whose symbolic
dimensions ("batch", "seq") are bound to the sizes of the actual inputs. One multiply-add
is 2 FLOPs. Elementwise ops, normalisations, pooling and softmax are not counted (the
usual convention: they are a few percent of a CNN's or transformer's work).

  conv2d            x (N, C, H, W), w (M, C/g, kh, kw) -> y (N, M, Ho, Wo):
                    MACs = |y| * C/g * kh * kw   (grouped and depthwise convs included)
  conv_transpose2d  x (N, C, H, W), w (C, M/g, kh, kw):  MACs = |x| * M/g * kh * kw
  matmul            (..., m, k) @ (..., k, n) -> (..., m, n), batched and broadcasting:
                    MACs = |y| * k
"""
from __future__ import annotations

import math
from collections import Counter

from ubique.ir import dims as D

COUNTED = ("conv2d", "conv_transpose2d", "matmul")
UNCOUNTED_HEAVY = ("einsum", "lstm", "gru", "conv2d_nchwc", "depthwise_conv2d_nchwc")


def input_env(graph, feeds: dict) -> dict[str, int]:
    """Binds the graph inputs' named dimensions to the sizes of the arrays in `feeds`."""
    env: dict[str, int] = {}
    for v in graph.inputs:
        if v.name not in feeds:
            continue
        for d, size in zip(v.type.shape, feeds[v.name].shape):
            if isinstance(d, str) and d.isidentifier():
                env[d] = int(size)
    return env


def _size(shape, env) -> int:
    return math.prod(D.evaluate(d, env) for d in shape)


def node_macs(node, env: dict) -> int | None:
    """Multiply-adds of one node, or None for ops that are not counted."""
    if node.op == "conv2d":
        return _size(node.outputs[0].type.shape, env) * _size(node.inputs[1].type.shape[1:], env)
    if node.op == "conv_transpose2d":
        return _size(node.inputs[0].type.shape, env) * _size(node.inputs[1].type.shape[1:], env)
    if node.op == "matmul":
        return _size(node.outputs[0].type.shape, env) * D.evaluate(node.inputs[0].type.shape[-1], env)
    return None


def count_flops(graph, feeds: dict) -> tuple[int, dict[str, int], Counter]:
    """(total FLOPs, FLOPs per op name, count of heavy nodes left uncounted) for one run of
    `graph` on inputs of the shapes in `feeds`."""
    env = input_env(graph, feeds)
    per_op: dict[str, int] = {}
    skipped: Counter = Counter()
    for node in graph.nodes:
        macs = node_macs(node, env)
        if macs is not None:
            per_op[node.op] = per_op.get(node.op, 0) + 2 * macs
        elif node.op in UNCOUNTED_HEAVY:
            skipped[node.op] += 1
    return sum(per_op.values()), per_op, skipped
