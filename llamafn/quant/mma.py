"""The tensor-core int4 GEMV's layout (llamafn.kernels.int4_mma) as a run-time layout of int4 weights,
`Int4MmaWeight`, for decode steps of two to sixty-four bf16 rows.

Rows go in tiles of 16 (one mma's A operand) and each tile's groups are split among `chains` warps, each
ceil(groups / chains) of them (the last warp's missing groups are zero words the kernel masks). Word e
of step i of tile p holds the 8 nibbles lane (e // 4) % 32 of warp e // 128 needs for k-step 4 i + e % 4
of its chain, in its A fragment's order (mma.m16n8k16: lane (g, t) holds rows g and g + 8 at k 2t, 2t + 1,
2t + 8, 2t + 9); inside a group, the k-step s columns of lane t are group/4 t + 4 s .. + 3, so that its B
fragments are one 8-byte quad of x. Record (p, group, g) holds the scales of rows 16 p + g and + 8 as bf16,
then -(128 + zero) of both as bf16 (what the kernel adds to 128 + q). Scales are rounded to bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..kernels import int4_mma
from .formats import Int4MmaWeight, Int4Weight, pack_int4, unpack_int4

GROUP_SIZES = (64, 128, 256)              # a group holds at least 4 k-steps of 16: one invocation of the PTX
CHAINS = (1, 2, 4, 8)                     # warps a tile the layout takes (16 measured slower on every 7B layer)
WARPS_IN_FLIGHT = 3072                    # tiles x chains to aim for (about 23 warps an SM on 132 SMs)


def fits(n: int, k: int, group_size: int) -> bool:
    """Whether an (n, k) int4 weight in groups of group_size takes the layout: rows in tiles of 16, whole
    groups of at least 4 k-steps."""
    return group_size in GROUP_SIZES and n % 16 == 0 and k % group_size == 0


def available(device: torch.device, chains: int = 8) -> bool:
    """Whether the kernel runs on `device` with `chains` warps a tile: a CUDA GPU with tensor cores for bf16
    (sm80+) and Triton laying out the words as the layout assumes (probed once a device)."""
    return (device.type == "cuda" and int4_mma.triton is not None and torch.cuda.get_device_capability(device)[0] >= 8
            and int4_mma.layout_ok(device, chains))


def chains_for(n: int, rows: int = 1, group_size: int = 128) -> int:
    """Warps a tile for an n-row weight in groups of group_size multiplying `rows` rows of x: the most of
    CHAINS that keeps the launch's warps within WARPS_IN_FLIGHT, counting a warp for each chunk of 8 rows of x
    and each one or two tiles (`int4_mma.tiles_a_program`), whether a program takes one chunk or two
    (`int4_mma.chunks_a_program`: two chunks make each word a fragment once for both, a mma each). On an
    H100 at 7B shapes (benchmarks/results/quant-nvidia-h100-80gb-hbm3.json) this picks the fastest count, or
    one within 10%, for every layer but one: at 1-8 rows 4 for wqkv (768 tiles), 8 for wo and w2 (256), 2
    for w13 (1376), on two leases; with two chunks a program (the 41st invocation) at 16 rows the same
    (wo: 12.7 us against 11.1 at 4), at 32 rows 2, 4, 1 and 4, at 48 rows 1, 4, 1 and 4, at 64 rows 1, 2, 1
    and 2."""
    tiles = n // 16
    programs = tiles // int4_mma.tiles_a_program(rows, tiles, group_size) * int4_mma.programs_a_tile(rows, 1)
    chains = max(CHAINS)
    while chains > 1 and programs * chains > WARPS_IN_FLIGHT:
        chains //= 2
    return chains


def to_fragments(codes: torch.Tensor, chains: int, group: int) -> torch.Tensor:
    """codes (N, Kp) (Kp = chains x groups a chain x group) -> the words' nibbles (P, steps / 4, chains, g, t, j,
    8): lane (g, t) of warp `chain` feeds k-step 4 i + j of its chain rows 16 p + g + 8 h at columns
    group/4 t + 4 s + 2 pair + half of its group (s the k-step in the group), as bit 16 half + 8 pair + 4 h
    of its word. A permutation of axes."""
    N, Kp = codes.shape
    S, gpc = group // 16, Kp // (chains * group)
    v = codes.view(N // 16, 2, 8, chains, gpc, 4, S, 2, 2)                      # (p, h, g, w, gi, t, s, pair, half)
    v = v.permute(0, 3, 4, 6, 2, 5, 8, 7, 1).reshape(N // 16, chains, gpc * S // 4, 4, 8, 4, 8)  # (p, w, i, j, g, t, bit)
    return v.permute(0, 2, 1, 4, 5, 3, 6)                                       # (p, i, w, g, t, j, bit)


def from_fragments(nibbles: torch.Tensor, group: int) -> torch.Tensor:
    """The inverse of to_fragments: (P, steps / 4, chains, g, t, j, 8) -> codes (N, Kp)."""
    P, I, chains = nibbles.shape[:3]
    S = group // 16
    v = nibbles.permute(0, 2, 1, 5, 3, 4, 6).reshape(P, chains, 4 * I // S, S, 8, 4, 2, 2, 2)  # (p, w, gi, s, g, t, half, pair, h)
    return v.permute(0, 8, 4, 1, 2, 5, 3, 7, 6).reshape(16 * P, -1)             # (p, h, g, w, gi, t, s, pair, half)


def bf16_bits(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF


def from_bf16_bits(bits: torch.Tensor) -> torch.Tensor:
    return (bits & 0xFFFF).to(torch.int32).to(torch.int16).view(torch.bfloat16)


def to_mma(w: Int4Weight, chains: int | None = None, rows: int = 1) -> Int4MmaWeight:
    """w in the mma layout with `chains` warps a tile (one of CHAINS; by default `chains_for` its rows and the
    `rows` of x a step will multiply it by)."""
    (N, K), group = w.shape, w.group_size
    chains = chains_for(N, rows, group) if chains is None else chains
    if not fits(N, K, group) or chains not in CHAINS:
        raise InputError(f"the int4 mma layout needs rows in tiles of 16, whole groups of {GROUP_SIZES} and {CHAINS} "
                         f"warps a tile; got {N}x{K} in groups of {group}, {chains} warps")
    if w.q.is_cuda and not available(w.q.device, chains):
        raise InputError(f"the int4 mma layout needs bf16 tensor cores (sm80+) and a Triton that gives thread e // 4 "
                         f"element e of a ({128 * chains},) load; {w.q.device} lacks one of them: use the int4 gemv "
                         f"layout instead")
    padded = -(-(K // group) // chains) * chains * group                        # the last chain's missing groups
    nibbles = to_fragments(F.pad(unpack_int4(w.q), (0, padded - K)), chains, group).to(torch.int32)
    words = (nibbles << (4 * torch.arange(8, dtype=torch.int32, device=w.q.device))).sum(-1, dtype=torch.int32)
    rows = torch.arange(N, device=w.q.device).view(N // 16, 16)

    def halves(v: torch.Tensor) -> torch.Tensor:                                 # (N, G) -> bits of rows g | g + 8
        return bf16_bits(v[rows[:, :8]]).transpose(1, 2) | (bf16_bits(v[rows[:, 8:]]).transpose(1, 2) << 16)
    records = halves(w.scale.float()) | (halves(-(128.0 + w.zero.float())) << 32)
    return Int4MmaWeight(words.reshape(N // 16, -1, 128 * chains), records.contiguous())


def to_natural(w: Int4MmaWeight) -> Int4Weight:
    """The Int4Weight an Int4MmaWeight stands for (scales in bf16)."""
    (N, K), group = w.shape, w.group_size
    P, I, E = w.words.shape
    nibbles = (w.words[..., None] >> (4 * torch.arange(8, dtype=torch.int32, device=w.words.device))) & 15
    codes = from_fragments(nibbles.to(torch.uint8).view(P, I, E // 128, 8, 4, 4, 8), group)

    def rows_of(bits: torch.Tensor) -> torch.Tensor:                              # (P, G, 8) halves -> (N, G)
        lo, hi = from_bf16_bits(bits), from_bf16_bits(bits >> 16)
        return torch.cat([lo.transpose(1, 2), hi.transpose(1, 2)], dim=1).reshape(N, -1)
    scale = rows_of(w.records)
    zero = (-rows_of(w.records >> 32).float() - 128.0).round().to(torch.uint8)
    return Int4Weight(pack_int4(codes[:, :K]), scale, zero)


def for_mma(params: dict, rows: int = 1) -> dict:
    """A new params dict with every int4 matrix that fits in the mma layout for steps of `rows` rows of x, the
    rest unchanged (the embedding table stays: a looked-up row is used as it is stored)."""
    return {key: to_mma(value, rows=rows) if isinstance(value, Int4Weight) and key != "tok_embeddings.weight"
            and fits(*value.shape, value.group_size) else value for key, value in params.items()}
