"""The whole model as one pure function: tokens (and a cache) in, float32 logits (and the cache) out."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import cache as kv
from ..cache import KVCache
from ..config import ModelConfig
from ..errors import InputError
from ..params import Params, layer_params, output_weight
from .block import block
from .norm import rms_norm


def forward(params: Params, tokens: torch.Tensor, cache: KVCache | None = None, *, cfg: ModelConfig,
            attention: str = "sdpa") -> tuple[torch.Tensor, KVCache | None]:
    """tokens (B, T) int64 -> logits (B, T, vocab) float32, and the cache advanced by T.

    Without a cache: a plain causal forward from position 0. With one: row b's tokens sit at positions
    cache.lengths[b] .. + T - 1; the cache is donated (use the returned one). Token values are not
    checked here (that would sync with the device); `generate` checks them.
    """
    if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise InputError(f"forward: tokens must be an integer tensor of shape (B, T), "
                         f"got {tuple(tokens.shape)} {tokens.dtype}")
    if cache is not None and cache.batch_size != tokens.shape[0]:
        raise InputError(f"forward: tokens have batch {tokens.shape[0]} but the cache has {cache.batch_size} rows")
    h = F.embedding(tokens, params["tok_embeddings.weight"])               # (B, T, dim)
    for i in range(cfg.n_layers):
        h, cache = block(layer_params(params, i), h, cache, i, cfg=cfg, backend=attention)
    h = rms_norm(h, params["norm.weight"], cfg.norm_eps)
    logits = F.linear(h, output_weight(params)).float()                    # (B, T, vocab)
    if cache is not None:
        cache = kv.advance(cache, tokens.shape[1])
    return logits, cache
