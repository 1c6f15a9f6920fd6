from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import llamafn as lf
from llamafn.cache import (batch_size, capacity, gather_rows, init_cache, quantized, read, reorder, reorder_into, reset,
                           tensors, truncate, write, zeros_like)
from llamafn.config import ModelConfig
from llamafn.errors import InputError
from tests.strategies import seeds

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


@given(seeds(), st.integers(1, 5), st.integers(1, 6), st.integers(1, 9), st.sampled_from(
    [torch.bfloat16, torch.float32, torch.int8, torch.float64]), st.booleans())
def test_gather_rows_is_index_select(seed, B, n, d, dtype, transposed):
    """Rows moved as 8-byte words (when a row's bytes are a multiple of 8) or as elements (otherwise, and
    for a non-contiguous view) equal index_select's, duplicated and dropped rows included."""
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(B, n, d, generator=g) * 50).to(dtype)
    t = t.transpose(1, 2) if transposed else t
    index = torch.randint(0, B, (torch.randint(1, 2 * B + 1, (), generator=g).item(),), generator=g)
    out = gather_rows(t, index)
    assert out.dtype == dtype and torch.equal(out, t.index_select(0, index))


def filled(B: int, dtype: torch.dtype, g: torch.Generator):
    """A cache of CFG's shape whose every stored value (scales too) is random and nonzero."""
    c = init_cache(CFG, B, dtype=dtype)
    return type(c)(*(tuple((torch.rand(t.shape, generator=g) * 90 + 1).to(t.dtype) for t in f) if isinstance(f, tuple)
                     else torch.randint(0, 12, (B,), generator=g) for f in c))


@given(seeds(), st.integers(1, 4), st.integers(1, 4), st.integers(0, 12), st.sampled_from([torch.float32, torch.bfloat16,
                                                                                           torch.int8]))
def test_reorder_into_moves_the_first_positions_into_the_buffer_given(seed, B, B2, upto, dtype):
    """Positions before `upto` (odd counts included, where int8 scales move as elements) equal `reorder`'s;
    from `upto` on the buffer keeps what it held; lengths are gathered; every tensor is the buffer's own."""
    g = torch.Generator().manual_seed(seed)
    src, out = filled(B, dtype, g), filled(B2, dtype, g)
    index = torch.randint(0, B, (B2,), generator=g)
    before = [t.clone() for t in tensors(out)]
    got, want = reorder_into(src, index, out, upto), reorder(src, index)
    assert torch.equal(got.lengths, src.lengths[index])
    for mine, theirs, old, buffer in zip(tensors(got), tensors(want), before, tensors(out)):
        assert mine.data_ptr() == buffer.data_ptr()
        assert torch.equal(mine[:, :, :upto], theirs[:, :, :upto]) and torch.equal(mine[:, :, upto:], old[:, :, upto:])


def test_reorder_into_refuses_a_buffer_of_another_shape():
    c = init_cache(CFG, 2, 8)
    with pytest.raises(InputError, match=r"out holds 2 layers of \(2, 1, 8, 8\), the result 2 of \(3, 1, 8, 8\)"):
        reorder_into(c, torch.tensor([0, 1, 1]), c, 4)
    with pytest.raises(InputError, match=r"upto 9 is outside the cache's 0..8 positions"):
        reorder_into(c, torch.tensor([0, 1]), zeros_like(c), 9)
    z = zeros_like(filled(2, torch.int8, torch.Generator().manual_seed(0)))
    assert quantized(z) and not any(t.any() for t in tensors(z)) and not z.lengths.any()


@given(seeds(), st.integers(1, 3), st.integers(1, 6), st.floats(1e-3, 1e3))
def test_an_int8_cache_reads_back_within_half_a_scale(seed, B, T, magnitude):
    """Each written vector gets scale = absmax / 127 and reads back within scale / 2 of what was
    written (fp32 rounding aside); other layers and positions stay zero."""
    g = torch.Generator().manual_seed(seed)
    c = init_cache(CFG, B, 8, dtype=torch.int8)
    k, v = (torch.randn(B, 1, T, 8, generator=g) * magnitude for _ in range(2))
    pos = torch.stack([torch.randperm(8, generator=g)[:T] for _ in range(B)])   # (B, T) distinct slots
    c = write(c, 1, k, v, pos)
    assert quantized(c) and c.k[1].dtype == torch.int8 and c.lengths.tolist() == [0] * B
    rk, rv = read(c, 1, torch.float32)
    rows = torch.arange(B)[:, None]
    for x, back, scale in ((k, rk, c.k_scale[1]), (v, rv, c.v_scale[1])):
        x = x.transpose(1, 2)                                                     # (B, T, Hkv, D)
        s = scale[rows, :, pos]                                                   # (B, T, Hkv)
        torch.testing.assert_close(s, x.abs().amax(-1) / 127)
        assert ((back[rows, :, pos] - x).abs() <= s[..., None] / 2 * (1 + 1e-5) + 1e-30).all()
    written = torch.zeros(B, 8, dtype=torch.bool)
    written[rows, pos] = True
    assert not rk[~written[:, None, :].expand(B, 1, 8)].any() and not any(t.any() for t in read(c, 0, torch.float32))


def test_int8_cache_storage_moves_with_its_scales():
    c = init_cache(CFG, 3, 4, dtype=torch.int8)
    c = write(c, 0, torch.arange(3.0)[:, None, None, None] + torch.ones(3, 1, 1, 8), torch.ones(3, 1, 1, 8),
              torch.zeros(3, 1, dtype=torch.long))
    r = reorder(truncate(c, 1), torch.tensor([2, 0]))
    assert quantized(r) and len(tensors(r)) == 4 * CFG.n_layers and r.lengths.tolist() == [1, 1]
    torch.testing.assert_close(read(r, 0, torch.float32)[0][:, 0, 0, 0], torch.tensor([3.0, 1.0]))


def test_init_cache_refuses_integer_dtypes_other_than_int8():
    for dtype in (torch.int32, "int8"):
        with pytest.raises(InputError, match="int8"):
            init_cache(CFG, 1, 4, dtype=dtype)


def test_forward_refuses_a_cache_made_for_another_model_shape():
    cfg = lf.ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=16, hidden_dim=32, max_seq_len=16)
    params = lf.init_params(cfg, generator=torch.Generator().manual_seed(0))
    tokens = torch.ones(1, 2, dtype=torch.long)
    for other in (replace(cfg, n_layers=1), replace(cfg, n_kv_heads=4), replace(cfg, dim=64, n_heads=4)):
        with pytest.raises(InputError, match="the cache is for .* the model has 2 layers of 2 KV heads of dim 8"):
            lf.forward(params, tokens, lf.init_cache(other, 1, 8), cfg=cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="runs the one-launch Triton gather of every layer")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8])
def test_reorder_into_on_a_gpu_equals_reorder(dtype):
    g = torch.Generator().manual_seed(0)
    src, out = filled(3, dtype, g), filled(4, dtype, g)
    src, out = (type(c)(*(tuple(t.cuda() for t in f) if isinstance(f, tuple) else f.cuda() for f in c)) for c in (src, out))
    index = torch.tensor([2, 0, 0, 1], device="cuda")
    got, want = reorder_into(src, index, out, 7), reorder(src, index)
    assert all(torch.equal(a[:, :, :7], b[:, :, :7]) for a, b in zip(tensors(got), tensors(want)))
