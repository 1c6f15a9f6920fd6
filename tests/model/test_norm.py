import torch
from hypothesis import given
from hypothesis import strategies as st

from llamafn.model import rms_norm
from tests.strategies import seeds


@given(seeds(), st.floats(1e-2, 1e3), st.integers(1, 64))
def test_rms_norm_is_scale_invariant(seed, scale, dim):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(3, dim, generator=g, dtype=torch.float64), torch.randn(dim, generator=g, dtype=torch.float64)
    torch.testing.assert_close(rms_norm(x * scale, w, 0.0), rms_norm(x, w, 0.0))


@given(seeds(), st.integers(1, 64))
def test_rms_norm_output_has_unit_rms_before_the_weight(seed, dim):
    x = torch.randn(4, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
    y = rms_norm(x, torch.ones(dim, dtype=torch.float64), 0.0)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(4, dtype=torch.float64))


def test_rms_norm_keeps_the_input_dtype_and_computes_in_float32():
    x = torch.randn(2, 8).to(torch.bfloat16)
    y = rms_norm(x, torch.ones(8, dtype=torch.bfloat16), 1e-5)
    assert y.dtype == torch.bfloat16
    expected = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    assert torch.equal(y, expected)
