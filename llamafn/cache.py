"""The dense KV cache: an explicit value that a forward step writes into and returns.

Layout: per-layer tuples of key and value tensors, each (B, n_kv_heads, max_seq, head_dim), plus
`lengths` (B,), how many positions of each row are valid. Per-layer tensors rather than one stacked
(n_layers, ...) tensor, because the step writes each layer's new keys in place: into a whole tensor
that is a graph input, inductor turns the write into an in-place index_put; into `stacked[layer]`, a
view, functionalisation materialises a copy of the layer's cache and copies it back every step
(measured: 180 tok/s instead of the expected ~290 at 7B shapes on an H200, and worse at long
context). Row operations stay one op per layer (`reorder`), and `truncate` only rewrites `lengths`.
The helpers build new caches with the constructor, not `_replace`: torch 2.11's dynamo cannot
return a NamedTuple that `_replace` made from one created inside the compiled frame.

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
    k: tuple[torch.Tensor, ...]  # n_layers x (B, n_kv_heads, max_seq, head_dim)
    v: tuple[torch.Tensor, ...]  # n_layers x (B, n_kv_heads, max_seq, head_dim)
    lengths: torch.Tensor        # (B,) int64: valid positions per row


def init_cache(cfg: ModelConfig, batch_size: int, max_seq_len: int | None = None, *,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> KVCache:
    """A zeroed cache for `batch_size` rows of up to `max_seq_len` positions (default: the model's context).

    Zeros, not uninitialised memory: masked positions still take part in `probs @ V` with weight 0,
    and 0 * NaN would poison the row.
    """
    max_seq_len = cfg.max_seq_len if max_seq_len is None else max_seq_len
    if batch_size < 1 or max_seq_len < 1:
        raise InputError(f"init_cache: batch_size ({batch_size}) and max_seq_len ({max_seq_len}) must be >= 1")
    shape = (batch_size, cfg.n_kv_heads, max_seq_len, cfg.head_dim)
    return KVCache(
        k=tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)),
        v=tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)),
        lengths=torch.zeros(batch_size, dtype=torch.long, device=device),
    )


def batch_size(cache: KVCache) -> int:
    return cache.lengths.shape[0]


def capacity(cache: KVCache) -> int:
    """Positions each row can hold (max_seq)."""
    return cache.k[0].shape[2]


def positions(cache: KVCache | None, batch_size: int, n_tokens: int, device: torch.device) -> torch.Tensor:
    """(B, T) absolute positions of the next `n_tokens` tokens of each row: lengths[b] + t (t without a cache)."""
    offsets = torch.arange(n_tokens, device=device)
    if cache is None:
        return offsets.expand(batch_size, n_tokens)
    return cache.lengths[:, None] + offsets


def write(cache: KVCache, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> KVCache:
    """Write k, v (B, Hkv, T, D) of `layer` at positions pos (B, T), in place. Lengths are unchanged."""
    rows = torch.arange(pos.shape[0], device=pos.device)[:, None]          # (B, 1)
    k_layer, v_layer = cache.k[layer], cache.v[layer]
    k_layer[rows, :, pos] = k.transpose(1, 2).to(k_layer.dtype)            # (B, T, Hkv, D) at [b, :, pos[b, t]]
    v_layer[rows, :, pos] = v.transpose(1, 2).to(v_layer.dtype)
    return cache


def advance(cache: KVCache, n_tokens: int) -> KVCache:
    """Every row's length grows by `n_tokens` (what a forward over T tokens does)."""
    return KVCache(k=cache.k, v=cache.v, lengths=cache.lengths + n_tokens)


def truncate(cache: KVCache, lengths: torch.Tensor | int) -> KVCache:
    """Set each row's valid length (B,) (or one int for all rows): roll back rejected speculative
    tokens, or drop the padding a ragged prefill wrote. Stored values past the length are left as they
    are; causality keeps them unseen until they are overwritten."""
    new = torch.as_tensor(lengths, dtype=cache.lengths.dtype, device=cache.lengths.device)
    return KVCache(k=cache.k, v=cache.v, lengths=new.expand_as(cache.lengths).clone())


def reset(cache: KVCache) -> KVCache:
    """All rows empty, storage reused."""
    return truncate(cache, 0)


def reorder(cache: KVCache, index: torch.Tensor) -> KVCache:
    """Rows gathered by `index` (B',) (beam search keeps the surviving beams' histories); new tensors."""
    return KVCache(k=tuple(t.index_select(0, index) for t in cache.k), v=tuple(t.index_select(0, index) for t in cache.v),
                   lengths=cache.lengths.index_select(0, index))
