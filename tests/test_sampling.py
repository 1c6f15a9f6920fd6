import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llamafn.errors import InputError
from llamafn.sampling import (apply_min_p, apply_repetition_penalty, apply_top_k, apply_top_p, draw_noise, sample,
                              sampling_params)
from tests.strategies import seeds


@st.composite
def distinct_logits(draw, max_vocab=40):
    """(B, V) logits with distinct values in each row (so 'the k largest' is well defined)."""
    V = draw(st.integers(2, max_vocab))
    g = torch.Generator().manual_seed(draw(seeds()))
    rows = [torch.randperm(V, generator=g).double() * draw(st.floats(0.05, 2.0)) for _ in range(draw(st.integers(1, 3)))]
    return torch.stack(rows)


@given(distinct_logits(), st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_set_reaching_p(logits, p):
    kept = apply_top_p(logits, torch.full((logits.shape[0],), p)).isfinite()
    probs = logits.softmax(-1)
    for b in range(logits.shape[0]):
        mass = probs[b][kept[b]].sum()
        assert mass >= p - 1e-9 or kept[b].all()
        smallest_kept = probs[b][kept[b]].min()
        assert mass - smallest_kept < p + 1e-9                     # one fewer would not reach p
        dropped = probs[b][~kept[b]]
        assert dropped.numel() == 0 or dropped.max() <= smallest_kept  # kept tokens are the most likely


@given(distinct_logits(), st.data())
def test_top_k_keeps_exactly_the_k_largest(logits, data):
    k = data.draw(st.integers(0, logits.shape[1] + 2))
    kept = apply_top_k(logits, torch.full((logits.shape[0],), k)).isfinite()
    expected = min(k, logits.shape[1]) if k > 0 else logits.shape[1]
    assert kept.sum(-1).tolist() == [expected] * logits.shape[0]
    for b in range(logits.shape[0]):
        dropped = logits[b][~kept[b]]
        assert dropped.numel() == 0 or logits[b][kept[b]].min() > dropped.max()


@given(distinct_logits(), st.floats(0.0, 1.0))
def test_min_p_drops_tokens_below_the_scaled_top_probability(logits, min_p):
    kept = apply_min_p(logits, torch.full((logits.shape[0],), min_p)).isfinite()
    probs = logits.softmax(-1)
    assert torch.equal(kept, probs >= min_p * probs.max(-1, keepdim=True).values)
    assert kept.any(-1).all()


@given(distinct_logits(), seeds(), st.floats(0.1, 2.0), st.integers(0, 5), st.floats(0.05, 1.0), st.floats(0, 0.5))
def test_samples_stay_inside_the_support_of_the_warped_distribution(logits, seed, temp, k, p, min_p):
    B = logits.shape[0]
    sp = sampling_params(B, temperature=temp, top_k=k, top_p=p, min_p=min_p)
    g = torch.Generator().manual_seed(seed)
    warped = apply_min_p(apply_top_p(apply_top_k(logits.float() / temp, sp.top_k), sp.top_p), sp.min_p)
    for _ in range(5):
        tok = sample(logits, sp, draw_noise(logits.shape, g, "cpu"))
        assert warped[torch.arange(B), tok].isfinite().all()


def test_temperature_zero_is_argmax_and_rows_mix_settings():
    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 3.0, 1.0]])
    sp = sampling_params(2, temperature=[0.0, 1.0])
    noise = torch.tensor([[1.0, 1.0, 1.0], [1e-6, 1.0, 1.0]])    # row 1's race is won by token 0
    assert sample(logits, sp, noise).tolist() == [1, 0]


def test_the_exponential_race_samples_the_softmax():
    """200k draws over 6 tokens against softmax(logits / 0.7): Pearson chi-square with 5 degrees of
    freedom must stay under 25.7, its 0.9999 quantile (false-alarm rate 1e-4; the seed is fixed)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    n = 200_000
    sp = sampling_params(n, temperature=0.7)
    tokens = sample(logits.expand(n, -1), sp, draw_noise((n, 6), torch.Generator().manual_seed(0), "cpu"))
    observed = torch.bincount(tokens, minlength=6).double()
    expected = (logits / 0.7).softmax(-1).double() * n
    assert ((observed - expected) ** 2 / expected).sum() < 25.7


def test_repetition_penalty_matches_hugging_face_semantics():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, torch.tensor([2.0]))
    assert out.tolist() == [[1.0, -4.0, 1.0]]


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -0.5}, r"temperature must be >= 0, got -0.5"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
    ({"top_k": -1}, r"top_k must be >= 0"),
    ({"min_p": 2.0}, r"min_p must be in \[0, 1\]"),
    ({"repetition_penalty": 0.0}, r"repetition_penalty must be > 0"),
    ({"temperature": [0.5, 0.5, 0.5]}, r"temperature: expected one value or 2"),
])
def test_bad_sampling_parameters_are_named(kwargs, message):
    with pytest.raises(InputError, match=message):
        sampling_params(2, **kwargs)
