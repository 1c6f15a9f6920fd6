"""The quantised weights' GEMV (x @ W^T for one row of x, batch-1 decode) in Triton, dequantising in
registers (llamafn.kernels.quant_matmul dispatches here for M == 1; the formats are llamafn.quant.formats).

Both kernels run on the CUDA cores and read the weights as int32 words; nothing crosses threads until
the final sum, and a program holds BLOCK_N rows of the same words in every thread, so each loaded x can
serve several rows. At batch 1 the bytes are few for the work, so what bounds these kernels is the
instructions a weight: an H100 streams 3 TB/s, 13 bytes a cycle an SM, which at int4 is 26 weights a
cycle against 4 warp instructions an SM (`python scripts/sass_mix.py` counts the loop's SASS).

int8: weights become floats by the exponent trick instead of int-to-float conversions (I2F issues at a
quarter of the FMA rate on Hopper): a byte shifted to bits 15-22 of 1.0's mantissa, its sign bit flipped,
is f = 1 + (q + 128) 2^-8, so f x = x + (q + 128) x 2^-8 exactly and a word's sum of q x follows from
its sums of f x and of x: one shift, one AND-XOR and one FMA a weight. The kernel reads x in its own
dtype as 4 planes, byte j of word w against x[j KW + w], so that the loads of each plane are contiguous
and vectorise like the weights' (a strided or reshaped load of x in its natural order put 8 barriers and
shared-memory round trips in the loop, in the SASS). The planes are x itself for a weight whose columns
are stored in that order (`Int8GemvWeight`, llamafn.quant.planar), else a transposed copy of x
(`int8_gemv_planes`).

int4: packed bf16 arithmetic in inline PTX (`PACKED_DOT`): a LOP3 turns two nibbles into two bf16 lanes
128 + q, an FMA subtracts 128 + z, and FMAs against pairs of bf16 inputs sum the products, 18
instructions for a word's 8 weights, 3.6-3.7 a weight at one row a program in the SASS. The exponent-trick
int4 kernel it replaced (fp32 x pre-scaled by 2^8 / 2^4 in a layout of its own) took 6.2 and ran the 7B
shapes at 37-50% of the copy rate on an H100, slower than PyTorch's tinygemm; the packed kernel, on
the same card, ran them faster than tinygemm (numbers in llamafn.quant.planar). Its inputs are x's
bf16 pairs as they are for a weight in group-plane order (`Int4GemvWeight`), else x permuted into
that order (`int4_gemv_pairs`). Products and 4-term sums are rounded to bf16 (8 bits) inside a word,
the rest is fp32. The interpreter cannot run PTX, so under `TRITON_INTERPRET=1` the kernel computes the
same sums in fp32 (ASM=False); the PTX runs in the GPU tests.

What holds the int4 kernel at 61-73% of the copy rate (7B shapes, H100; benchmarks/results, quant
invocations 48-56): not its arithmetic. A kernel with the same tiles and loads but one add a word reads
the weights alone at 80-89% (wqkv 10.5 us against 13.2 for this kernel), and adding x's loads costs it
2-3 us a call whether x serves 1 or 4 rows. Tried and no faster: x loaded once per persistent program and
held in registers over its row blocks (wqkv 13.6 against 13.7 us, w2 16.0 against 12.4); those loops
pipelined through cp.async (14.4 at best); int8 activations with two dp4a a word (W4A8, 1.3-2.4
instructions a weight in the loop, wqkv 17.0 us, twice the error); cache hints on either load (H200,
within 3%); x read from 4-64 replicas, against a hot spot in L2 (2-5% at best); registers capped for more
resident programs (maxnreg 32/40: spills). One-warp programs ran wqkv, w13 and w2 3-7% faster alone but
the compiled step 0.2% (invocations 52-54).

For a weight in natural order the layout of x is a kernel of its own inside the custom op; the decode
layouts (llamafn.quant.for_decode) store the weights in the planes' order, read against x as it is. Both
kernels are built for programmatic dependent launch on Hopper (runtime.pdl): the int4 kernel loads its
first tile of weights before it waits for x, so that the loads overlap the kernels before it. Both end
in `store_rows`, whose "rope" epilogue lets the fused wqkv's GEMV of a decode step apply RoPE and write
the KV cache itself (llamafn.quant.linear.gemv_rope_write): 483.2 against 479.8 tok/s for the 7B int4
step and 330.3 against 328.6 for int8, same-machine pairs on an H100 (quant invocations 64-67); in a probe of
the kernel chain alone, SwiGLU in the w13 GEMV's epilogue (rows interleaved) took 19-27 us off the 7B step
(1%), too little for a layout of its own, and L2 prefetches of the next GEMV's weights (bulk
cp.async.bulk.prefetch.L2 from a kernel between them) made it 0.3-2.9 ms slower. On a GPU each kernel is
autotuned per shape; under `TRITON_INTERPRET=1` it runs one fixed small tile (the CPU tests)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import InputError
from ..quant.formats import group_natural_order, natural_order
from .runtime import INTERPRET, launcher, pdl, sm_count, triton

if triton is not None:
    import triton.language as tl

    from .runtime import await_producers, release_dependents

    # Dot of a word's 8 nibbles with 8 bf16 inputs, in packed bf16 (sm_80+): lop3 sets nibble pair (j, j + 4),
    # at bits 4j and 16 + 4j after a shift, into the mantissas of two bf16 128.0s (128 + q, exact); an FMA
    # with -(128 + z) ($6) leaves q - z exactly; four FMAs against the input pairs $2-$5 sum 4 products a
    # lane in bf16 (products and sums rounded to 8 bits), and the two lanes are added in fp32.
    PACKED_DOT = tl.constexpr(
        "{ .reg .b32 t0, t1, t2, t3, a, one, zero; mov.b32 one, 0x3F803F80; mov.b32 zero, 0x80008000; "
        "lop3.b32 t0, $1, 0x000F000F, 0x43004300, 0xEA; shr.u32 a, $1, 4; "
        "lop3.b32 t1, a, 0x000F000F, 0x43004300, 0xEA; shr.u32 a, $1, 8; "
        "lop3.b32 t2, a, 0x000F000F, 0x43004300, 0xEA; shr.u32 a, $1, 12; "
        "lop3.b32 t3, a, 0x000F000F, 0x43004300, 0xEA; "
        "fma.rn.bf16x2 t0, t0, one, $6; fma.rn.bf16x2 t1, t1, one, $6; "
        "fma.rn.bf16x2 t2, t2, one, $6; fma.rn.bf16x2 t3, t3, one, $6; "
        "fma.rn.bf16x2 a, t0, $2, zero; fma.rn.bf16x2 a, t1, $3, a; "
        "fma.rn.bf16x2 a, t2, $4, a; fma.rn.bf16x2 a, t3, $5, a; "
        "shl.b32 t0, a, 16; and.b32 t1, a, 0xFFFF0000; add.f32 $0, t0, t1; }")

    @triton.jit
    def shifted(words, SHIFT: tl.constexpr):
        """words << SHIFT, or >> -SHIFT for a negative SHIFT (the bits that matter are masked after)."""
        if SHIFT >= 0:
            return words << SHIFT
        else:
            return words >> -SHIFT

    @triton.jit
    def exponent_trick(bits, MASK: tl.constexpr, magic):
        """fp32 with the bits of `bits` under MASK (within the mantissa) placed into 1.0: 1 + bits * 2^-23,
        XOR-ed with `magic` (MAGIC_INT8: 1.0's pattern with the top masked bit set, which flips the byte's
        sign bit). `magic` is a kernel argument so that the one AND-XOR instruction reads it from the
        constant bank instead of a register rebuilt before every use."""
        return ((bits & MASK) ^ magic).to(tl.float32, bitcast=True)

    @triton.jit
    def activations(x_row, i, KW, word, in_k):
        """Plane i of x at the given words, as fp32 (zeros past K)."""
        return tl.load(x_row + i * KW + word, mask=in_k, other=0.0).to(tl.float32)

    @triton.jit
    def store_rows(out, row0, m, N, out_ptr, stride_om, COS, SIN, POS, CK, CV, scos, spos, sckb, sckh, scks, NQ, NK,
                   BLOCK_N: tl.constexpr, EPILOGUE: tl.constexpr, HEAD_DIM: tl.constexpr):
        """Store rows row0 .. row0 + BN of the product for row m of x, out (BN,) fp32, as the EPILOGUE says.
        "plain": out_ptr[m, rows]. "rope" (the fused wqkv of a decode step, one token a row of x at position
        POS[m]; BN even and dividing HEAD_DIM, so a program's rows are whole pairs of one head of q, k or v):
        RoPE on the q and k rows (Meta's interleaved pairs, cos/sin (M, HEAD_DIM/2) fp32), q to out_ptr[m, rows]
        (rows below NQ), k and v into the cache CK / CV (B, Hkv, S, HEAD_DIM) at the position, rounded as
        fused.rope_write rounds: the kernel that did this after the GEMV is gone from the decode step."""
        rn = row0 + tl.arange(0, BLOCK_N)                                             # (BN,)
        out = out.to(out_ptr.dtype.element_ty)                                        # (BN,) rounded as F.linear's
        if EPILOGUE == "rope":
            re, im = tl.split(tl.reshape(out.to(tl.float32), (BLOCK_N // 2, 2)))     # (BN/2,) pairs
            i = (row0 % HEAD_DIM) // 2 + tl.arange(0, BLOCK_N // 2)                   # (BN/2,) pair in the head
            c, s = tl.load(COS + m * scos + i), tl.load(SIN + m * scos + i)
            rotated = tl.reshape(tl.join(re * c - im * s, re * s + im * c), (BLOCK_N,)).to(out_ptr.dtype.element_ty)
            kv_row = tl.where(rn < NQ + NK, rn - NQ, rn - NQ - NK)                    # (BN,) row of k or of v
            at = m * sckb + (kv_row // HEAD_DIM) * sckh + tl.load(POS + m * spos) * scks + kv_row % HEAD_DIM
            tl.store(out_ptr + m * stride_om + rn, rotated, mask=rn < NQ)
            tl.store(CK + at, rotated.to(CK.dtype.element_ty), mask=(rn >= NQ) & (rn < NQ + NK))
            tl.store(CV + at, out.to(CV.dtype.element_ty), mask=(rn >= NQ + NK) & (rn < N))
        else:
            tl.store(out_ptr + m * stride_om + rn, out, mask=rn < N)

    @triton.jit
    def int8_gemv_rows(x_row, q_ptr, s_ptr, N, KW, stride_qn, magic, block,
                       BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
        """Row block `block` of int8_gemv_kernel: BLOCK_N weight rows against one row of x -> (BN,) fp32."""
        rn = block * BLOCK_N + tl.arange(0, BLOCK_N)                                  # (BN,)
        rows = tl.minimum(rn, N - 1)                                                  # (BN,) in bounds
        rw = tl.arange(0, BLOCK_W)                                                    # (BW,)
        acc = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)
        for w0 in range(0, KW, BLOCK_W):
            word = w0 + rw                                                            # (BW,)
            in_k = word < KW
            words = tl.load(q_ptr + rows[:, None] * stride_qn + word[None, :], mask=in_k[None, :], other=0)   # (BN, BW)
            xs = tl.zeros((BLOCK_W,), dtype=tl.float32)
            for j in tl.static_range(4):
                xj = activations(x_row, j, KW, word, in_k)                            # (BW,) x of byte j
                acc += exponent_trick(shifted(words, 15 - 8 * j), 0x7F8000, magic) * xj[None, :]
                xs += xj
            acc -= 1.5 * xs[None, :]
        return tl.sum(acc, axis=1) * 256.0 * tl.load(s_ptr + rows).to(tl.float32)    # (BN,)

    @triton.jit
    def int8_gemv_kernel(x_ptr, q_ptr, s_ptr, out_ptr, N, KW, stride_xm, stride_qn, stride_om, magic,
                         COS, SIN, POS, CK, CV, scos, spos, sckb, sckh, scks, NQ, NK,
                         BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, PER_SM: tl.constexpr, PDL: tl.constexpr,
                         EPILOGUE: tl.constexpr, HEAD_DIM: tl.constexpr):
        """One row of x against BLOCK_N rows of int8 words a row block: x_ptr (M, 4, KW) planes, plane j at
        word w the input of byte j of word w, q_ptr (N, KW) int32, byte j at bits 8j. Each byte is moved to
        bits 15-22, its sign bit flipped (u = q + 128) and set in 1.0's mantissa: f = 1 + u 2^-8, so
        f x = x + (q + 128) x 2^-8 exactly and sum q x = 2^8 (sum f x - 1.5 sum x) (magic = 0x3FC00000).
        PER_SM = 0: a program a row block; else PER_SM programs an SM (gemv_grid), each looping over row
        blocks. Persistent programs, measured alone (7B shapes in CUDA graphs, weights past L2, H100),
        took wqkv from 23.7 to 20.0 us, w13 33.5 to 32.9, w2 19.0 to 18.5 and wo 8.5 to 8.3.
        Tried and slower on an H100: SwiGLU in the epilogue of a fused w13's gemv (each program its gate
        and up rows; the 7B step's int8 gemvs took 127-170 us more, the SwiGLU kernels it saved 47).
        Tried, no gain: the RMSNorm folded in (each program summing x^2 over the x it loads, rstd in the
        epilogue): wqkv 23.6 against 23.8 us for inductor's norm and this kernel, w13 37.8 against 36.7;
        wo with a residual epilogue then w13 with the norm, 45.2 against 45.0 for wo, add_rms_norm and w13."""
        release_dependents(PDL)
        await_producers(PDL)
        pid_n, m = tl.program_id(0), tl.program_id(1)
        x_row = x_ptr + m * stride_xm
        if PER_SM == 0:
            out = int8_gemv_rows(x_row, q_ptr, s_ptr, N, KW, stride_qn, magic, pid_n, BLOCK_N, BLOCK_W)
            store_rows(out, pid_n * BLOCK_N, m, N, out_ptr, stride_om, COS, SIN, POS, CK, CV, scos, spos, sckb, sckh,
                       scks, NQ, NK, BLOCK_N, EPILOGUE, HEAD_DIM)
        else:
            for block in range(pid_n, tl.cdiv(N, BLOCK_N), tl.num_programs(0)):
                out = int8_gemv_rows(x_row, q_ptr, s_ptr, N, KW, stride_qn, magic, block, BLOCK_N, BLOCK_W)
                store_rows(out, block * BLOCK_N, m, N, out_ptr, stride_om, COS, SIN, POS, CK, CV, scos, spos, sckb,
                           sckh, scks, NQ, NK, BLOCK_N, EPILOGUE, HEAD_DIM)

    @triton.jit
    def bf16_lane(pair, HIGH: tl.constexpr):
        """Lane HIGH of a bf16x2 word as fp32 (its bits are fp32's top half)."""
        return (pair & -65536 if HIGH else pair << 16).to(tl.float32, bitcast=True)

    @triton.jit
    def int4_word_dots(words, x0, x1, x2, x3, zero_pair, ASM: tl.constexpr):
        """sum over the 8 nibbles q_i of each word of (q_i - z) x_i, fp32: lane h of x_j (bf16x2) is the input
        of nibble j + 4h. ASM: the packed bf16 PTX (PACKED_DOT); else the same sum in fp32 (the interpreter)."""
        if ASM:
            return tl.inline_asm_elementwise(PACKED_DOT, "=r,r,r,r,r,r,r", [words, x0, x1, x2, x3, zero_pair],
                                             dtype=tl.float32, is_pure=True, pack=1)
        else:
            minus_z = bf16_lane(zero_pair, False) + 128.0                             # zero_pair lanes: -(128 + z)
            out = tl.zeros_like(words).to(tl.float32)
            for j in tl.static_range(4):
                x = (x0, x1, x2, x3)[j]
                out += (((words >> (4 * j)) & 0xF).to(tl.float32) + minus_z) * bf16_lane(x, False)
                out += (((words >> (4 * j + 16)) & 0xF).to(tl.float32) + minus_z) * bf16_lane(x, True)
            return out

    @triton.jit
    def int4_tile(q_ptr, s_ptr, z_ptr, rows, g0, G, stride_qn, stride_sn, BLOCK_G: tl.constexpr, GW: tl.constexpr):
        """Groups g0 .. g0 + BLOCK_G of BLOCK_N rows: their words (BN, NG, GW) int32 (zeros past G), scales
        (BN, NG) fp32 and zero points as bf16 pairs -(128 + z) (BN, NG, 1)."""
        grp = g0 + tl.arange(0, BLOCK_G)                                              # (NG,)
        word = grp[:, None] * GW + tl.arange(0, GW)[None, :]                          # (NG, GW)
        words = tl.load(q_ptr + rows[:, None, None] * stride_qn + word[None], mask=(grp < G)[None, :, None], other=0)
        group = rows[:, None] * stride_sn + tl.minimum(grp, G - 1)[None, :]          # (BN, NG)
        s = tl.load(s_ptr + group).to(tl.float32)
        z = tl.load(z_ptr + group).to(tl.int32) | 0xC300                              # bf16 -(128 + z)
        return words, s, (z | (z << 16))[:, :, None]

    @triton.jit
    def int4_tile_dots(x_row, words, s, zero_pair, g0, G, BLOCK_G: tl.constexpr, GW: tl.constexpr, ASM: tl.constexpr):
        """A tile's scaled word dots (BN, NG, GW) fp32 against x's pairs at groups g0 .. g0 + BLOCK_G (zeros
        past G): word w of group g, pair j (nibbles j and j + 4) meets x pair (4g + j) GW + w."""
        grp = g0 + tl.arange(0, BLOCK_G)                                              # (NG,)
        pair = x_row + (4 * grp[:, None] * GW + tl.arange(0, GW)[None, :])[None]      # (1, NG, GW) pair 0
        x_in = (grp < G)[None, :, None]
        x0 = tl.load(pair, mask=x_in, other=0)
        x1 = tl.load(pair + GW, mask=x_in, other=0)
        x2 = tl.load(pair + 2 * GW, mask=x_in, other=0)
        x3 = tl.load(pair + 3 * GW, mask=x_in, other=0)
        return s[:, :, None] * int4_word_dots(words, x0, x1, x2, x3, zero_pair, ASM)

    @triton.jit
    def int4_gemv_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, N, G, stride_xm, stride_qn, stride_sn, stride_om,
                         COS, SIN, POS, CK, CV, scos, spos, sckb, sckh, scks, NQ, NK,
                         GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr, ASM: tl.constexpr,
                         PDL: tl.constexpr, EPILOGUE: tl.constexpr, HEAD_DIM: tl.constexpr):
        """One row of x against BLOCK_N rows of int4 words in group-plane order (formats.group_plane_order),
        BLOCK_G groups at a time: x_ptr (M, K/2) int32, bf16 pairs of x itself, q_ptr (N, K/8) int32,
        s_ptr/z_ptr (N, G). Word w of group g, pair j (nibbles j and j + 4) meets x pair (4g + j) GW + w.
        Each word's dot is 18 instructions for 8 weights (`PACKED_DOT`), then one FMA by its group's scale.
        The first groups' weights are loaded before waiting for the producer of x (PDL)."""
        GW: tl.constexpr = GROUP // 8                                                 # words a group
        release_dependents(PDL)
        pid_n, m = tl.program_id(0), tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                                  # (BN,)
        rows = tl.minimum(rn, N - 1)                                                  # (BN,) in bounds
        x_row = x_ptr + m * stride_xm
        words, s, zero_pair = int4_tile(q_ptr, s_ptr, z_ptr, rows, 0, G, stride_qn, stride_sn, BLOCK_G, GW)
        await_producers(PDL)
        acc = int4_tile_dots(x_row, words, s, zero_pair, 0, G, BLOCK_G, GW, ASM)      # (BN, NG, GW)
        for g0 in range(BLOCK_G, G, BLOCK_G):
            words, s, zero_pair = int4_tile(q_ptr, s_ptr, z_ptr, rows, g0, G, stride_qn, stride_sn, BLOCK_G, GW)
            acc += int4_tile_dots(x_row, words, s, zero_pair, g0, G, BLOCK_G, GW, ASM)
        out = tl.sum(tl.sum(acc, axis=2), axis=1)                                     # (BN,)
        store_rows(out, pid_n * BLOCK_N, m, N, out_ptr, stride_om, COS, SIN, POS, CK, CV, scos, spos, sckb, sckh, scks,
                   NQ, NK, BLOCK_N, EPILOGUE, HEAD_DIM)


MAGIC_INT8 = 0x3FC00000         # 1.0f with bit 22 set: XOR-ed in, it flips the sign bit of a byte at bits 15-22


def gemv_configs(name: str, group: int) -> list:
    """Autotuning candidates for the gemv kernels: BLOCK_N rows a program (held in every thread, so each
    loaded x is used BLOCK_N times) and one vector of 4 words a thread and row in each iteration (int8: at
    two, a 16-bit x is loaded 8 values a vector against the weights' 4 words, and the layouts meet through
    shared memory; int4 also two, its x loads being 32-bit pairs); one stage, as nothing feeds tl.dot.
    For int8 also persistent programs (PER_SM an SM) at the row blocks and warps where they measured best.
    int4 tiles of two vectors a thread and row are no longer offered: the tuner, timing each kernel alone,
    chose such a tile only once (BLOCK_N 1, 32 groups, for the 7B w13), and that compiled step, every kernel a
    programmatic dependent launch, ran at 442.1 tok/s; offered one vector only, the next H100 lease took
    BLOCK_N 2 for every layer and ran at 501.6 (both with the output head quantised; quant invocations 68
    and 72; two leases, which differ by up to 10%, so the likely cause rather than a same-machine A/B)."""
    if name == "int4":
        return [triton.Config({"BLOCK_N": bn, "BLOCK_G": max(1, 128 * warps // (group // 8)), "ASM": True},
                              num_warps=warps, num_stages=1)
                for bn in (1, 2, 4) for warps in (2, 4, 8)]
    return ([triton.Config({"BLOCK_N": bn, "BLOCK_W": 128 * warps, "PER_SM": 0}, num_warps=warps, num_stages=1)
             for bn in (1, 2, 4, 8) for warps in (2, 4, 8)]
            + [triton.Config({"BLOCK_N": bn, "BLOCK_W": 128 * warps, "PER_SM": per_sm}, num_warps=warps, num_stages=1)
               for bn in (2, 4) for warps in (2, 4) for per_sm in (8, 16)])


TUNED: dict[tuple, object] = {}


def autotuned(key: tuple, kernel, configs: list, keys: list[str]):
    """The autotuned `kernel` for `key` (name, gemv or not, M class, group, epilogue), made once (tuned_configs in
    quant_matmul reports what each chose)."""
    if key not in TUNED:
        TUNED[key] = triton.autotune(configs, key=keys)(kernel)
    return TUNED[key]


def gemv_kernel(name: str, group: int = 0, epilogue: str = "plain"):
    """The gemv kernel to launch and its fixed meta-parameters: a small tile in the interpreter, the
    autotuned kernel on a GPU (for the "rope" epilogue, which rotates row pairs, among the configs of an even
    BLOCK_N)."""
    kernel = int8_gemv_kernel if name == "int8" else int4_gemv_kernel
    if INTERPRET:
        return kernel, ({"BLOCK_N": 2, "BLOCK_W": 16, "PER_SM": 0} if name == "int8"
                        else {"BLOCK_N": 2, "BLOCK_G": 2, "ASM": False})
    keys = ["N", "KW" if name == "int8" else "G"]
    configs = [c for c in gemv_configs(name, group) if epilogue == "plain" or c.kwargs["BLOCK_N"] % 2 == 0]
    return autotuned((name, True, 1, group, epilogue), kernel, configs, keys), {}


def as_words(q: torch.Tensor) -> torch.Tensor | None:
    """q (N, B) 8-bit as int32 words (N, B/4), or None where its layout does not allow the view."""
    if q.stride(-1) != 1 or q.shape[-1] % 4 or q.stride(0) % 4 or q.storage_offset() % 4:
        return None
    return q.view(torch.int32)


def int8_gemv_planes(x: torch.Tensor) -> torch.Tensor:
    """x (M, K) -> planes (M, 4, K/4) in x's dtype, planes[m, j, w] = x[m, 4w + j]: the inputs of byte j of
    word w of a weight in natural column order (int8_gemv_kernel)."""
    M, K = x.shape
    return natural_order(x).view(M, 4, K // 4)


def int4_gemv_pairs(x: torch.Tensor, group: int) -> torch.Tensor:
    """x (M, K) bf16 -> (M, K/2) int32, the bf16 pairs the int4 gemv reads against a weight in natural order:
    x laid out so that its group-plane positions (formats.group_plane_order) hold the natural columns."""
    return group_natural_order(x, group).contiguous().view(torch.int32)


def gemv_grid(N: int, M: int, device: torch.device):
    """Programs of the gemv kernels: a row block (BLOCK_N weight rows) by one row of x each, or, for
    persistent programs, PER_SM an SM (at most one a row block) by one row of x."""
    def grid(meta):
        blocks = triton.cdiv(N, meta["BLOCK_N"])
        per_sm = meta.get("PER_SM", 0)
        return (min(blocks, per_sm * sm_count(device)) if per_sm else blocks, M)
    return grid


def launch_group(group_size: int) -> int:
    """The power-of-two GROUP the kernel iterates by: the group size, or for a single group (the whole
    row, any length) a power of two at least that long and at least 32 (one group covers the row either way)."""
    return max(32, 1 << (group_size - 1).bit_length())


class RopeWrite(NamedTuple):
    """What the "rope" epilogue (store_rows) needs: a decode step's RoPE, cos and sin (M, 1, D/2) fp32, at
    positions (M, 1), and one layer's cache K and V (M, Hkv, S, D) of one layout, written in place."""
    cos: torch.Tensor
    sin: torch.Tensor
    pos: torch.Tensor
    cache_k: torch.Tensor
    cache_v: torch.Tensor
    n_heads: int


def epilogue_launch(M: int, N: int, rope: RopeWrite | None, dtype: torch.dtype, device: torch.device
                    ) -> tuple[torch.Tensor, tuple, dict]:
    """The output, (M, N) or with `rope` q (M, n_heads D), the epilogue's kernel arguments (dummies
    without rope) and its constexprs."""
    if rope is None:
        out = torch.empty(M, N, dtype=dtype, device=device)
        return out, (out,) * 5 + (0,) * 7, {"EPILOGUE": "plain", "HEAD_DIM": 2}
    ck, cv, D = rope.cache_k, rope.cache_v, rope.cache_k.shape[-1]
    if cv.stride() != ck.stride():
        raise InputError(f"the rope epilogue writes K and V at the same offsets: strides {ck.stride()} and {cv.stride()}")
    cos, sin = rope.cos.contiguous(), rope.sin.contiguous()                   # one stride for both
    out = torch.empty(M, rope.n_heads * D, dtype=dtype, device=device)
    return out, (cos, sin, rope.pos, ck, cv, cos.stride(0), rope.pos.stride(0), ck.stride(0), ck.stride(1), ck.stride(2),
                 rope.n_heads * D, ck.shape[1] * D), {"EPILOGUE": "rope", "HEAD_DIM": D}


def int8_gemv(xw: torch.Tensor, words: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype,
              rope: RopeWrite | None = None) -> torch.Tensor:
    """x planes (M, 4, KW) (int8_gemv_planes, or x (M, K) itself for a planar weight), int8 weight words
    (N, KW) int32, scale (N,) -> (M, N) in dtype, or with `rope` q (M, n_heads D) (store_rows)."""
    M, N, KW = xw.shape[0], words.shape[0], words.shape[1]
    out, extra, const = epilogue_launch(M, N, rope, dtype, xw.device)
    kernel, fixed = gemv_kernel("int8", 0, const["EPILOGUE"])
    launcher(kernel)[gemv_grid(N, M, xw.device)](xw, words, scale, out, N, KW, xw.stride(0), words.stride(0),
                                                 out.stride(0), MAGIC_INT8, *extra, PDL=pdl(xw.device), **const,
                                                 **fixed)
    return out


def int4_gemv(pairs: torch.Tensor, words: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
              dtype: torch.dtype, rope: RopeWrite | None = None) -> torch.Tensor:
    """bf16 pairs of x (M, K/2) int32 (x itself for a group-plane weight, else int4_gemv_pairs), int4 words
    (N, K/8) int32 in group-plane order, scale/zero (N, G), whole groups -> (M, N) in dtype, or with `rope`
    q (M, n_heads D) (store_rows)."""
    M, N = pairs.shape[0], words.shape[0]
    out, extra, const = epilogue_launch(M, N, rope, dtype, pairs.device)
    kernel, fixed = gemv_kernel("int4", group_size, const["EPILOGUE"])
    launcher(kernel)[gemv_grid(N, M, pairs.device)](pairs, words, scale, zero, out, N, scale.shape[1], pairs.stride(0),
                                                    words.stride(0), scale.stride(0), out.stride(0), *extra,
                                                    GROUP=group_size, PDL=pdl(pairs.device), **const, **fixed)
    return out


def int4_gemv_fits(x: torch.Tensor, group_size: int) -> bool:
    """What the packed int4 kernel needs of x (M, K): bf16 (it multiplies x's bf16 pairs as they are) and
    whole groups."""
    return x.dtype == torch.bfloat16 and x.shape[1] % group_size == 0


def uses_gemv(M: int, words: torch.Tensor | None, use_dot: bool | None) -> bool:
    """The gemv kernel for one row (every row with use_dot=False) where the weight reads as int32 words."""
    return words is not None and (M == 1 if use_dot is None else not use_dot)
