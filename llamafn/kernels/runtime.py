"""What every Triton kernel module shares: the optional `triton` import, whether kernels run in
Triton's interpreter (TRITON_INTERPRET=1, the CPU tests), how a kernel is launched (through
`torch.library.wrap_triton` on a GPU, so inductor can trace it inside a custom op), and the check
that a kernel can run at all."""

from __future__ import annotations

import functools
import os

import torch

from ..errors import InputError

try:
    import triton
except ImportError:                      # triton is optional on the CPU: the reference backends run instead
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

if triton is not None:
    import triton.language as tl

    @triton.jit
    def dot(a, b):
        """tl.dot in IEEE fp32 for float32 operands (the default TF32 keeps 10 mantissa bits), else the
        tensor cores' fp16/bf16 product with fp32 accumulation."""
        if a.dtype == tl.float32:
            return tl.dot(a, b, input_precision="ieee")
        else:
            return tl.dot(a, b)


@functools.cache
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def launcher(kernel):
    """kernel[grid](...) as to launch it: directly in the interpreter, wrapped for tracing on a GPU."""
    return kernel if INTERPRET else torch.library.wrap_triton(kernel)


def require_triton(device: torch.device | str, what: str) -> None:
    """Raise InputError unless Triton kernels can run for tensors on `device`."""
    if triton is None or not (torch.device(device).type == "cuda" or INTERPRET):
        raise InputError(f"{what} needs a CUDA GPU (or TRITON_INTERPRET=1 with triton installed)")
