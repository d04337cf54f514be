"""LSTM and GRU nodes -> the lstm / gru ops of the registry (optional inputs by position)."""
from __future__ import annotations


def import_rnn(ctx):
    ctx.unsupported("not yet")
