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

`gemv_rope_write` (the "triton" backend of the `qkv_rope_write` op, whose reference is in
llamafn.model.attention) is the fused wqkv's product of a decode step with RoPE and the KV cache write
in the GEMV's epilogue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import cache as kv
from ..kernels import get, int4_mma, mma_dequant, quant_gemv, quant_matmul, register  # noqa: F401  (registers the custom ops)
from ..kernels.runtime import INTERPRET, triton
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


def fuses_rope_write(x: torch.Tensor, w: torch.Tensor | QuantWeight, cache: kv.KVCache) -> bool:
    """Whether the decode GEMV of a fused wqkv can rotate q and k and write the cache in its epilogue
    (`gemv_rope_write`): one token (x (1, 1, dim)), w in a GEMV's plane order (llamafn.quant.planar), whose
    kernel runs here (a GPU, or the interpreter), a float cache, and head dims of whole row blocks."""
    if not isinstance(w, (Int8GemvWeight, Int4GemvWeight)) or triton is None or not (x.is_cuda or INTERPRET):
        return False
    int4_ok = isinstance(w, Int8GemvWeight) or quant_gemv.int4_gemv_fits(x.reshape(-1, x.shape[-1]), w.group_size)
    return x.shape[0] * x.shape[1] == 1 and int4_ok and not kv.quantized(cache) and cache.k[0].shape[-1] % 4 == 0


@register("qkv_rope_write", "triton")
def gemv_rope_write(x: torch.Tensor, w: torch.Tensor | QuantWeight, cos: torch.Tensor, sin: torch.Tensor,
                    cache: kv.KVCache, layer: int, pos: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, kv.KVCache]:
    """The fused wqkv product of a decode step with RoPE and the cache write in the GEMV's epilogue, where
    `fuses_rope_write` allows (one launch instead of the GEMV and the triton rope_write: the 7B int4 step
    0.7% faster on an H100, llamafn.kernels.quant_gemv); else the reference's product and the triton
    rope_write. -> (q (B, H, T, D), cache, written in place)."""
    if not fuses_rope_write(x, w, cache):
        return get("qkv_rope_write", "reference")(x, w, cos, sin, cache, layer, pos, n_heads,
                                                   rope_write=get("rope_write", "triton"))
    launch = torch.ops.llamafn.gemv_rope_write if x.is_cuda else quant_matmul.gemv_rope_write_launch
    zero, group = (w.zero, w.group_size) if isinstance(w, Int4GemvWeight) else (None, 0)
    q = launch(x.reshape(1, -1), w.q, w.scale, zero, group, cos, sin, pos, cache.k[layer], cache.v[layer], n_heads)
    return q.view(1, n_heads, 1, -1), cache                                     # (B, H, T, D)
