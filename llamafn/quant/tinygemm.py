"""PyTorch's tinygemm int4 kernel (`torch._weight_int4pack_mm`, the int4 path of gpt-fast and torchao) as
a second layout of an Int4Weight, for the row counts where it is the faster product.

On an H100 (`bench_quant`'s kernel table, Llama-2-7B layer shapes, int4 g128, weights streamed from
HBM) tinygemm beat the Triton GEMV at one row of activations, 16.1 / 6.8 / 26.2 / 15.3 us against
18.7 / 7.9 / 31.1 / 18.5 (wqkv / wo / w13 / w2), beat the Triton tile at two and four rows on every
layer (16.4 / 7.0 / 27.1 / 15.4 and 22.0 / 8.7 / 35.8 / 20.1 us against 27.6 / 17.6 / 44.2 / 52.7),
and lost on wqkv and w13 at eight (35.2 against 27.9 us, 59.4 against 44.7). So `for_tinygemm` is a
params transform for decode of up to FASTER_UP_TO_ROWS rows a step on a GPU; since the tensor-core
GEMV (llamafn.quant.mma) beat it at 2-64 bf16 rows, `quant.for_decode` picks it only for activations
other than bf16. The compiled 7B step (batch 1, triton kernel set) ran at 381.0 tok/s with it against
285.5 with the exponent-trick Triton GEMV, in one run on one H100; the packed-bf16 GEMV that replaced
that kernel beat it at one row (424.5 against 390.9 tok/s, llamafn.quant.planar).

The layout: tinygemm stores w = (q - 8) * scale + zero with q the unsigned nibble, so our
(q - z) * scale becomes zero = (8 - z) * scale; scales and zeros are bf16 pairs (G, N, 2); the packed
nibbles are in the tensor-core order of `torch._convert_weight_to_int4pack` (on the CPU,
`_convert_weight_to_int4pack_for_cpu` and `_weight_int4pack_mm_for_cpu`, which tests use).
"""

from __future__ import annotations

import functools

import torch

from ..errors import InputError
from .formats import Int4TinyGemmWeight, Int4Weight, pack_int4, unpack_int4

INNER_K_TILES = 8
FASTER_UP_TO_ROWS = 4          # rows of activations up to which tinygemm measured faster (module doc)


def available(device: torch.device) -> bool:
    """Whether this PyTorch has the tinygemm kernel for `device` (CUDA sm80+, or the CPU variant)."""
    if device.type == "cuda":
        return hasattr(torch, "_weight_int4pack_mm") and torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def fits(w: Int4Weight) -> bool:
    """tinygemm's shape rules: whole groups, N a multiple of 16 (the CPU kernel's; CUDA's is 8), K of
    16 * INNER_K_TILES."""
    N, K = w.shape
    return K % w.group_size == 0 and N % 16 == 0 and K % (16 * INNER_K_TILES) == 0


def to_tinygemm(w: Int4Weight) -> Int4TinyGemmWeight:
    """The same weight in tinygemm's layout (exactly: the same nibbles; the scales and zeros rounded to bf16)."""
    if not fits(w):
        raise InputError(f"an int4 weight of shape {tuple(w.shape)}, group {w.group_size} does not fit tinygemm "
                         f"(whole groups, N % 16 == 0, K % {16 * INNER_K_TILES} == 0)")
    scale = w.scale.float()
    scales_and_zeros = torch.stack([scale, (8 - w.zero.float()) * scale], dim=-1)  # (N, G, 2)
    scales_and_zeros = scales_and_zeros.transpose(0, 1).contiguous().to(torch.bfloat16)   # (G, N, 2)
    return Int4TinyGemmWeight(pack(w.q), scales_and_zeros)


def pack(q: torch.Tensor) -> torch.Tensor:
    """Our nibbles (N, K/2) in the kernel's order for q's device."""
    if q.device.type == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(q).int(), INNER_K_TILES)
    if high_nibble_first(q.device):
        q = swap_nibbles(q)
    return torch._convert_weight_to_int4pack(q.contiguous(), INNER_K_TILES)


def swap_nibbles(q: torch.Tensor) -> torch.Tensor:
    return ((q & 0xF) << 4) | (q >> 4)


@functools.cache
def high_nibble_first(device: torch.device) -> bool:
    """Whether the CUDA packing op reads column 2j from the high nibble (the order has changed across
    PyTorch versions): a probe weight of distinct codes packed swapped, read back through the kernel."""
    codes = torch.randint(0, 16, (8, 16 * INNER_K_TILES), generator=torch.Generator().manual_seed(0))   # (N, K)
    swapped = swap_nibbles(pack_int4(codes)).to(device)
    eye = torch.eye(codes.shape[1], dtype=torch.bfloat16, device=device)
    ones = torch.ones(1, 8, 2, dtype=torch.bfloat16, device=device)              # scale 1, zero 1: w = q - 7
    out = torch._weight_int4pack_mm(eye, torch._convert_weight_to_int4pack(swapped, INNER_K_TILES), codes.shape[1], ones)
    return torch.equal(out.T.float().cpu(), codes.float() - 7)


def tinygemm_matmul(x: torch.Tensor, w: Int4TinyGemmWeight) -> torch.Tensor:
    """x (M, K) -> (M, N) in x's dtype; the kernel reads bf16 activations."""
    rows = x.to(torch.bfloat16).contiguous()
    if w.packed.device.type == "cpu":
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, w.packed, w.group_size, w.scales_and_zeros)
    else:
        out = torch._weight_int4pack_mm(rows, w.packed, w.group_size, w.scales_and_zeros)
    return out.to(x.dtype)


def for_tinygemm(params: dict) -> dict:
    """A new params dict with every int4 matrix that fits tinygemm in its layout (on the weight's device),
    the rest unchanged. The embedding table stays (lookups gather its rows, which tinygemm's layout does
    not keep together). Apply after `params.fuse` (the layout has no row concatenation either)."""
    out = {}
    for key, value in params.items():
        if isinstance(value, Int4Weight) and key != "tok_embeddings.weight" and fits(value):
            if not available(value.q.device):
                raise InputError(f"{key}: this PyTorch has no tinygemm int4 kernel for {value.q.device}")
            value = to_tinygemm(value)
        out[key] = value
    return out
