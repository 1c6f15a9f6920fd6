"""The SwiGLU feed-forward of LLaMA (Shazeer 2020, "GLU Variants Improve Transformer"):
w2(silu(w1 x) * w3 x)."""

import torch
import torch.nn.functional as F


def feed_forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """p: `w1.weight` (hidden, dim), `w2.weight` (dim, hidden), `w3.weight` (hidden, dim); x (..., dim)."""
    gate = F.linear(x, p["w1.weight"])   # (..., hidden)
    up = F.linear(x, p["w3.weight"])     # (..., hidden)
    return F.linear(F.silu(gate) * up, p["w2.weight"])
