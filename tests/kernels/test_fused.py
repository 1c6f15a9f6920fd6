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


@given(seeds(), st.integers(1, 3), st.integers(1, 4), st.integers(1, 2), st.sampled_from([1, 2, 4]),
       st.sampled_from([4, 16, 64, 128]), st.sampled_from(DTYPES), st.data())
def test_rope_write_rotates_q_and_writes_the_cache(seed, b, t, hkv, group, d, dtype, data):
    """RoPE on q and k from the fused projection's strided views and the cache write at ragged
    positions: q and the written cache rows equal the reference's bit for bit (same fp32 formula and
    the same roundings), and nothing else in the cache changes."""
    import llamafn as lf
    from llamafn.model.rope import rope_angles

    h = hkv * group
    cfg = lf.ModelConfig(dim=h * d, n_layers=1, n_heads=h, n_kv_heads=hkv, vocab_size=8, hidden_dim=8, max_seq_len=32)
    qkv = randn(seed, b, t, (h + 2 * hkv) * d, dtype=dtype)
    q, k, v = qkv.split([h * d, hkv * d, hkv * d], dim=-1)
    q, k, v = q.view(b, t, h, d), k.view(b, t, hkv, d), v.view(b, t, hkv, d)
    starts = torch.tensor(data.draw(st.lists(st.integers(0, 12), min_size=b, max_size=b)), device=DEVICE)
    pos = starts[:, None] + torch.arange(t, device=DEVICE)[None]                 # (B, T)
    cos, sin = rope_angles(pos, cfg)
    caches = [lf.init_cache(cfg, b, 16, dtype=dtype, device=DEVICE) for _ in range(2)]
    for c in caches:
        c.k[0].fill_(7.0)
    q_ref, ref = get("rope_write", "reference")(q, k, v, cos, sin, caches[0], 0, pos)
    q_out, out = get("rope_write", "triton")(q, k, v, cos, sin, caches[1], 0, pos)
    assert q_out.shape == (b, h, t, d)
    torch.testing.assert_close(q_out, q_ref, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(out.k[0], ref.k[0], atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(out.v[0], ref.v[0], atol=0, rtol=0)


def test_rope_write_into_an_int8_cache_is_the_reference_write():
    """The kernel writes float caches; an int8 cache is quantised by the reference path, so the triton
    kernel set gives the same cache and q with either."""
    import llamafn as lf
    from llamafn.model.rope import rope_angles

    cfg = lf.ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=8, hidden_dim=8, max_seq_len=32)
    q, k, v = (randn(seed, 2, 3, heads, 8, dtype=torch.float32) for seed, heads in ((0, 4), (1, 2), (2, 2)))
    pos = torch.tensor([[0, 1, 2], [4, 5, 6]], device=DEVICE)
    cos, sin = rope_angles(pos, cfg)
    caches = [lf.init_cache(cfg, 2, 8, dtype=torch.int8, device=DEVICE) for _ in range(2)]
    q_ref, ref = get("rope_write", "reference")(q, k, v, cos, sin, caches[0], 0, pos)
    q_out, out = get("rope_write", "triton")(q, k, v, cos, sin, caches[1], 0, pos)
    assert torch.equal(q_out, q_ref) and all(torch.equal(a, b) for a, b in zip(lf.cache.tensors(out), lf.cache.tensors(ref)))


@given(st.integers(1, 3), st.integers(1, 5), st.sampled_from([4, 64, 128]), st.integers(0, 200_000),
       st.sampled_from([1e4, 5e5]))
def test_step_positions_kernel_gives_the_reference_angles(b, t, d, start, theta):
    """Positions copied through and cos/sin within an fp32 rounding of torch's, out to 200k positions
    (full-range argument reduction: angles up to 2e5 radians)."""
    import llamafn as lf
    from llamafn.model.rope import inv_frequencies

    cfg = lf.ModelConfig(dim=2 * d, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=8, hidden_dim=8, rope_theta=theta)
    pos = (start + torch.arange(b * t, device=DEVICE)).view(b, t)
    inv_freq = inv_frequencies(cfg, DEVICE)
    expected = get("step_positions", "reference")(pos, inv_freq)
    got = get("step_positions", "triton")(pos, inv_freq)
    assert torch.equal(got[0], pos) and got[0].dtype == pos.dtype
    for out, ref in zip(got[1:], expected[1:]):
        assert out.shape == ref.shape == (b, t, d // 2) and out.dtype == torch.float32
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)
