"""int4 weights in tinygemm's layout (llamafn.quant.tinygemm) against the Int4Weight they came from: the
same matrix up to the bf16 rounding of tinygemm's scales and zeros, through `linear`, `dequantize`
and a whole forward. On the CPU through PyTorch's CPU tinygemm; on a GPU through the CUDA kernel.

Tolerance: tinygemm keeps zero = (8 - z) * scale in bf16 (8 bits of mantissa) and computes in bf16, so
a weight may move by 2^-8 of (|w| + |zero|) and a product by the bf16 rounding of its terms."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import llamafn as lf
from llamafn.errors import InputError
from llamafn.quant import Int4TinyGemmWeight, Int4Weight, dequantize, for_tinygemm, linear, quantize, to_tensors
from llamafn.quant.formats import GROUP_SIZES, quantize_int4
from llamafn.quant.tinygemm import available, fits, to_tinygemm
from tests.strategies import seeds

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not available(torch.device(DEVICE)), reason="this PyTorch has no tinygemm int4 kernel")


def weight(seed: int, n: int, k: int, group: int) -> Int4Weight:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).to(DEVICE, torch.bfloat16)
    return quantize_int4(w, group)


@given(seeds(), st.integers(1, 3).map(lambda h: 16 * h), st.integers(1, 3).map(lambda h: 256 * h),
       st.sampled_from(GROUP_SIZES), st.integers(1, 9))
def test_the_tinygemm_layout_is_the_same_matrix(seed, n, k, group, m):
    q = weight(seed, n, k, group)
    t = to_tinygemm(q)
    assert isinstance(t, Int4TinyGemmWeight) and t.shape == q.shape and t.group_size == q.group_size
    dense = dequantize(q, torch.float32)                                           # (N, K)
    zeros = (8 - q.zero.float()) * q.scale.float()
    bound = 2 ** -8 * (dense.abs().max() + zeros.abs().max())
    torch.testing.assert_close(dequantize(t, torch.float32), dense, atol=bound.item(), rtol=0)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE, torch.bfloat16)
    reference = x.float() @ dense.T
    out = linear(x, t)
    assert out.shape == (m, n) and out.dtype == x.dtype
    torch.testing.assert_close(out.float(), reference, atol=3e-2 * reference.abs().max().item(), rtol=0)


def test_weights_that_do_not_fit_and_the_embedding_table_stay_int4():
    params = {"a": weight(0, 16, 128, 64), "b": weight(1, 24, 128, 64), "c": weight(2, 16, 96, 32),
              "tok_embeddings.weight": weight(3, 16, 128, 64), "norm.weight": torch.ones(8)}
    out = for_tinygemm(params)
    assert isinstance(out["a"], Int4TinyGemmWeight)
    assert out["b"] is params["b"] and out["c"] is params["c"] and not fits(params["b"])
    assert out["tok_embeddings.weight"] is params["tok_embeddings.weight"]          # lookups gather its rows
    with pytest.raises(InputError, match=r"\(24, 128\)"):
        to_tinygemm(params["b"])
    with pytest.raises(InputError, match=r"a is in a run-time layout \(Int4TinyGemmWeight\)"):
        to_tensors(out)


def test_a_forward_in_tinygemm_layout_equals_int4(small_fused_model):
    params, cfg, tokens = small_fused_model
    int4 = quantize(params, "int4", group_size=64)
    tiny = for_tinygemm(int4)
    assert all(isinstance(tiny[k], Int4TinyGemmWeight) for k, v in int4.items() if isinstance(v, Int4Weight))
    expected, _ = lf.forward(int4, tokens, cfg=cfg)
    got, _ = lf.forward(tiny, tokens, cfg=cfg)
    torch.testing.assert_close(got, expected, atol=0.1, rtol=0.05)


@pytest.mark.skipif(DEVICE != "cuda", reason="the compiled decode path is the GPU's")
def test_tinygemm_linear_compiles_fullgraph():
    t = to_tinygemm(weight(0, 256, 512, 128))
    x = torch.randn(1, 512, device=DEVICE, dtype=torch.bfloat16)
    torch.testing.assert_close(torch.compile(linear, fullgraph=True)(x, t), linear(x, t))
