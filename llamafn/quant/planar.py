"""The int8 GEMV's plane order as a second layout of an Int8Weight, so that batch-1 decode reads x as
it is.

The int8 GEMV kernel (llamafn.kernels.quant_gemv) reads 4 weights a 32-bit word and needs, for byte j
of the words it holds, a contiguous run of inputs. In natural column order those are every fourth
input, so each product first copies x into 4 planes (`int8_gemv_planes`), a kernel of its own after a
Triton producer (the fused add + RMSNorm, the SwiGLU). Storing each row's columns in plane order
instead, column 4w + j holding input j K/4 + w, makes the planes x itself. The dot kernel (more rows)
reads the same stored weight against x permuted to that order (`formats.plane_order`), which costs a kernel
where the producer of x is a Triton kernel (eagerly on an H100 at 2-4 rows, 1.1-1.2x the natural
order), so the layout is for one row a step. With the Triton kernel set, the compiled 7B int8 step at
batch 1 ran at 299.7 tok/s in plane order against 285.0 in natural order on one H100 (316.3 on another).
"""

from __future__ import annotations

from ..errors import InputError
from .formats import Int8GemvWeight, Int8Weight, plane_order


def fits(w: Int8Weight) -> bool:
    """K a multiple of 4 (the words of a row)."""
    return w.shape[1] % 4 == 0


def to_planar(w: Int8Weight) -> Int8GemvWeight:
    """The same weight with each row's columns in plane order: q'[:, 4w + j] = q[:, j K/4 + w]."""
    if not fits(w):
        raise InputError(f"an int8 weight of shape {tuple(w.shape)} does not fit the GEMV's planes (K % 4 == 0)")
    return Int8GemvWeight(plane_order(w.q).contiguous(), w.scale)


def for_gemv(params: dict) -> dict:
    """A new params dict with every int8 matrix that fits in plane order, the rest unchanged. The embedding
    table stays (a looked-up row is used as it is stored). Rows keep their meaning, so `params.fuse`
    works before or after."""
    return {key: to_planar(value) if isinstance(value, Int8Weight) and key != "tok_embeddings.weight"
            and fits(value) else value for key, value in params.items()}
