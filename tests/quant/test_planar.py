"""int8 weights in the GEMV's plane order (llamafn.quant.planar) against the Int8Weight they came from:
the same matrix exactly, the same products through `linear` (the kernels on a GPU, dequantize + matmul
on the CPU) and the same forward; never saved."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import llamafn as lf
from llamafn.errors import InputError
from llamafn.quant import Int8GemvWeight, Int8Weight, dequantize, for_gemv, linear, quantize, scheme_of, to_tensors
from llamafn.quant.formats import quantize_int8
from llamafn.quant.planar import fits, to_planar
from tests.strategies import seeds

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.usefixtures("quant_kernels_first_config")


def weight(seed: int, n: int, k: int) -> Int8Weight:
    return quantize_int8(torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).to(DEVICE, torch.bfloat16))


@given(seeds(), st.integers(1, 40), st.integers(1, 64).map(lambda h: 4 * h), st.integers(1, 9))
def test_the_planar_layout_is_the_same_matrix(seed, n, k, m):
    q = weight(seed, n, k)
    p = to_planar(q)
    assert isinstance(p, Int8GemvWeight) and p.shape == q.shape and p.dtype == q.dtype
    assert torch.equal(p.q.view(n, k // 4, 4).transpose(1, 2).reshape(n, k), q.q)   # column 4w + j: input j K/4 + w
    torch.testing.assert_close(dequantize(p, torch.float32), dequantize(q, torch.float32), rtol=0, atol=0)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE, torch.bfloat16)
    reference = linear(x, q).float()
    out = linear(x, p)
    assert out.shape == (m, n) and out.dtype == x.dtype
    torch.testing.assert_close(out.float(), reference, atol=1e-2 * reference.abs().max().item(), rtol=0)


def test_weights_that_do_not_fit_and_the_embedding_table_stay_natural():
    params = {"a": weight(0, 16, 128), "b": weight(1, 8, 6), "tok_embeddings.weight": weight(2, 16, 128),
              "norm.weight": torch.ones(8)}
    out = for_gemv(params)
    assert isinstance(out["a"], Int8GemvWeight) and scheme_of(out) == "int8"
    assert out["b"] is params["b"] and not fits(params["b"])
    assert out["tok_embeddings.weight"] is params["tok_embeddings.weight"]          # lookups use rows as stored
    with pytest.raises(InputError, match=r"\(8, 6\)"):
        to_planar(params["b"])
    with pytest.raises(InputError, match=r"a is in a run-time layout \(Int8GemvWeight\)"):
        to_tensors(out)


def test_a_forward_in_planar_layout_equals_int8(small_fused_model):
    params, cfg, tokens = small_fused_model
    int8 = quantize(params, "int8", output=True)
    planar = for_gemv(int8)
    assert all(isinstance(planar[k], Int8GemvWeight) for k, v in int8.items()
               if isinstance(v, Int8Weight) and k != "tok_embeddings.weight")
    expected, _ = lf.forward(int8, tokens, cfg=cfg)
    got, _ = lf.forward(planar, tokens, cfg=cfg)
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
    one, _ = lf.forward(planar, tokens[:1, :1], cfg=cfg)                            # one row: the gemv on a GPU
    torch.testing.assert_close(one, expected[:1, :1], atol=2e-2, rtol=2e-2)
