"""The GEMVs' plane orders as second layouts of the quantised weights, so that batch-1 decode reads x
as it is.

int8: the GEMV kernel (llamafn.kernels.quant_gemv) reads 4 weights a 32-bit word and needs, for byte j
of the words it holds, a contiguous run of inputs. In natural column order those are every fourth
input, so each product first copies x into 4 planes (`int8_gemv_planes`), a kernel of its own after a
Triton producer (the fused add + RMSNorm, the SwiGLU). Storing each row's columns in plane order
instead, column 4w + j holding input j K/4 + w, makes the planes x itself. The dot kernel (more rows)
reads the same stored weight against x permuted to that order (`formats.plane_order`), which costs a kernel
where the producer of x is a Triton kernel (eagerly on an H100 at 2-4 rows, 1.1-1.2x the natural
order), so the layout is for one row a step. With the Triton kernel set, the compiled 7B int8 step at
batch 1 ran at 299.7 tok/s in plane order against 285.0 in natural order on one H100 (316.3 on another).

int4: the GEMV multiplies the nibble pairs (j, j + 4) of a word as two bf16 lanes against a pair of
adjacent bf16 inputs, so within each group the nibbles are stored in group-plane order
(`formats.group_plane_order`): pair j of word w meets inputs j group/4 + 2w and + 1 of the group, read
from x as one 32-bit load. Needs whole groups (K a multiple of the group size). On an H100 the 7B int4
g128 layers took 13.1 / 6.3 / 21.2 / 13.7 us (wqkv / wo / w13 / w2) against tinygemm's 15.9 / 6.8 /
25.8 / 15.0, and the compiled batch-1 step ran at 424.5 tok/s against 390.9 with tinygemm, on one
machine; the dot kernel (more rows) reads the stored weight against x permuted to the stored order,
where tinygemm is faster (llamafn.quant.tinygemm), so the layout is for one row a step of bf16 x.
"""

from __future__ import annotations

from ..errors import InputError
from .formats import (Int4GemvWeight, Int4Weight, Int8GemvWeight, Int8Weight, group_plane_order, pack_int4,
                      plane_order, unpack_int4)


def fits(w: Int8Weight | Int4Weight) -> bool:
    """int8: K a multiple of 4 (the words of a row); int4: K a multiple of the group (whole groups)."""
    K = w.shape[1]
    return K % 4 == 0 if isinstance(w, Int8Weight) else K % w.group_size == 0


def to_planar(w: Int8Weight | Int4Weight) -> Int8GemvWeight | Int4GemvWeight:
    """The same weight in its GEMV's plane order: int8 q'[:, 4w + j] = q[:, j K/4 + w]; int4 nibbles in
    group-plane order."""
    if not fits(w):
        rule = "K % 4 == 0" if isinstance(w, Int8Weight) else f"whole groups of {w.group_size}"
        raise InputError(f"a weight of shape {tuple(w.shape)} does not fit the GEMV's planes ({rule})")
    if isinstance(w, Int8Weight):
        return Int8GemvWeight(plane_order(w.q).contiguous(), w.scale)
    codes = group_plane_order(unpack_int4(w.q), w.group_size)
    return Int4GemvWeight(pack_int4(codes).contiguous(), w.scale, w.zero)


def for_gemv(params: dict) -> dict:
    """A new params dict with every int8 and int4 matrix that fits in its plane order, the rest unchanged.
    The embedding table stays (a looked-up row is used as it is stored). Rows keep their meaning, so
    `params.fuse` works before or after."""
    return {key: to_planar(value) if isinstance(value, (Int8Weight, Int4Weight)) and key != "tok_embeddings.weight"
            and fits(value) else value for key, value in params.items()}
