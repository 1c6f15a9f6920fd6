"""RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization"), as Meta's LLaMA applies it:
normalise in (at least) float32, cast back to the input dtype, then scale by the weight."""

import torch

from ..kernels import register


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., dim), weight (dim,) -> (..., dim) in x's dtype."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return normed.type_as(x) * weight


@register("add_rms_norm", "reference")
def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add and the next norm: (rms_norm(x + delta) * weight, x + delta)."""
    h = x + delta
    return rms_norm(h, weight, eps), h
