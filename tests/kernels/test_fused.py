"""The fused elementwise Triton kernels (residual add + RMSNorm, SwiGLU) against their eager
references, in Triton's interpreter on the CPU and natively on a GPU. They round where the references
round, so float32 agrees to 1e-5 and float16/bfloat16 to one unit in the last place."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llamafn.kernels import fused, get, get_or_reference
from tests.strategies import seeds

pytestmark = pytest.mark.skipif(fused.triton is None, reason="triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def randn(seed: int, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


@given(seeds(), st.integers(1, 3), st.integers(1, 5), st.integers(1, 300), st.sampled_from(DTYPES))
def test_add_rms_norm(seed, b, t, dim, dtype):
    x, delta, w = randn(seed, b, t, dim, dtype=dtype), randn(seed + 1, b, t, dim, dtype=dtype), randn(seed + 2, dim, dtype=dtype)
    y, h = get("add_rms_norm", "triton")(x, delta, w, 1e-5)
    y_ref, h_ref = get("add_rms_norm", "reference")(x, delta, w, 1e-5)
    assert y.dtype == y_ref.dtype and h.shape == h_ref.shape
    torch.testing.assert_close(h, h_ref, atol=0, rtol=0)
    torch.testing.assert_close(y, y_ref, atol=TOL[dtype] * 4, rtol=TOL[dtype])


@given(seeds(), st.integers(1, 3), st.integers(1, 5), st.integers(1, 200), st.sampled_from(DTYPES))
def test_swiglu_reads_the_halves_of_the_fused_projection_in_place(seed, b, t, hidden, dtype):
    gate_up = randn(seed, b, t, 2 * hidden, dtype=dtype) * 4
    gate, up = gate_up.chunk(2, dim=-1)                                      # strided views, as feed_forward makes them
    out = get("swiglu", "triton")(gate, up)
    torch.testing.assert_close(out, get("swiglu", "reference")(gate, up), atol=TOL[dtype], rtol=TOL[dtype])


def test_a_kernel_set_without_an_op_falls_back_to_the_reference():
    assert get_or_reference("swiglu", "sdpa") is get("swiglu", "reference")
    assert get_or_reference("swiglu", "triton") is get("swiglu", "triton")
