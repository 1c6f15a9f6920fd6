"""Fused elementwise Triton kernels for the block, the "triton" backends of two registry ops:

- `add_rms_norm(x, delta, weight, eps) -> (rms_norm(x + delta) * weight, x + delta)`: the residual add
  and the next RMSNorm in one pass (one read of x and delta, two writes), as in Meta's block
  h = x + attn(...); ffn_norm(h). One program a row, the row held in registers, fp32 statistics.
- `swiglu(gate, up) -> silu(gate) * up`, reading the two halves of the fused w13 output in place
  (row strides, no copy).

The eager references (llamafn.model.norm, llamafn.model.ffn) are the "reference" backends; a name
with no backend of its own for an op falls back to the reference (llamafn.kernels.registry.get_or_reference).
Both are custom ops (`torch.ops.llamafn.add_rms_norm`, `swiglu`) so compiled steps capture them.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from .quant_matmul import INTERPRET, triton
from .registry import register

if triton is not None:
    import triton.language as tl

    @triton.jit
    def add_rms_norm_kernel(X, DELTA, W, Y, H, stride_x, stride_d, stride_y, stride_h, N, eps,
                            BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        ok = cols < N
        h = (tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
             + tl.load(DELTA + row * stride_d + cols, mask=ok, other=0.0).to(tl.float32))   # (BLOCK,)
        h_out = h.to(H.dtype.element_ty)                                                    # the residual, rounded as x + delta is
        hf = h_out.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(hf * hf, axis=0) / N + eps)
        normed = (hf * rstd).to(H.dtype.element_ty).to(tl.float32)                          # rms_norm casts back, then scales
        w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(H + row * stride_h + cols, h_out, mask=ok)
        tl.store(Y + row * stride_y + cols, (normed * w).to(Y.dtype.element_ty), mask=ok)

    @triton.jit
    def swiglu_kernel(G, U, OUT, stride_g, stride_u, stride_o, N, BLOCK: tl.constexpr):
        row, col_block = tl.program_id(0), tl.program_id(1)
        cols = col_block * BLOCK + tl.arange(0, BLOCK)
        ok = cols < N
        g = tl.load(G + row * stride_g + cols, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(U + row * stride_u + cols, mask=ok, other=0.0).to(tl.float32)
        silu = (g / (1.0 + tl.exp(-g))).to(OUT.dtype.element_ty).to(tl.float32)            # F.silu rounds before the product
        tl.store(OUT + row * stride_o + cols, (silu * u).to(OUT.dtype.element_ty), mask=ok)


def _launcher(kernel):
    return kernel if INTERPRET else torch.library.wrap_triton(kernel)


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
    _launcher(add_rms_norm_kernel)[(x2.shape[0],)](
        x2, d2, weight, y, h, x2.stride(0), d2.stride(0), y.stride(0), h.stride(0), N, eps, BLOCK=BLOCK,
        **({} if INTERPRET else {"num_warps": min(16, max(1, BLOCK // 512))}))
    return y.view(x.shape), h.view(x.shape)


def swiglu_launch(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    N = gate.shape[-1]
    g2, u2 = rows_of(gate), rows_of(up)
    out = torch.empty(g2.shape, dtype=gate.dtype, device=gate.device)
    BLOCK = 1024 if not INTERPRET else 64
    _launcher(swiglu_kernel)[(g2.shape[0], triton.cdiv(N, BLOCK))](
        g2, u2, out, g2.stride(0), u2.stride(0), out.stride(0), N, BLOCK=BLOCK)
    return out.view(gate.shape)


if triton is not None:
    @torch.library.triton_op("llamafn::add_rms_norm", mutates_args=())
    def add_rms_norm_op(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        return add_rms_norm_launch(x, delta, weight, eps)

    @torch.library.triton_op("llamafn::swiglu", mutates_args=())
    def swiglu_op(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return swiglu_launch(gate, up)


def _check(t: torch.Tensor, op: str) -> None:
    if triton is None or not (t.is_cuda or INTERPRET):
        raise InputError(f"the triton {op} backend needs a CUDA GPU (or TRITON_INTERPRET=1 with triton installed)")


@register("add_rms_norm", "triton")
def triton_add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    _check(x, "add_rms_norm")
    if x.is_cuda:
        return torch.ops.llamafn.add_rms_norm(x, delta, weight, eps)
    return add_rms_norm_launch(x, delta, weight, eps)


@register("swiglu", "triton")
def triton_swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    _check(gate, "swiglu")
    if gate.is_cuda:
        return torch.ops.llamafn.swiglu(gate, up)
    return swiglu_launch(gate, up)
