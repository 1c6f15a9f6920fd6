"""int4 GEMV for decode steps of one to sixty-four rows on the tensor cores, after Marlin (Frantar, Castro, Chen, Hoefler and
Alistarh 2024, "MARLIN: Mixed-Precision Auto-Regressive Parallel Inference on Large Language Models"), in
Triton through inline PTX.

Each warp runs mma.m16n8k16 (bf16 in, fp32 accumulate) with a 16-row tile of the weight as the A operand
and the activations as B: column n of B is row n of x, so up to eight rows cost what one does. A lane's
eight nibbles of one k-step are one int32 word, shuffled offline (llamafn.quant.mma) so that four LOP3s put
them straight into its A fragment as bf16 128 + q (exact) and four packed adds of -(128 + z) leave q - z
(exact); x is read as it is, because inside a group the k order is permuted so that lane t's B fragments
of consecutive k-steps are consecutive 8-byte quads of its row of x. The group's scale multiplies the
fp32 partial sums every four k-steps. In the sm_90 SASS the loop takes 2.23-2.41 instructions a weight
at group 128 (`python scripts/sass_mix.py --kernel int4-mma`) against 3.6-3.7 for the packed-bf16
CUDA-core GEMV (llamafn.kernels.quant_gemv), which is bound by instruction issue.

A program is one 16-row tile of the weight (or two, past 8 rows) times 8 rows of x (or 16, past 8 rows);
its NW warps (chains) split the groups of K between them, ceil(G / NW) each (loads past the last group
masked), and add their partial sums at the end. At group 128 a warp loads group i + 1 before it
multiplies group i (in the SASS ptxas places those loads after the group's HMMAs, so two groups of loads
are in flight); the other group sizes load a group, then multiply it.

Element e of the program's (NW * 128,) tensors is register e % 4 of lane (e // 4) % 32 of warp e // 128:
Triton's layout for a contiguous 1-D int32 load read 16 bytes a thread, which the words' order assumes
(the TTGIR of the sm_90 compile shows it; `layout_ok` verifies it on the GPU before a weight is laid
out). The interpreter cannot run PTX, so under `TRITON_INTERPRET=1` (ASM=False) the kernel computes what
the fragments multiply, element by element, in fp32: the words' order, the addresses and the reduction
are tested on the CPU, the PTX on a GPU.

Measured on an H100 80GB HBM3 at Llama-2-7B shapes, group 128 (`python scripts/bench_quant.py --schemes
int4-g128 --kernel-rows 1,2,4,8 --parts kernels`, benchmarks/results/quant-nvidia-h100-80gb-hbm3.json),
with the chains of `llamafn.quant.mma.chains_for`: at one row it is as fast as the packed-bf16 GEMV on
wqkv and w13 (12.9 and 21.0 us against 13.1 and 21.5) and slower on wo and w2 (7.7 and 13.8 us against
6.6 and 12.6: 256 tiles leave too few loads in flight), so batch-1 decode keeps that GEMV; at 8 rows
the four layers take 60.2 us against its own 55.4 at one row, where the Triton dot kernel takes 143.5 and
tinygemm 139.2, so steps of 2-8 rows (beams, speculative verification, small batches) use it: the
compiled 7B int4 step at batch 8 ran at 3097 tok/s against 1550 on the dot kernel, on one machine.
More rows than 8 first ran 8 a program, the programs of a tile re-reading its words from L2 and x's
reads (every row of x for every 16 weight rows, from L2) bounding the kernel. Past 8 rows a program now
multiplies two tiles (at group 128, `tiles_a_program`), loading each quad of x once for both, by two chunks
of 8 rows (`chunks_a_program`), turning each word into its fragment once for both chunks' mma (`MMA4_PAIR`;
2.38 instructions a weight for 16 rows in the SASS against 2.16 for 8). Each layer at its fastest warps a
tile, the four layers (the 37th and 41st invocations) at 16 rows: 76.6 us, against 78.1 with one chunk,
88.4 with one tile and 137.3 for the dot kernel; at 32 rows 101.9 against 118.8, 156.1 and 170.6; at 48
rows 144.2 against 288.4 for the dot kernel; at 64 rows 176.9 against 290.2. The compiled 7B int4 step ran
at 4754 tok/s at batch 16 (2831 on the dot kernel, another lease), 7503 at batch 32 (6499 with one chunk,
4940 on the dot kernel, another lease) and 9097 against 6449 at batch 64 (same lease), so decode layouts
use it up to 64 rows.
"""

from __future__ import annotations

import functools

import torch

from ..errors import InputError
from .runtime import INTERPRET, kernel_op, launcher, triton

ROWS_A_PROGRAM = 8                        # the columns of B: rows of x a program multiplies


def mma4_source(chunks: int) -> str:
    """PTX of four chained mma.m16n8k16 over one lane's four words, against `chunks` chunks of 8 rows of
    x: operands $0.. the chunks' accumulators out (4 each), then the words (4), each chunk's B fragments
    (4 quads of x, two bf16 pairs each), the lane's (tile, group) record (4; the first is read: scales of
    rows g and g + 8 as bf16, then -(128 + z) of both) and the chunks' accumulators in. Each word is
    turned into its A fragment once for all chunks; each chunk's sums are added to its accumulators times
    the scales."""
    words, rec, acc_in = 4 * chunks, 8 * chunks + 4, 8 * chunks + 8
    sums = [[f"p{c}_{i}" for i in range(4)] for c in range(chunks)]
    return ("{ .reg .b32 a0, a1, a2, a3, sh, zg, zg8, sg, sg8, xl, xh, one, r0, r1; "
            + "".join(f".reg .f32 {', '.join(p)}; " for p in sums)
            + f"mov.b32 one, 0x3F803F80; mov.b64 {{r0, r1}}, ${rec}; prmt.b32 zg, r1, 0, 0x1010; "
            "prmt.b32 zg8, r1, 0, 0x3232; shl.b32 sg, r0, 16; and.b32 sg8, r0, 0xFFFF0000; "
            + "".join(f"mov.f32 {v}, 0f00000000; " for p in sums for v in p)
            + "".join(
                f"lop3.b32 a0, ${words + j}, 0x000F000F, 0x43004300, 0xEA; "
                f"shr.u32 sh, ${words + j}, 4; lop3.b32 a1, sh, 0x000F000F, 0x43004300, 0xEA; "
                f"shr.u32 sh, ${words + j}, 8; lop3.b32 a2, sh, 0x000F000F, 0x43004300, 0xEA; "
                f"shr.u32 sh, ${words + j}, 12; lop3.b32 a3, sh, 0x000F000F, 0x43004300, 0xEA; "
                "fma.rn.bf16x2 a0, a0, one, zg; fma.rn.bf16x2 a1, a1, one, zg8; "
                "fma.rn.bf16x2 a2, a2, one, zg; fma.rn.bf16x2 a3, a3, one, zg8; "
                + "".join(f"mov.b64 {{xl, xh}}, ${words + 4 + 4 * c + j}; "
                          f"mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{{', '.join(p)}}}, "
                          f"{{a0, a1, a2, a3}}, {{xl, xh}}, {{{', '.join(p)}}}; " for c, p in enumerate(sums))
                for j in range(4))
            + "".join(f"fma.rn.f32 ${4 * c + i}, {p[i]}, {'sg' if i < 2 else 'sg8'}, ${acc_in + 4 * c + i}; "
                      for c, p in enumerate(sums) for i in range(4))
            + "}")


def mma4_constraints(chunks: int) -> str:
    """The operands' constraints of mma4_source(chunks), in its order."""
    return ",".join(["=r"] * 4 * chunks + ["r"] * 4 + ["l"] * 4 * chunks + ["l"] * 4 + ["r"] * 4 * chunks)


if triton is not None:
    import triton.language as tl

    MMA4, MMA4_CONSTRAINTS = tl.constexpr(mma4_source(1)), tl.constexpr(mma4_constraints(1))
    MMA4_PAIR, MMA4_PAIR_CONSTRAINTS = tl.constexpr(mma4_source(2)), tl.constexpr(mma4_constraints(2))

    @triton.jit
    def bf16_at(bits, SHIFT: tl.constexpr):
        """The bf16 at bit SHIFT of each int64, as fp32."""
        return (((bits >> SHIFT) & 0xFFFF).to(tl.int32) << 16).to(tl.float32, bitcast=True)

    @triton.jit
    def nibble(words, SHIFT: tl.constexpr):
        return ((words >> SHIFT) & 0xF).to(tl.float32)

    @triton.jit
    def fragment_sums(words, x_all, rec):
        """What MMA4 adds for one element's word, in fp32 (the interpreter's twin): its 8 weights are rows g
        (pairs 0 and 2) and g + 8 (pairs 1 and 3) of the tile at the quad's 4 columns, against every row n
        of x (x_all (E, 8) quads) -> ((E, 8) row g, (E, 8) row g + 8), scaled."""
        zg, zg8 = bf16_at(rec, 32), bf16_at(rec, 48)                             # -(128 + z)
        x0, x1, x2, x3 = bf16_at(x_all, 0), bf16_at(x_all, 16), bf16_at(x_all, 32), bf16_at(x_all, 48)
        lo = ((nibble(words, 0) + 128.0 + zg)[:, None] * x0 + (nibble(words, 16) + 128.0 + zg)[:, None] * x1
              + (nibble(words, 8) + 128.0 + zg)[:, None] * x2 + (nibble(words, 24) + 128.0 + zg)[:, None] * x3)
        hi = ((nibble(words, 4) + 128.0 + zg8)[:, None] * x0 + (nibble(words, 20) + 128.0 + zg8)[:, None] * x1
              + (nibble(words, 12) + 128.0 + zg8)[:, None] * x2 + (nibble(words, 28) + 128.0 + zg8)[:, None] * x3)
        return lo * bf16_at(rec, 0)[:, None], hi * bf16_at(rec, 16)[:, None]

    @triton.jit
    def lane_probe_kernel(w_ptr, out_ptr, NW: tl.constexpr):
        """Which thread holds element e of a (NW * 128,) int32 load shaped like the GEMV's words: out[e] =
        threadIdx.x, from PTX."""
        e = tl.arange(0, NW * 128)
        words = tl.load(w_ptr + e)
        tid = tl.inline_asm_elementwise("mov.u32 $0, %tid.x;", "=r,r", [words], dtype=tl.int32, is_pure=True, pack=1)
        tl.store(out_ptr + e, tid)

    @triton.jit
    def group_words(words_at, rec_at, gi, w, GPC, G, E: tl.constexpr):
        """A tile's words of group gi of a chain at 128 columns (two steps of 4 k-steps) and its record (zero
        for a group past G, the last chains' padding)."""
        real = w * GPC + gi < G
        words0 = tl.load(words_at + (2 * gi) * E)
        words1 = tl.load(words_at + (2 * gi + 1) * E)
        return words0, words1, tl.load(rec_at + gi * 8, mask=real, other=0)

    @triton.jit
    def group_x(x_at, x_ok, gi, w, GPC, G):
        """The x quads of group gi of a chain at 128 columns, both steps (none read past G)."""
        real = w * GPC + gi < G
        return tl.load(x_at + gi * 32, mask=x_ok & real, other=0), tl.load(x_at + gi * 32 + 4, mask=x_ok & real, other=0)

    @triton.jit
    def store_tile(acc, out_ptr, p, M, stride_om, NW: tl.constexpr):
        """The (NW * 128,) accumulators of tile p, summed over the chains, into out (columns 16 p ..)."""
        per_lane = tl.sum(tl.reshape(acc, (NW, 8, 4, 4)), axis=0)                # (g, t, j)
        r3 = tl.arange(0, 8)[:, None, None]
        t3 = tl.arange(0, 4)[None, :, None]
        j3 = tl.arange(0, 4)[None, None, :]
        m = 2 * t3 + j3 % 2                                 # lane (g, t) holds D[g][2t], D[g][2t+1], D[g+8][2t],
        rows = p * 16 + r3 + 8 * (j3 // 2)                  # D[g+8][2t+1]: column m of D is row m of the output
        tl.store(out_ptr + m * stride_om + rows, per_lane.to(out_ptr.dtype.element_ty), mask=m < M)

    @triton.jit
    def mma_group(w0, w1, x0, x1, y0, y1, rec, acc, accb, CHUNKS: tl.constexpr):
        """Group gi of one tile (words w0, w1 of its two steps, its record) against chunk a of x (quads x0,
        x1) into acc and, for CHUNKS = 2, chunk b (y0, y1) into accb, each word made a fragment once."""
        if CHUNKS == 2:
            acc, accb = tl.inline_asm_elementwise(MMA4_PAIR, MMA4_PAIR_CONSTRAINTS, [w0, x0, y0, rec, acc, accb],
                                                  dtype=(tl.float32, tl.float32), is_pure=True, pack=4)
            acc, accb = tl.inline_asm_elementwise(MMA4_PAIR, MMA4_PAIR_CONSTRAINTS, [w1, x1, y1, rec, acc, accb],
                                                  dtype=(tl.float32, tl.float32), is_pure=True, pack=4)
        else:
            acc = tl.inline_asm_elementwise(MMA4, MMA4_CONSTRAINTS, [w0, x0, rec, acc], dtype=tl.float32,
                                            is_pure=True, pack=4)
            acc = tl.inline_asm_elementwise(MMA4, MMA4_CONSTRAINTS, [w1, x1, rec, acc], dtype=tl.float32,
                                            is_pure=True, pack=4)
        return acc, accb

    @triton.jit
    def int4_mma_kernel(x_ptr, w_ptr, r_ptr, out_ptr, M, G, GPC, stride_xm, stride_om, PER_TILE,
                        NW: tl.constexpr, S: tl.constexpr, TILES: tl.constexpr, CHUNKS: tl.constexpr,
                        ASM: tl.constexpr):
        """x_ptr: x (M, K) bf16 read as int64 quads (row stride stride_xm quads); w_ptr: words (P, GPC * S / 4,
        NW * 128) int32; r_ptr: records (P, G, 8) int64; out_ptr: (M, 16 P). S = k-steps a group (group
        size / 16); chain w takes groups [w GPC, (w + 1) GPC), those past G masked (zero words, no x).
        Program i multiplies tiles TILES (i // PER_TILE) .. + TILES - 1 by CHUNKS chunks of 8 rows of x from
        row 8 CHUNKS (i % PER_TILE): the programs of one tile are neighbours, so its re-reads hit L2; TILES = 2
        (group 128 only) loads each quad of x once for two tiles, CHUNKS = 2 (group 128 only) makes each word
        a fragment once for 16 rows."""
        p, c = tl.program_id(0) // PER_TILE * TILES, tl.program_id(0) % PER_TILE     # first tile p, chunk c
        x_ptr += c * 8 * CHUNKS * stride_xm
        out_ptr += c * 8 * CHUNKS * stride_om
        M = tl.minimum(M - 8 * CHUNKS * c, 8 * CHUNKS)                             # rows of this program
        E: tl.constexpr = NW * 128
        e = tl.arange(0, E)
        w, lane, j = e // 128, (e // 4) % 32, e % 4
        g, t = lane // 4, lane % 4
        tile_words = GPC * (S // 4) * E
        words_at = w_ptr + p.to(tl.int64) * tile_words + e
        quad = w * (GPC * 4 * S) + t * S + j                                     # lane t's quads of a group
        rec_at = r_ptr + (p * G + w * GPC) * 8 + g
        if ASM:
            acc = tl.zeros((E,), dtype=tl.float32)
            accb = acc
            x_at = x_ptr + tl.minimum(g, M - 1) * stride_xm + quad                  # B column n = row n of x
            y_at = x_ptr + tl.minimum(g + 8, M - 1) * stride_xm + quad              # chunk b: rows 8 + n
            if S == 8:                                                            # group 128: the next group's
                w0, w1, rec = group_words(words_at, rec_at, 0, w, GPC, G, E)      # loads in flight
                x0, x1 = group_x(x_at, g < M, 0, w, GPC, G)
                y0, y1 = x0, x1
                if CHUNKS == 2:
                    y0, y1 = group_x(y_at, g + 8 < M, 0, w, GPC, G)
                if TILES == 2:
                    acc2 = acc
                    acc2b = acc
                    v0, v1, rec2 = group_words(words_at + tile_words, rec_at + G * 8, 0, w, GPC, G, E)
                for gi in range(GPC):
                    nxt = tl.minimum(gi + 1, GPC - 1)
                    ahead = group_words(words_at, rec_at, nxt, w, GPC, G, E)
                    ahead_x = group_x(x_at, g < M, nxt, w, GPC, G)
                    if CHUNKS == 2:
                        ahead_y = group_x(y_at, g + 8 < M, nxt, w, GPC, G)
                    acc, accb = mma_group(w0, w1, x0, x1, y0, y1, rec, acc, accb, CHUNKS)
                    if TILES == 2:
                        ahead2 = group_words(words_at + tile_words, rec_at + G * 8, nxt, w, GPC, G, E)
                        acc2, acc2b = mma_group(v0, v1, x0, x1, y0, y1, rec2, acc2, acc2b, CHUNKS)
                        v0, v1, rec2 = ahead2
                    w0, w1, rec = ahead
                    x0, x1 = ahead_x
                    if CHUNKS == 2:
                        y0, y1 = ahead_y
                if TILES == 2:
                    store_tile(acc2, out_ptr, p + 1, M, stride_om, NW)
                    if CHUNKS == 2:
                        store_tile(acc2b, out_ptr + 8 * stride_om, p + 1, M - 8, stride_om, NW)
                if CHUNKS == 2:
                    store_tile(accb, out_ptr + 8 * stride_om, p, M - 8, stride_om, NW)
            else:
                for gi in range(GPC):
                    real = w * GPC + gi < G
                    rec = tl.load(rec_at + gi * 8, mask=real, other=0)
                    for h in tl.static_range(S // 4):
                        words = tl.load(words_at + (gi * (S // 4) + h) * E)
                        xq = tl.load(x_at + gi * (4 * S) + 4 * h, mask=(g < M) & real, other=0)
                        acc = tl.inline_asm_elementwise(MMA4, MMA4_CONSTRAINTS, [words, xq, rec, acc],
                                                        dtype=tl.float32, is_pure=True, pack=4)
            store_tile(acc, out_ptr, p, M, stride_om, NW)
        else:
            n = tl.arange(0, 8)
            for chunk in tl.static_range(CHUNKS):
                rows_x = 8 * chunk + n
                x_at = x_ptr + tl.minimum(rows_x, M - 1)[None, :] * stride_xm + quad[:, None]
                for tile in tl.static_range(TILES):
                    lo = tl.zeros((E, 8), dtype=tl.float32)
                    hi = tl.zeros((E, 8), dtype=tl.float32)
                    for gi in range(GPC):
                        real = w * GPC + gi < G
                        rec = tl.load(rec_at + tile * G * 8 + gi * 8, mask=real, other=0)
                        for h in tl.static_range(S // 4):
                            words = tl.load(words_at + tile * tile_words + (gi * (S // 4) + h) * E)
                            x_all = tl.load(x_at + gi * (4 * S) + 4 * h, mask=(rows_x < M)[None, :] & real[:, None],
                                            other=0)
                            dlo, dhi = fragment_sums(words, x_all, rec)
                            lo += dlo
                            hi += dhi
                    lo_g = tl.sum(tl.reshape(lo, (NW, 8, 16, 8)), axis=2)          # (w, g, n)
                    hi_g = tl.sum(tl.reshape(hi, (NW, 8, 16, 8)), axis=2)
                    rows = (p + tile) * 16 + tl.arange(0, 8)[:, None]
                    cols = rows_x[None, :] * stride_om
                    tl.store(out_ptr + cols + rows, tl.sum(lo_g, axis=0).to(out_ptr.dtype.element_ty),
                             mask=rows_x[None, :] < M)
                    tl.store(out_ptr + cols + rows + 8, tl.sum(hi_g, axis=0).to(out_ptr.dtype.element_ty),
                             mask=rows_x[None, :] < M)


@functools.cache
def layout_ok(device: torch.device, chains: int) -> bool:
    """Whether this Triton gives thread e // 4 the elements e of the words' tensors on `device` (the order
    the words are shuffled into; a Triton whose layouts differ would multiply the wrong fragments)."""
    E = 128 * chains
    words = torch.zeros(E, dtype=torch.int32, device=device)
    threads = torch.empty(E, dtype=torch.int32, device=device)
    lane_probe_kernel[(1,)](words, threads, NW=chains, num_warps=chains)
    return torch.equal(threads.cpu(), torch.arange(E, dtype=torch.int32) // 4)


def tiles_a_program(rows: int, tiles: int, group_size: int) -> int:
    """Tiles a program of int4_mma_kernel: two where x has more than 8 rows (so that each tile's programs
    re-read x, which two tiles a program halves), the tile count is even and the group is 128 (the
    prefetching loop); else one."""
    return 2 if rows > ROWS_A_PROGRAM and tiles % 2 == 0 and group_size == 128 else 1


def chunks_a_program(rows: int, group_size: int) -> int:
    """Chunks of 8 rows of x a program of int4_mma_kernel multiplies: two where x has more than 8 rows and
    the group is 128 (the prefetching loop), so that each word becomes a fragment once for 16 rows; else one."""
    return 2 if rows > ROWS_A_PROGRAM and group_size == 128 else 1


def programs_a_tile(rows: int, chunks: int) -> int:
    """Programs that share a tile (or a pair of tiles): one for each `chunks` chunks of 8 rows of x."""
    return -(-rows // (ROWS_A_PROGRAM * chunks))


def int4_mma_launch(x: torch.Tensor, words: torch.Tensor, records: torch.Tensor, group_size: int,
                    tiles: int | None = None, chunks: int | None = None) -> torch.Tensor:
    """x (M, K) bf16, a weight in the mma layout (llamafn.quant.mma) -> x @ w^T (M, N) bf16; each program
    multiplies `chunks` chunks of 8 rows of x by `tiles` tiles (by default tiles_a_program and
    chunks_a_program)."""
    M, K = x.shape
    if x.dtype != torch.bfloat16 or K % 4:
        raise InputError(f"int4_mma takes bf16 rows with K a multiple of 4, got {tuple(x.shape)} {x.dtype}")
    P, chains, G = records.shape[0], words.shape[2] // 128, records.shape[1]
    if not x.is_contiguous() or x.storage_offset() % 4 or x.stride(0) % 4:
        x = x.clone(memory_format=torch.contiguous_format)
    quads = x.view(torch.int64)                                                    # (M, K/4) 8-byte quads of x
    out = torch.empty(M, 16 * P, dtype=torch.bfloat16, device=x.device)
    tiles = tiles_a_program(M, P, group_size) if tiles is None else tiles
    chunks = chunks_a_program(M, group_size) if chunks is None else chunks
    if tiles not in (1, 2) or P % tiles or (tiles == 2 and group_size != 128):
        raise InputError(f"int4_mma runs one tile a program, or two for group 128 and an even tile count; got "
                         f"{tiles} for {P} tiles in groups of {group_size}")
    if chunks not in (1, 2) or (chunks == 2 and group_size != 128):
        raise InputError(f"int4_mma runs one chunk of 8 rows a program, or two for group 128; got {chunks} in "
                         f"groups of {group_size}")
    if M:
        per_tile = programs_a_tile(M, chunks)
        launcher(int4_mma_kernel)[(P // tiles * per_tile,)](
            quads, words, records, out, M, G, -(-G // chains), quads.stride(0), out.stride(0), per_tile, NW=chains,
            S=group_size // 16, TILES=tiles, CHUNKS=chunks, ASM=not INTERPRET,
            **({} if INTERPRET else {"num_warps": chains}))
    return out


if triton is not None:
    @kernel_op("llamafn::int4_mma", mutates_args=())
    def int4_mma(x: torch.Tensor, words: torch.Tensor, records: torch.Tensor, group_size: int) -> torch.Tensor:
        """x (M, K) bf16 @ an int4 weight in the mma layout (Int4MmaWeight)^T -> (M, N), on the GPU."""
        return int4_mma_launch(x, words, records, group_size)
