"""Beam search's cache row gather for every layer in one launch.

`gather_rows_into(srcs, dsts, index, upto)` writes dst[b, h, :upto] = src[index[b], h, :upto] for every
pair of tensors (B, H, S, ...) of one shape, dtype and strides: the K and V of every layer, or their
int8 scales. The eager path (`llamafn.cache.reorder_into` off the GPU) runs one index_select a tensor;
at 7B shapes that is 64 launches a step, and an H100 measured about 1.2 ms for any beam count up to
four at 512 positions, where the bytes alone take 0.1-0.4 ms. Here each program copies one chunk of
one (tensor, row, head)'s positions, reading the tensors' base addresses from a table on the device,
in the widest words (up to 8 bytes) that the sizes, strides and addresses allow. Measured on an H100
(bf16 7B cache, 512 positions): 0.40 / 0.79 / 1.55 ms for 2 / 4 / 8 beams, 2.7-2.8 TB/s, against 1.36 /
2.06 / 2.16 for the index_select loop; at 4096 positions it runs at a clone's rate. A later run (the
int4 verify JSON) took 0.82 / 0.83 / 1.57 ms: at 2 beams the host's launch work moves between runs.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputError
from .runtime import INTERPRET, launcher, triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def gather_rows_kernel(SRC_PTRS, DST_PTRS, INDEX, SRC_ROWS, B, H, RUN, src_b, src_h, dst_b, dst_h,
                           WORD: tl.constexpr, BLOCK: tl.constexpr):
        """Program (tensor i * B * H + row b * H + head h, chunk c): words c * BLOCK .. of the RUN words
        of src i's row index[b], head h, into dst i's row b, head h (strides in words). An index outside
        0..SRC_ROWS-1 copies nothing rather than read outside the source."""
        unit, chunk = tl.program_id(0), tl.program_id(1)
        i, b, h = unit // (B * H), (unit // H) % B, (unit % H).to(tl.int64)
        src_row = tl.load(INDEX + b).to(tl.int64)
        src = tl.load(SRC_PTRS + i) + (src_row * src_b + h * src_h) * WORD                  # byte addresses
        dst = tl.load(DST_PTRS + i) + (b.to(tl.int64) * dst_b + h * dst_h) * WORD
        words = chunk * BLOCK + tl.arange(0, BLOCK)
        ok = words < tl.where((src_row >= 0) & (src_row < SRC_ROWS), RUN, 0)
        if WORD == 8:
            x = tl.load(src.to(tl.pointer_type(tl.int64)) + words, mask=ok)
            tl.store(dst.to(tl.pointer_type(tl.int64)) + words, x, mask=ok)
        elif WORD == 4:
            x = tl.load(src.to(tl.pointer_type(tl.int32)) + words, mask=ok)
            tl.store(dst.to(tl.pointer_type(tl.int32)) + words, x, mask=ok)
        elif WORD == 2:
            x = tl.load(src.to(tl.pointer_type(tl.int16)) + words, mask=ok)
            tl.store(dst.to(tl.pointer_type(tl.int16)) + words, x, mask=ok)
        else:
            x = tl.load(src.to(tl.pointer_type(tl.int8)) + words, mask=ok)
            tl.store(dst.to(tl.pointer_type(tl.int8)) + words, x, mask=ok)


_TABLES: dict[tuple, torch.Tensor] = {}


def address_table(addresses: list[int], device: torch.device) -> torch.Tensor:
    """(n,) int64 on `device`: the base addresses. Kept by address, so a search that alternates between two
    buffers builds its tables once (the contents are the key, so a reused address is still right)."""
    key = (device, *addresses)
    if key not in _TABLES:
        if len(_TABLES) >= 64:
            _TABLES.clear()
        _TABLES[key] = torch.tensor(addresses, dtype=torch.int64, device=device)
    return _TABLES[key]


def word_bytes(element_size: int, addresses: list[int], run_bytes: int, strides: Sequence[int]) -> int:
    """The widest word (8, 4, 2 or 1 bytes) dividing the run, every stride and every base address."""
    for word in (8, 4, 2):
        if run_bytes % word == 0 and all(s * element_size % word == 0 for s in strides) \
                and all(a % word == 0 for a in addresses):
            return word
    return 1


def addresses(ts: Sequence[torch.Tensor], rows: int, what: str) -> list[int]:
    """The tensors' base addresses, once they are checked to be (rows, H, S, ...) of one shape, strides,
    dtype and device, each (row, head)'s positions contiguous (one pass: this runs every beam step)."""
    first = ts[0]
    signature = (first.shape, first.stride(), first.dtype, first.device)
    if first.dim() < 3 or first.shape[0] != rows or not all((t.shape, t.stride(), t.dtype, t.device) == signature
                                                            for t in ts):
        raise InputError(f"gather_rows_into: the {what} must be tensors ({rows}, H, S, ...) of one shape, strides, "
                         f"dtype and device")
    if first.numel() and not first[0, 0].is_contiguous():
        raise InputError(f"gather_rows_into: each (row, head)'s positions of the {what} must be contiguous, got "
                         f"strides {tuple(first.stride())}")
    return [t.data_ptr() for t in ts]


def gather_rows_into(srcs: Sequence[torch.Tensor], dsts: Sequence[torch.Tensor], index: torch.Tensor,
                     upto: int) -> None:
    """dsts[i][b, :, :upto] = srcs[i][index[b], :, :upto] for every i, in one launch; positions of dsts
    from `upto` on are left as they are. srcs (B, H, S, ...) and dsts (B', H, S, ...) with index (B',) of
    rows in 0..B-1 (checked by the caller: a check here would wait for the device)."""
    if len(srcs) != len(dsts) or not srcs:
        raise InputError(f"gather_rows_into: {len(srcs)} sources for {len(dsts)} destinations")
    if index.dim() != 1 or index.dtype not in (torch.int32, torch.int64) or index.device != srcs[0].device:
        raise InputError(f"gather_rows_into: index must be int32/int64 rows (B',) on {srcs[0].device}, got "
                         f"{index.dtype} {tuple(index.shape)} on {index.device}")
    src_at, dst_at = addresses(srcs, srcs[0].shape[0], "sources"), addresses(dsts, index.shape[0], "destinations")
    s, d = srcs[0], dsts[0]
    if s.shape[1:] != d.shape[1:] or s.dtype != d.dtype:
        raise InputError(f"gather_rows_into: sources {tuple(s.shape)} {s.dtype} and destinations "
                         f"{tuple(d.shape)} {d.dtype} differ past the row axis")
    if not 0 <= upto <= s.shape[2]:
        raise InputError(f"gather_rows_into: upto {upto} is outside 0..{s.shape[2]} positions")
    B, H = index.shape[0], s.shape[1]
    run_bytes = upto * s.shape[3:].numel() * s.element_size()
    if run_bytes == 0 or B == 0:
        return
    strides = (s.stride(0), s.stride(1), d.stride(0), d.stride(1))
    word = word_bytes(s.element_size(), src_at + dst_at, run_bytes, strides)
    BLOCK = 64 if INTERPRET else 1024
    run = run_bytes // word
    launcher(gather_rows_kernel)[(len(srcs) * B * H, triton.cdiv(run, BLOCK))](
        address_table(src_at, s.device), address_table(dst_at, s.device), index, s.shape[0], B, H, run,
        *(stride * s.element_size() // word for stride in strides), WORD=word, BLOCK=BLOCK,
        **({} if INTERPRET else {"num_warps": 4}))
