"""Causal multi-head attention with grouped-query key/value heads (GQA, Ainslie et al. 2023; MQA when
n_kv_heads == 1), RoPE on q and k, and the KV cache.

Backends behind the kernel registry, chosen by name:
- "reference": the naive eager formula, softmax(q kᵀ / sqrt(d)) v with the (T, S) score matrix
  materialised and K/V repeated per query head, as Meta's reference model.py does. The baseline.
- "sdpa": torch.nn.functional.scaled_dot_product_attention (flash/efficient kernels where they apply).
- "grouped": the same formula as the reference in plain tensor ops, but with the query heads of one
  KV group folded into the query axis, (B, H, T, D) -> (B, Hkv, n_rep*T, D), so K and V are read once
  and never repeated; inductor fuses the mask and softmax around two batched products.
With a cache, "sdpa" folds the groups the same way (a masked SDPA call cannot share K/V across heads).
A backend takes q (B, H, T, D), k and v (B, Hkv, S, D) and the query positions (B, T) (None: plain
causal, S == T) and returns (B, H, T, D). Key s sits at position s; a query at position p sees keys <= p.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import cache as kv
from ..cache import KVCache
from ..config import ModelConfig
from ..kernels import backends, get, get_or_reference, register
from ..quant import linear
from .rope import apply_rope, inv_frequencies


def causal_mask(q_pos: torch.Tensor, n_keys: int) -> torch.Tensor:
    """q_pos (B, T) -> bool (B, 1, T, S): key position s is visible to a query at position p iff s <= p."""
    k_pos = torch.arange(n_keys, device=q_pos.device)
    return (k_pos[None, None, :] <= q_pos[:, :, None])[:, None]


@register("attention", "reference")
def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor | None) -> torch.Tensor:
    n_rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(n_rep, dim=1)                           # (B, H, S, D)
    v = v.repeat_interleave(n_rep, dim=1)                           # (B, H, S, D)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])     # (B, H, T, S)
    if q_pos is None:
        q_pos = torch.arange(q.shape[2], device=q.device)[None]
    scores = scores.masked_fill(~causal_mask(q_pos, k.shape[2]), float("-inf"))
    probs = F.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).type_as(q)
    return probs @ v                                                # (B, H, T, D)


@register("rope_write", "reference")
def rope_write(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               cache: KVCache, layer: int, pos: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
    """RoPE on q and k (B, T, heads, D) and the write of k and v into `layer` of the cache at pos (B, T):
    returns q as (B, H, T, D) and the cache (written in place, donated)."""
    k = apply_rope(k, cos, sin).transpose(1, 2)                            # (B, Hkv, T, D)
    cache = kv.write(cache, layer, k, v.transpose(1, 2), pos)
    return apply_rope(q, cos, sin).transpose(1, 2), cache                  # (B, H, T, D)


def project_qkv(p: dict[str, torch.Tensor], x: torch.Tensor, n_heads: int, n_kv_heads: int, head_dim: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (B, T, dim) -> q (B, T, H, D), k and v (B, T, Hkv, D), by the fused `wqkv.weight` (rows q, k, v) or
    by `wq.weight`, `wk.weight` and `wv.weight`."""
    B, T, _ = x.shape
    D = head_dim
    if "wqkv.weight" in p:
        q, k, v = linear(x, p["wqkv.weight"]).split([n_heads * D, n_kv_heads * D, n_kv_heads * D], dim=-1)
    else:
        q, k, v = linear(x, p["wq.weight"]), linear(x, p["wk.weight"]), linear(x, p["wv.weight"])
    return q.view(B, T, n_heads, D), k.view(B, T, n_kv_heads, D), v.view(B, T, n_kv_heads, D)


@register("qkv_rope_write", "reference")
def qkv_rope_write(x: torch.Tensor, w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache, layer: int,
                   pos: torch.Tensor, n_heads: int, rope_write=rope_write) -> tuple[torch.Tensor, KVCache]:
    """x (B, T, dim) against a fused wqkv (rows q, k, v), then RoPE and the cache write by `rope_write` (this
    reference's, or a kernel set's) -> (q (B, H, T, D), cache, written in place)."""
    Hkv, D = cache.k[layer].shape[1], cache.k[layer].shape[-1]
    return rope_write(*project_qkv({"wqkv.weight": w}, x, n_heads, Hkv, D), cos, sin, cache, layer, pos)


def fold_groups(q: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, Hkv, n_rep*T, D): query head h = j*n_rep + i uses KV head j (Meta's repeat_kv)."""
    B, H, T, D = q.shape
    return q.reshape(B, n_kv_heads, (H // n_kv_heads) * T, D)


@register("attention", "sdpa")
def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor | None) -> torch.Tensor:
    B, H, T, D = q.shape
    if q_pos is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != k.shape[1])
    mask = causal_mask(q_pos, k.shape[2]).repeat(1, 1, H // k.shape[1], 1)        # (B, 1, n_rep*T, S)
    out = F.scaled_dot_product_attention(fold_groups(q, k.shape[1]), k, v, attn_mask=mask)
    return out.reshape(B, H, T, D)


@register("attention", "grouped")
def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor | None) -> torch.Tensor:
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if q_pos is None:
        q_pos = torch.arange(T, device=q.device)[None]
    scores = (fold_groups(q, Hkv) @ k.transpose(-2, -1)) / math.sqrt(D)          # (B, Hkv, n_rep*T, S)
    scores = scores.view(B, Hkv, H // Hkv, T, S)
    scores = scores.masked_fill(~causal_mask(q_pos, S)[:, :, None], float("-inf"))
    probs = F.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).type_as(q)
    return (probs.view(B, Hkv, -1, S) @ v).view(B, H, T, D)                      # (B, H, T, D)


def step_rope(cache: KVCache | None, batch_size: int, n_tokens: int, device: torch.device, *, cfg: ModelConfig,
              backend: str = "sdpa") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positions (B, T) of the next tokens of each row (from `cache.lengths`) and their RoPE (cos, sin)
    (B, T, D/2), by the kernel set's `step_positions`: what every layer of a forward shares."""
    return get_or_reference("step_positions", backend)(kv.positions(cache, batch_size, n_tokens, device),
                                                       inv_frequencies(cfg, device))


def attention(p: dict[str, torch.Tensor], x: torch.Tensor, cache: KVCache | None, layer: int, *,
              cfg: ModelConfig, backend: str = "sdpa",
              rope: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, KVCache | None]:
    """p: `wq.weight wk.weight wv.weight` (or fused `wqkv.weight`) and `wo.weight`; x (B, T, dim) ->
    (y (B, T, dim), cache).

    Positions come from `cache.lengths` (0..T-1 without a cache). With a cache, this layer's new keys
    and values are written in place (the cache is donated, see llamafn.cache) and attention runs over
    the whole preallocated length, masked by position. `rope` is (positions, cos, sin) as `step_rope`
    gives them, which every layer of a forward shares: computed here when not given.
    """
    B, T, _ = x.shape
    H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pos, cos, sin = rope if rope is not None else step_rope(cache, B, T, x.device, cfg=cfg, backend=backend)
    attend = get("attention", backend)
    if cache is None:
        q, k, v = project_qkv(p, x, H, Hkv, D)                                 # (B, T, heads, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None)
    else:
        if "wqkv.weight" in p:                                                  # q (B, H, T, D)
            q, cache = get_or_reference("qkv_rope_write", backend)(x, p["wqkv.weight"], cos, sin, cache, layer, pos, H)
        else:
            q, k, v = project_qkv(p, x, H, Hkv, D)
            q, cache = get_or_reference("rope_write", backend)(q, k, v, cos, sin, cache, layer, pos)
        if kv.quantized(cache) and backend in backends("attention_int8"):           # reads the int8 cache itself
            out = get("attention_int8", backend)(q, cache.k[layer], cache.k_scale[layer], cache.v[layer],
                                                 cache.v_scale[layer], pos)
        else:
            out = attend(q, *kv.read(cache, layer, q.dtype), pos)
    out = out.transpose(1, 2).reshape(B, T, H * D)                        # (B, T, H*D)
    return linear(out, p["wo.weight"]), cache
