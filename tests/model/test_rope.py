import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from llamafn.config import ModelConfig, RopeScaling
from llamafn.model import apply_rope, inv_frequencies, rope_angles
from tests.strategies import configs, seeds


def rotate(x: torch.Tensor, pos: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """x (B, T, H, D) at positions pos (B, T)."""
    cos, sin = rope_angles(pos, cfg)
    return apply_rope(x, cos, sin)


@given(configs(), seeds(), st.integers(0, 10_000))
def test_rope_preserves_the_norm_of_each_pair(cfg, seed, position):
    x = torch.randn(1, 1, 2, cfg.head_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = rotate(x, torch.tensor([[position]]), cfg).double()
    pair_norm = lambda t: t.unflatten(-1, (-1, 2)).norm(dim=-1)  # noqa: E731
    torch.testing.assert_close(pair_norm(y), pair_norm(x), rtol=1e-5, atol=1e-5)


@given(configs(), seeds(), st.integers(0, 500), st.integers(0, 500), st.integers(0, 500))
def test_rope_dot_product_depends_only_on_the_position_difference(cfg, seed, m, n, shift):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, 1, 1, cfg.head_dim, generator=g), torch.randn(1, 1, 1, cfg.head_dim, generator=g)
    dot = lambda a, b: (rotate(q, torch.tensor([[a]]), cfg) * rotate(k, torch.tensor([[b]]), cfg)).sum()  # noqa: E731
    torch.testing.assert_close(dot(m, n), dot(m + shift, n + shift), rtol=1e-4, atol=1e-4)


def test_rope_at_position_zero_is_the_identity():
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=2, vocab_size=8, hidden_dim=8)
    x = torch.randn(2, 1, 2, 16)
    assert torch.equal(rotate(x, torch.zeros(2, 1, dtype=torch.long), cfg), x)


def test_rope_rotates_interleaved_pairs_like_meta():
    """Meta's reference: view_as_complex over (..., D/2, 2) pairs, times exp(i * pos * freq)."""
    cfg = ModelConfig(dim=16, n_layers=1, n_heads=1, n_kv_heads=1, vocab_size=8, hidden_dim=8)
    x = torch.randn(1, 5, 1, 16)
    pos = torch.arange(5)
    freqs = torch.outer(pos.float(), 1.0 / (10000.0 ** (torch.arange(0, 16, 2)[:8].float() / 16)))
    expected = torch.view_as_real(torch.view_as_complex(x.reshape(1, 5, 1, 8, 2)) * torch.polar(torch.ones_like(freqs), freqs)[None, :, None])
    torch.testing.assert_close(rotate(x, pos[None], cfg), expected.flatten(-2))


def test_llama31_scaling_matches_metas_piecewise_rule():
    s = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192)
    cfg = ModelConfig(dim=4096, n_layers=1, n_heads=32, n_kv_heads=8, vocab_size=8, hidden_dim=8,
                      rope_theta=500000.0, rope_scaling=s)
    base = 1.0 / (500000.0 ** (torch.arange(0, 128, 2).float() / 128))
    expected = []
    for f in base.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < 8192 / 4.0:
            expected.append(f)
        elif wavelen > 8192 / 1.0:
            expected.append(f / 8.0)
        else:
            smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
            expected.append((1 - smooth) * f / 8.0 + smooth * f)
    torch.testing.assert_close(inv_frequencies(cfg), torch.tensor(expected))
