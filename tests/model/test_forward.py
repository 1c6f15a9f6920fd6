import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llamafn import forward, init_cache, init_params
from llamafn.errors import InputError
from tests.strategies import configs, random_tokens, seeds

BACKENDS = st.sampled_from(["reference", "sdpa", "grouped"])


def model(cfg, seed, dtype=torch.float64):
    return init_params(cfg, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@given(configs(), seeds(), st.integers(1, 8), st.integers(1, 5), BACKENDS)
def test_cached_prefill_then_decode_equals_one_full_forward(cfg, seed, n_prompt, n_decode, backend):
    params = model(cfg, seed)
    tokens = random_tokens(cfg, (2, n_prompt + n_decode), seed)
    full, _ = forward(params, tokens, cfg=cfg, attention=backend)
    cache = init_cache(cfg, 2, 32, dtype=torch.float64)
    logits, cache = forward(params, tokens[:, :n_prompt], cache, cfg=cfg, attention=backend)
    steps = [logits]
    for t in range(n_prompt, n_prompt + n_decode):
        logits, cache = forward(params, tokens[:, t:t + 1], cache, cfg=cfg, attention=backend)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full)
    assert cache.lengths.tolist() == [n_prompt + n_decode] * 2


@given(configs(), seeds(), st.integers(2, 10), BACKENDS)
def test_future_tokens_never_change_past_logits(cfg, seed, T, backend):
    params = model(cfg, seed)
    tokens = random_tokens(cfg, (1, T), seed)
    changed = tokens.clone()
    changed[0, -1] = (changed[0, -1] + 1) % cfg.vocab_size
    a, _ = forward(params, tokens, cfg=cfg, attention=backend)
    b, _ = forward(params, changed, cfg=cfg, attention=backend)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])


@given(configs(), seeds(), st.lists(st.integers(1, 8), min_size=2, max_size=4), BACKENDS)
def test_a_ragged_batch_equals_each_row_alone(cfg, seed, lengths, backend):
    """Right-padded rows of different lengths, then a decode step at each row's own position."""
    params = model(cfg, seed)
    T = max(lengths)
    tokens = random_tokens(cfg, (len(lengths), T + 1), seed)
    cache = init_cache(cfg, len(lengths), 16, dtype=torch.float64)
    batch_logits, cache = forward(params, tokens[:, :T], cache, cfg=cfg, attention=backend)
    cache = cache._replace(lengths=torch.tensor(lengths))
    nxt = tokens[torch.arange(len(lengths)), torch.tensor(lengths)][:, None]
    step_logits, _ = forward(params, nxt, cache, cfg=cfg, attention=backend)
    for b, n in enumerate(lengths):
        alone, _ = forward(params, torch.cat([tokens[b:b + 1, :n], nxt[b:b + 1]], 1), cfg=cfg, attention=backend)
        torch.testing.assert_close(batch_logits[b, :n], alone[0, :n])
        torch.testing.assert_close(step_logits[b, 0], alone[0, n])


@given(configs(), seeds())
def test_logits_are_float32_whatever_the_weights(cfg, seed):
    params = model(cfg, seed, dtype=torch.bfloat16)
    logits, _ = forward(params, random_tokens(cfg, (1, 3), seed), cfg=cfg)
    assert logits.dtype == torch.float32 and logits.shape == (1, 3, cfg.vocab_size)


def test_forward_rejects_bad_shapes():
    from llamafn.config import ModelConfig
    cfg = ModelConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=10, hidden_dim=8)
    params = model(cfg, 0)
    with pytest.raises(InputError, match=r"shape \(B, T\)"):
        forward(params, torch.zeros(3, dtype=torch.long), cfg=cfg)
    with pytest.raises(InputError, match="cache has 2 rows"):
        forward(params, torch.zeros(1, 2, dtype=torch.long), init_cache(cfg, 2, 8, dtype=torch.float64), cfg=cfg)


def test_forward_rejects_bad_token_ids_and_overflowing_the_cache():
    from llamafn.config import ModelConfig
    cfg = ModelConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=10, hidden_dim=8, max_seq_len=8)
    params = model(cfg, 0)
    with pytest.raises(InputError, match=r"token id 10 at row 0, position 1 is outside \[0, 10\)"):
        forward(params, torch.tensor([[1, 10]]), cfg=cfg)
    with pytest.raises(InputError, match="past the 8 of the model's context"):
        forward(params, torch.zeros(1, 9, dtype=torch.long), cfg=cfg)
    cache = init_cache(cfg, 1, 4, dtype=torch.float64)
    _, cache = forward(params, torch.zeros(1, 3, dtype=torch.long), cache, cfg=cfg)
    with pytest.raises(InputError, match="up to 5, past the 4 of the cache"):
        forward(params, torch.zeros(1, 2, dtype=torch.long), cache, cfg=cfg)
