"""Triton kernels for x @ W^T with quantised W (llamafn.quant.formats), dequantising in registers.

Two kernels a format, chosen by the launcher from the number of rows M of x:

- `gemv` (M == 1, batch-1 decode), on the CUDA cores, reading the weights as int32 words
  (llamafn.kernels.quant_gemv).
- `dot` (M > 1, or a K the words do not fit): the tile is dequantised to the activations' dtype and fed
  to `tl.dot` (tensor cores), fp32 accumulation, rows of x padded to BLOCK_M >= 16.

int8: out = (x @ q^T) * scale, the per-channel scale applied once at the end.
int4: per group, sum (q - z) s x = s (sum q x - z sum x); the dot path dequantises the tile, (q - z) * s,
and feeds it to `tl.dot` with tiles of several groups. Tried and slower on the H200
(benchmarks/results/quant-nvidia-h200.json): a dot on the raw 4-bit values (one K step a group, the
correction after; 1.1-2.2x slower).

Both are registered as custom ops (`torch.ops.llamafn.int8_matmul`, `int4_matmul`, via
`runtime.kernel_op`) so that a compiled decode step captures them with `fullgraph=True` and
inductor places them in its CUDA graph. Under `TRITON_INTERPRET=1` the launchers run on CPU tensors
with one fixed config (tests); on a GPU each kernel is autotuned per (M class, N, K).
"""

from __future__ import annotations

import torch

from ..quant.formats import group_plane_order, plane_order
from . import quant_gemv
from .quant_gemv import (as_words, int4_gemv, int4_gemv_fits, int4_gemv_pairs, int8_gemv, int8_gemv_planes,
                         launch_group, uses_gemv)
from .runtime import INTERPRET, kernel_op, launcher, triton

if triton is not None:
    import triton.language as tl

    from .runtime import dot

    @triton.jit
    def int8_dot_kernel(x_ptr, q_ptr, s_ptr, out_ptr, M, N, K, stride_xm, stride_qn, stride_om,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_n, pid_m = tl.program_id(0), tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                                  # (BN,)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                                  # (BM,)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)                                           # (BK,)
            w = tl.load(q_ptr + rn[:, None] * stride_qn + rk[None, :],
                        mask=(rn[:, None] < N) & (rk[None, :] < K), other=0)          # (BN, BK) int8
            x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :],
                        mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)        # (BM, BK)
            acc += dot(x, tl.trans(w.to(x.dtype)))                                    # (BM, BN)
        scale = tl.load(s_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)            # (BN,)
        out = acc * scale[None, :]
        tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def int4_dot_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, K, G, stride_xm, stride_qn, stride_sn, stride_om,
                        GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        NG: tl.constexpr = BLOCK_K // GROUP                                           # groups a tile
        pid_n, pid_m = tl.program_id(0), tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                                  # (BN,)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                                  # (BM,)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rb = k0 // 2 + tl.arange(0, BLOCK_K // 2)                                 # (BK/2,) byte columns
            packed = tl.load(q_ptr + rn[:, None] * stride_qn + rb[None, :],
                             mask=(rn[:, None] < N) & (rb[None, :] < K // 2), other=0)   # (BN, BK/2) uint8
            rg = k0 // GROUP + tl.arange(0, NG)                                       # (NG,)
            group_mask = (rn[:, None] < N) & (rg[None, :] < G)
            s = tl.load(s_ptr + rn[:, None] * stride_sn + rg[None, :], mask=group_mask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + rn[:, None] * stride_sn + rg[None, :], mask=group_mask, other=0).to(tl.float32)
            q = tl.interleave(packed & 0xF, packed >> 4).to(tl.float32)               # (BN, BK), column 2j low nibble
            w = (tl.reshape(q, (BLOCK_N, NG, GROUP)) - z[:, :, None]) * s[:, :, None]   # (BN, NG, g)
            rk = k0 + tl.arange(0, BLOCK_K)                                           # (BK,)
            x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :],
                        mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)        # (BM, BK)
            acc += dot(x, tl.trans(tl.reshape(w, (BLOCK_N, BLOCK_K)).to(x.dtype)))    # (BM, BN)
        tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))


def _dot_configs(M: int, group: int) -> list:
    """Autotuning candidates for the dot kernels: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages), BLOCK_K a
    multiple of the group, rows of x padded to BLOCK_M >= 16."""
    bm = 16 if M <= 16 else 32 if M <= 64 else 64
    shapes = sorted({(bm, bn, max(bk, group), w, s) for bn in (16, 32, 64, 128) for bk in (64, 128, 256)
                     for w, s in ((4, 3), (8, 4)) if bn * bk <= 16384})
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in shapes]


def dot_kernel(name: str, M: int, group: int = 0):
    """The dot kernel to launch and its fixed meta-parameters: small tiles in the interpreter, a kernel
    autotuned per M class on a GPU."""
    kernel = int8_dot_kernel if name == "int8" else int4_dot_kernel
    if INTERPRET:
        return kernel, {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": max(32, group)}
    m_class = 16 if M <= 16 else 64 if M <= 64 else 1 << 30
    return quant_gemv.autotuned((name, False, m_class, group, "plain"), kernel, _dot_configs(M, group), ["N", "K"]), {}


def tuned_configs() -> dict[str, str]:
    """The config the autotuner chose for each kernel and shape key so far (for benchmark records; compiled
    steps launch through the same tuners)."""
    return {f"{name} {'gemv' if gemv else 'dot'} M<={m_class} group={group}{'' if ep == 'plain' else ' ' + ep} "
            f"(N, K)={key[:2]}": str(config) for (name, gemv, m_class, group, ep), tuner in quant_gemv.TUNED.items()
            for key, config in tuner.cache.items()}


def dot_grid(N: int, M: int):
    """Programs of the dot kernels: BLOCK_N weight rows by BLOCK_M rows of x each."""
    return lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(M, meta["BLOCK_M"]))


def int8_matmul_launch(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, planar: bool = False,
                       use_dot: bool | None = None) -> torch.Tensor:
    """x (M, K) float, q (N, K) int8 (columns in plane order if `planar`), scale (N,) -> (M, N) in x's
    dtype, by the gemv or the dot kernel. The dot kernel takes x in a planar weight's column order, so
    x @ q^T is the natural product: gathering x in that order inside the kernel instead took 2.1-2.9x
    as long as the natural-order tile on an H100 at 2-4 rows; the permutation is a kernel of its own
    (1.1-1.2x); the decode layouts (llamafn.quant.for_decode) store the weights so that the gemv reads x
    as it is."""
    M, K = x.shape
    N = q.shape[0]
    words = as_words(q)
    if uses_gemv(M, words, use_dot):
        return int8_gemv(x if planar else int8_gemv_planes(x), words, scale, x.dtype)
    if planar:
        x = plane_order(x)
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    kernel, fixed = dot_kernel("int8", M)
    launcher(kernel)[dot_grid(N, M)](x, q, scale, out, M, N, K, x.stride(0), q.stride(0), out.stride(0), **fixed)
    return out


def int4_matmul_launch(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                       planar: bool = False, use_dot: bool | None = None) -> torch.Tensor:
    """x (M, K) float, q (N, K/2) uint8 (nibbles in group-plane order if `planar`), scale/zero (N, G) -> (M, N)
    in x's dtype. The gemv (paths as for int8) needs bf16 x, whole groups and K a multiple of 8; else, and
    for more rows, the dot kernel, which takes x in a planar weight's order (`formats.group_plane_order`)."""
    M, K = x.shape
    N, G = scale.shape
    words = as_words(q)
    if uses_gemv(M, words, use_dot) and int4_gemv_fits(x, group_size):
        pairs = x.contiguous().view(torch.int32) if planar else int4_gemv_pairs(x, group_size)
        return int4_gemv(pairs, words, scale, zero, group_size, x.dtype)
    if planar:
        x = group_plane_order(x, group_size)
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    group = launch_group(group_size)
    kernel, fixed = dot_kernel("int4", M, group)
    launcher(kernel)[dot_grid(N, M)](x, q, scale, zero, out, M, N, K, G, x.stride(0), q.stride(0), scale.stride(0),
                                     out.stride(0), GROUP=group, **fixed)
    return out


def gemv_rope_write_launch(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                           group_size: int, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor,
                           cache_k: torch.Tensor, cache_v: torch.Tensor, n_heads: int) -> torch.Tensor:
    """One row x (1, K) against a fused wqkv in its GEMV's plane order (int8 without zero, int4 with), RoPE on
    q and k and the write of k and v into cache_k / cache_v (1, Hkv, S, D) at pos (1, 1) in the GEMV's
    epilogue -> q (1, n_heads D)."""
    rope = quant_gemv.RopeWrite(cos, sin, pos, cache_k, cache_v, n_heads)
    if zero is None:
        return int8_gemv(x, as_words(q), scale, x.dtype, rope)
    return int4_gemv(x.view(torch.int32), as_words(q), scale, zero, group_size, x.dtype, rope)


if triton is not None:
    @kernel_op("llamafn::gemv_rope_write", mutates_args={"cache_k", "cache_v"})
    def gemv_rope_write(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                        group_size: int, cos: torch.Tensor, sin: torch.Tensor, pos: torch.Tensor, cache_k: torch.Tensor,
                        cache_v: torch.Tensor, n_heads: int) -> torch.Tensor:
        """gemv_rope_write_launch on the GPU."""
        return gemv_rope_write_launch(x, q, scale, zero, group_size, cos, sin, pos, cache_k, cache_v, n_heads)

    @kernel_op("llamafn::int8_matmul", mutates_args=())
    def int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, planar: bool = False) -> torch.Tensor:
        """x (M, K) @ dequantised int8 weight (N, K)^T -> (M, N), on the GPU; `planar`: q's columns are in
        the gemv's plane order (Int8GemvWeight)."""
        return int8_matmul_launch(x, q, scale, planar)

    @kernel_op("llamafn::int4_matmul", mutates_args=())
    def int4_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                    group_size: int, planar: bool = False) -> torch.Tensor:
        """x (M, K) @ dequantised int4 weight (N, K)^T -> (M, N), on the GPU; `planar`: q's nibbles are in
        the gemv's group-plane order (Int4GemvWeight)."""
        return int4_matmul_launch(x, q, scale, zero, group_size, planar)
