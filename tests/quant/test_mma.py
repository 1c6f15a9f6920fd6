"""The tensor-core GEMV's run-time layout of int4 weights (llamafn.quant.mma): the same matrix, what fits,
what is not saved, and a whole forward in it against the natural layout."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import llamafn as lf
from llamafn.errors import InputError
from llamafn.quant import Int4MmaWeight, Int4Weight, dequantize, for_mma, quantize, quantize_int4, to_tensors
from llamafn.quant.formats import unpack_int4
from llamafn.quant.mma import CHAINS, GROUP_SIZES, chains_for, fits, to_mma, to_natural
from tests.strategies import seeds


@given(seeds(), st.integers(1, 3), st.sampled_from(GROUP_SIZES), st.sampled_from(CHAINS), st.integers(1, 5))
def test_the_mma_layout_is_the_same_matrix(seed, tiles, group, chains, groups):
    """Codes, bf16 scales and zero points come back exactly from the words and records, whatever the
    chains (warps a tile) and however many groups the last ones miss."""
    n, k = 16 * tiles, group * groups
    w = quantize_int4(torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).bfloat16(), group)
    m = to_mma(w, chains)
    assert isinstance(m, Int4MmaWeight) and m.shape == w.shape and m.group_size == group and m.dtype == torch.bfloat16
    back = to_natural(m)
    assert torch.equal(unpack_int4(back.q), unpack_int4(w.q)) and torch.equal(back.zero, w.zero)
    assert torch.equal(back.scale, w.scale)
    torch.testing.assert_close(dequantize(m, torch.float32), dequantize(w, torch.float32), rtol=0, atol=0)


def test_chains_keep_the_warps_of_a_launch_near_the_measured_best():
    """Llama-2-7B's layers (wqkv, wo, w13; w2 has wo's rows) take the counts measured fastest on an H100, or
    within 10% of it: at 1-16 rows of x (two tiles a program past 8) 4, 8 and 2, at 32 rows 2, 4 and 1; at
    group 64 (one tile a program) 16 rows take 2, 4 and 1. No count leaves 1-8, and a wider weight or more
    rows never get more warps a tile."""
    shapes = (12288, 4096, 22016)
    assert [chains_for(n) for n in shapes] == [chains_for(n, 16) for n in shapes] == [4, 8, 2]
    assert [chains_for(n, 32) for n in shapes] == [2, 4, 1]
    assert [chains_for(n, 16, 64) for n in shapes] == [2, 4, 1]
    assert chains_for(16) == 8 and chains_for(16 * 10**6) == 1
    counts = [chains_for(16 * tiles) for tiles in range(1, 4000, 7)]
    assert counts == sorted(counts, reverse=True)
    by_rows = [chains_for(4096, rows) for rows in range(1, 200, 3)]
    assert by_rows == sorted(by_rows, reverse=True) and set(by_rows) <= set(CHAINS)


def test_what_fits_and_what_is_not_saved():
    assert fits(16, 256, 64) and not fits(16, 256, 32) and not fits(24, 256, 64)  # 2 k-steps a group; 24 rows
    with pytest.raises(InputError, match="tiles of 16"):
        to_mma(quantize_int4(torch.randn(24, 256), 64))
    with pytest.raises(InputError, match="3 warps"):
        to_mma(quantize_int4(torch.randn(16, 256), 64), 3)
    params = {"a": quantize_int4(torch.randn(32, 512).bfloat16(), 128), "odd": quantize_int4(torch.randn(24, 256), 64),
              "tok_embeddings.weight": quantize_int4(torch.randn(16, 128), 64), "norm.weight": torch.ones(8)}
    out = for_mma(params)
    assert isinstance(out["a"], Int4MmaWeight) and out["a"].words.shape[2] == 8 * 128  # 2 tiles: 8 warps a tile
    assert out["odd"] is params["odd"] and out["tok_embeddings.weight"] is params["tok_embeddings.weight"]
    with pytest.raises(InputError, match=r"a is in a run-time layout \(Int4MmaWeight\).*mma.for_mma"):
        to_tensors(out)


def test_a_forward_in_the_mma_layout_equals_the_natural_one(small_fused_model):
    """On a GPU one and two rows (of the batch's last position) run the tensor-core kernel, seven the
    dequantised product; on the CPU every one dequantises."""
    params, cfg, tokens = small_fused_model
    quantized = quantize(params, "int4", output=True, group_size=64)
    mma = for_mma(quantized)
    assert all(isinstance(mma[k], Int4MmaWeight) for k, v in quantized.items()
               if isinstance(v, Int4Weight) and k != "tok_embeddings.weight")
    expected, _ = lf.forward(quantized, tokens, cfg=cfg)
    got, _ = lf.forward(mma, tokens, cfg=cfg)
    torch.testing.assert_close(got, expected, atol=5e-2, rtol=5e-2)
    for rows in (tokens[:1, :1], tokens[:, :1]):
        expected, _ = lf.forward(quantized, rows, cfg=cfg)
        got, _ = lf.forward(mma, rows, cfg=cfg)
        torch.testing.assert_close(got, expected, atol=5e-2, rtol=5e-2)
