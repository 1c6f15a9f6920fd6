"""The SwiGLU feed-forward of LLaMA (Shazeer 2020, "GLU Variants Improve Transformer"):
w2(silu(w1 x) * w3 x)."""

import torch
import torch.nn.functional as F

from ..kernels import get_or_reference, register
from ..quant import linear


@register("swiglu", "reference")
def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def feed_forward(p: dict[str, torch.Tensor], x: torch.Tensor, *, backend: str = "reference") -> torch.Tensor:
    """p: `w1.weight` (hidden, dim), `w3.weight` (hidden, dim) or fused `w13.weight` (2*hidden, dim),
    and `w2.weight` (dim, hidden); x (..., dim). `backend` names the kernel set for the activation."""
    if "w13.weight" in p:
        gate, up = linear(x, p["w13.weight"]).chunk(2, dim=-1)   # (..., hidden) each
    else:
        gate, up = linear(x, p["w1.weight"]), linear(x, p["w3.weight"])
    return linear(get_or_reference("swiglu", backend)(gate, up), p["w2.weight"])
