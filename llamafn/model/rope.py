"""Rotary position embedding (Su et al. 2021, "RoFormer"), in Meta's layout: each head vector is read as
head_dim/2 interleaved pairs (x[2i], x[2i+1]) rotated by angle pos * theta^(-2i/head_dim).

Llama 3.1 rescales the frequencies (Meta's `apply_scaling` in llama3/llama/model.py): wavelengths
longer than original_ctx/low_freq_factor are divided by `factor`, those shorter than
original_ctx/high_freq_factor are kept, and the band between is interpolated smoothly.

Angles are computed from the positions each call (no table sized by the context), in float32.
"""

from __future__ import annotations

import math

import torch

from ..config import ModelConfig
from ..kernels.registry import register


def inv_frequencies(cfg: ModelConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """(head_dim/2,) float32 rotation frequencies, with Llama 3.1 scaling when the config has it."""
    d = cfg.head_dim
    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32)[: d // 2] / d))
    s = cfg.rope_scaling
    if s is None:
        return freqs
    low_wavelen = s.original_max_seq_len / s.low_freq_factor
    high_wavelen = s.original_max_seq_len / s.high_freq_factor
    wavelen = 2 * math.pi / freqs
    smooth = (s.original_max_seq_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    interpolated = (1 - smooth) * freqs / s.factor + smooth * freqs
    scaled = torch.where(wavelen > low_wavelen, freqs / s.factor, interpolated)
    return torch.where(wavelen < high_wavelen, freqs, scaled)


def rope_angles(positions: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, T) int -> (cos, sin), each (B, T, head_dim/2) float32."""
    return angles_of(positions, inv_frequencies(cfg, positions.device))


def angles_of(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, T) int, inv_freq (D/2,) -> (cos, sin), each (B, T, D/2) float32."""
    angles = positions.float()[..., None] * inv_freq                        # (B, T, D/2)
    return torch.cos(angles), torch.sin(angles)


@register("step_positions", "reference")
def step_positions(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positions (B, T) of a forward's tokens and their (cos, sin) (B, T, D/2), computed once and
    read by every layer. The reference returns the positions as they are; the "triton" backend passes
    them through its kernel too, because under inductor a value computed by plain ops and fed to
    several custom ops is recomputed, by its own small kernel, for each of them."""
    return (positions, *angles_of(positions, inv_freq))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, D); cos, sin (B, T, D/2) -> x rotated pairwise, in x's dtype."""
    pairs = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (-1, 2))  # (B, T, H, D/2, 2)
    re, im = pairs[..., 0], pairs[..., 1]                              # (B, T, H, D/2)
    c, s = cos[:, :, None, :], sin[:, :, None, :]                      # (B, T, 1, D/2)
    rotated = torch.stack((re * c - im * s, re * s + im * c), dim=-1)  # (B, T, H, D/2, 2)
    return rotated.flatten(-2).type_as(x)                              # (B, T, H, D)
