"""One pre-norm transformer block of LLaMA: h = x + attn(norm(x)); out = h + ffn(norm(h))."""

from __future__ import annotations

import torch

from ..cache import KVCache
from ..config import ModelConfig
from ..kernels import get_or_reference
from .attention import attention
from .ffn import feed_forward
from .norm import rms_norm


def subtree(p: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix`, with the prefix dropped: subtree(p, "attention.")["wq.weight"]."""
    return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}


def block(p: dict[str, torch.Tensor], x: torch.Tensor, cache: KVCache | None, layer: int, *,
          cfg: ModelConfig, backend: str = "sdpa",
          rope: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, KVCache | None]:
    """p: one layer's params (keys without `layers.{i}.`); x (B, T, dim) -> (B, T, dim), cache.
    `backend` names the kernel set: attention, the fused residual add + norm and the SwiGLU activation
    each use their kernel of that name where one is registered, else their reference. `rope`: the
    positions and their RoPE (cos, sin), shared by every layer (see `attention`)."""
    a, cache = attention(subtree(p, "attention."), rms_norm(x, p["attention_norm.weight"], cfg.norm_eps),
                         cache, layer, cfg=cfg, backend=backend, rope=rope)
    normed, h = get_or_reference("add_rms_norm", backend)(x, a, p["ffn_norm.weight"], cfg.norm_eps)   # h = x + a
    out = h + feed_forward(subtree(p, "feed_forward."), normed, backend=backend)
    return out, cache
