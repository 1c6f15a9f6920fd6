"""The whole model as one pure function: tokens (and a cache) in, float32 logits (and the cache) out."""

from __future__ import annotations

import torch

from .. import cache as kv
from ..cache import KVCache
from ..config import ModelConfig
from ..errors import InputError
from ..params import Params, layer_params, output_weight
from ..quant import embedding, linear
from .attention import step_rope
from .block import block, residual_norm


def forward(params: Params, tokens: torch.Tensor, cache: KVCache | None = None, *, cfg: ModelConfig,
            attention: str = "sdpa") -> tuple[torch.Tensor, KVCache | None]:
    """tokens (B, T) int64 -> logits (B, T, vocab) float32, and the cache advanced by T.

    Without a cache: a plain causal forward from position 0. With one: row b's tokens sit at positions
    cache.lengths[b] .. + T - 1; the cache is donated (use the returned one). Run eagerly, it checks
    token ids and cache room (one host sync); under torch.compile or CUDA-graph capture those checks
    are left to the driver.
    """
    h, cache = transformer(params, tokens, cache, cfg=cfg, attention=attention)
    return lm_head(params, h), cache


def transformer(params: Params, tokens: torch.Tensor, cache: KVCache | None = None, *, cfg: ModelConfig,
                attention: str = "sdpa") -> tuple[torch.Tensor, KVCache | None]:
    """Everything but the output head: tokens (B, T) -> final normed hidden states (B, T, dim), cache.
    Prefill uses it to apply the head only where a token is sampled."""
    if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise InputError(f"forward: tokens must be an integer tensor of shape (B, T), "
                         f"got {tuple(tokens.shape)} {tokens.dtype}")
    if cache is not None:
        kv.check_fits(cache, cfg)
        if kv.batch_size(cache) != tokens.shape[0]:
            raise InputError(f"forward: tokens have batch {tokens.shape[0]} but the cache has {kv.batch_size(cache)} rows")
    if not torch.compiler.is_compiling() and not (tokens.is_cuda and torch.cuda.is_current_stream_capturing()):
        check_values(tokens, cache, cfg)
    h, f = embedding(tokens, params["tok_embeddings.weight"], params["norm.weight"].dtype), None   # (B, T, dim)
    rope = step_rope(cache, *tokens.shape, tokens.device, cfg=cfg, backend=attention)  # pos, cos, sin: once a forward
    for i in range(cfg.n_layers):
        h, f, cache = block(layer_params(params, i), h, f, cache, i, cfg=cfg, backend=attention, rope=rope)
    if cache is not None:
        cache = kv.advance(cache, tokens.shape[1])
    return residual_norm(h, f, params["norm.weight"], cfg.norm_eps, attention)[0], cache


def lm_head(params: Params, h: torch.Tensor) -> torch.Tensor:
    """h (..., dim) -> logits (..., vocab) float32."""
    return linear(h, output_weight(params)).float()


def check_values(tokens: torch.Tensor, cache: KVCache | None, cfg: ModelConfig) -> None:
    """Raise InputError for a token id outside [0, vocab) or a row that would run past the cache."""
    end = tokens.shape[1] + (cache.lengths if cache is not None else torch.zeros((), dtype=torch.long))
    room = kv.capacity(cache) if cache is not None else cfg.max_seq_len
    bad_ids, overflow = (tokens < 0) | (tokens >= cfg.vocab_size), end > room
    if not bool(bad_ids.any() | overflow.any()):
        return
    if bool(bad_ids.any()):
        b, t = (int(i) for i in bad_ids.nonzero()[0])
        raise InputError(f"forward: token id {int(tokens[b, t])} at row {b}, position {t} is outside [0, {cfg.vocab_size})")
    where = "the cache" if cache is not None else "the model's context"
    raise InputError(f"forward: {tokens.shape[1]} tokens would fill positions up to {int(end.max())}, "
                     f"past the {room} of {where}")
