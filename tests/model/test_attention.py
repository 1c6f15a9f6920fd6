import torch
from hypothesis import given
from hypothesis import strategies as st

from llamafn.cache import init_cache, positions
from llamafn.config import ModelConfig
from llamafn.kernels import backends, get
from llamafn.model import attention
from llamafn.params import init_params, layer_params
from llamafn.model.block import subtree
from llamafn.model.rope import inv_frequencies, step_positions
from tests.strategies import configs, seeds


@st.composite
def qkv(draw):
    g = torch.Generator().manual_seed(draw(seeds()))
    B, Hkv, group, T, D = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 4, 8])), \
        draw(st.integers(1, 9)), draw(st.sampled_from([4, 8, 16]))
    q = torch.randn(B, Hkv * group, T, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, T, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, T, D, generator=g, dtype=torch.float64)
    return q, k, v


BACKENDS = st.sampled_from(["reference", "sdpa", "grouped"])


def test_the_backends_are_registered():
    assert {"reference", "sdpa", "grouped", "triton"} <= set(backends("attention"))


@given(qkv(), st.sampled_from(["sdpa", "grouped"]), st.integers(0, 5))
def test_every_backend_equals_the_reference(t, backend, offset):
    """Plain causal, and with query positions offset into a longer key sequence (a cached prefix)."""
    q, k, v = t
    ref, fast = get("attention", "reference"), get("attention", backend)
    torch.testing.assert_close(fast(q, k, v, None), ref(q, k, v, None))
    B, T, S = q.shape[0], q.shape[2], k.shape[2]
    pos = (torch.arange(T) + offset).clamp(max=S - 1).expand(B, -1)
    torch.testing.assert_close(fast(q, k, v, pos), ref(q, k, v, pos))


@given(qkv(), BACKENDS)
def test_gqa_equals_mha_with_repeated_kv_heads(t, backend):
    q, k, v = t
    n_rep = q.shape[1] // k.shape[1]
    attend = get("attention", backend)
    mha = attend(q, k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1), None)
    torch.testing.assert_close(attend(q, k, v, None), mha)


@given(qkv(), BACKENDS, st.integers(0, 8))
def test_future_keys_never_change_a_query(t, backend, cut):
    """Causality: replacing keys/values after position `cut` leaves outputs at positions <= cut alone."""
    q, k, v = t
    attend = get("attention", backend)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, cut + 1:] = 100.0
    v2[:, :, cut + 1:] = -100.0
    torch.testing.assert_close(attend(q, k2, v2, None)[:, :, :cut + 1], attend(q, k, v, None)[:, :, :cut + 1])


@given(configs(max_layers=1), seeds(), st.integers(1, 6), st.integers(1, 6), BACKENDS)
def test_attention_with_a_cache_equals_attention_without(cfg, seed, t1, t2, backend):
    """Two chunks through the cache give what one pass over the concatenation gives."""
    params = init_params(cfg, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    p = subtree(layer_params(params, 0), "attention.")
    x = torch.randn(2, t1 + t2, cfg.dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    full, _ = attention(p, x, None, 0, cfg=cfg, backend=backend)
    cache = init_cache(cfg, 2, 16, dtype=torch.float64)
    y1, cache = attention(p, x[:, :t1], cache, 0, cfg=cfg, backend=backend)
    cache = cache._replace(lengths=cache.lengths + t1)
    y2, cache = attention(p, x[:, t1:], cache, 0, cfg=cfg, backend=backend)
    torch.testing.assert_close(torch.cat([y1, y2], 1), full)


def test_mqa_single_kv_head_runs():
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=1, vocab_size=16, hidden_dim=16)
    params = init_params(cfg, generator=torch.Generator().manual_seed(0))
    y, _ = attention(subtree(layer_params(params, 0), "attention."), torch.randn(1, 3, 32), None, 0, cfg=cfg)
    assert y.shape == (1, 3, 32) and y.isfinite().all()


@given(configs(max_layers=1), seeds(), st.integers(0, 5), st.integers(1, 4))
def test_given_rope_positions_are_the_ones_it_would_compute(cfg, seed, start, T):
    """`rope` (positions and angles shared by every layer of a forward) gives what attention computes
    from the cache's lengths."""
    params = init_params(cfg, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    p = subtree(layer_params(params, 0), "attention.")
    x = torch.randn(2, T, cfg.dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    cache = init_cache(cfg, 2, 16, dtype=torch.float64)
    cache = cache._replace(lengths=torch.tensor([start, start + 1]))
    rope = step_positions(positions(cache, 2, T, x.device), inv_frequencies(cfg))
    given, cache_a = attention(p, x, cache, 0, cfg=cfg, rope=rope)
    y_a, k_a = given.clone(), cache_a.k[0].clone()
    computed, cache_b = attention(p, x, cache, 0, cfg=cfg)
    torch.testing.assert_close(y_a, computed, rtol=0, atol=0)
    torch.testing.assert_close(k_a, cache_b.k[0], rtol=0, atol=0)
