"""The int8/int4 dequantise-matmul Triton kernels against x @ dequantize(w)^T, in Triton's interpreter
on the CPU (float32 and float16 activations; bf16 dots are broken there, DESIGN.md) and natively on a GPU.

Tolerances: float32, 1e-4 relative to the largest output (the kernels accumulate in fp32 in a different
order); float16, the output's own rounding (2^-10 relative) plus the same."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llamafn.kernels import quant_matmul
from llamafn.quant.formats import GROUP_SIZES, dequantize, quantize_int4, quantize_int8
from tests.strategies import seeds

pytestmark = pytest.mark.skipif(quant_matmul.triton is None, reason="triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def check(out: torch.Tensor, x: torch.Tensor, w) -> None:
    reference = x.float() @ dequantize(w, torch.float32).T                        # (M, N)
    assert out.shape == reference.shape and out.dtype == x.dtype
    scale = reference.abs().max().item() + 1e-6
    tol = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}[x.dtype] * scale
    torch.testing.assert_close(out.float(), reference, atol=tol, rtol=0)


def inputs(seed: int, m: int, n: int, k: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g).to(DEVICE, dtype),
            (torch.randn(n, k, generator=g) * k ** -0.5).to(DEVICE, dtype))


def paths():
    """(use_dot, prefetch, rows): the gemv path is for decode's few rows (one program per row: slow in the
    interpreter), with the plain or the prefetching loop."""
    return st.booleans().flatmap(lambda dot: st.tuples(st.just(dot), st.booleans(), st.integers(1, 20 if dot else 3)))


@given(seeds(), paths(), st.integers(1, 40), st.integers(1, 300), st.sampled_from(DTYPES))
def test_int8_kernel(seed, path, n, k, dtype):
    use_dot, prefetch, m = path
    x, w = inputs(seed, m, n, k, dtype)
    q = quantize_int8(w)
    check(quant_matmul.int8_matmul_launch(x, q.q, q.scale, use_dot=use_dot, prefetch=prefetch), x, q)


@given(seeds(), paths(), st.integers(1, 40), st.integers(1, 160).map(lambda h: 2 * h),
       st.sampled_from(GROUP_SIZES), st.sampled_from(DTYPES))
def test_int4_kernel(seed, path, n, k, group, dtype):
    """Lengths off the tile sizes, partial last groups, a single group (group >= K), 1-row and many-row x."""
    use_dot, prefetch, m = path
    x, w = inputs(seed, m, n, k, dtype)
    q = quantize_int4(w, group)
    check(quant_matmul.int4_matmul_launch(x, q.q, q.scale, q.zero, q.group_size, use_dot=use_dot, prefetch=prefetch), x, q)


def test_launch_group_covers_a_single_group():
    assert quant_matmul.launch_group(128) == 128
    assert quant_matmul.launch_group(172) == 256 and quant_matmul.launch_group(10) == 32


@pytest.mark.skipif(DEVICE != "cuda", reason="the custom ops run their kernels on a GPU; the CPU uses dequantize + matmul")
def test_custom_ops_compile_fullgraph():
    from llamafn.quant import linear

    x, w = inputs(0, 1, 256, 512, torch.bfloat16)
    for q in (quantize_int8(w), quantize_int4(w, 64)):
        compiled = torch.compile(linear, fullgraph=True)
        torch.testing.assert_close(compiled(x, q), linear(x, q))
        check(linear(x, q), x, q)
