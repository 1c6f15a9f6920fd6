"""Constrained beam search: every returned hypothesis contains every forced phrase, and its score is
its true log-probability under the model over its length ** length_penalty."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import llamafn as lf
from llamafn.decode.forced import forced_beam_search
from llamafn.errors import InputError
from tests.strategies import configs, seeds


def contains(seq, phrase):
    return any(seq[i:i + len(phrase)] == phrase for i in range(len(seq) - len(phrase) + 1))


def sequence_logprob(params, cfg, prompt, seq):
    logits, _ = lf.forward(params, torch.tensor([prompt + seq]), cfg=cfg)
    lp = F.log_softmax(logits[0, len(prompt) - 1:-1].double(), -1)
    return float(lp.gather(-1, torch.tensor(seq)[:, None]).sum())


@given(configs(), seeds(), st.lists(st.lists(st.integers(0, 7), min_size=1, max_size=3), min_size=1, max_size=2),
       st.sampled_from([0.5, 1.0, 2.0]))
def test_every_hypothesis_contains_every_phrase_and_is_scored_truly(cfg, seed, phrases, length_penalty):
    params = lf.init_params(cfg, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    prompts = [[1 % cfg.vocab_size, 2 % cfg.vocab_size], [0]]
    out = forced_beam_search(params, cfg, prompts, 10, phrases, num_beams=3, num_return_sequences=3,
                             length_penalty=length_penalty)
    for prompt, row in zip(prompts, out):
        assert row and [s for _, s in row] == sorted((s for _, s in row), reverse=True)
        for seq, score in row:
            assert all(contains(seq, p) for p in phrases), (seq, phrases)
            assert score == pytest.approx(sequence_logprob(params, cfg, prompt, seq) / len(seq) ** length_penalty, rel=1e-5, abs=1e-5)


def test_generate_routes_forced_phrases_and_checks_them():
    cfg = lf.ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=20, hidden_dim=32, max_seq_len=64)
    params = lf.init_params(cfg, generator=torch.Generator().manual_seed(0))
    out = lf.generate(params, cfg, [[1, 2]], 8, num_beams=2, force_phrases=[[5, 6], [9]], stop_tokens=[3])
    assert contains(out[0], [5, 6]) and 9 in out[0]
    with pytest.raises(InputError, match="need num_beams > 1"):
        lf.generate(params, cfg, [[1]], 8, force_phrases=[[5]])
    with pytest.raises(InputError, match="need 9 tokens, more than max_new_tokens=8"):
        lf.generate(params, cfg, [[1]], 8, num_beams=2, force_phrases=[[5] * 9])
    with pytest.raises(InputError, match="non-empty lists of token ids"):
        lf.generate(params, cfg, [[1]], 8, num_beams=2, force_phrases=[[]])
