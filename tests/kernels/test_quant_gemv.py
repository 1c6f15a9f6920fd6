"""The batch-1 GEMV kernels (llamafn.kernels.quant_gemv) against x @ dequantize(w)^T, in Triton's
interpreter on the CPU and natively on a GPU: the activations' layouts, codes at the ends of their
ranges, every autotuning config, the persistent programs' loop and grid."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llamafn.kernels import quant_gemv, quant_matmul
from llamafn.quant.formats import (GROUP_SIZES, Int4Weight, Int8Weight, pack_int4, plane_order, quantize_int4,
                                   quantize_int8)
from tests.kernels.quant_reference import DEVICE, check, inputs
from tests.strategies import seeds

pytestmark = [pytest.mark.skipif(quant_gemv.triton is None, reason="triton is not installed"),
              pytest.mark.usefixtures("quant_kernels_first_config")]
EVERY_GEMV_CONFIG = quant_gemv.gemv_configs                  # before quant_kernels_first_config narrows it


@given(seeds(), st.integers(1, 24).map(lambda h: 8 * h), st.sampled_from(GROUP_SIZES))
def test_gemv_activations_are_laid_out_by_word(seed, k, group):
    """x'[i, w] is x[8w + i] times the power of two the exponent trick needs (int4), the int8 planes are
    x[4w + j] in x's dtype, `plane_order` is their inverse, and the gemv path runs where the words fit."""
    x, w = inputs(seed, 2, 3, k, torch.float32)
    x4, x8 = quant_gemv.int4_gemv_activations(x), quant_gemv.int8_gemv_planes(x)
    assert x4.shape == (2, 8, k // 8) and x8.shape == (2, 4, k // 4) and x8.dtype == x.dtype
    powers = torch.tensor([256.0, 16.0] * 4, device=DEVICE)
    torch.testing.assert_close(x4.transpose(1, 2).reshape(2, k) / powers.repeat(k // 8), x, rtol=0, atol=0)
    torch.testing.assert_close(x8.transpose(1, 2).reshape(2, k), x, rtol=0, atol=0)
    torch.testing.assert_close(plane_order(x8.reshape(2, k)), x, rtol=0, atol=0)
    assert quant_gemv.as_words(quantize_int4(w, group).q) is not None
    assert quant_gemv.as_words(quantize_int4(w, group).q[:, 1:]) is None          # misaligned rows


@given(seeds(), st.integers(1, 40), st.integers(1, 40).map(lambda h: 8 * h), st.sampled_from(GROUP_SIZES))
def test_gemv_extreme_values(seed, n, k, group):
    """Codes drawn over their whole ranges, ends included (int8 -127 and 127, nibbles and zero points 0 and
    15), against the reference: the exponent trick must hold at the ends of the ranges."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, k, generator=g).to(DEVICE)
    G = -(-k // group)
    q8 = Int8Weight(torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8),
                    torch.rand(n, generator=g) + 0.1)
    q4 = Int4Weight(pack_int4(torch.randint(0, 16, (n, k), generator=g)), torch.rand(n, G, generator=g) + 0.1,
                    (torch.randint(0, 2, (n, G), generator=g) * 15).to(torch.uint8))
    q8, q4 = (type(q)(*(f.to(DEVICE) for f in q)) for q in (q8, q4))
    check(quant_matmul.int8_matmul_launch(x, q8.q, q8.scale, use_dot=False), x, q8)
    check(quant_matmul.int4_matmul_launch(x, q4.q, q4.scale, q4.zero, q4.group_size, use_dot=False), x, q4)


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_every_gemv_config(name):
    """Every autotuning candidate of the gemv kernels, launched directly, on rows and words off its tile
    (the tuner may pick any of them on a GPU)."""
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    x, w = inputs(0, 1, 13, 1000, dtype)
    q = quantize_int8(w) if name == "int8" else quantize_int4(w, 128)
    words = quant_gemv.as_words(q.q)
    N, KW = words.shape
    for config in EVERY_GEMV_CONFIG(name, 128):
        out = torch.empty(1, N, dtype=dtype, device=DEVICE)
        launch = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
        if name == "int8":
            xw = quant_gemv.int8_gemv_planes(x)
            quant_gemv.int8_gemv_kernel[quant_gemv.gemv_grid(N, 1, x.device)](
                xw, words, q.scale, out, N, KW, xw.stride(0), words.stride(0), out.stride(0), quant_gemv.MAGIC_INT8,
                **launch)
        else:
            xw = quant_gemv.int4_gemv_activations(x)
            quant_gemv.int4_gemv_kernel[quant_gemv.gemv_grid(N, 1, x.device)](
                xw, words, q.scale, q.zero, out, N, KW, q.scale.shape[1], xw.stride(0), words.stride(0),
                q.scale.stride(0), out.stride(0), quant_gemv.MAGIC_ONE, GROUP=128, **launch)
        check(out, x, q)


@given(seeds(), st.integers(1, 40), st.integers(1, 80).map(lambda w: 4 * w), st.integers(1, 4))
def test_persistent_int8_gemv_loops_over_row_blocks(seed, n, k, programs):
    """PER_SM > 0: fewer programs than row blocks, each looping over every programs-th block (on a GPU
    the tuner's persistent configs start PER_SM programs an SM)."""
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    x, w = inputs(seed, 1, n, k, dtype)
    q = quantize_int8(w)
    words, xw = quant_gemv.as_words(q.q), quant_gemv.int8_gemv_planes(x)
    out = torch.empty(1, n, dtype=dtype, device=DEVICE)
    quant_gemv.int8_gemv_kernel[(programs, 1)](xw, words, q.scale, out, n, k // 4, xw.stride(0), words.stride(0),
                                               out.stride(0), quant_gemv.MAGIC_INT8, BLOCK_N=2, BLOCK_W=16, PER_SM=1)
    check(out, x, q)


def test_gemv_grid_caps_persistent_programs():
    """A program a row block, or PER_SM an SM and at most one a row block (one SM counted off a GPU)."""
    sms = quant_gemv.sm_count(torch.device(DEVICE))
    grid = quant_gemv.gemv_grid(5000, 3, torch.device(DEVICE))
    assert grid({"BLOCK_N": 2, "PER_SM": 0}) == (2500, 3) and grid({"BLOCK_N": 4}) == (1250, 3)
    assert grid({"BLOCK_N": 2, "PER_SM": 8}) == (min(2500, 8 * sms), 3)
    assert quant_gemv.gemv_grid(6, 1, torch.device(DEVICE))({"BLOCK_N": 2, "PER_SM": 16}) == (3, 1)


def test_launch_group_covers_a_single_group():
    assert quant_gemv.launch_group(128) == 128
    assert quant_gemv.launch_group(172) == 256 and quant_gemv.launch_group(10) == 32
