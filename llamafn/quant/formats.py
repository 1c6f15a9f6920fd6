"""Quantised linear weights as data (DESIGN.md, convention 8): small NamedTuples of tensors that sit in
the params dict where a (out_features, in_features) matrix sat.

- `Int8Weight`: weight-only int8 with one symmetric scale per output channel, w ~ q * scale
  (LLM.int8's vector-wise scheme without the outlier path, Dettmers et al. 2022; gpt-fast's int8).
- `Int4Weight`: weight-only 4-bit with a scale and an integer zero point per group of `group_size`
  consecutive inputs of a row, w ~ (q - zero) * scale (the asymmetric group-wise scheme of GPTQ/AWQ,
  here with round-to-nearest), two values a byte: column 2j in the low nibble, 2j + 1 in the high one.
- `Int4TinyGemmWeight`: an Int4Weight repacked for PyTorch's tinygemm kernel on the device that runs
  it (llamafn.quant.tinygemm); a run-time layout that is never saved, and the one type whose fields
  are not laid out by output channel (so it holds matrices, never the embedding table).
- `Int8GemvWeight`: an Int8Weight with each row's columns in the int8 GEMV's plane order
  (llamafn.quant.planar); a run-time layout that is never saved, for matrices only.
- `Int4GemvWeight`: an Int4Weight (whole groups) with each group's nibbles in the int4 GEMV's group-plane
  order (llamafn.quant.planar); a run-time layout that is never saved, for matrices only.
- `Int4MmaWeight`: an Int4Weight in the tensor-core GEMV's fragment order, tiles of 16 output channels on
  dim 0 (llamafn.quant.mma); a run-time layout that is never saved, for matrices only.

Every field has the output channels on dim 0, so row gathers (embedding lookups) and row concatenation
(`params.fuse`) act field by field. The group size is not stored: it is the power of two for which
ceil(in_features / group_size) is the stored number of groups (the whole row when there is one group).
Scales are kept in the model's float dtype and chosen so that the error bound holds for the *stored*
scale: |w - dequantize(q)| <= scale / 2 everywhere.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import InputError

GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 128

# What a quantised weight answers in place of a tensor: its float dtype (the scales') and its device;
# and an int8 weight's shape, its values'.
SCALE_DTYPE = property(lambda w: w.scale.dtype)
DEVICE = property(lambda w: w.q.device)
Q_SHAPE = property(lambda w: w.q.shape)


class Int8Weight(NamedTuple):
    q: torch.Tensor        # (N, K) int8 in [-127, 127]
    scale: torch.Tensor    # (N,) float

    dtype = SCALE_DTYPE
    device = DEVICE
    shape = Q_SHAPE


# An int4 weight's shape (two values a byte) and group size (stored as the number of groups).
NIBBLE_SHAPE = property(lambda w: torch.Size((w.q.shape[0], 2 * w.q.shape[1])))
GROUP_SIZE = property(lambda w: w.shape[1] if w.scale.shape[1] == 1
                      else 1 << (-(-w.shape[1] // w.scale.shape[1]) - 1).bit_length())


class Int4Weight(NamedTuple):
    q: torch.Tensor        # (N, K/2) uint8, two 4-bit values a byte
    scale: torch.Tensor    # (N, G) float, G = ceil(K / group_size)
    zero: torch.Tensor     # (N, G) uint8 in [0, 15]

    dtype = SCALE_DTYPE
    device = DEVICE
    shape = NIBBLE_SHAPE
    group_size = GROUP_SIZE


class Int4TinyGemmWeight(NamedTuple):
    """An Int4Weight in the layout of PyTorch's tinygemm kernel (`torch._weight_int4pack_mm`), made on the
    device that runs it (llamafn.quant.tinygemm); a run-time layout, never saved."""
    packed: torch.Tensor              # CUDA: (N/8, K/(16 t), 32, t/2) int32 for t inner k-tiles; CPU: (N, K/2) uint8
    scales_and_zeros: torch.Tensor    # (G, N, 2) bfloat16: w = (q - 8) * scale + zero

    dtype = property(lambda w: w.scales_and_zeros.dtype)
    device = property(lambda w: w.packed.device)

    @property
    def shape(self) -> torch.Size:
        p = self.packed
        K = 2 * p.shape[1] if p.dim() == 2 else 32 * p.shape[1] * p.shape[3]
        return torch.Size((self.scales_and_zeros.shape[1], K))

    @property
    def group_size(self) -> int:
        return self.shape[1] // self.scales_and_zeros.shape[0]


class Int8GemvWeight(NamedTuple):
    """An Int8Weight whose columns are stored in plane order: column 4w + j of q is input j K/4 + w
    (llamafn.quant.planar); a run-time layout, never saved."""
    q: torch.Tensor        # (N, K) int8, planar columns
    scale: torch.Tensor    # (N,) float

    dtype = SCALE_DTYPE
    device = DEVICE
    shape = Q_SHAPE


class Int4GemvWeight(NamedTuple):
    """An Int4Weight (K a multiple of the group) whose nibbles are stored in group-plane order
    (`group_plane_order`, llamafn.quant.planar); a run-time layout, never saved."""
    q: torch.Tensor        # (N, K/2) uint8, group-plane nibbles
    scale: torch.Tensor    # (N, G) float
    zero: torch.Tensor     # (N, G) uint8 in [0, 15]

    dtype = SCALE_DTYPE
    device = DEVICE
    shape = NIBBLE_SHAPE
    group_size = GROUP_SIZE


class Int4MmaWeight(NamedTuple):
    """An Int4Weight in the tensor-core GEMV's layout (llamafn.quant.mma): words of 8 nibbles in mma
    fragment order and a record of bf16 scales and zero points per (tile, group, row pair); a run-time
    layout, never saved."""
    words: torch.Tensor    # (N/16, ceil(G/c) group/64, 128 c) int32, c warps a tile, each ceil(G/c) groups
    records: torch.Tensor  # (N/16, G, 8) int64

    dtype = torch.bfloat16
    device = property(lambda w: w.words.device)
    shape = property(lambda w: torch.Size((16 * w.words.shape[0], w.records.shape[1] * w.group_size)))

    @property
    def group_size(self) -> int:
        chains = self.words.shape[2] // 128
        return 64 * self.words.shape[1] // -(-self.records.shape[1] // chains)


QuantWeight = Int8Weight | Int4Weight | Int4TinyGemmWeight | Int8GemvWeight | Int4GemvWeight | Int4MmaWeight


def is_quantized(w: object) -> bool:
    return isinstance(w, QuantWeight)


def stored_scale(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`scale` (float32) rounded to `dtype`, never below its float32 value (so no value is clipped)."""
    s = scale.to(dtype)
    return torch.where(s.float() < scale, torch.nextafter(s, torch.full_like(s, float("inf"))), s)


def quantize_int8(w: torch.Tensor) -> Int8Weight:
    """w (N, K) float -> Int8Weight, one scale a row; the scale has w's dtype. Any leading dims work
    the same, (..., K) -> scales (...) (the int8 KV cache's vectors, llamafn.cache)."""
    w32 = w.float()
    amax = w32.abs().amax(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)
    scale = stored_scale(amax / 127, w.dtype)                                  # (N,)
    q = (w32 / scale.float()[..., None]).round().clamp(-127, 127).to(torch.int8)
    return Int8Weight(q, scale)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, K) integers in [0, 15], K even -> (N, K/2) uint8, column 2j low nibble, 2j + 1 high."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of pack_int4: (N, K/2) uint8 -> (N, K) uint8."""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)      # (N, K/2, 2) -> (N, K)


def quantize_int4(w: torch.Tensor, group_size: int = DEFAULT_GROUP_SIZE) -> Int4Weight:
    """w (N, K) float, K even -> Int4Weight with groups of `group_size` inputs (a power of two; the last
    group of a row may be shorter); scales have w's dtype."""
    if group_size not in GROUP_SIZES:
        raise InputError(f"int4 group_size must be one of {GROUP_SIZES}, got {group_size}")
    N, K = w.shape
    if K % 2:
        raise InputError(f"int4 needs an even number of input features, got a weight of shape {tuple(w.shape)}")
    G = -(-K // group_size)
    padded = F.pad(w.float(), (0, G * group_size - K))                       # (N, G*g), zeros past K
    groups = padded.view(N, G, group_size)                                   # (N, G, g)
    lo, hi = groups.amin(dim=2).clamp_max(0), groups.amax(dim=2).clamp_min(0)
    scale = stored_scale(((hi - lo) / 15).clamp_min(torch.finfo(torch.float32).tiny), w.dtype)   # (N, G)
    s = scale.float()
    zero = (-lo / s).round().clamp(0, 15)                                    # (N, G)
    q = ((groups / s[..., None]).round() + zero[..., None]).clamp(0, 15)     # (N, G, g)
    return Int4Weight(pack_int4(q.view(N, -1)[:, :K]), scale, zero.to(torch.uint8))


def plane_order(t: torch.Tensor) -> torch.Tensor:
    """(R, K) -> (R, K), K a multiple of 4, with column 4w + j holding column j K/4 + w: the int8 GEMV's
    plane order (llamafn.quant.planar), for a weight's columns or the activations against one."""
    R, K = t.shape
    return t.view(R, 4, K // 4).transpose(1, 2).reshape(R, K)                  # (R, K/4, 4) read row by row


def natural_order(t: torch.Tensor) -> torch.Tensor:
    """The inverse of plane_order: column j K/4 + w holds column 4w + j."""
    R, K = t.shape
    return t.view(R, K // 4, 4).transpose(1, 2).reshape(R, K)                  # (R, 4, K/4) read row by row


def group_plane_order(t: torch.Tensor, group: int) -> torch.Tensor:
    """(R, K) -> (R, K), K a multiple of `group`: the int4 GEMV's group-plane order. Within each group, split
    into 4 planes of group/4 columns, position 8w + 4h + j holds column j group/4 + 2w + h of the group, so
    that nibbles j and j + 4 of word w (two 16-bit lanes of the word, llamafn.kernels.quant_gemv) meet the
    bf16 pair w of plane j: one 32-bit load of x itself."""
    R, K = t.shape
    return t.view(R, K // group, 4, group // 8, 2).permute(0, 1, 3, 4, 2).reshape(R, K)   # (R, G, w, h, j)


def group_natural_order(t: torch.Tensor, group: int) -> torch.Tensor:
    """The inverse of group_plane_order."""
    R, K = t.shape
    return t.view(R, K // group, group // 8, 2, 4).permute(0, 1, 4, 2, 3).reshape(R, K)   # (R, G, j, w, h)


def dequantize(w: QuantWeight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The float matrix (N, K) a quantised weight stands for, in `dtype` (default: the scale's)."""
    dtype = dtype or w.dtype
    if isinstance(w, Int4TinyGemmWeight):
        from .tinygemm import tinygemm_matmul                                 # the kernel is the only reader of its layout
        eye = torch.eye(w.shape[1], dtype=torch.bfloat16, device=w.device)
        return tinygemm_matmul(eye, w).T.to(dtype)                           # I (K, K) @ w^T -> (K, N)
    if isinstance(w, Int8GemvWeight):
        w = Int8Weight(natural_order(w.q), w.scale)
    if isinstance(w, Int4GemvWeight):
        w = Int4Weight(pack_int4(group_natural_order(unpack_int4(w.q), w.group_size)), w.scale, w.zero)
    if isinstance(w, Int4MmaWeight):
        from .mma import to_natural                                          # the layout's module imports this one
        w = to_natural(w)
    if isinstance(w, Int8Weight):
        return (w.q.float() * w.scale.float()[..., None]).to(dtype)
    N, K = w.shape
    g = w.group_size
    q = unpack_int4(w.q).float()                                             # (N, K)
    per_column = torch.arange(K, device=q.device) // g                       # (K,) group of each input
    return ((q - w.zero.float()[:, per_column]) * w.scale.float()[:, per_column]).to(dtype)


def quantize_weight(w: torch.Tensor, scheme: str, group_size: int = DEFAULT_GROUP_SIZE) -> QuantWeight:
    if scheme == "int8":
        return quantize_int8(w)
    if scheme == "int4":
        return quantize_int4(w, group_size)
    raise InputError(f"unknown quantization scheme {scheme!r}; available: int8, int4")


def check_weight(w: QuantWeight, key: str) -> None:
    """Raise InputError unless the fields of a quantised weight fit together (shapes only, so it works
    on lazily read and meta tensors)."""
    q, scale = tuple(w.q.shape), tuple(w.scale.shape)
    if len(q) != 2 or scale[:1] != q[:1]:
        raise InputError(f"{key}: quantized weight fields do not fit: q {q}, scale {scale}")
    if isinstance(w, (Int4Weight, Int4GemvWeight)):
        zero, K = tuple(w.zero.shape), 2 * q[1]
        if (len(scale) != 2 or zero != scale or not 1 <= scale[1] <= K or -(-K // w.group_size) != scale[1]
                or (scale[1] > 1 and w.group_size not in GROUP_SIZES)):
            raise InputError(f"{key}: int4 fields do not fit: q {q} (so {K} inputs), scale {scale}, zero {zero}")
    elif len(scale) != 1:
        raise InputError(f"{key}: int8 scale must have shape ({q[0]},), got {scale}")
