"""Quantised weight formats: error bounds, packing, group-size recovery, field checks."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llamafn.errors import InputError
from llamafn.quant.formats import (GROUP_SIZES, Int4Weight, Int8Weight, check_weight, dequantize, pack_int4,
                                   quantize_int4, quantize_int8, unpack_int4)
from tests.strategies import seeds

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def weights(seed: int, n: int, k: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, 1, generator=g) * 3 + 0.01                      # rows of very different ranges
    return (torch.randn(n, k, generator=g) * scale).to(dtype)


@given(seeds(), st.integers(1, 9), st.integers(1, 300), st.sampled_from(DTYPES))
def test_int8_error_is_at_most_half_a_step_per_channel(seed, n, k, dtype):
    w = weights(seed, n, k, dtype)
    q = quantize_int8(w)
    assert q.q.dtype == torch.int8 and q.scale.dtype == dtype and q.shape == w.shape
    assert int(q.q.abs().max()) <= 127
    err = (dequantize(q, torch.float32) - w.float()).abs().amax(dim=1)     # (N,)
    assert torch.all(err <= q.scale.float() / 2 * (1 + 1e-6))


@given(seeds(), st.integers(1, 9), st.integers(1, 150).map(lambda h: 2 * h), st.sampled_from(GROUP_SIZES),
       st.sampled_from(DTYPES))
def test_int4_error_is_at_most_half_a_step_per_group(seed, n, k, group, dtype):
    w = weights(seed, n, k, dtype)
    q = quantize_int4(w, group)
    G = -(-k // group)
    assert q.q.shape == (n, k // 2) and q.scale.shape == q.zero.shape == (n, G) and q.shape == w.shape
    assert int(q.zero.max()) <= 15
    assert q.group_size == group or G == 1                                # recovered from the shapes
    per_input = torch.arange(k) // q.group_size
    err = (dequantize(q, torch.float32) - w.float()).abs()
    assert torch.all(err <= q.scale.float()[:, per_input] / 2 * (1 + 1e-6))


@given(st.integers(1, 6), st.integers(1, 40).map(lambda h: 2 * h), seeds())
def test_int4_packing_round_trips(n, k, seed):
    values = torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack_int4(values)
    assert packed.shape == (n, k // 2) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), values)
    assert torch.equal(packed[:, 0] & 0xF, values[:, 0]) and torch.equal(packed[:, 0] >> 4, values[:, 1])


def test_constant_and_zero_rows_are_exact():
    w = torch.zeros(3, 64)
    w[1] = 0.5
    for q in (quantize_int8(w), quantize_int4(w, 32)):
        assert torch.equal(dequantize(q, torch.float32), w)


def test_bad_arguments_are_named():
    with pytest.raises(InputError, match="group_size"):
        quantize_int4(torch.randn(4, 64), 48)
    with pytest.raises(InputError, match="even"):
        quantize_int4(torch.randn(4, 63), 32)


def test_check_weight_names_mismatched_fields():
    q8 = quantize_int8(torch.randn(4, 64))
    check_weight(q8, "w")
    with pytest.raises(InputError, match="w: "):
        check_weight(Int8Weight(q8.q, q8.scale[:3]), "w")
    q4 = quantize_int4(torch.randn(4, 256), 64)
    check_weight(q4, "w")
    with pytest.raises(InputError, match="int4"):
        check_weight(Int4Weight(q4.q, q4.scale, q4.zero[:, :2]), "w")
    with pytest.raises(InputError, match="int4"):
        check_weight(Int4Weight(q4.q[:, :8], q4.scale, q4.zero), "w")
