"""ONNX LSTM and GRU nodes -> the lstm / gru ops of the registry.

Those ops take X, W, R and then only the optional inputs that are present, each
announced by a has_<name> attribute (see ir/ops_rnn.py); ONNX marks absent optional
inputs with empty names instead.
"""
from __future__ import annotations

_OPTIONAL = {"LSTM": ("B", "sequence_lens", "initial_h", "initial_c", "P"),
             "GRU": ("B", "sequence_lens", "initial_h")}
_PASSED = ("hidden_size", "direction", "layout", "activations", "activation_alpha", "activation_beta", "clip")
_EXTRA = {"LSTM": ("input_forget",), "GRU": ("linear_before_reset",)}


def import_rnn(ctx):
    kind = ctx.node.op_type
    inputs = [ctx.value(i) for i in range(3)]
    attrs = {}
    for k, name in enumerate(_OPTIONAL[kind], start=3):
        present = ctx.has(k)
        attrs[f"has_{name}"] = present
        if present:
            inputs.append(ctx.value(k))
    for name in _PASSED + _EXTRA[kind]:
        value = ctx.attr(name)
        if value is not None:
            attrs[name] = tuple(value) if isinstance(value, list) else value
    return ctx.node_op(kind.lower(), inputs, **attrs)
