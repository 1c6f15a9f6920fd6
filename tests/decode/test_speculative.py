"""Speculative decoding is exact: greedy output equals the target's greedy output for any proposer,
k and prompt, and sampled output is distributed as the target's own (warped) sampling."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import llamafn as lf
from llamafn.config import ModelConfig
from llamafn.decode import speculative as spec
from llamafn.errors import InputError
from llamafn.sampling import process_logits, sampling_params
from tests.strategies import configs, seeds


def model(cfg, seed):
    return lf.init_params(cfg, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@given(configs(), seeds(), st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=10), min_size=1, max_size=3),
       st.integers(1, 6), st.sampled_from(["draft", "lookup"]), st.integers(1, 12), st.booleans())
def test_greedy_speculative_equals_target_greedy(cfg, seed, prompts, k, mode, n, adaptive):
    target, draft = model(cfg, seed), model(cfg, seed + 1)
    prompts = [[t % cfg.vocab_size for t in p] for p in prompts]
    expected = lf.generate(target, cfg, prompts, n)
    got = lf.generate(target, cfg, prompts, n, speculative=mode, draft=(draft, cfg) if mode == "draft" else None, k=k,
                      adaptive_k=adaptive)
    assert got == expected


def test_adaptive_k_grows_with_a_perfect_draft_and_shrinks_with_a_bad_one():
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=40, hidden_dim=32, max_seq_len=128)
    target, other = model(cfg, 0), model(cfg, 1)
    steps = {}
    for name, draft in (("perfect", target), ("bad", other)):
        chunks = list(lf.stream(target, cfg, [[1, 2]], 40, speculative="draft", draft=(draft, cfg), k=8,
                                adaptive_k=True))
        steps[name] = [len(c[0]) for c in chunks[1:-1]]
    assert max(steps["perfect"]) == 9                  # k climbed to 8: 8 accepted + the bonus token
    assert len(steps["bad"]) > len(steps["perfect"])


def test_a_perfect_draft_is_always_accepted_and_rolls_both_caches():
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, hidden_dim=32, max_seq_len=64)
    params = model(cfg, 0)
    cache, dcache = lf.init_cache(cfg, 1, 32, dtype=torch.float64), lf.init_cache(cfg, 1, 32, dtype=torch.float64)
    prompt = torch.tensor([[1, 2, 3]])
    _, cache = lf.forward(params, prompt, cache, cfg=cfg)
    _, dcache = lf.forward(params, prompt, dcache, cfg=cfg)
    state = spec.SpecState(cache=cache, draft_cache=dcache, last=torch.tensor([4]),
                           history=torch.zeros(1, 32, dtype=torch.long), history_len=torch.tensor([4]))
    k = 4
    noise = spec.SpecNoise(torch.ones(1, k, 40), torch.zeros(1, k), torch.ones(1, 40))
    out, counts, new = spec.step(params, state, sampling_params(1), noise, torch.tensor([True]), cfg=cfg,
                                 draft_params=params, draft_cfg=cfg)
    assert counts.tolist() == [k + 1]
    assert new.cache.lengths.tolist() == [3 + k + 1] == new.draft_cache.lengths.tolist()
    assert new.last.item() == out[0, k].item() and new.history_len.tolist() == [4 + k + 1]
    _, _, frozen = spec.step(params, new, sampling_params(1), noise, torch.tensor([False]), cfg=cfg,
                             draft_params=params, draft_cfg=cfg)
    assert frozen.cache.lengths.tolist() == [8] and frozen.last.item() == new.last.item()


def test_prompt_lookup_proposes_what_followed_the_latest_match():
    history = torch.tensor([[5, 6, 7, 8, 9, 5, 6, 7, 1, 5, 6, 0, 0],
                            [1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    length = torch.tensor([11, 4])
    proposal, q = spec.propose_by_lookup(history, length, 3, 10)
    assert proposal[0].tolist() == [7, 1, 5]          # "5 6" last seen at 5: followed by 7 1 5
    assert proposal[1].tolist() == [4, 4, 4]          # no earlier match: repeat the last token
    assert torch.equal(q.argmax(-1), proposal) and q.sum(-1).eq(1).all()


def warped(params, cfg, seq, sp):
    logits, _ = lf.forward(params, torch.tensor([seq]), cfg=cfg)
    return process_logits(logits[0, -1:], sp).softmax(-1)[0].double()


# Pearson chi-square quantiles at 1 - 1e-4 (the stated false-alarm rate of each check), by degrees of freedom
CHI2_9999 = {1: 15.14, 2: 18.42, 3: 21.11, 4: 23.51, 5: 25.74}


def chi_square_ok(observed: torch.Tensor, expected: torch.Tensor) -> bool:
    keep = expected > 1e-9
    assert observed[~keep].sum() == 0, "a token outside the warped support was emitted"
    stat = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum().item()
    return stat < CHI2_9999[int(keep.sum()) - 1]


@pytest.mark.parametrize("mode, warpers", [
    ("draft", dict(temperature=1.0)),
    ("draft", dict(temperature=0.7, top_k=4, top_p=0.9)),
    ("lookup", dict(temperature=1.3, min_p=0.05)),
])
def test_sampled_speculative_preserves_the_target_distribution(mode, warpers):
    """20,000 rows of one prompt; tokens 2 and 3 (drawn in speculative steps) must follow the target's
    exact warped marginals, computed by enumerating token 1 (and 2) over the 6-token vocabulary."""
    cfg = ModelConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=6, hidden_dim=16, max_seq_len=32)
    target, draft = model(cfg, 10), model(cfg, 11)
    prompt, n = [1, 2, 1, 2, 1], 20_000
    out = lf.generate(target, cfg, [prompt] * n, 3, speculative=mode, draft=(draft, cfg) if mode == "draft" else None,
                      k=3, generator=torch.Generator().manual_seed(0), **warpers)
    sp1 = sampling_params(1, **warpers)
    p1 = warped(target, cfg, prompt, sp1)
    p2 = sum(p1[a] * warped(target, cfg, prompt + [a], sp1) for a in range(6) if p1[a] > 0)
    p3 = torch.zeros(6, dtype=torch.float64)
    for a in range(6):
        if p1[a] == 0:
            continue
        pa = warped(target, cfg, prompt + [a], sp1)
        for b in range(6):
            if pa[b] > 0:
                p3 += p1[a] * pa[b] * warped(target, cfg, prompt + [a, b], sp1)
    tokens = torch.tensor(out)
    for position, expected in ((1, p2), (2, p3)):
        observed = torch.bincount(tokens[:, position], minlength=6).double()
        assert chi_square_ok(observed, expected * n), (position, observed, expected * n)


def test_bad_speculative_arguments_are_named():
    cfg = ModelConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=6, hidden_dim=16, max_seq_len=32)
    other = ModelConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=7, hidden_dim=16, max_seq_len=32)
    params = model(cfg, 0)
    with pytest.raises(InputError, match="needs draft"):
        lf.generate(params, cfg, [[1]], 3, speculative="draft")
    with pytest.raises(InputError, match=r"vocabulary \(7\) differs from the target's \(6\)"):
        lf.generate(params, cfg, [[1]], 3, speculative="draft", draft=(model(other, 0), other))
    with pytest.raises(InputError, match="'draft' or 'lookup'"):
        lf.generate(params, cfg, [[1]], 3, speculative="medusa")
    with pytest.raises(InputError, match="k .* must be in 1..16"):
        lf.generate(params, cfg, [[1]], 3, speculative="lookup", k=0)
    with pytest.raises(InputError, match="repetition_penalty is not supported"):
        lf.generate(params, cfg, [[1]], 3, speculative="lookup", repetition_penalty=1.2)
