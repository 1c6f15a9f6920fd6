"""The int8/int4 dequantise-matmul Triton kernels (both paths, through the launchers) against
x @ dequantize(w)^T, in Triton's interpreter on the CPU (float32 and float16 activations; bf16 dots are
broken there, DESIGN.md) and natively on a GPU; tolerances in quant_reference.py. The gemv kernels'
own tests are in test_quant_gemv.py."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llamafn.kernels import quant_matmul
from llamafn.quant.formats import GROUP_SIZES, quantize_int4, quantize_int8
from llamafn.quant.planar import to_planar
from tests.kernels.quant_reference import DEVICE, DTYPES, check, inputs
from tests.strategies import seeds

pytestmark = [pytest.mark.skipif(quant_matmul.triton is None, reason="triton is not installed"),
              pytest.mark.usefixtures("quant_kernels_first_config")]


def paths():
    """(use_dot, rows): the gemv path is for decode's single row (one program a row: slow in the
    interpreter, so at most 3 here); the dot path for more."""
    return st.booleans().flatmap(lambda dot: st.tuples(st.just(dot), st.integers(1, 20 if dot else 3)))


@given(seeds(), paths(), st.integers(1, 40), st.integers(1, 300), st.sampled_from(DTYPES))
def test_int8_kernel(seed, path, n, k, dtype):
    """K off the tile sizes; a K that is not a whole number of int32 words takes the dot path."""
    use_dot, m = path
    x, w = inputs(seed, m, n, k, dtype)
    q = quantize_int8(w)
    check(quant_matmul.int8_matmul_launch(x, q.q, q.scale, use_dot=use_dot), x, q)


@given(seeds(), paths(), st.integers(1, 40), st.integers(1, 75).map(lambda h: 4 * h), st.sampled_from(DTYPES))
def test_int8_kernel_on_a_planar_weight(seed, path, n, k, dtype):
    """A weight stored in the gemv's plane order (Int8GemvWeight) gives the natural weight's product on
    both paths: the gemv reads x as its planes, the dot kernel x permuted to the stored order."""
    use_dot, m = path
    x, w = inputs(seed, m, n, k, dtype)
    q = quantize_int8(w)
    p = to_planar(q)
    check(quant_matmul.int8_matmul_launch(x, p.q, p.scale, planar=True, use_dot=use_dot), x, q)


@given(seeds(), paths(), st.integers(1, 40), st.integers(1, 160).map(lambda h: 2 * h),
       st.sampled_from(GROUP_SIZES), st.sampled_from(DTYPES))
def test_int4_kernel(seed, path, n, k, group, dtype):
    """Lengths off the tile sizes, partial last groups, a single group (group >= K), 1-row and many-row x."""
    use_dot, m = path
    x, w = inputs(seed, m, n, k, dtype)
    q = quantize_int4(w, group)
    check(quant_matmul.int4_matmul_launch(x, q.q, q.scale, q.zero, q.group_size, use_dot=use_dot), x, q)


@given(seeds(), paths(), st.integers(1, 40), st.integers(1, 4), st.sampled_from(GROUP_SIZES), st.sampled_from(DTYPES))
def test_int4_kernel_on_a_planar_weight(seed, path, n, groups, group, dtype):
    """A weight in the gemv's group-plane order (Int4GemvWeight) gives the natural weight's product on both
    paths: the gemv (bf16 x) reads x as it is, the dot kernel (and other dtypes) x permuted to the stored order."""
    use_dot, m = path
    x, w = inputs(seed, m, n, groups * group, dtype)
    q = quantize_int4(w, group)
    p = to_planar(q)
    check(quant_matmul.int4_matmul_launch(x, p.q, p.scale, p.zero, group, planar=True, use_dot=use_dot), x, q)


@pytest.mark.skipif(DEVICE != "cuda", reason="the custom ops run their kernels on a GPU; the CPU uses dequantize + matmul")
def test_custom_ops_compile_fullgraph():
    from llamafn.quant import linear

    x, w = inputs(0, 1, 256, 512, torch.bfloat16)
    for q in (quantize_int8(w), to_planar(quantize_int8(w)), quantize_int4(w, 64), to_planar(quantize_int4(w, 64))):
        compiled = torch.compile(linear, fullgraph=True)
        torch.testing.assert_close(compiled(x, q), linear(x, q))
        check(linear(x, q), x, q)
