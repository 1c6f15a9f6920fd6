"""The one place torch.compile is applied (DESIGN.md, convention 6): drivers and benchmarks ask here
for compiled versions of the pure step functions, never decorate them.

Decode steps and prefill use mode="reduce-overhead" (inductor kernels replayed as one CUDA graph per
shape; the kernels of llamafn's custom ops are launched from Python, so a graph is what keeps their
launches cheap); for that to be both correct and cheap, every tensor that lives across steps (the
weights, the KV cache) is marked as a static address, so the graph reads and writes it in place
instead of copying it in and out on every replay, and a caller copies what it keeps of a graph's
outputs (`decode.sample.replayed`) before the next replay. Prefill is compiled once per prompt-length
bucket (`bucket`), so a new prompt length does not recompile unless it crosses into a new bucket.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

_COMPILED: dict[tuple, Callable] = {}


def compiled(fn: Callable, *, mode: str = "default", fullgraph: bool = True, dynamic: bool = False) -> Callable:
    """torch.compile(fn), memoised so that every caller shares one set of compiled graphs."""
    key = (fn, mode, fullgraph, dynamic)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, mode=mode, fullgraph=fullgraph, dynamic=dynamic)
    return _COMPILED[key]


def mark_static(tensors: Iterable[torch.Tensor]) -> None:
    """Declare long-lived tensors (weights, cache storage) static for CUDA graphs (see the module doc)."""
    for t in tensors:
        torch._dynamo.mark_static_address(t)


def bucket(n: int, minimum: int = 16) -> int:
    """The prefill length `n` tokens are padded to: the next power of two, at least `minimum`. By
    comparisons, so that a symbolic length (torch.compile with dynamic shapes) only guards on its bucket."""
    length = minimum
    while length < n:
        length *= 2
    return length


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
