"""The one-launch cache row gather against index_select, in Triton's interpreter on the CPU and natively
on a GPU: every dtype the cache holds (8-, 4-, 2- and 1-byte words chosen by the sizes), odd position
counts, rows duplicated and dropped, and positions from `upto` on left alone."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llamafn.errors import InputError
from llamafn.kernels import gather_rows
from tests.strategies import seeds

pytestmark = pytest.mark.skipif(gather_rows.triton is None, reason="triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def filled(seed: int, shape: tuple[int, ...], dtype: torch.dtype, n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(shape, generator=g) * 90 + 1).to(dtype).to(DEVICE) for _ in range(n)]


@given(seeds(), st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 9), st.sampled_from([(), (1,), (3,), (8,)]),
       st.sampled_from([torch.bfloat16, torch.float32, torch.int8]), st.integers(1, 3), st.data())
def test_gather_rows_into_is_index_select(seed, B, B2, H, S, inner, dtype, n, data):
    srcs = filled(seed, (B, H, S, *inner), dtype, n)
    dsts = filled(seed + 1, (B2, H, S, *inner), dtype, n)
    before = [d.clone() for d in dsts]
    upto = data.draw(st.integers(0, S))
    index = torch.tensor(data.draw(st.lists(st.integers(0, B - 1), min_size=B2, max_size=B2)), device=DEVICE)
    gather_rows.gather_rows_into(srcs, dsts, index, upto)
    for src, dst, old in zip(srcs, dsts, before):
        assert torch.equal(dst[:, :, :upto], src.index_select(0, index)[:, :, :upto])
        assert torch.equal(dst[:, :, upto:], old[:, :, upto:])


def test_the_widest_word_the_sizes_allow():
    assert gather_rows.word_bytes(2, [0, 256], 4 * 8 * 2, (1024, 64)) == 8
    assert gather_rows.word_bytes(2, [0, 256], 3 * 2, (1024, 64)) == 2                 # three positions of one element
    assert gather_rows.word_bytes(2, [2, 256], 4 * 8 * 2, (1024, 64)) == 2             # an address off the words
    assert gather_rows.word_bytes(4, [0, 256], 5 * 4, (20, 4)) == 4                    # odd positions of fp32 scales


def test_mismatched_groups_are_refused():
    a = torch.zeros(2, 2, 4, 8)
    with pytest.raises(InputError, match="1 sources for 2 destinations"):
        gather_rows.gather_rows_into([a], [a, a], torch.tensor([0, 1]), 4)
    with pytest.raises(InputError, match=r"index must be int32/int64 rows \(B',\) on cpu, got torch.float32 \(2,\)"):
        gather_rows.gather_rows_into([a], [a], torch.tensor([0.0, 1.0]), 4)
    with pytest.raises(InputError, match=r"the destinations must be tensors \(3, H, S, ...\)"):
        gather_rows.gather_rows_into([a], [a], torch.tensor([0, 1, 1]), 4)
    with pytest.raises(InputError, match="positions of the sources must be contiguous"):
        gather_rows.gather_rows_into([a.transpose(2, 3)], [a.transpose(2, 3)], torch.tensor([0, 1]), 4)
    with pytest.raises(InputError, match="upto 5 is outside 0..4 positions"):
        gather_rows.gather_rows_into([a], [a.clone()], torch.tensor([0, 1]), 5)
    with pytest.raises(InputError, match="differ past the row axis"):
        gather_rows.gather_rows_into([a], [a.half()], torch.tensor([0, 1]), 4)


def test_an_index_outside_the_sources_copies_nothing():
    src, dst = filled(0, (2, 1, 4, 8), torch.float32, 1), filled(1, (2, 1, 4, 8), torch.float32, 1)
    old = dst[0].clone()
    gather_rows.gather_rows_into(src, dst, torch.tensor([2, -1], device=DEVICE), 4)
    assert torch.equal(dst[0], old)
