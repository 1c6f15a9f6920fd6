"""Hypothesis strategies for small model configs and their inputs, drawn constructively
(n_kv_heads first, then the group size, then the head dim) so that every draw is valid."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from llamafn.config import ModelConfig, RopeScaling


@st.composite
def configs(draw, max_layers: int = 2, rope_scaling: bool | None = None, tie: bool | None = None) -> ModelConfig:
    n_kv = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([4, 8, 16]))
    n_heads = n_kv * group
    scaled = draw(st.booleans()) if rope_scaling is None else rope_scaling
    return ModelConfig(
        dim=n_heads * head_dim, n_layers=draw(st.integers(1, max_layers)), n_heads=n_heads, n_kv_heads=n_kv,
        vocab_size=draw(st.integers(8, 64)), hidden_dim=draw(st.integers(8, 48)),
        norm_eps=1e-5, rope_theta=draw(st.sampled_from([10000.0, 500000.0])),
        rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=16)
        if scaled else None,
        max_seq_len=64, tie_embeddings=draw(st.booleans()) if tie is None else tie,
    )


def seeds() -> st.SearchStrategy[int]:
    return st.integers(0, 2**31 - 1)


def random_tokens(cfg: ModelConfig, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))
