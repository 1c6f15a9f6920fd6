"""The one matrix product of the model (DESIGN.md, convention 8): `linear(x, w)` dispatches on the
weight's type, so every layer works unchanged on float and on quantised params.

- a float tensor: `F.linear`;
- `Int8Weight` / `Int4Weight` on a GPU, with at most `KERNEL_MAX_ROWS` rows of activations (decode):
  the fused dequantise-matmul Triton kernels (llamafn.kernels.quant_matmul), which read each weight
  byte once;
- `Int8GemvWeight` (llamafn.quant.planar): the int8 kernels on the stored plane order, under the same
  conditions as Int8Weight;
- `Int4TinyGemmWeight` (llamafn.quant.tinygemm, batch-1 decode on a GPU): PyTorch's tinygemm kernel, at
  any row count;
- `gated_linear(x, w13, swiglu)`: SwiGLU's hidden activations from a fused w13; int8 on a GPU computes
  the activation in the kernel's epilogue;
- otherwise (the CPU, or prefill's many rows, where the product is compute-bound and one dequantise
  pass is small next to it): dequantise to the activations' dtype and `F.linear` (cuBLAS).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..kernels import quant_matmul  # noqa: F401  (registers the custom ops)
from ..kernels.runtime import triton
from .formats import Int4TinyGemmWeight, Int4Weight, Int8GemvWeight, Int8Weight, QuantWeight, dequantize
from .tinygemm import tinygemm_matmul

KERNEL_MAX_ROWS = 64


def uses_kernels(rows: torch.Tensor) -> bool:
    """Whether the quantised Triton kernels take these (M, K) activations: on a GPU, at most KERNEL_MAX_ROWS."""
    return rows.is_cuda and triton is not None and rows.shape[0] <= KERNEL_MAX_ROWS


def linear(x: torch.Tensor, w: torch.Tensor | QuantWeight) -> torch.Tensor:
    """x (..., K) @ w (N, K)^T -> (..., N), in x's dtype."""
    if isinstance(w, torch.Tensor):
        return F.linear(x, w)
    rows = x.reshape(-1, x.shape[-1])                                           # (M, K)
    if isinstance(w, Int4TinyGemmWeight):
        out = tinygemm_matmul(rows, w)
    elif uses_kernels(rows):
        if isinstance(w, (Int8Weight, Int8GemvWeight)):
            out = torch.ops.llamafn.int8_matmul(rows.contiguous(), w.q, w.scale, isinstance(w, Int8GemvWeight))
        else:
            out = torch.ops.llamafn.int4_matmul(rows.contiguous(), w.q, w.scale, w.zero, w.group_size)
    else:
        out = F.linear(rows, dequantize(w, x.dtype))
    return out.view(*x.shape[:-1], out.shape[-1])                              # (..., N)


def gated_linear(x: torch.Tensor, w13: torch.Tensor | QuantWeight,
                 swiglu: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """SwiGLU's hidden activations from a fused w13 (gate rows, then up rows): x (..., K) ->
    swiglu(x @ w1^T, x @ w3^T) (..., N/2). An int8 weight on a GPU computes silu(gate) * up in the int8
    kernel's epilogue (no (..., N) intermediate, no activation kernel); otherwise `linear`, then `swiglu`."""
    rows = x.reshape(-1, x.shape[-1])                                           # (M, K)
    if isinstance(w13, (Int8Weight, Int8GemvWeight)) and uses_kernels(rows):
        planar = isinstance(w13, Int8GemvWeight)
        out = torch.ops.llamafn.int8_matmul(rows.contiguous(), w13.q, w13.scale, planar, True)
        return out.view(*x.shape[:-1], out.shape[-1])                          # (..., N/2)
    return swiglu(*linear(x, w13).chunk(2, dim=-1))


def embedding(tokens: torch.Tensor, w: torch.Tensor | Int8Weight | Int4Weight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """tokens (...) -> rows of w (..., dim); a quantised table dequantises only the rows looked up."""
    if isinstance(w, torch.Tensor):
        return F.embedding(tokens, w)
    rows = type(w)(*(f[tokens.reshape(-1)] for f in w))                         # the looked-up rows, every field
    return dequantize(rows, dtype).view(*tokens.shape, -1)                      # (..., dim)
