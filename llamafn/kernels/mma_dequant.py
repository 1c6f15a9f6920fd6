"""An int4 weight in the tensor-core GEMV's layout (llamafn.quant.mma) back to its float matrix in one
Triton launch, for the steps that multiply it by more rows than the GEMV takes (a prefill): the words
are read once, in order, and each thread stores its word's 4 adjacent columns of each of its 2 rows as one
vector (8 scattered 2-byte stores a word took 3.4-4.1x as long: 0.22-0.27 of the copy rate against
0.91-0.93 at the 7B shapes on an H100, e.g. wqkv 180.9 against 45.3 us, measured by a probe script that
was not kept).

The reference is `quant.dequantize` (llamafn.quant.mma.to_natural, then the natural weight's formula):
a dozen permutes, packs and unpacks over the whole matrix in torch, which inductor also has to compile
into the prefill graph. Program (p, i) takes step i of tile p: word e holds, at nibble b = 4 half + 2 pair
+ h, the weight of row 16 p + 8 h + g at column (w gpc + gi) group + 4 S t + 4 s + 2 pair + half, where
e = 128 w + 16 g + 4 t + j and 4 i + j = S gi + s (the inverse of quant.mma.to_fragments)."""

from __future__ import annotations

import torch

from ..errors import InputError
from .runtime import kernel_op, launcher, triton

if triton is not None:
    import triton.language as tl

    from .int4_mma import bf16_at

    @triton.jit
    def mma_dequant_kernel(w_ptr, r_ptr, out_ptr, G, GPC, I, stride_on, NW: tl.constexpr, S: tl.constexpr):
        """w_ptr: words (P, I, NW * 128) int32; r_ptr: records (P, G, 8) int64; out_ptr: (16 P, G 16 S)."""
        pid = tl.program_id(0)
        p, i = pid // I, pid % I                                                  # tile p, step i
        E: tl.constexpr = NW * 128
        e = tl.arange(0, E)
        w, g, t, j = e // 128, (e // 16) % 8, (e // 4) % 4, e % 4                # chain, row pair, quad, k-step
        words = tl.load(w_ptr + pid.to(tl.int64) * E + e)                         # (E,) int32
        gi, s = (4 * i + j) // S, (4 * i + j) % S                                 # group of the chain, its k-step
        group = w * GPC + gi                                                      # (E,) past G: the last chains' padding
        real = group < G
        rec = tl.load(r_ptr + (p * G + tl.minimum(group, G - 1)) * 8 + g, mask=real, other=0)   # (E,) int64
        first = tl.multiple_of(group * (16 * S) + t * (4 * S) + s * 4, 4)       # (E,) column of pair 0, half 0
        c = tl.arange(0, 4)                                  # (4,) column first + c: pair c // 2, half c % 2
        for h in tl.static_range(2):
            shift = 4 * ((c % 2) * 4 + (c // 2) * 2 + h)                          # (4,) nibble b = 4 half + 2 pair + h
            q = ((words[:, None] >> shift[None, :]) & 0xF).to(tl.float32)         # (E, 4)
            value = (q + 128.0 + bf16_at(rec, 32 + 16 * h)[:, None]) * bf16_at(rec, 16 * h)[:, None]   # (q - z) scale
            row = p * 16 + 8 * h + g                                              # (E,)
            tl.store(out_ptr + row.to(tl.int64)[:, None] * stride_on + first[:, None] + c[None, :],
                     value.to(out_ptr.dtype.element_ty), mask=real[:, None])


def mma_dequantize_launch(words: torch.Tensor, records: torch.Tensor, group_size: int,
                          dtype: torch.dtype) -> torch.Tensor:
    """words (P, I, 128 c) int32 and records (P, G, 8) int64 of an Int4MmaWeight -> its (16 P, G group_size)
    matrix in dtype."""
    if words.dim() != 3 or words.shape[2] % 128 or records.shape[:1] != words.shape[:1] or records.shape[2:] != (8,):
        raise InputError(f"mma_dequantize takes words (P, I, 128 c) and records (P, G, 8); got "
                         f"{tuple(words.shape)} and {tuple(records.shape)}")
    P, I, E = words.shape
    G = records.shape[1]
    out = torch.empty(16 * P, G * group_size, dtype=dtype, device=words.device)
    if out.numel():
        launcher(mma_dequant_kernel)[(P * I,)](words, records, out, G, -(-G // (E // 128)), I, out.stride(0),
                                               NW=E // 128, S=group_size // 16)
    return out


if triton is not None:
    @kernel_op("llamafn::int4_mma_dequantize", mutates_args=())
    def int4_mma_dequantize(words: torch.Tensor, records: torch.Tensor, group_size: int,
                            dtype: torch.dtype) -> torch.Tensor:
        """An Int4MmaWeight's words and records -> its float matrix (N, K) in dtype, on the GPU."""
        return mma_dequantize_launch(words, records, group_size, dtype)
