"""The batch-1 GEMV kernels (llamafn.kernels.quant_gemv) against x @ dequantize(w)^T, in Triton's
interpreter on the CPU and natively on a GPU: the activations' layouts, codes at the ends of their
ranges, every autotuning config, the persistent programs' loop and grid, the "rope" epilogue. The int4
kernel's packed bf16 PTX runs only on a GPU; in the interpreter its fp32 twin (ASM=False) checks the
layouts and tiles."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llamafn.config import ModelConfig
from llamafn.errors import InputError
from llamafn.kernels import fused, quant_gemv, quant_matmul
from llamafn.model.rope import inv_frequencies, step_positions
from llamafn.quant.formats import (GROUP_SIZES, Int4Weight, Int8Weight, group_plane_order, pack_int4, plane_order,
                                   quantize_int4, quantize_int8)
from llamafn.quant.planar import to_planar
from tests.kernels.quant_reference import DEVICE, check, inputs
from tests.strategies import seeds

pytestmark = [pytest.mark.skipif(quant_gemv.triton is None, reason="triton is not installed"),
              pytest.mark.usefixtures("quant_kernels_first_config")]
EVERY_GEMV_CONFIG = quant_gemv.gemv_configs                  # before quant_kernels_first_config narrows it


@given(seeds(), st.integers(1, 24).map(lambda h: 8 * h), st.sampled_from(GROUP_SIZES))
def test_gemv_activations_are_laid_out_by_word(seed, k, group):
    """The int8 planes are x[4w + j] in x's dtype and `plane_order` is their inverse; the int4 pairs put x's
    columns where a weight in group-plane order has them; the gemv path runs where the words fit."""
    x, w = inputs(seed, 2, 3, k, torch.float32)
    x8 = quant_gemv.int8_gemv_planes(x)
    assert x8.shape == (2, 4, k // 4) and x8.dtype == x.dtype
    torch.testing.assert_close(x8.transpose(1, 2).reshape(2, k), x, rtol=0, atol=0)
    torch.testing.assert_close(plane_order(x8.reshape(2, k)), x, rtol=0, atol=0)
    if k % group == 0:
        xb = x.bfloat16()
        pairs = quant_gemv.int4_gemv_pairs(xb, group)
        assert pairs.shape == (2, k // 2) and pairs.dtype == torch.int32
        torch.testing.assert_close(group_plane_order(pairs.view(torch.bfloat16), group), xb, rtol=0, atol=0)
    assert quant_gemv.as_words(quantize_int4(w, group).q) is not None
    assert quant_gemv.as_words(quantize_int4(w, group).q[:, 1:]) is None          # misaligned rows


def int4_codes(g: torch.Generator, n: int, k: int, group: int) -> Int4Weight:
    """Nibbles over their whole range, zero points at the ends (0 and 15), scales in [0.1, 1.1)."""
    G = -(-k // group)
    return Int4Weight(pack_int4(torch.randint(0, 16, (n, k), generator=g)), torch.rand(n, G, generator=g) + 0.1,
                      (torch.randint(0, 2, (n, G), generator=g) * 15).to(torch.uint8))


@given(seeds(), st.integers(1, 40), st.integers(1, 40).map(lambda h: 8 * h))
def test_gemv_extreme_values(seed, n, k):
    """int8 codes drawn over their whole range, -127 and 127 included, against the reference: the exponent
    trick must hold at the ends of the range (int4's ends: test_int4_gemv)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, k, generator=g).to(DEVICE)
    q8 = Int8Weight(torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8),
                    torch.rand(n, generator=g) + 0.1)
    q8 = Int8Weight(*(f.to(DEVICE) for f in q8))
    check(quant_matmul.int8_matmul_launch(x, q8.q, q8.scale, use_dot=False), x, q8)


@given(seeds(), st.integers(1, 40), st.integers(1, 6), st.sampled_from(GROUP_SIZES), st.booleans())
def test_int4_gemv(seed, n, groups, group, planar):
    """bf16 x (the gemv's dtype; no tl.dot, so the interpreter runs it) against codes over their whole
    range, on a natural weight (x permuted to pairs) and on one in group-plane order (x as it is)."""
    g = torch.Generator().manual_seed(seed)
    k = groups * group
    x = (torch.randn(1, k, generator=g) * 4).to(DEVICE, torch.bfloat16)
    q = Int4Weight(*(f.to(DEVICE) for f in int4_codes(g, n, k, group)))
    w = to_planar(q) if planar else q
    check(quant_matmul.int4_matmul_launch(x, w.q, w.scale, w.zero, group, planar=planar, use_dot=False), x, q)


@pytest.mark.parametrize("name", ["int8", "int4"])
def test_every_gemv_config(name):
    """Every autotuning candidate of the gemv kernels, launched directly, on rows and words off its tile
    (the tuner may pick any of them on a GPU)."""
    dtype = torch.bfloat16 if DEVICE == "cuda" or name == "int4" else torch.float32
    x, w = inputs(0, 1, 13, 1000 if name == "int8" else 1024, dtype)
    q = quantize_int8(w) if name == "int8" else quantize_int4(w, 128)
    words = quant_gemv.as_words(q.q)
    N, KW = words.shape
    for config in EVERY_GEMV_CONFIG(name, 128):
        out, epilogue, const = quant_gemv.epilogue_launch(1, N, None, dtype, torch.device(DEVICE))
        launch = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages, **const)
        if name == "int8":
            xw = quant_gemv.int8_gemv_planes(x)
            quant_gemv.int8_gemv_kernel[quant_gemv.gemv_grid(N, 1, x.device)](
                xw, words, q.scale, out, N, KW, xw.stride(0), words.stride(0), out.stride(0), quant_gemv.MAGIC_INT8,
                *epilogue, PDL=False, **launch)
        else:
            pairs = quant_gemv.int4_gemv_pairs(x, 128)
            quant_gemv.int4_gemv_kernel[quant_gemv.gemv_grid(N, 1, x.device)](
                pairs, words, q.scale, q.zero, out, N, q.scale.shape[1], pairs.stride(0), words.stride(0),
                q.scale.stride(0), out.stride(0), *epilogue, GROUP=128, PDL=False, **dict(launch, ASM=DEVICE == "cuda"))
        check(out, x, q)


@given(seeds(), st.integers(1, 40), st.integers(1, 80).map(lambda w: 4 * w), st.integers(1, 4))
def test_persistent_int8_gemv_loops_over_row_blocks(seed, n, k, programs):
    """PER_SM > 0: fewer programs than row blocks, each looping over every programs-th block (on a GPU
    the tuner's persistent configs start PER_SM programs an SM)."""
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    x, w = inputs(seed, 1, n, k, dtype)
    q = quantize_int8(w)
    words, xw = quant_gemv.as_words(q.q), quant_gemv.int8_gemv_planes(x)
    out, epilogue, const = quant_gemv.epilogue_launch(1, n, None, dtype, torch.device(DEVICE))
    quant_gemv.int8_gemv_kernel[(programs, 1)](xw, words, q.scale, out, n, k // 4, xw.stride(0), words.stride(0),
                                               out.stride(0), quant_gemv.MAGIC_INT8, *epilogue, BLOCK_N=2, BLOCK_W=16,
                                               PER_SM=1, PDL=False, **const)
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


@given(seeds(), st.sampled_from(["int8", "int4"]), st.integers(1, 3), st.sampled_from([1, 2, 4]),
       st.sampled_from([8, 16, 32]), st.integers(0, 5))
def test_rope_epilogue_equals_the_gemv_then_rope_write(seed, name, n_kv_heads, group, head_dim, pos):
    """The fused wqkv's GEMV rotating q and k and writing k and v into the cache in its epilogue gives, bit
    for bit, what the plain GEMV then the rope_write kernel give; the cache changes at the position only."""
    g = torch.Generator().manual_seed(seed)
    H, K, S = n_kv_heads * group, 64, 6
    dtype = torch.bfloat16 if DEVICE == "cuda" or name == "int4" else torch.float32
    x, w = inputs(seed, 1, (H + 2 * n_kv_heads) * head_dim, K, dtype)
    planar = to_planar(quantize_int8(w) if name == "int8" else quantize_int4(w, 32))
    zero, group_size = (None, 0) if name == "int8" else (planar.zero, 32)
    positions = torch.tensor([[pos]], device=DEVICE)
    cfg = ModelConfig(dim=H * head_dim, n_layers=1, n_heads=H, n_kv_heads=n_kv_heads, vocab_size=8, hidden_dim=8)
    _, cos, sin = step_positions(positions, inv_frequencies(cfg, DEVICE))
    cache_k, cache_v = (torch.randn(1, n_kv_heads, S, head_dim, generator=g).to(DEVICE, dtype) for _ in range(2))
    before = cache_k.clone()
    fused_k, fused_v = cache_k.clone(), cache_v.clone()
    q = quant_matmul.gemv_rope_write_launch(x, planar.q, planar.scale, zero, group_size, cos, sin, positions,
                                            fused_k, fused_v, H)
    if name == "int8":
        qkv = quant_matmul.int8_matmul_launch(x, planar.q, planar.scale, planar=True, use_dot=False)
    else:
        qkv = quant_matmul.int4_matmul_launch(x, planar.q, planar.scale, planar.zero, 32, planar=True, use_dot=False)
    qkv = qkv.view(1, 1, H + 2 * n_kv_heads, head_dim)
    q_ref = fused.rope_write_launch(qkv[:, :, :H], qkv[:, :, H:H + n_kv_heads], qkv[:, :, H + n_kv_heads:], cos, sin,
                                    cache_k, cache_v, positions)
    assert q.shape == (1, H * head_dim)
    torch.testing.assert_close(q.view(1, H, 1, head_dim), q_ref, rtol=0, atol=0)
    torch.testing.assert_close(fused_k, cache_k, rtol=0, atol=0)
    torch.testing.assert_close(fused_v, cache_v, rtol=0, atol=0)
    others = torch.arange(S, device=DEVICE) != pos
    torch.testing.assert_close(fused_k[:, :, others], before[:, :, others], rtol=0, atol=0)


def test_rope_epilogue_needs_k_and_v_of_one_layout():
    """K and V are written at the same offsets, so caches of different strides are refused by name."""
    cos = torch.zeros(1, 1, 8)
    cache_k = torch.zeros(1, 2, 6, 16)
    cache_v = torch.zeros(1, 2, 16, 6).transpose(-1, -2)                          # (1, 2, 6, 16), other strides
    rope = quant_gemv.RopeWrite(cos, cos, torch.zeros(1, 1, dtype=torch.int64), cache_k, cache_v, 4)
    with pytest.raises(InputError, match="K and V at the same offsets"):
        quant_gemv.epilogue_launch(1, 128, rope, torch.float32, torch.device("cpu"))
