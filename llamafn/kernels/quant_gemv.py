"""The quantised weights' GEMV (x @ W^T for one row of x, batch-1 decode) in Triton, dequantising in
registers (llamafn.kernels.quant_matmul dispatches here for M == 1; the formats are llamafn.quant.formats).

The kernels run on the CUDA cores and read the weights as int32 words. Weights become floats by the
exponent trick instead of int-to-float conversions (I2F issues at a quarter of the FMA rate on Hopper):
a byte shifted to bits 15-22 and put into 1.0's mantissa is f = 1 + v 2^-8 (v the byte, or a nibble
at 15-18 / 19-22 with 2^-8 / 2^-4), so with the activations pre-scaled by the inverse power of two, x' = x 2^8 (or 2^4), f x' = x' + v x exactly, and a word's sum of v x is
its sum of f x' minus its sum of x'. One shift, one AND-XOR and one FMA a weight; nothing crosses
threads until the final sum. A program holds BLOCK_N rows of the same words in every thread, so each
loaded x' can serve several rows. In the SASS for sm_90 (`python scripts/sass_mix.py`) the int4 loop
takes 6.2 instructions a weight at one row a program and 3.5 at eight, with no barrier at the one
or two rows the tuner picks, against 11.5 and 12-20 barriers an iteration for the gemv it replaced
(I2F conversions, each group reduced across warps). Measured on an H100 with the weights streamed
from HBM, the time hardly depends on the rows (18.5-23 us for the 7B wqkv over every config but the
widest), so the kernel is not bound by instruction issue.
The int8 kernel reads x in its own dtype as 4 planes, byte j of word w against x[j KW + w], so that the
loads of each plane are contiguous and vectorise like the weights' (a strided or reshaped load of x in
its natural order put 8 barriers and shared-memory round trips in the loop, in the SASS). The planes
are x itself for a weight whose columns are stored in that order (`Int8GemvWeight`,
llamafn.quant.planar), else a transposed copy of x (`int8_gemv_planes`); the dot kernel takes x
permuted to a planar weight's column order (`formats.plane_order`). The int4 kernel's x' is laid out by
`int4_gemv_activations`, pre-scaled. Inside the custom op these layouts are torch ops, so inductor
fuses them into the producer of x (the RMSNorm or the SwiGLU) where that is its own kernel.

On a GPU each kernel is autotuned per (N, K words); under `TRITON_INTERPRET=1` it runs one fixed small
tile (the CPU tests).
"""

from __future__ import annotations

import torch

from ..quant.formats import natural_order
from .runtime import INTERPRET, launcher, sm_count, triton

if triton is not None:
    import triton.language as tl

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
        XOR-ed with `magic` (1.0's pattern, 0x3F800000, or that with the top masked bit set to flip a sign
        bit). `magic` is a kernel argument so that the one AND-XOR instruction reads it from the constant
        bank instead of a register rebuilt before every use."""
        return ((bits & MASK) ^ magic).to(tl.float32, bitcast=True)

    @triton.jit
    def activations(x_row, i, KW, word, in_k):
        """Plane i of x at the given words, as fp32 (zeros past K)."""
        return tl.load(x_row + i * KW + word, mask=in_k, other=0.0).to(tl.float32)

    @triton.jit
    def int8_gemv_rows(x_row, q_ptr, s_ptr, out_row, N, KW, stride_qn, magic, block,
                       BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
        """Row block `block` of int8_gemv_kernel: BLOCK_N weight rows against one row of x, stored."""
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
        out = tl.sum(acc, axis=1) * 256.0 * tl.load(s_ptr + rows).to(tl.float32)     # (BN,)
        tl.store(out_row + rn, out.to(out_row.dtype.element_ty), mask=rn < N)

    @triton.jit
    def int8_gemv_kernel(x_ptr, q_ptr, s_ptr, out_ptr, N, KW, stride_xm, stride_qn, stride_om, magic,
                         BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, PER_SM: tl.constexpr):
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
        pid_n, m = tl.program_id(0), tl.program_id(1)
        x_row, out_row = x_ptr + m * stride_xm, out_ptr + m * stride_om
        if PER_SM == 0:
            int8_gemv_rows(x_row, q_ptr, s_ptr, out_row, N, KW, stride_qn, magic, pid_n, BLOCK_N, BLOCK_W)
        else:
            for block in range(pid_n, tl.cdiv(N, BLOCK_N), tl.num_programs(0)):
                int8_gemv_rows(x_row, q_ptr, s_ptr, out_row, N, KW, stride_qn, magic, block, BLOCK_N, BLOCK_W)

    @triton.jit
    def int4_gemv_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, N, KW, G, stride_xm, stride_qn, stride_sn, stride_om,
                         magic, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
        """One row of x against BLOCK_N rows of int4 words, BLOCK_G groups at a time: x_ptr (M, 8, KW) fp32
        with x'[i, w] = x[8w + i] 2^8 for even i (low nibbles) and 2^4 for odd i, q_ptr (N, KW) int32, nibble
        i of word w (column 8w + i) at bits 4i. Byte k is moved to bits 15-22, so its low nibble sits at
        15-18 and its high one at 19-22; set in 1.0's mantissa (magic = 0x3F800000) they give f = 1 + q 2^-8
        and 1 + q 2^-4, so f x' = x' + q x exactly, and a group's sum (q - z) s x = s (sum f x' - sum x' -
        z sum x)."""
        GW: tl.constexpr = GROUP // 8                                                 # words a group
        pid_n, m = tl.program_id(0), tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                                  # (BN,)
        rg = tl.arange(0, BLOCK_G)                                                    # (NG,)
        rw = tl.arange(0, GW)                                                         # (GW,)
        rows = tl.minimum(rn, N - 1)                                                  # (BN,) in bounds
        acc = tl.zeros((BLOCK_N, BLOCK_G, GW), dtype=tl.float32)
        x_row = x_ptr + m * stride_xm
        for g0 in range(0, G, BLOCK_G):
            word = (g0 + rg)[:, None] * GW + rw[None, :]                              # (NG, GW)
            in_k = word < KW
            words = tl.load(q_ptr + rows[:, None, None] * stride_qn + word[None, :, :], mask=in_k[None, :, :],
                            other=0)                                                  # (BN, NG, GW) int32
            # rows and groups past the ends read the last ones (their words are masked, so x' is 0 against them)
            group = rows[:, None] * stride_sn + tl.minimum(g0 + rg, G - 1)[None, :]  # (BN, NG)
            s = tl.load(s_ptr + group).to(tl.float32)
            z = tl.load(z_ptr + group).to(tl.float32)
            x_lo0 = activations(x_row, 0, KW, word, in_k)   # (NG, GW) x' of nibble 2k (lo) and 2k + 1 (hi)
            x_hi0 = activations(x_row, 1, KW, word, in_k)
            x_lo1 = activations(x_row, 2, KW, word, in_k)
            x_hi1 = activations(x_row, 3, KW, word, in_k)
            x_lo2 = activations(x_row, 4, KW, word, in_k)
            x_hi2 = activations(x_row, 5, KW, word, in_k)
            x_lo3 = activations(x_row, 6, KW, word, in_k)
            x_hi3 = activations(x_row, 7, KW, word, in_k)
            lo_sum = x_lo0 + x_lo1 + x_lo2 + x_lo3
            hi_sum = x_hi0 + x_hi1 + x_hi2 + x_hi3
            part = tl.broadcast_to(-(lo_sum + hi_sum)[None], (BLOCK_N, BLOCK_G, GW))   # - sum x' a word
            for k in tl.static_range(4):                                              # byte k to bits 15-22
                byte = shifted(words, 15 - 8 * k)
                part += exponent_trick(byte, 0x78000, magic) * (x_lo0, x_lo1, x_lo2, x_lo3)[k][None]
                part += exponent_trick(byte, 0x780000, magic) * (x_hi0, x_hi1, x_hi2, x_hi3)[k][None]
            x_sum = lo_sum * (1.0 / 256) + hi_sum * (1.0 / 16)                          # (NG, GW) sum x a word
            acc += s[:, :, None] * part
            acc -= (s * z)[:, :, None] * x_sum[None]
        out = tl.sum(tl.sum(acc, axis=2), axis=1)                                     # (BN,)
        tl.store(out_ptr + m * stride_om + rn, out.to(out_ptr.dtype.element_ty), mask=rn < N)


MAGIC_ONE = 0x3F800000          # 1.0f
MAGIC_INT8 = 0x3FC00000         # 1.0f with bit 22 set: XOR-ed in, it flips the sign bit of a byte at bits 15-22


def gemv_configs(name: str, group: int) -> list:
    """Autotuning candidates for the gemv kernels: BLOCK_N rows a program (held in every thread, so each
    loaded x is used BLOCK_N times) and one or two vectors of 4 words a thread and row in each iteration
    (one for int8: at two, a 16-bit x is loaded 8 values a vector against the weights' 4 words, and the
    layouts meet through shared memory); one stage, as nothing feeds tl.dot. For int8 also persistent
    programs (PER_SM an SM) at the row blocks and warps where they measured best."""
    out = []
    for bn in (1, 2, 4, 8):
        for warps in (2, 4, 8):
            for reps in (1, 2) if bn < 8 and name == "int4" else (1,):               # 8 rows x 2 spill registers
                words = 4 * 32 * warps * reps
                tile = ({"BLOCK_W": words, "PER_SM": 0} if name == "int8"
                        else {"BLOCK_G": max(1, words // (group // 8))})
                out.append(triton.Config({"BLOCK_N": bn, **tile}, num_warps=warps, num_stages=1))
    if name == "int8":
        out += [triton.Config({"BLOCK_N": bn, "BLOCK_W": 128 * warps, "PER_SM": per_sm}, num_warps=warps,
                              num_stages=1) for bn in (2, 4) for warps in (2, 4) for per_sm in (8, 16)]
    return out


TUNED: dict[tuple, object] = {}


def autotuned(key: tuple, kernel, configs: list, keys: list[str]):
    """The autotuned `kernel` for `key` (name, gemv or not, M class, group), made once (tuned_configs in
    quant_matmul reports what each chose)."""
    if key not in TUNED:
        TUNED[key] = triton.autotune(configs, key=keys)(kernel)
    return TUNED[key]


def gemv_kernel(name: str, group: int = 0):
    """The gemv kernel to launch and its fixed meta-parameters: a small tile in the interpreter, the
    autotuned kernel on a GPU."""
    kernel = int8_gemv_kernel if name == "int8" else int4_gemv_kernel
    if INTERPRET:
        return kernel, {"BLOCK_N": 2, "BLOCK_W": 16, "PER_SM": 0} if name == "int8" else {"BLOCK_N": 2, "BLOCK_G": 2}
    return autotuned((name, True, 1, group), kernel, gemv_configs(name, group), ["N", "KW"]), {}


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


def int4_gemv_activations(x: torch.Tensor) -> torch.Tensor:
    """x (M, K) -> x' (M, 8, K/8) fp32, x'[m, i, w] = x[m, 8w + i] * 2^8 (i even) or 2^4 (i odd) (int4_gemv_kernel)."""
    M, K = x.shape
    pairs = x.float().view(M, K // 8, 4, 2)
    scaled = torch.stack((pairs[..., 0] * 256, pairs[..., 1] * 16), dim=-1)                  # (M, K/8, 4, 2)
    return scaled.view(M, K // 8, 8).transpose(1, 2).contiguous()


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


def int8_gemv(xw: torch.Tensor, words: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x planes (M, 4, KW) (int8_gemv_planes, or x (M, K) itself for a planar weight), int8 weight words
    (N, KW) int32, scale (N,) -> (M, N) in dtype."""
    M, N, KW = xw.shape[0], words.shape[0], words.shape[1]
    out = torch.empty(M, N, dtype=dtype, device=xw.device)
    kernel, fixed = gemv_kernel("int8")
    launcher(kernel)[gemv_grid(N, M, xw.device)](xw, words, scale, out, N, KW, xw.stride(0), words.stride(0),
                                                 out.stride(0), MAGIC_INT8, **fixed)
    return out


def int4_gemv(xw: torch.Tensor, words: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
              dtype: torch.dtype) -> torch.Tensor:
    """x' (M, 8, KW) from int4_gemv_activations, int4 weight words (N, KW) int32, scale/zero (N, G) -> (M, N)."""
    M, N, KW = xw.shape[0], words.shape[0], words.shape[1]
    group = launch_group(group_size)
    out = torch.empty(M, N, dtype=dtype, device=xw.device)
    kernel, fixed = gemv_kernel("int4", group)
    launcher(kernel)[gemv_grid(N, M, xw.device)](xw, words, scale, zero, out, N, KW, scale.shape[1], xw.stride(0),
                                                 words.stride(0), scale.stride(0), out.stride(0), MAGIC_ONE,
                                                 GROUP=group, **fixed)
    return out


def uses_gemv(M: int, words: torch.Tensor | None, use_dot: bool | None) -> bool:
    """The gemv kernel for one row (every row with use_dot=False) where the weight reads as int32 words."""
    return words is not None and (M == 1 if use_dot is None else not use_dot)
