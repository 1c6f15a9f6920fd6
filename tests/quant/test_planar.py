"""int8 and int4 weights in their GEMV's plane orders (llamafn.quant.planar) against the weights they came
from: the same matrix exactly, the same products through `linear` (the kernels on a GPU, dequantize +
matmul on the CPU) and the same forward, the decode GEMV of the fused wqkv with RoPE and the cache write
in its epilogue; never saved."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import llamafn as lf
from llamafn.errors import InputError
from llamafn.kernels import get, quant_gemv
from llamafn.model.attention import step_rope
from llamafn.quant import (Int4GemvWeight, Int4Weight, Int8GemvWeight, Int8Weight, dequantize, for_gemv, linear,
                           quantize, scheme_of, to_tensors)
from llamafn.quant.formats import GROUP_SIZES, group_natural_order, quantize_int4, quantize_int8, unpack_int4
from llamafn.quant.linear import fuses_rope_write
from llamafn.quant.planar import fits, to_planar
from tests.kernels.quant_reference import check
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


@given(seeds(), st.integers(1, 40), st.integers(1, 4), st.sampled_from(GROUP_SIZES), st.integers(1, 5))
def test_the_int4_group_plane_layout_is_the_same_matrix(seed, n, groups, group, m):
    """Position 8w + 4h + j of a group holds its column j group/4 + 2w + h (nibbles j and j + 4 of word w
    against the bf16 pair w of plane j), with scales and zero points unchanged."""
    k = groups * group
    q = quantize_int4(torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).to(DEVICE, torch.bfloat16),
                      group)
    p = to_planar(q)
    assert isinstance(p, Int4GemvWeight) and p.shape == q.shape and p.group_size == group
    stored, codes = unpack_int4(p.q).view(n, groups, group), unpack_int4(q.q).view(n, groups, group)
    w, h, j = torch.meshgrid(torch.arange(group // 8), torch.arange(2), torch.arange(4), indexing="ij")
    assert torch.equal(stored[:, :, (8 * w + 4 * h + j).flatten()], codes[:, :, (j * group // 4 + 2 * w + h).flatten()])
    assert torch.equal(group_natural_order(unpack_int4(p.q), group), unpack_int4(q.q))
    torch.testing.assert_close(dequantize(p, torch.float32), dequantize(q, torch.float32), rtol=0, atol=0)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE, torch.bfloat16)
    check(linear(x, p), x, q)


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
    int4 = {"whole": quantize_int4(torch.randn(8, 256), 128), "partial": quantize_int4(torch.randn(8, 200), 128)}
    out = for_gemv(int4)
    assert isinstance(out["whole"], Int4GemvWeight) and out["partial"] is int4["partial"]
    with pytest.raises(InputError, match=r"\(8, 200\) does not fit the GEMV's planes \(whole groups of 128\)"):
        to_planar(int4["partial"])
    with pytest.raises(InputError, match=r"whole is in a run-time layout \(Int4GemvWeight\)"):
        to_tensors(out)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_a_forward_in_planar_layout_equals_the_natural_one(small_fused_model, scheme):
    params, cfg, tokens = small_fused_model
    quantized = quantize(params, scheme, output=True, group_size=32)
    planar = for_gemv(quantized)
    assert all(isinstance(planar[k], (Int8GemvWeight, Int4GemvWeight)) for k, v in quantized.items()
               if isinstance(v, (Int8Weight, Int4Weight)) and k != "tok_embeddings.weight")
    expected, _ = lf.forward(quantized, tokens, cfg=cfg)
    got, _ = lf.forward(planar, tokens, cfg=cfg)
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
    one, _ = lf.forward(planar, tokens[:1, :1], cfg=cfg)                            # one row: the gemv on a GPU
    # on a GPU the int4 gemv rounds products and 4-term sums to bf16 within each word, and the two layouts
    # put different columns in a word (on the CPU both dequantise)
    tol = 2e-2 if scheme == "int8" else 5e-2
    torch.testing.assert_close(one, expected[:1, :1], atol=tol, rtol=tol)


@pytest.mark.skipif(quant_gemv.triton is None, reason="triton is not installed")
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_the_triton_qkv_rope_write_fuses_the_decode_gemv(small_fused_model, scheme):
    """The triton kernel set's fused wqkv product of a one-token step in planar layout (the GEMV rotating q
    and k and writing the cache in its epilogue) gives the reference's q and cache; with two tokens, or a
    natural-order weight, it is the reference's product with the triton rope_write."""
    params, cfg, _ = small_fused_model
    w = for_gemv(quantize(params, scheme, group_size=32))["layers.0.attention.wqkv.weight"]
    natural = quantize(params, scheme, group_size=32)["layers.0.attention.wqkv.weight"]
    fused_op, reference = get("qkv_rope_write", "triton"), get("qkv_rope_write", "reference")
    dtype = torch.bfloat16 if DEVICE == "cuda" or scheme == "int4" else torch.float32
    g = torch.Generator().manual_seed(2)
    for T, weight_ in ((1, w), (2, w), (1, natural)):
        x = torch.randn(1, T, cfg.dim, generator=g).to(DEVICE, dtype)
        cache = lf.init_cache(cfg, 1, 16, dtype=dtype, device=DEVICE)._replace(lengths=torch.tensor([3], device=DEVICE))
        rope = step_rope(cache, 1, T, torch.device(DEVICE), cfg=cfg)
        assert fuses_rope_write(x, weight_, cache) == (T == 1 and weight_ is w)
        q, got = fused_op(x, weight_, rope[1], rope[2], cache, 0, rope[0], cfg.n_heads)
        q, k, v = q.clone(), got.k[0].clone(), got.v[0].clone()
        expected = lf.init_cache(cfg, 1, 16, dtype=dtype, device=DEVICE)._replace(lengths=cache.lengths)
        q_ref, expected = reference(x, weight_, rope[1], rope[2], expected, 0, rope[0], cfg.n_heads)
        tol = 5e-2 if dtype == torch.bfloat16 else 1e-4
        torch.testing.assert_close(q, q_ref, atol=tol, rtol=tol)
        torch.testing.assert_close(k, expected.k[0], atol=tol, rtol=tol)
        torch.testing.assert_close(v, expected.v[0], atol=tol, rtol=tol)
        assert k[:, :, 3:3 + T].abs().sum() > 0 and k[:, :, 3 + T:].abs().sum() == 0
