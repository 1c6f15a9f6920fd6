"""quantize / dequantize_params as pure params transforms, and the quantised model through the core."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import llamafn as lf
from llamafn.errors import InputError
from llamafn.params import cast, check_params, fuse, init_params, nbytes, unfuse
from llamafn.quant import (Int4Weight, Int8Weight, dequantize_params, from_tensors, is_quantized, quantize,
                           scheme_of, to_tensors)
from tests.strategies import configs, random_tokens, seeds

SCHEMES = [("int8", 128), ("int4", 32), ("int4", 128)]


def even_configs():
    return configs().filter(lambda c: c.hidden_dim % 2 == 0)


@given(even_configs(), seeds(), st.sampled_from(SCHEMES))
def test_only_layer_matrices_are_quantized_by_default(cfg, seed, scheme):
    params = init_params(cfg, generator=torch.Generator().manual_seed(seed))
    q = quantize(params, scheme[0], group_size=scheme[1])
    check_params(q, cfg)
    for key, value in q.items():
        matrix = key.startswith("layers.") and value.__class__ is not torch.Tensor
        assert is_quantized(value) == matrix, key
        if not is_quantized(value):
            assert value is params[key]
    assert scheme_of(q) == scheme[0] and scheme_of(params) is None
    assert nbytes(q) < nbytes(params)


def test_head_and_embeddings_on_request():
    cfg = lf.ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=50, hidden_dim=64, max_seq_len=32)
    params = init_params(cfg, generator=torch.Generator().manual_seed(0))
    q = quantize(params, "int8", output=True)
    assert is_quantized(q["output.weight"]) and not is_quantized(q["tok_embeddings.weight"])
    q = quantize(params, "int4", group_size=32, embeddings=True)
    assert is_quantized(q["tok_embeddings.weight"]) and not is_quantized(q["output.weight"])
    tokens = random_tokens(cfg, (2, 7), 0)
    logits, _ = lf.forward(q, tokens, cfg=cfg)
    reference, _ = lf.forward(dequantize_params(q), tokens, cfg=cfg)
    torch.testing.assert_close(logits, reference)


def test_bad_requests_are_named():
    cfg = lf.ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=50, hidden_dim=64, max_seq_len=32)
    params = init_params(cfg)
    with pytest.raises(InputError, match="scheme 'int3'"):
        quantize(params, "int3")
    with pytest.raises(InputError, match="group_size"):
        quantize(params, "int4", group_size=100)
    with pytest.raises(InputError, match="already quantized"):
        quantize(quantize(params, "int8"), "int4")


@given(even_configs(), seeds(), st.sampled_from(SCHEMES))
def test_quantized_forward_equals_forward_of_the_dequantized_weights(cfg, seed, scheme):
    """linear() on a quantised weight computes exactly x @ dequantize(w)^T (the CPU path), so the
    quantised model is the float model with the rounded weights: cached decode, fused layout and all."""
    params = init_params(cfg, generator=torch.Generator().manual_seed(seed))
    q = quantize(params, scheme[0], group_size=scheme[1])
    tokens = random_tokens(cfg, (2, 6), seed)
    expected, _ = lf.forward(dequantize_params(q), tokens, cfg=cfg)
    got, _ = lf.forward(fuse(q), tokens, cfg=cfg)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    cache = lf.init_cache(cfg, 2, 8)
    first, cache = lf.forward(q, tokens[:, :4], cache, cfg=cfg)
    last, _ = lf.forward(q, tokens[:, 4:], cache, cfg=cfg)
    torch.testing.assert_close(torch.cat([first, last], dim=1), expected, atol=1e-4, rtol=1e-4)


@given(even_configs(), seeds(), st.sampled_from(SCHEMES))
def test_fuse_unfuse_and_storage_layout_round_trip(cfg, seed, scheme):
    q = quantize(init_params(cfg, generator=torch.Generator().manual_seed(seed)), scheme[0], group_size=scheme[1])
    for back in (unfuse(fuse(q), cfg), from_tensors(to_tensors(q))):
        assert back.keys() == q.keys()
        for key, value in q.items():
            assert type(back[key]) is type(value)
            for a, b in zip(back[key] if is_quantized(value) else (back[key],), value if is_quantized(value) else (value,)):
                assert torch.equal(a, b), key
    fused = fuse(q)
    assert isinstance(fused["layers.0.attention.wqkv.weight"], (Int8Weight, Int4Weight))
    check_params(fused, cfg)


def test_cast_keeps_integer_fields():
    cfg = lf.ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=50, hidden_dim=64, max_seq_len=32)
    q = cast(quantize(init_params(cfg), "int4", group_size=32), torch.bfloat16)
    w = q["layers.0.feed_forward.w2.weight"]
    assert w.q.dtype == torch.uint8 and w.zero.dtype == torch.uint8 and w.scale.dtype == torch.bfloat16
    assert q["norm.weight"].dtype == torch.bfloat16
