"""One pre-norm transformer block of LLaMA: h = x + attn(norm(x)); out = h + ffn(norm(h)), the last add left
to the next block's norm."""

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


def residual_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float,
                  backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + delta) * weight, x + delta) by the fused add + norm of `backend`; x alone where delta
    is None (the first block's input, or a model of no layers)."""
    if delta is None:
        return rms_norm(x, weight, eps), x
    return get_or_reference("add_rms_norm", backend)(x, delta, weight, eps)


def block(p: dict[str, torch.Tensor], x: torch.Tensor, delta: torch.Tensor | None, cache: KVCache | None, layer: int,
          *, cfg: ModelConfig, backend: str = "sdpa", rope: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
          ) -> tuple[torch.Tensor, torch.Tensor, KVCache | None]:
    """p: one layer's params (keys without `layers.{i}.`); the block's input is x + delta (B, T, dim) (x
    alone if delta is None) -> (h, f, cache), the block's output being h + f. Each block leaves its last
    residual add to the next, so that every add is one kernel with the norm after it (vLLM's decoder
    layers pass (hidden_states, residual) the same way). `backend` names the kernel set: attention, the
    fused residual add + norm and the SwiGLU activation each use their kernel of that name where one is
    registered, else their reference. `rope`: the positions and their RoPE (cos, sin), shared by every
    layer (see `attention`)."""
    normed, x = residual_norm(x, delta, p["attention_norm.weight"], cfg.norm_eps, backend)
    a, cache = attention(subtree(p, "attention."), normed, cache, layer, cfg=cfg, backend=backend, rope=rope)
    normed, h = residual_norm(x, a, p["ffn_norm.weight"], cfg.norm_eps, backend)                     # h = x + a
    return h, feed_forward(subtree(p, "feed_forward."), normed, backend=backend), cache
