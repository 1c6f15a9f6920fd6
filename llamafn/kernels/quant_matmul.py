"""Triton kernels for x @ W^T with quantised W (llamafn.quant.formats), dequantising in registers.

Two ways to reduce over the inputs, chosen by the launcher from the number of rows M of x:
- `gemv` (M == 1, batch-1 decode): a (BLOCK_N, BLOCK_K) tile of the weight is multiplied
  elementwise by the activations and summed, in fp32 on the CUDA cores. Small BLOCK_N gives enough
  programs to fill the GPU without split-K (and without the zeroing and cast kernels split-K needs).
  Triton software-pipelines only the loads that feed `tl.dot`, so this loop waits on every tile; the
  `PREFETCH` configs load the next tile before the current one's arithmetic (register double
  buffering) and compete with the plain loop in the autotuning.
- `dot` (M > 1): the tile is dequantised to the activations' dtype and fed to `tl.dot` (tensor cores),
  fp32 accumulation, rows of x padded to BLOCK_M >= 16.

int8: out = (x @ q^T) * scale, the per-channel scale applied once at the end.
int4: the gemv path uses sum_k (q - z) s x = s (sum_k q x - z sum_k x) per group (one FMA a weight, the
zero point and scale once per group and output); the dot path dequantises the tile, (q - z) * s, in
registers and feeds it to `tl.dot` with tiles of several groups. A variant that kept the raw 4-bit values
in the dot (one K step a group, the correction after) and multiplied even/odd activations against the
low/high nibbles measured 1.1-2.2x slower on the H200 (benchmarks/results/quant-nvidia-h200.json), and
so did a GEMV that read int32 words and built floats with the 2^23 magic-number trick instead of
int-to-float conversions (1.1-2x slower; in its PTX the int8 one moved the activations through shared
memory every step).

Both are registered as custom ops (`torch.ops.llamafn.int8_matmul`, `int4_matmul`, via
`torch.library.triton_op`) so that a compiled decode step captures them with `fullgraph=True` and
inductor places them in its CUDA graph. Under `TRITON_INTERPRET=1` the launchers run on CPU tensors
with one fixed config (tests); on a GPU each kernel is autotuned per (M class, N, K).
"""

from __future__ import annotations

import torch

from .runtime import INTERPRET, launcher, triton

if triton is not None:
    import triton.language as tl

    from .runtime import dot

    @triton.jit
    def int8_tile(q_ptr, rn, k0, N, K, stride_qn, BLOCK_K: tl.constexpr):
        """The (BN, BK) int8 tile of rows rn at inputs k0 .. k0 + BK - 1 (zeros outside)."""
        rk = k0 + tl.arange(0, BLOCK_K)
        return tl.load(q_ptr + rn[:, None] * stride_qn + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K), other=0)

    @triton.jit
    def int8_kernel(x_ptr, q_ptr, s_ptr, out_ptr, M, N, K, stride_xm, stride_qn, stride_om,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_DOT: tl.constexpr,
                    PREFETCH: tl.constexpr):
        pid_n, pid_m = tl.program_id(0), tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                                  # (BN,)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                                  # (BM,)
        if USE_DOT:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        if PREFETCH:
            w_next = int8_tile(q_ptr, rn, 0, N, K, stride_qn, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)                                           # (BK,)
            if PREFETCH:                                                              # the next tile in flight meanwhile
                w = w_next
                w_next = int8_tile(q_ptr, rn, k0 + BLOCK_K, N, K, stride_qn, BLOCK_K)
            else:
                w = int8_tile(q_ptr, rn, k0, N, K, stride_qn, BLOCK_K)                # (BN, BK) int8
            if USE_DOT:
                x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :],
                            mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)    # (BM, BK)
                acc += dot(x, tl.trans(w.to(x.dtype)))                                # (BM, BN)
            else:
                x = tl.load(x_ptr + pid_m * stride_xm + rk, mask=rk < K, other=0.0)   # (BK,)
                acc += w.to(tl.float32) * x.to(tl.float32)[None, :]                   # (BN, BK)
        scale = tl.load(s_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)            # (BN,)
        if USE_DOT:
            out = acc * scale[None, :]                                                # (BM, BN)
            tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], out.to(out_ptr.dtype.element_ty),
                     mask=(rm[:, None] < M) & (rn[None, :] < N))
        else:
            out = tl.sum(acc, axis=1) * scale                                         # (BN,)
            tl.store(out_ptr + pid_m * stride_om + rn, out.to(out_ptr.dtype.element_ty), mask=rn < N)

    @triton.jit
    def int4_tile(q_ptr, s_ptr, z_ptr, rn, k0, N, K, G, stride_qn, stride_sn, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
        """The packed (BN, BK/2) bytes of rows rn at inputs k0 .. k0 + BK - 1 and their groups' (BN, BK/GROUP)
        scales and zero points (zeros outside)."""
        rb = k0 // 2 + tl.arange(0, BLOCK_K // 2)                                     # (BK/2,) byte columns
        packed = tl.load(q_ptr + rn[:, None] * stride_qn + rb[None, :],
                         mask=(rn[:, None] < N) & (rb[None, :] < K // 2), other=0)    # (BN, BK/2) uint8
        rg = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)                             # (NG,)
        gmask = (rn[:, None] < N) & (rg[None, :] < G)
        s = tl.load(s_ptr + rn[:, None] * stride_sn + rg[None, :], mask=gmask, other=0.0)
        z = tl.load(z_ptr + rn[:, None] * stride_sn + rg[None, :], mask=gmask, other=0)
        return packed, s, z

    @triton.jit
    def int4_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, M, N, K, G, stride_xm, stride_qn, stride_sn, stride_om,
                    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    USE_DOT: tl.constexpr, PREFETCH: tl.constexpr):
        NG: tl.constexpr = BLOCK_K // GROUP                                           # groups a tile
        pid_n, pid_m = tl.program_id(0), tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                                  # (BN,)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                                  # (BM,)
        if USE_DOT:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        if PREFETCH:
            packed_next, s_next, z_next = int4_tile(q_ptr, s_ptr, z_ptr, rn, 0, N, K, G, stride_qn, stride_sn, GROUP, BLOCK_K)
        for k0 in range(0, K, BLOCK_K):
            if PREFETCH:                                                              # the next tile in flight meanwhile
                packed, s, z = packed_next, s_next, z_next
                packed_next, s_next, z_next = int4_tile(q_ptr, s_ptr, z_ptr, rn, k0 + BLOCK_K, N, K, G, stride_qn,
                                                        stride_sn, GROUP, BLOCK_K)
            else:
                packed, s, z = int4_tile(q_ptr, s_ptr, z_ptr, rn, k0, N, K, G, stride_qn, stride_sn, GROUP, BLOCK_K)
            q = tl.interleave(packed & 0xF, packed >> 4).to(tl.float32)               # (BN, BK), column 2j low nibble
            s, z = s.to(tl.float32), z.to(tl.float32)                                 # (BN, NG)
            rk = k0 + tl.arange(0, BLOCK_K)                                           # (BK,)
            if USE_DOT:
                w = (tl.reshape(q, (BLOCK_N, NG, GROUP)) - z[:, :, None]) * s[:, :, None]   # (BN, NG, g)
                x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :],
                            mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)    # (BM, BK)
                acc += dot(x, tl.trans(tl.reshape(w, (BLOCK_N, BLOCK_K)).to(x.dtype)))      # (BM, BN)
            else:
                x = tl.load(x_ptr + pid_m * stride_xm + rk, mask=rk < K, other=0.0).to(tl.float32)   # (BK,)
                qx = tl.sum(tl.reshape(q * x[None, :], (BLOCK_N, NG, GROUP)), axis=2)           # (BN, NG)
                xs = tl.sum(tl.reshape(x, (NG, GROUP)), axis=1)                                 # (NG,)
                acc += tl.sum(s * (qx - z * xs[None, :]), axis=1)                               # (BN,)
        if USE_DOT:
            tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty),
                     mask=(rm[:, None] < M) & (rn[None, :] < N))
        else:
            tl.store(out_ptr + pid_m * stride_om + rn, acc.to(out_ptr.dtype.element_ty), mask=rn < N)


def _configs(use_dot: bool, M: int, group: int = 0) -> list:
    """Autotuning candidates: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, PREFETCH); BLOCK_K a multiple of
    the group. The measured kernels (H200) are instruction- and latency-bound rather than memory-bound at
    one row, so the gemv set spans narrow-and-long to wide-and-short tiles and 2-8 warps, each also with
    the next tile's loads issued before the current tile's arithmetic (PREFETCH: Triton pipelines only
    the loads that feed tl.dot, so a plain loop waits on every tile); the tuner picks by measurement."""
    if not use_dot:
        shapes = [(1, bn, bk, w, s, False) for bn in (2, 4, 8, 16, 32) for bk in (256, 512, 1024)
                  for w, s in ((2, 2), (4, 3), (8, 3)) if bn * bk <= 16384]
        shapes += [(1, bn, bk, w, 1, True) for bn in (2, 4, 8, 16) for bk in (256, 512, 1024)
                   for w in (4, 8) if bn * bk <= 8192]
    else:
        bm = 16 if M <= 16 else 32 if M <= 64 else 64
        shapes = [(bm, bn, bk, w, s, False) for bn in (16, 32, 64, 128) for bk in (64, 128, 256)
                  for w, s in ((4, 3), (8, 4)) if bn * bk <= 16384]
    unique = sorted({(bm, bn, max(bk, group), w, s, p) for bm, bn, bk, w, s, p in shapes})   # whole groups a tile
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "PREFETCH": p}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s, p in unique]


_TUNED: dict[tuple, object] = {}


def _kernel(name: str, use_dot: bool, M: int, group: int = 0, prefetch: bool = False):
    """The kernel to launch: fixed small tiles in the interpreter (`prefetch` picks the loop), an autotuned
    one per M class on a GPU."""
    kernel = int8_kernel if name == "int8" else int4_kernel
    if INTERPRET:
        return kernel, {"BLOCK_M": 16 if use_dot else 1, "BLOCK_N": 16, "BLOCK_K": max(32, group), "PREFETCH": prefetch}
    m_class = 1 if not use_dot else 16 if M <= 16 else 64 if M <= 64 else 1 << 30
    key = (name, use_dot, m_class, group)
    if key not in _TUNED:
        _TUNED[key] = triton.autotune(_configs(use_dot, M, group), key=["N", "K"])(kernel)
    return _TUNED[key], {}


def int8_matmul_launch(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, use_dot: bool | None = None,
                       prefetch: bool = False) -> torch.Tensor:
    """x (M, K) float, q (N, K) int8, scale (N,) -> (M, N) in x's dtype. `use_dot` and `prefetch` choose the
    path in the interpreter (tests); on a GPU the rows choose the path and the autotuner the rest."""
    M, K = x.shape
    N = q.shape[0]
    use_dot = M > 1 if use_dot is None else use_dot
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    kernel, fixed = _kernel("int8", use_dot, M, prefetch=prefetch)

    def grid(meta):
        return triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(M, meta["BLOCK_M"])

    launcher(kernel)[grid](x, q, scale, out, M, N, K, x.stride(0), q.stride(0), out.stride(0), USE_DOT=use_dot, **fixed)
    return out


def launch_group(group_size: int) -> int:
    """The power-of-two GROUP the kernel iterates by: the group size, or for a single group (the whole
    row, any length) a power of two at least that long and at least 32 (one group covers the row either way)."""
    return max(32, 1 << (group_size - 1).bit_length())


def int4_matmul_launch(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                       use_dot: bool | None = None, prefetch: bool = False) -> torch.Tensor:
    """x (M, K) float, q (N, K/2) uint8, scale/zero (N, G) -> (M, N) in x's dtype (`use_dot`, `prefetch` as
    for int8)."""
    M, K = x.shape
    N, G = scale.shape
    use_dot = M > 1 if use_dot is None else use_dot
    group = launch_group(group_size)
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    kernel, fixed = _kernel("int4", use_dot, M, group, prefetch)

    def grid(meta):
        return triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(M, meta["BLOCK_M"])

    launcher(kernel)[grid](x, q, scale, zero, out, M, N, K, G, x.stride(0), q.stride(0), scale.stride(0), out.stride(0),
                 GROUP=group, USE_DOT=use_dot, **fixed)
    return out


if triton is not None:
    @torch.library.triton_op("llamafn::int8_matmul", mutates_args=())
    def int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """x (M, K) @ dequantised int8 weight (N, K)^T -> (M, N), on the GPU."""
        return int8_matmul_launch(x, q, scale)

    @torch.library.triton_op("llamafn::int4_matmul", mutates_args=())
    def int4_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                    group_size: int) -> torch.Tensor:
        """x (M, K) @ dequantised int4 weight (N, K)^T -> (M, N), on the GPU."""
        return int4_matmul_launch(x, q, scale, zero, group_size)
