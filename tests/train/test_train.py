import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import llamafn as lf
from llamafn.config import ModelConfig, cards_dir
from llamafn.train.data import is_validation, random_batch, read_sources, stdlib_files, stdlib_root
from llamafn.train.loop import TrainConfig, learning_rate, train

TOKENIZER = cards_dir() / "stdlib-coder" / "tokenizer.model"
CODE = st.lists(st.sampled_from(list("abcxyz_019 ()[]{}:=+-*/.,'\"#\n\t") + ["    ", "def ", "return ", "é", "→"]),
                max_size=60).map("".join)


@pytest.fixture(scope="module")
def tok():
    return lf.Tokenizer(TOKENIZER)


def test_tokenizer_round_trips_corpus_files_exactly(tok):
    files = stdlib_files()
    for text in read_sources(files[::60]):                       # every 60th file: ~30 files
        assert tok.decode(tok.encode(text, bos=False)) == text


@given(CODE)
def test_tokenizer_round_trips_code_like_text(tok, text):
    assert tok.decode(tok.encode(text, bos=False)) == text


def test_split_is_by_file_deterministic_and_small():
    root, files = stdlib_root(), stdlib_files()
    val = [f for f in files if is_validation(f, root)]
    assert 0 < len(val) < 0.05 * len(files)
    assert val == [f for f in stdlib_files() if is_validation(f, root)]


def test_learning_rate_warms_up_then_decays_to_the_floor():
    tc = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    lrs = [learning_rate(s, tc) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and learning_rate(100, tc) == pytest.approx(0.1)


CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=16, hidden_dim=48, max_seq_len=64)


def patterned_tokens(n: int) -> torch.Tensor:
    """A learnable stream: a repeating sequence with a little noise."""
    g = torch.Generator().manual_seed(0)
    base = torch.arange(n) % 7 + 3
    return torch.where(torch.rand(n, generator=g) < 0.05, torch.randint(0, 16, (n,), generator=g), base)


def test_a_few_steps_reduce_the_loss_and_resume_continues_exactly(tmp_path):
    data = patterned_tokens(4000)
    tc = TrainConfig(steps=30, batch_size=8, seq_len=32, lr=3e-3, warmup=3, eval_every=10, eval_batches=2,
                     checkpoint_every=15)
    params, log = train(CFG, tc, data, data, tmp_path / "a")
    assert log[-1]["val_loss"] < 0.85 * log[0]["val_loss"] and log[-1]["val_loss"] < 1.0   # uniform: ln 16 = 2.8
    assert [e["step"] for e in log] == [10, 20, 30] and (tmp_path / "a" / "log.json").is_file()
    cut_short = TrainConfig(**{**tc.__dict__, "max_seconds": 0.0})      # stops (and checkpoints) after step 1
    _, short_log = train(CFG, cut_short, data, data, tmp_path / "b")
    assert short_log[-1]["step"] == 1
    resumed, _ = train(CFG, tc, data, data, tmp_path / "b", resume=True)
    assert all(torch.allclose(resumed[k], params[k], atol=1e-6) for k in params)


def test_random_batch_windows_are_inputs_and_targets():
    tokens = torch.arange(100)
    batch = random_batch(tokens, 4, 10, torch.Generator().manual_seed(0))
    assert batch.shape == (4, 11) and bool((batch[:, 1:] - batch[:, :-1] == 1).all())
