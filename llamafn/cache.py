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

An int8 cache (`init_cache(..., dtype=torch.int8)`) stores each written key and value vector as int8
with one fp32 scale per (row, KV head, position), symmetric absmax / 127 (the per-token, per-head
scheme of KIVI and vLLM's fp8/int8 caches, without the outlier handling): half the bytes of a bf16
cache for long contexts and big batches. Attention reads it dequantised (`read`); |x - read| <= scale / 2.

Donation (as JAX's `donate_argnums`): `forward` writes the new keys and values into the passed
cache's tensors in place and returns a cache holding them with the new lengths. The caller must use
the returned cache and treat the one passed in as consumed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .config import ModelConfig
from .errors import InputError
from .quant.formats import Int8Weight, dequantize, quantize_int8


class KVCache(NamedTuple):
    k: tuple[torch.Tensor, ...]  # n_layers x (B, n_kv_heads, max_seq, head_dim)
    v: tuple[torch.Tensor, ...]  # n_layers x (B, n_kv_heads, max_seq, head_dim)
    lengths: torch.Tensor        # (B,) int64: valid positions per row
    k_scale: tuple[torch.Tensor, ...] = ()   # int8 caches: n_layers x (B, n_kv_heads, max_seq) fp32
    v_scale: tuple[torch.Tensor, ...] = ()


def init_cache(cfg: ModelConfig, batch_size: int, max_seq_len: int | None = None, *,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> KVCache:
    """A zeroed cache for `batch_size` rows of up to `max_seq_len` positions (default: the model's context).

    Zeros, not uninitialised memory: masked positions still take part in `probs @ V` with weight 0,
    and 0 * NaN would poison the row.
    """
    max_seq_len = cfg.max_seq_len if max_seq_len is None else max_seq_len
    if batch_size < 1 or max_seq_len < 1:
        raise InputError(f"init_cache: batch_size ({batch_size}) and max_seq_len ({max_seq_len}) must be >= 1")
    if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype == torch.int8):
        raise InputError(f"init_cache: the cache holds a float dtype or int8 (quantised), not {dtype}")
    shape = (batch_size, cfg.n_kv_heads, max_seq_len, cfg.head_dim)

    def zeros(shape, dtype):
        return tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers))

    scales = (zeros(shape[:3], torch.float32), zeros(shape[:3], torch.float32)) if dtype == torch.int8 else ((), ())
    return KVCache(k=zeros(shape, dtype), v=zeros(shape, dtype),
                   lengths=torch.zeros(batch_size, dtype=torch.long, device=device), k_scale=scales[0], v_scale=scales[1])


def quantized(cache: KVCache) -> bool:
    """Whether the cache stores int8 with scales."""
    return len(cache.k_scale) > 0


def tensors(cache: KVCache) -> list[torch.Tensor]:
    """Every storage tensor of the cache (what a CUDA graph must treat as static)."""
    return [*cache.k, *cache.v, *cache.k_scale, *cache.v_scale]


def with_lengths(cache: KVCache, lengths: torch.Tensor) -> KVCache:
    """The same storage with new lengths (B,)."""
    return KVCache(k=cache.k, v=cache.v, lengths=lengths, k_scale=cache.k_scale, v_scale=cache.v_scale)


def check_fits(cache: KVCache, cfg: ModelConfig) -> None:
    """Raise InputError unless the cache was made for a model of cfg's shape (layers, KV heads, head dim)."""
    made = (len(cache.k), cache.k[0].shape[1], cache.k[0].shape[3]) if cache.k else (0, None, None)
    if made != (cfg.n_layers, cfg.n_kv_heads, cfg.head_dim):
        raise InputError(f"the cache is for {made[0]} layers of {made[1]} KV heads of dim {made[2]}, the model has "
                         f"{cfg.n_layers} layers of {cfg.n_kv_heads} KV heads of dim {cfg.head_dim}")


def batch_size(cache: KVCache) -> int:
    return cache.lengths.shape[0]


def zeros_like(cache: KVCache) -> KVCache:
    """A zeroed cache of the same shapes, dtypes and device (every length 0)."""
    def zeros(ts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.zeros_like(t) for t in ts)

    return KVCache(k=zeros(cache.k), v=zeros(cache.v), lengths=torch.zeros_like(cache.lengths),
                   k_scale=zeros(cache.k_scale), v_scale=zeros(cache.v_scale))


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
    """Write k, v (B, Hkv, T, D) of `layer` at positions pos (B, T), in place (quantised in an int8
    cache). Lengths are unchanged."""
    rows = torch.arange(pos.shape[0], device=pos.device)[:, None]          # (B, 1)
    k, v = k.transpose(1, 2), v.transpose(1, 2)                            # (B, T, Hkv, D) at [b, :, pos[b, t]]
    if quantized(cache):
        (k, k_scale), (v, v_scale) = quantize_int8(k.float()), quantize_int8(v.float())   # fp32 scales
        cache.k_scale[layer][rows, :, pos] = k_scale                       # (B, T, Hkv)
        cache.v_scale[layer][rows, :, pos] = v_scale
    k_layer, v_layer = cache.k[layer], cache.v[layer]
    k_layer[rows, :, pos] = k.to(k_layer.dtype)
    v_layer[rows, :, pos] = v.to(v_layer.dtype)
    return cache


def read(cache: KVCache, layer: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values of `layer`, (B, Hkv, max_seq, D) each, in `dtype` (dequantised from int8)."""
    if not quantized(cache):
        return cache.k[layer].to(dtype), cache.v[layer].to(dtype)
    return (dequantize(Int8Weight(cache.k[layer], cache.k_scale[layer]), dtype),
            dequantize(Int8Weight(cache.v[layer], cache.v_scale[layer]), dtype))


def advance(cache: KVCache, n_tokens: int) -> KVCache:
    """Every row's length grows by `n_tokens` (what a forward over T tokens does)."""
    return with_lengths(cache, cache.lengths + n_tokens)


def truncate(cache: KVCache, lengths: torch.Tensor | int) -> KVCache:
    """Set each row's valid length (B,) (or one int for all rows): roll back rejected speculative
    tokens, or drop the padding a ragged prefill wrote. Stored values past the length are left as they
    are; causality keeps them unseen until they are overwritten."""
    new = torch.as_tensor(lengths, dtype=cache.lengths.dtype, device=cache.lengths.device)
    return with_lengths(cache, new.expand_as(cache.lengths).clone())


def reset(cache: KVCache) -> KVCache:
    """All rows empty, storage reused."""
    return truncate(cache, 0)


def as_words(t: torch.Tensor) -> torch.Tensor:
    """t viewed as 8-byte words along its last dim where its strides allow, else t: index_select moves
    one element a thread, and 2-byte elements left it far from the copy rate on an H100 (a bf16 7B cache
    of 8 beams x 512 positions: 4.2 ms where a copy of its bytes takes about 1.4)."""
    size = t.element_size()
    strides = (*t.stride()[:-1], t.storage_offset())
    if t.stride(-1) != 1 or (t.shape[-1] * size) % 8 or any((s * size) % 8 for s in strides):
        return t
    return t.view(torch.int64)                                                  # (..., last * size / 8)


def gather_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t (B, ...) -> rows `index` (B', ...), a new tensor."""
    return as_words(t).index_select(0, index).view(t.dtype)


def reorder(cache: KVCache, index: torch.Tensor) -> KVCache:
    """Rows gathered by `index` (B',) (beam search keeps the surviving beams' histories); new tensors."""
    def gather(ts: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(gather_rows(t, index) for t in ts)

    return KVCache(k=gather(cache.k), v=gather(cache.v), lengths=cache.lengths.index_select(0, index),
                   k_scale=gather(cache.k_scale), v_scale=gather(cache.v_scale))


def reorder_into(cache: KVCache, index: torch.Tensor, out: KVCache, upto: int) -> KVCache:
    """`reorder` written into `out`'s storage (donated; its shapes must be the result's), moving only the
    first `upto` positions of each row, which must cover every row's length: beam search's steps
    alternate between two buffers and move the positions in use, not the whole capacity. Positions of
    `out` from `upto` on keep what they held, which must be finite (zeros, or keys an earlier step of
    the same search wrote): masked keys still meet their values with weight 0. On a GPU one Triton
    launch moves every layer (llamafn.kernels.gather_rows); elsewhere one index_select a tensor."""
    if len(out.k) != len(cache.k) or out.k[0].shape != (index.shape[0], *cache.k[0].shape[1:]):
        raise InputError(f"reorder_into: out holds {len(out.k)} layers of {tuple(out.k[0].shape)}, the result "
                         f"{len(cache.k)} of {(index.shape[0], *cache.k[0].shape[1:])}")
    if not 0 <= upto <= capacity(cache):
        raise InputError(f"reorder_into: upto {upto} is outside the cache's 0..{capacity(cache)} positions")

    from .kernels.runtime import triton                                  # here: the kernels import this module
    if index.is_cuda and triton is not None:
        from .kernels.gather_rows import gather_rows_into
        for src, dst in ((cache.k + cache.v, out.k + out.v), (cache.k_scale + cache.v_scale, out.k_scale + out.v_scale)):
            if src:
                gather_rows_into(src, dst, index, upto)                 # every layer in one launch
    else:
        for s, d in zip(tensors(cache), tensors(out)):
            torch.index_select(as_words(s[:, :, :upto]), 0, index, out=as_words(d[:, :, :upto]))
    return KVCache(k=out.k, v=out.v, lengths=cache.lengths.index_select(0, index), k_scale=out.k_scale,
                   v_scale=out.v_scale)
