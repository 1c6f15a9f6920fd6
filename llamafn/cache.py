"""The dense KV cache: an explicit value that a forward step writes into and returns.

Layout: one stacked tensor for keys and one for values, (n_layers, B, n_kv_heads, max_seq, head_dim),
plus `lengths` (B,), how many positions of each row are valid. One stacked tensor (rather than
per-layer tuples) makes the row operations beam search and speculative decoding need one op each
(`reorder` is a single index_select over the batch axis, `truncate` only rewrites `lengths`), keeps
the cache a flat pytree of three tensors that torch.compile sees with static shapes, and `k[layer]`
is a free view.

Rows are independent: row b's next token goes to position `lengths[b]`, so ragged batches need no
padding mask beyond causality (a query at position p sees keys at positions <= p; whatever a padded
prefill wrote past a row's length is overwritten before any query can see it).

Donation (as JAX's `donate_argnums`): `forward` writes the new keys and values into the passed
cache's tensors in place and returns a cache holding them with the new lengths. The caller must use
the returned cache and treat the one passed in as consumed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .config import ModelConfig
from .errors import InputError


class KVCache(NamedTuple):
    k: torch.Tensor        # (n_layers, B, n_kv_heads, max_seq, head_dim)
    v: torch.Tensor        # (n_layers, B, n_kv_heads, max_seq, head_dim)
    lengths: torch.Tensor  # (B,) int64: valid positions per row

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[3]


def init_cache(cfg: ModelConfig, batch_size: int, max_seq_len: int | None = None, *,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> KVCache:
    """A zeroed cache for `batch_size` rows of up to `max_seq_len` positions (default: the model's context).

    Zeros, not uninitialised memory: masked positions still take part in `probs @ V` with weight 0,
    and 0 * NaN would poison the row.
    """
    max_seq_len = cfg.max_seq_len if max_seq_len is None else max_seq_len
    if batch_size < 1 or max_seq_len < 1:
        raise InputError(f"init_cache: batch_size ({batch_size}) and max_seq_len ({max_seq_len}) must be >= 1")
    shape = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_seq_len, cfg.head_dim)
    return KVCache(
        k=torch.zeros(shape, dtype=dtype, device=device),
        v=torch.zeros(shape, dtype=dtype, device=device),
        lengths=torch.zeros(batch_size, dtype=torch.long, device=device),
    )


def positions(cache: KVCache | None, batch_size: int, n_tokens: int, device: torch.device) -> torch.Tensor:
    """(B, T) absolute positions of the next `n_tokens` tokens of each row: lengths[b] + t (t without a cache)."""
    offsets = torch.arange(n_tokens, device=device)
    if cache is None:
        return offsets.expand(batch_size, n_tokens)
    return cache.lengths[:, None] + offsets


def write(cache: KVCache, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> KVCache:
    """Write k, v (B, Hkv, T, D) of `layer` at positions pos (B, T), in place. Lengths are unchanged."""
    index = pos[:, None, :, None].expand_as(k)  # (B, Hkv, T, D)
    cache.k[layer].scatter_(2, index, k.to(cache.k.dtype))
    cache.v[layer].scatter_(2, index, v.to(cache.v.dtype))
    return cache


def advance(cache: KVCache, n_tokens: int) -> KVCache:
    """Every row's length grows by `n_tokens` (what a forward over T tokens does)."""
    return cache._replace(lengths=cache.lengths + n_tokens)


def truncate(cache: KVCache, lengths: torch.Tensor | int) -> KVCache:
    """Set each row's valid length (B,) (or one int for all rows): roll back rejected speculative
    tokens, or drop the padding a ragged prefill wrote. Stored values past the length are left as they
    are; causality keeps them unseen until they are overwritten."""
    new = torch.as_tensor(lengths, dtype=cache.lengths.dtype, device=cache.lengths.device)
    return cache._replace(lengths=new.expand_as(cache.lengths).clone())


def reset(cache: KVCache) -> KVCache:
    """All rows empty, storage reused."""
    return truncate(cache, 0)


def reorder(cache: KVCache, index: torch.Tensor) -> KVCache:
    """Rows gathered by `index` (B',) (beam search keeps the surviving beams' histories); new tensors."""
    return KVCache(k=cache.k.index_select(1, index), v=cache.v.index_select(1, index),
                   lengths=cache.lengths.index_select(0, index))
