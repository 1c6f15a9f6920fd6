import torch

from llamafn.cache import batch_size, capacity, init_cache, reorder, reset, truncate, write
from llamafn.config import ModelConfig

CFG = ModelConfig(dim=16, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=10, hidden_dim=8, max_seq_len=12)


def test_init_cache_shapes_and_zeros():
    c = init_cache(CFG, 3, dtype=torch.float16)
    assert len(c.k) == len(c.v) == 2 and c.k[0].shape == (3, 1, 12, 8) and c.k[1].dtype == torch.float16
    assert c.lengths.tolist() == [0, 0, 0] and not any(t.any() for t in c.k + c.v)
    assert batch_size(c) == 3 and capacity(c) == 12


def test_write_puts_each_row_at_its_own_positions():
    c = init_cache(CFG, 2, 8)
    k = torch.arange(2 * 2 * 8, dtype=torch.float32).view(2, 1, 2, 8)
    c = write(c, 1, k, -k, torch.tensor([[0, 1], [5, 6]]))
    assert torch.equal(c.k[1][0, 0, :2], k[0, 0]) and torch.equal(c.k[1][1, 0, 5:7], k[1, 0])
    assert torch.equal(c.v[1][1, 0, 5:7], -k[1, 0]) and not c.k[0].any()


def test_truncate_reset_and_reorder_are_pure_on_lengths():
    c = init_cache(CFG, 3, 8)._replace(lengths=torch.tensor([5, 6, 7]))
    assert truncate(c, torch.tensor([1, 2, 3])).lengths.tolist() == [1, 2, 3]
    assert truncate(c, 4).lengths.tolist() == [4, 4, 4]
    assert reset(c).lengths.tolist() == [0, 0, 0]
    assert c.lengths.tolist() == [5, 6, 7]
    for t in c.k:
        t[2] = 1.0
    r = reorder(c, torch.tensor([2, 2, 0]))
    assert r.lengths.tolist() == [7, 7, 5]
    assert all(t[:2].eq(1).all() and not t[2].any() for t in r.k)
