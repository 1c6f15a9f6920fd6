"""The one matrix product of the model (DESIGN.md, convention 8): `linear(x, w)` dispatches on the
weight's type, so every layer works unchanged on float and on quantised params.

- a float tensor: `F.linear`;
- `Int8Weight` / `Int4Weight` on a GPU, with at most `KERNEL_MAX_ROWS` rows of activations (decode):
  the fused dequantise-matmul Triton kernels (llamafn.kernels.quant_matmul), which read each weight
  byte once;
- `Int8GemvWeight` / `Int4GemvWeight` (llamafn.quant.planar): the same kernels on the stored plane
  orders, under the same conditions;
- `Int4TinyGemmWeight` (llamafn.quant.tinygemm, batch-1 decode on a GPU): PyTorch's tinygemm kernel, at
  any row count;
- `Int4MmaWeight` (llamafn.quant.mma) on a GPU, up to `KERNEL_MAX_ROWS` bf16 rows: the tensor-core int4
  GEMV (llamafn.kernels.int4_mma), 8 or 16 rows a program; more rows, or other dtypes: the layout dequantised
  by one Triton launch (llamafn.kernels.mma_dequant), then `F.linear`;
- otherwise (the CPU, or prefill's many rows, where the product is compute-bound and one dequantise
  pass is small next to it): dequantise to the activations' dtype and `F.linear` (cuBLAS).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels import int4_mma, mma_dequant, quant_matmul  # noqa: F401  (registers the custom ops)
from ..kernels.runtime import triton
from .formats import (Int4GemvWeight, Int4MmaWeight, Int4TinyGemmWeight, Int4Weight, Int8GemvWeight, Int8Weight,
                      QuantWeight, dequantize)
from .tinygemm import tinygemm_matmul

KERNEL_MAX_ROWS = 64


def linear(x: torch.Tensor, w: torch.Tensor | QuantWeight) -> torch.Tensor:
    """x (..., K) @ w (N, K)^T -> (..., N), in x's dtype."""
    if isinstance(w, torch.Tensor):
        return F.linear(x, w)
    rows = x.reshape(-1, x.shape[-1])                                           # (M, K)
    if isinstance(w, Int4TinyGemmWeight):
        out = tinygemm_matmul(rows, w)
    elif isinstance(w, Int4MmaWeight):
        on_gpu = x.is_cuda and triton is not None
        if on_gpu and rows.shape[0] <= KERNEL_MAX_ROWS and x.dtype == torch.bfloat16:
            out = torch.ops.llamafn.int4_mma(rows.contiguous(), w.words, w.records, w.group_size)
        else:
            out = F.linear(rows, torch.ops.llamafn.int4_mma_dequantize(w.words, w.records, w.group_size, x.dtype)
                           if on_gpu else dequantize(w, x.dtype))
    elif x.is_cuda and triton is not None and rows.shape[0] <= KERNEL_MAX_ROWS:
        if isinstance(w, (Int8Weight, Int8GemvWeight)):
            out = torch.ops.llamafn.int8_matmul(rows.contiguous(), w.q, w.scale, isinstance(w, Int8GemvWeight))
        else:
            out = torch.ops.llamafn.int4_matmul(rows.contiguous(), w.q, w.scale, w.zero, w.group_size,
                                                isinstance(w, Int4GemvWeight))
    else:
        out = F.linear(rows, dequantize(w, x.dtype))
    return out.view(*x.shape[:-1], out.shape[-1])                              # (..., N)


def embedding(tokens: torch.Tensor, w: torch.Tensor | Int8Weight | Int4Weight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """tokens (...) -> rows of w (..., dim); a quantised table dequantises only the rows looked up."""
    if isinstance(w, torch.Tensor):
        return F.embedding(tokens, w)
    rows = type(w)(*(f[tokens.reshape(-1)] for f in w))                         # the looked-up rows, every field
    return dequantize(rows, dtype).view(*tokens.shape, -1)                      # (..., dim)
