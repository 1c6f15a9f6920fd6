"""Fused elementwise Triton kernels for the block, the "triton" backends of four registry ops:

- `add_rms_norm(x, delta, weight, eps) -> (rms_norm(x + delta) * weight, x + delta)`: the residual add
  and the next RMSNorm in one pass (one read of x and delta, two writes), as in Meta's block
  h = x + attn(...); ffn_norm(h). One program a row, the row held in registers, fp32 statistics.
- `swiglu(gate, up) -> silu(gate) * up`, reading the two halves of the fused w13 output in place
  (row strides, no copy).
- `rope_write(q, k, v, cos, sin, cache, layer, pos)`: RoPE on q and k and the write of k and v into the
  KV cache at each token's position, one pass over the projection output (q leaves in the (B, H, T, D)
  layout attention reads); the reference applies RoPE, transposes and scatters in separate ops. A
  program takes one token and four heads, each head read and written as a contiguous (pairs, 2) tile
  and split into the pairs' halves in registers (one head a program with stride-2 loads measured
  1.7-2.8x slower at 1, 8 and 2048 rows, though 1.3x faster at 32). Past decode sizes a program runs
  two warps, so each thread moves 16 bytes at a time.
- `step_positions(pos, inv_freq) -> (pos, cos, sin)`: a forward's positions and RoPE angles from one
  kernel, read by every layer. Computed by plain ops, inductor recomputes them with a small kernel of
  their own for each custom op that reads them (4 a layer in the 7B decode step, about 4% of it).

The eager references (llamafn.model.norm, llamafn.model.ffn) are the "reference" backends; a name
with no backend of its own for an op falls back to the reference (llamafn.kernels.registry.get_or_reference).
All are custom ops (`torch.ops.llamafn.add_rms_norm`, `swiglu`, `rope_write`, the last mutating the
cache) so compiled steps capture them. Measured against inductor's fusion of the references
(`scripts/bench_kernels.py`, README; H100, back to back in one CUDA graph): add + norm equal; SwiGLU 7-16%
faster at 8-32 rows, 4-6% slower at 1 and 2048; RoPE + write 1.8-2.3x faster at 1-32 rows and 1.29x at 2048.
"""

from __future__ import annotations

import torch

from .. import cache as kv
from ..errors import InputError
from .registry import get, register
from .runtime import INTERPRET, kernel_op, launcher, pdl, require_triton, triton

if triton is not None:
    import triton.language as tl

    from .runtime import await_producers, release_dependents

    @triton.jit
    def add_rms_norm_kernel(X, DELTA, W, Y, H, stride_x, stride_d, stride_y, stride_h, N, eps,
                            BLOCK: tl.constexpr, PDL: tl.constexpr):
        release_dependents(PDL)
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        ok = cols < N
        w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
        await_producers(PDL)
        h = (tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
             + tl.load(DELTA + row * stride_d + cols, mask=ok, other=0.0).to(tl.float32))   # (BLOCK,)
        h_out = h.to(H.dtype.element_ty)                                                    # the residual, rounded as x + delta is
        hf = h_out.to(tl.float32)
        rstd = 1.0 / tl.sqrt((tl.sum(hf * hf, axis=0) / N + eps).to(tl.float32))   # fp32 whatever type eps comes in as
        normed = (hf * rstd).to(H.dtype.element_ty).to(tl.float32)                          # rms_norm casts back, then scales
        tl.store(H + row * stride_h + cols, h_out, mask=ok)
        tl.store(Y + row * stride_y + cols, (normed * w).to(Y.dtype.element_ty), mask=ok)

    @triton.jit
    def swiglu_kernel(G, U, OUT, stride_g, stride_u, stride_o, N, BLOCK: tl.constexpr, PDL: tl.constexpr):
        release_dependents(PDL)
        await_producers(PDL)
        row, col_block = tl.program_id(0), tl.program_id(1)
        cols = col_block * BLOCK + tl.arange(0, BLOCK)
        ok = cols < N
        g = tl.load(G + row * stride_g + cols, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(U + row * stride_u + cols, mask=ok, other=0.0).to(tl.float32)
        silu = (g / (1.0 + tl.exp(-g))).to(OUT.dtype.element_ty).to(tl.float32)            # F.silu rounds before the product
        tl.store(OUT + row * stride_o + cols, (silu * u).to(OUT.dtype.element_ty), mask=ok)


    @triton.jit
    def rope_write_kernel(Q, K, V, COS, SIN, POS, QO, CK, CV, T, H, Hkv,
                          sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, scb, sct, spb,
                          sob, soh, sot, sckb, sckh, scks, scvb, scvh, scvs,
                          HALF: tl.constexpr, BLOCK: tl.constexpr, BLOCK_H: tl.constexpr, PDL: tl.constexpr):
        """One program a (token, block of BLOCK_H heads): q blocks rotate q into QO; k blocks rotate k (and
        copy v) into the cache at the token's position. Heads are read and written whole as contiguous
        (pairs, 2) tiles and split into the pairs' halves in registers."""
        release_dependents(PDL)
        await_producers(PDL)
        bt, hb = tl.program_id(0), tl.program_id(1)
        b, t = bt // T, bt % T
        n_q_blocks = tl.cdiv(H, BLOCK_H)
        i = tl.arange(0, BLOCK)                                                       # (BLOCK,) pair index
        pair = i[:, None] * 2 + tl.arange(0, 2)[None, :]                              # (BLOCK, 2) offsets in a head
        c = tl.load(COS + b * scb + t * sct + i, mask=i < HALF, other=0.0)[None, :]   # (1, BLOCK)
        s = tl.load(SIN + b * scb + t * sct + i, mask=i < HALF, other=0.0)[None, :]
        if hb < n_q_blocks:
            h = hb * BLOCK_H + tl.arange(0, BLOCK_H)                                  # (BH,) query heads
            ok = (h < H)[:, None, None] & (pair < 2 * HALF)[None, :, :]               # (BH, BLOCK, 2)
            x = tl.load(Q + b * sqb + t * sqt + h[:, None, None] * sqh + pair[None], mask=ok, other=0.0).to(tl.float32)
            re, im = tl.split(x)                                                      # (BH, BLOCK) each
            out = tl.join(re * c - im * s, re * s + im * c)                           # (BH, BLOCK, 2)
            tl.store(QO + b * sob + h[:, None, None] * soh + t * sot + pair[None], out.to(QO.dtype.element_ty), mask=ok)
        else:
            h = (hb - n_q_blocks) * BLOCK_H + tl.arange(0, BLOCK_H)                   # (BH,) KV heads
            ok = (h < Hkv)[:, None, None] & (pair < 2 * HALF)[None, :, :]
            p = tl.load(POS + b * spb + t)
            x = tl.load(K + b * skb + t * skt + h[:, None, None] * skh + pair[None], mask=ok, other=0.0).to(tl.float32)
            re, im = tl.split(x)
            k_out = tl.join(re * c - im * s, re * s + im * c).to(K.dtype.element_ty)
            tl.store(CK + b * sckb + h[:, None, None] * sckh + p * scks + pair[None], k_out.to(CK.dtype.element_ty), mask=ok)
            v = tl.load(V + b * svb + t * svt + h[:, None, None] * svh + pair[None], mask=ok, other=0.0)
            tl.store(CV + b * scvb + h[:, None, None] * scvh + p * scvs + pair[None], v.to(CV.dtype.element_ty), mask=ok)

    @triton.jit
    def step_positions_kernel(POS, INV_FREQ, POS_OUT, COS, SIN, HALF, BLOCK: tl.constexpr):
        """One program a token: its position copied through and cos/sin of position * inv_freq (fp32; Triton
        lowers tl.cos / tl.sin to libdevice's full-range functions, not the approximate instructions)."""
        row = tl.program_id(0)
        i = tl.arange(0, BLOCK)
        ok = i < HALF
        p = tl.load(POS + row)
        angle = p.to(tl.float32) * tl.load(INV_FREQ + i, mask=ok, other=0.0)          # (BLOCK,)
        tl.store(COS + row * HALF + i, tl.cos(angle), mask=ok)
        tl.store(SIN + row * HALF + i, tl.sin(angle), mask=ok)
        tl.store(POS_OUT + row, p)


def rows_of(t: torch.Tensor) -> torch.Tensor:
    """(..., N) -> (M, N) without a copy where the rows are evenly strided (contiguous last dim)."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, t.shape[-1]) if t.dim() != 2 else t


def add_rms_norm_launch(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    N = x.shape[-1]
    if N > 65536:
        raise InputError(f"the triton add_rms_norm keeps a row in registers: dim {N} is over 65536")
    x2, d2 = rows_of(x), rows_of(delta)
    h = torch.empty_like(x2)
    y = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    BLOCK = max(16, 1 << (N - 1).bit_length())
    launcher(add_rms_norm_kernel)[(x2.shape[0],)](
        x2, d2, weight, y, h, x2.stride(0), d2.stride(0), y.stride(0), h.stride(0), N, eps, BLOCK=BLOCK,
        PDL=pdl(x.device),
        **({} if INTERPRET else {"num_warps": min(16, max(1, BLOCK // 512))}))
    return y.view(x.shape), h.view(x.shape)


def swiglu_launch(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    N = gate.shape[-1]
    g2, u2 = rows_of(gate), rows_of(up)
    out = torch.empty(g2.shape, dtype=gate.dtype, device=gate.device)
    BLOCK = 1024 if not INTERPRET else 64
    launcher(swiglu_kernel)[(g2.shape[0], triton.cdiv(N, BLOCK))](
        g2, u2, out, g2.stride(0), u2.stride(0), out.stride(0), N, BLOCK=BLOCK, PDL=pdl(gate.device))
    return out.view(gate.shape)


def rope_write_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      cache_k: torch.Tensor, cache_v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """q (B, T, H, D), k/v (B, T, Hkv, D) (any strides with a contiguous last dim), cos/sin (B, T, D/2),
    cache_k/v (B, Hkv, S, D) written in place at pos (B, T) -> q rotated, (B, H, T, D) contiguous."""
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    q_out = torch.empty(B, H, T, D, dtype=q.dtype, device=q.device)
    cos, sin = cos.contiguous(), sin.contiguous()
    BLOCK_H = 4     # heads a program, with 2 warps past decode sizes (16-byte accesses a thread): the best of
                    # 1-32 heads x 1-8 warps on an H100 at 2048 rows (4 warps were ahead at 1-32 rows)
    launcher(rope_write_kernel)[(B * T, triton.cdiv(H, BLOCK_H) + triton.cdiv(Hkv, BLOCK_H))](
        q, k, v, cos, sin, pos, q_out, cache_k, cache_v, T, H, Hkv,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), cos.stride(0), cos.stride(1), pos.stride(0),
        q_out.stride(0), q_out.stride(1), q_out.stride(2), cache_k.stride(0), cache_k.stride(1), cache_k.stride(2),
        cache_v.stride(0), cache_v.stride(1), cache_v.stride(2), HALF=D // 2, BLOCK=max(16, 1 << (D // 2 - 1).bit_length()),
        BLOCK_H=BLOCK_H, PDL=pdl(q.device), **({} if INTERPRET else {"num_warps": 4 if B * T <= 64 else 2}))
    return q_out


def step_positions_launch(pos: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pos (B, T) int, inv_freq (D/2,) fp32 -> pos, cos, sin (B, T, D/2) fp32, all written by one kernel."""
    B, T = pos.shape
    half = inv_freq.shape[0]
    pos = pos.contiguous()
    out = torch.empty_like(pos)
    cos, sin = (torch.empty(B, T, half, dtype=torch.float32, device=pos.device) for _ in range(2))
    launcher(step_positions_kernel)[(B * T,)](pos, inv_freq.float().contiguous(), out, cos, sin, half,
                                              BLOCK=max(16, triton.next_power_of_2(half)))
    return out, cos, sin


if triton is not None:
    @kernel_op("llamafn::step_positions", mutates_args=())
    def step_positions_op(pos: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return step_positions_launch(pos, inv_freq)

    @kernel_op("llamafn::rope_write", mutates_args={"cache_k", "cache_v"})
    def rope_write_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      cache_k: torch.Tensor, cache_v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return rope_write_launch(q, k, v, cos, sin, cache_k, cache_v, pos)

    @kernel_op("llamafn::add_rms_norm", mutates_args=())
    def add_rms_norm_op(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        return add_rms_norm_launch(x, delta, weight, eps)

    @kernel_op("llamafn::swiglu", mutates_args=())
    def swiglu_op(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return swiglu_launch(gate, up)


@register("add_rms_norm", "triton")
def triton_add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    require_triton(x.device, "the triton add_rms_norm backend")
    if x.is_cuda:
        return torch.ops.llamafn.add_rms_norm(x, delta, weight, eps)
    return add_rms_norm_launch(x, delta, weight, eps)


@register("swiglu", "triton")
def triton_swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    require_triton(gate.device, "the triton swiglu backend")
    if gate.is_cuda:
        return torch.ops.llamafn.swiglu(gate, up)
    return swiglu_launch(gate, up)


@register("step_positions", "triton")
def triton_step_positions(pos: torch.Tensor, inv_freq: torch.Tensor):
    """(pos, cos, sin) from one kernel, so that every layer's rope_write and attention read the same buffers."""
    require_triton(pos.device, "the triton step_positions backend")
    return (torch.ops.llamafn.step_positions if pos.is_cuda else step_positions_launch)(pos, inv_freq)


@register("rope_write", "triton")
def triton_rope_write(q, k, v, cos, sin, cache, layer: int, pos: torch.Tensor):
    """The kernel writes float caches; an int8 cache (llamafn.cache) is quantised by the reference."""
    if kv.quantized(cache):
        return get("rope_write", "reference")(q, k, v, cos, sin, cache, layer, pos)
    require_triton(q.device, "the triton rope_write backend")
    launch = torch.ops.llamafn.rope_write if q.is_cuda else rope_write_launch
    return launch(q, k, v, cos, sin, cache.k[layer], cache.v[layer], pos), cache
