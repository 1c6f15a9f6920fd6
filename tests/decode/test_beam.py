"""Beam search returns the same sequences and scores as Hugging Face transformers' generate(num_beams=...)."""

import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import llamafn as lf
from llamafn.checkpoint import save_hf
from llamafn.config import ModelConfig
from llamafn.decode import beam_search
from llamafn.errors import InputError
from tests.strategies import configs, seeds

transformers = pytest.importorskip("transformers")

EOS = 3


def hf_beams(model, prompt, n, eos=EOS, **kwargs):
    """transformers' best hypotheses for one prompt: (new tokens cut at the first EOS, score)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=eos,
                             pad_token_id=eos, return_dict_in_generate=True, output_scores=True, **kwargs)
    rows = []
    for seq, score in zip(out.sequences.tolist(), out.sequences_scores.tolist()):
        new = seq[len(prompt):]
        rows.append((new[:new.index(eos)] if eos in new else new, score))
    return rows


def assert_same(ours, theirs):
    assert [t for t, _ in ours] == [t for t, _ in theirs]
    assert [s for _, s in ours] == pytest.approx([s for _, s in theirs], abs=2e-4)


@pytest.fixture(scope="module")
def random_pair(tmp_path_factory):
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, hidden_dim=48, max_seq_len=128)
    params = lf.init_params(cfg, generator=torch.Generator().manual_seed(3))
    params = {k: v * (3.0 if "tok_emb" not in k and v.dim() == 2 else 1.0) for k, v in params.items()}
    path = save_hf(tmp_path_factory.mktemp("hf") / "m", params, cfg)
    return params, cfg, transformers.LlamaForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [0.5, 1.0, 2.0])
def test_beam_search_matches_transformers(random_pair, early_stopping, length_penalty):
    params, cfg, model = random_pair
    prompts = [[1, 5, 6, 7], [1, 9], [2, 4, 4, 8, 10, 12]]
    kwargs = dict(num_beams=4, num_return_sequences=3, early_stopping=early_stopping, length_penalty=length_penalty)
    ours = beam_search(params, cfg, prompts, 10, stop_tokens=[EOS], **kwargs)      # one ragged batch
    for prompt, row in zip(prompts, ours):
        assert_same(row, hf_beams(model, prompt, 10, **kwargs))


def test_stories260k_beam_search_matches_transformers(tmp_path, stories260k):
    params, cfg, _ = stories260k
    model = transformers.LlamaForCausalLM.from_pretrained(save_hf(tmp_path / "hf", params, cfg)).eval()
    for prompt in ([1], [1, 403, 407, 261]):
        ours = beam_search(params, cfg, [prompt], 30, num_beams=3, num_return_sequences=2, stop_tokens=[2])[0]
        assert_same(ours, hf_beams(model, prompt, 30, eos=2, num_beams=3, num_return_sequences=2))


@given(configs(), seeds(), st.integers(1, 8))
def test_one_beam_is_greedy(cfg, seed, n):
    params = lf.init_params(cfg, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    prompts = [[1 % cfg.vocab_size, 2 % cfg.vocab_size], [0]]
    assert [row[0][0] for row in beam_search(params, cfg, prompts, n, num_beams=1)] == lf.generate(params, cfg, prompts, n)


def test_generate_with_beams_returns_each_prompts_best_in_turn(random_pair):
    params, cfg, _ = random_pair
    prompts = [[1, 5], [1, 9, 9]]
    best = beam_search(params, cfg, prompts, 6, num_beams=3, num_return_sequences=2)
    assert lf.generate(params, cfg, prompts, 6, num_beams=3, num_return_sequences=2) == \
        [tokens for row in best for tokens, _ in row]


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_beams=0), "num_beams >= 1"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences <= num_beams"),
    (dict(early_stopping="sometimes"), "early_stopping must be True, False or 'never'"),
])
def test_bad_beam_arguments(random_pair, kwargs, message):
    params, cfg, _ = random_pair
    with pytest.raises(InputError, match=message):
        beam_search(params, cfg, [[1]], 4, **kwargs)


@given(configs(), seeds(), st.sampled_from([(4, 2), (6, 3), (4, 4)]), st.integers(2, 7))
def test_diverse_beams_with_no_penalty_are_independent_searches_of_width_b_over_g(cfg, seed, shape, n):
    beams, groups = shape
    params = lf.init_params(cfg, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    prompts = [[1 % cfg.vocab_size], [2 % cfg.vocab_size, 0]]
    diverse = beam_search(params, cfg, prompts, n, num_beams=beams, num_beam_groups=groups, diversity_penalty=0.0,
                          num_return_sequences=beams)
    alone = beam_search(params, cfg, prompts, n, num_beams=beams // groups, num_return_sequences=beams // groups)
    for d, a in zip(diverse, alone):                     # every group found exactly the standalone hypotheses
        expected = sorted(a * groups, key=lambda h: -h[1])
        assert [s for _, s in d] == pytest.approx([s for _, s in expected])
        assert sorted(map(tuple, (t for t, _ in d))) == sorted(map(tuple, (t for t, _ in expected)))


@given(configs(), seeds(), st.integers(2, 3), st.integers(2, 8))
def test_a_large_diversity_penalty_makes_the_groups_choose_different_tokens_at_every_step(cfg, seed, groups, n):
    params = lf.init_params(cfg, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = beam_search(params, cfg, [[1 % cfg.vocab_size]], n, num_beams=groups, num_beam_groups=groups,
                      diversity_penalty=1e4, num_return_sequences=groups)[0]
    seqs = [t for t, _ in out]                           # one beam a group, no stop token: full length
    assert all(len(s) == n for s in seqs)
    for step in range(n):
        assert len({s[step] for s in seqs}) == groups


def test_group_and_penalty_arguments_are_checked(random_pair):
    params, cfg, _ = random_pair
    with pytest.raises(InputError, match="must divide num_beams"):
        beam_search(params, cfg, [[1]], 4, num_beams=4, num_beam_groups=3)
    with pytest.raises(InputError, match="diversity_penalty .* must be >= 0"):
        beam_search(params, cfg, [[1]], 4, num_beams=4, num_beam_groups=2, diversity_penalty=-1.0)


@pytest.mark.parametrize("kwargs, named", [
    (dict(temperature=0.7), "temperature > 0"), (dict(top_k=5), "top_k"), (dict(top_p=0.9), "top_p"),
    (dict(min_p=0.1), "min_p"), (dict(repetition_penalty=1.3), "repetition_penalty"),
    (dict(generator=torch.Generator()), "generator"), (dict(speculative="lookup"), "speculative"),
    (dict(compile=True), "compile"), (dict(temperature=[0.0, 0.5], top_k=[0, 3]), "temperature > 0, top_k"),
])
def test_beams_refuse_settings_they_would_ignore(random_pair, kwargs, named):
    """Sampling settings (scalars or one a row) and the other strategies would be silently ignored."""
    params, cfg, _ = random_pair
    with pytest.raises(InputError, match=f"beam search .* runs alone: {re.escape(named)} cannot go with it"):
        lf.generate(params, cfg, [[1], [2]], 4, num_beams=2, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(diversity_penalty=0.5), "diversity_penalty is diverse beam search's: it needs num_beam_groups > 1"),
    (dict(force_phrases=[[5]], num_beam_groups=2), "constrained beam search .* no num_beam_groups or early_stopping"),
    (dict(force_phrases=[[5]], early_stopping=True), "constrained beam search .* no num_beam_groups or early_stopping"),
])
def test_beam_settings_that_the_chosen_search_ignores_are_refused(random_pair, kwargs, message):
    params, cfg, _ = random_pair
    with pytest.raises(InputError, match=message):
        lf.generate(params, cfg, [[1]], 4, num_beams=4, **kwargs)


def test_beams_take_the_sampling_defaults_given_explicitly(random_pair):
    params, cfg, _ = random_pair
    plain = lf.generate(params, cfg, [[1]], 4, num_beams=2)
    assert lf.generate(params, cfg, [[1]], 4, num_beams=2, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                       repetition_penalty=1.0) == plain
