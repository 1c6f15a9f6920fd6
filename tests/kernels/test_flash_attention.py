"""The "triton" attention backend (FlashAttention-2 prefill, flash-decoding) against the reference
formula, in Triton's interpreter on the CPU (float32/float16) and natively on a GPU (bf16 too).

Tolerances: float32 1e-4 absolute (outputs are convex combinations of unit-normal values, so O(1));
float16/bfloat16 the dtype's rounding of the probabilities and the output, 1e-2 / 3e-2."""

import contextlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import llamafn as lf
from llamafn.errors import InputError
from llamafn.kernels import flash_attention as fa
from llamafn.kernels import flash_decode as fd
from llamafn.kernels import get
from llamafn.model.attention import reference_attention
from tests.strategies import seeds

pytestmark = pytest.mark.skipif(fa.triton is None, reason="triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}
EVERY_DECODE_CONFIG = fd.decode_configs                                   # before the fixture below narrows it


@pytest.fixture(autouse=True, scope="module")
def first_config_only_on_a_gpu():
    """On a GPU each cache length a test draws would autotune flash-decoding over every config; here the
    kernels take their first config, and test_every_decode_config checks all of them."""
    if DEVICE != "cuda":
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        prefill, decode = fa.prefill_configs, fd.decode_configs
        mp.setattr(fa, "prefill_configs", lambda: prefill()[:1])
        mp.setattr(fd, "decode_configs", lambda: decode()[:1])
        fa.prefill_tuned.cache_clear()
        fd.decode_tuned.cache_clear()
        yield
    fa.prefill_tuned.cache_clear()
    fd.decode_tuned.cache_clear()


@st.composite
def shapes(draw, max_t: int = 40):
    """(B, H, Hkv, T, S, D): GQA ratios 1/2/4/8, lengths off the block sizes, head dims 8..128."""
    hkv = draw(st.integers(1, 2))
    return (draw(st.integers(1, 3)), hkv * draw(st.sampled_from([1, 2, 4, 8])), hkv, draw(st.integers(1, max_t)),
            draw(st.integers(0, 40)), draw(st.sampled_from([8, 16, 64, 128])))


def tensors(seed, B, H, Hkv, T, S, D, dtype):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g).to(DEVICE, dtype) for shape in ((B, H, T, D), (B, Hkv, S, D), (B, Hkv, S, D))]


def close(out, q, k, v, pos):
    reference = reference_attention(q.float(), k.float(), v.float(), pos)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.float(), reference, atol=TOL[q.dtype], rtol=TOL[q.dtype])


@given(seeds(), shapes(), st.sampled_from(DTYPES))
def test_causal_prefill_without_cache(seed, shape, dtype):
    B, H, Hkv, T, _, D = shape
    q, k, v = tensors(seed, B, H, Hkv, T, T, D, dtype)
    close(fa.triton_attention(q, k, v, None), q, k, v, None)


@contextlib.contextmanager
def splits_drawn(data):
    """Flash-decoding with its own split count, or a drawn one, inside the block (the interpreter's
    policy gives short caches a single split, written directly; a drawn count exercises the merge)."""
    n = data.draw(st.sampled_from([None, 2, 3]), label="n_splits")
    with pytest.MonkeyPatch.context() as mp:
        if n is not None:
            mp.setattr(fd, "decode_splits", lambda *_: n)
        yield


@given(seeds(), shapes(), st.sampled_from(DTYPES), st.data())
def test_with_a_cached_prefix_and_ragged_rows(seed, shape, dtype, data):
    """Queries at positions lengths[b] .. lengths[b] + T - 1 over a cache of T + S slots: chunked prefill
    when T is large, flash-decoding when (H / Hkv) * T is small (1-token queries included)."""
    B, H, Hkv, T, S, D = shape
    q, k, v = tensors(seed, B, H, Hkv, T, T + S, D, dtype)
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, S), min_size=B, max_size=B)), device=DEVICE)
    pos = lengths[:, None] + torch.arange(T, device=DEVICE)[None]                 # (B, T)
    with splits_drawn(data):
        out = fa.triton_attention(q, k, v, pos)
    close(out, q, k, v, pos)


@given(seeds(), shapes(max_t=4), st.sampled_from(DTYPES))
def test_the_prefill_kernel_with_positions_equals_flash_decoding(seed, shape, dtype):
    B, H, Hkv, T, S, D = shape
    q, k, v = tensors(seed, B, H, Hkv, T, T + S, D, dtype)
    pos = (torch.arange(T, device=DEVICE) + S).expand(B, T).int()
    zeros, full = torch.zeros(B, dtype=torch.int32, device=DEVICE), torch.full((B,), T, dtype=torch.int32, device=DEVICE)
    prefill = fa.flash_attention_launch(q, k, v, pos, zeros, full, zeros, full + S, T)
    close(prefill, q, k, v, pos)
    close(fd.flash_decode_launch(q, k, v, pos), q, k, v, pos)


@pytest.mark.parametrize("n_splits", [1, 3, 70])
def test_the_merge_of_many_splits_some_empty(monkeypatch, n_splits):
    """More splits than the merge loads in one step (70 > 64, a 64-key tile each), every split visible
    to the first row and all but the first empty for the second (max -inf, sum 0); and one split, which
    writes the output itself."""
    monkeypatch.setattr(fd, "decode_splits", lambda *_: n_splits)
    q, k, v = tensors(0, 2, 4, 2, 1, 64 * 70, 16, torch.float32)
    pos = torch.tensor([[64 * 70 - 1], [40]], device=DEVICE)
    close(fd.flash_decode_launch(q, k, v, pos), q, k, v, pos)


def test_prefill_lengths_are_tuned_by_power_of_two_buckets():
    assert [fa.length_bucket(n) for n in (0, 1, 16, 17, 1000, 1024, 1025, 16384, 70000)] == \
        [16, 16, 16, 32, 1024, 1024, 2048, 16384, 16384]


def test_the_split_policy_on_a_gpu(monkeypatch):
    """About one program an SM over (row, KV head) pairs, at least MIN_SPLIT_KEYS keys a split: the 7B at
    batch 1 over a 256-key cache is one split (written directly), a 16k GQA cache 17, and a batch whose
    pairs fill the SMs one."""
    monkeypatch.setattr(fd, "INTERPRET", False)
    assert fd.decode_splits(1, 32, 256, 64, 132) == 1
    assert fd.decode_splits(1, 32, 512, 64, 132) == 2
    assert fd.decode_splits(1, 32, 4096, 64, 132) == 5
    assert fd.decode_splits(1, 8, 16384, 64, 132) == 17
    assert fd.decode_splits(8, 32, 4096, 64, 132) == 1


@pytest.mark.skipif(DEVICE != "cuda", reason="the interpreter launches one fixed tile, not the tuner's configs")
@pytest.mark.parametrize("heads", [(8, 2), (4, 4)])
@pytest.mark.parametrize("n_keys", [1000, 200])
def test_every_decode_config(monkeypatch, heads, n_keys):
    """Every autotuning candidate of flash-decoding (the tuner may pick any), GQA and MHA, over cache
    lengths off the tiles: split and merged, and short enough for one split written directly."""
    H, Hkv = heads
    q, k, v = tensors(0, 2, H, Hkv, 1, n_keys, 128, torch.bfloat16)
    pos = torch.tensor([[n_keys - 1], [121]], device=DEVICE)
    for config in EVERY_DECODE_CONFIG():
        monkeypatch.setattr(fd, "decode_configs", lambda: [config])
        fd.decode_tuned.cache_clear()
        close(fd.flash_decode_launch(q, k, v, pos), q, k, v, pos)
    fd.decode_tuned.cache_clear()


@given(seeds(), st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=4),
       st.sampled_from([(2, 1), (4, 2), (4, 4)]), st.sampled_from([16, 64]), st.booleans())
def test_varlen_packed_batches(seed, lens, heads, D, causal):
    """Packed sequences (empty ones and single-row batches included); causal queries sit at the end
    of their keys. Each sequence must equal the reference run on it alone."""
    lens = [(q_len, max(q_len, k_len)) for q_len, k_len in lens]                  # causal needs keys >= queries
    H, Hkv = heads
    g = torch.Generator().manual_seed(seed)
    total_q, total_k = sum(a for a, _ in lens), sum(b for _, b in lens)
    q = torch.randn(total_q, H, D, generator=g).to(DEVICE)
    k, v = (torch.randn(total_k, Hkv, D, generator=g).to(DEVICE) for _ in range(2))
    cu_q = torch.tensor([0] + [a for a, _ in lens], device=DEVICE).cumsum(0)
    cu_k = torch.tensor([0] + [b for _, b in lens], device=DEVICE).cumsum(0)
    out = fa.flash_attention_varlen(q, k, v, cu_q, cu_k, max(a for a, _ in lens), causal=causal)
    assert out.shape == q.shape
    for i, (q_len, k_len) in enumerate(lens):
        if q_len == 0:
            continue
        qi = q[cu_q[i]:cu_q[i + 1]].transpose(0, 1)[None]                         # (1, H, q_len, D)
        ki, vi = (t[cu_k[i]:cu_k[i + 1]].transpose(0, 1)[None] for t in (k, v))
        pos = (torch.arange(q_len, device=DEVICE) + k_len - q_len if causal else torch.full((q_len,), k_len - 1, device=DEVICE))[None]
        expected = reference_attention(qi, ki, vi, pos)[0].transpose(0, 1)
        torch.testing.assert_close(out[cu_q[i]:cu_q[i + 1]], expected, atol=1e-4, rtol=1e-4)


def test_bad_varlen_input_is_named():
    with pytest.raises(InputError, match="flash_attention_varlen"):
        fa.flash_attention_varlen(torch.zeros(4, 3, 16), torch.zeros(4, 2, 16), torch.zeros(4, 2, 16),
                                  torch.tensor([0, 4]), torch.tensor([0, 4]), 4)


def test_stories260k_golden_output_with_the_triton_backend(stories260k, stories260k_golden):
    params, cfg, tok = stories260k
    ids, text = stories260k_golden
    out = lf.generate(params, cfg, [[1]], len(ids) - 1, attention="triton")[0]
    assert [1] + out == ids


@pytest.mark.skipif(DEVICE != "cuda", reason="compiling the triton kernel set needs a GPU")
def test_compiled_decode_with_the_triton_kernel_set_equals_eager():
    """The custom ops (flash attention/decoding, add + norm, SwiGLU, RoPE + cache write) inside one
    fullgraph-compiled forward, prefill and a decode step, against the same calls eager."""
    cfg = lf.ModelConfig(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=512, max_seq_len=64)
    params = lf.init_params(cfg, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16, device=DEVICE)
    tokens = torch.randint(0, 64, (2, 9), device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(0))
    step = torch.compile(lf.forward, fullgraph=True, dynamic=False)
    outs = []
    for fn in (lf.forward, step):
        cache = lf.init_cache(cfg, 2, 32, dtype=torch.bfloat16, device=DEVICE)
        first, cache = fn(params, tokens[:, :8], cache, cfg=cfg, attention="triton")
        last, _ = fn(params, tokens[:, 8:], cache, cfg=cfg, attention="triton")
        outs.append(torch.cat([first, last], dim=1))
    torch.testing.assert_close(outs[1], outs[0], atol=5e-2, rtol=5e-2)
    reference, _ = lf.forward(params, tokens, cfg=cfg, attention="sdpa")
    torch.testing.assert_close(outs[0], reference, atol=1e-1, rtol=1e-1)


def test_the_triton_kernel_set_on_an_int8_cache():
    """A prefill long enough for the prefill kernel (dequantising the cache), then one decode step
    reading it as int8: the triton set equals the sdpa backend."""
    cfg = lf.ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32, hidden_dim=48, max_seq_len=64)
    params = lf.init_params(cfg, generator=torch.Generator().manual_seed(0))
    params = {name: t.to(DEVICE) for name, t in params.items()}
    tokens = torch.randint(0, 32, (2, 40), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    outs = []
    for backend in ("sdpa", "triton"):
        cache = lf.init_cache(cfg, 2, 48, dtype=torch.int8, device=DEVICE)
        prefill, cache = lf.forward(params, tokens, cache, cfg=cfg, attention=backend)
        step, _ = lf.forward(params, tokens[:, -1:], cache, cfg=cfg, attention=backend)
        outs.append((prefill, step))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@given(seeds(), shapes(max_t=3), st.sampled_from(DTYPES), st.data())
def test_flash_decoding_reads_an_int8_cache(seed, shape, dtype, data):
    """int8 keys and values with a scale per position, dequantised in registers: equal to the reference
    over the dequantised rows (the same fp32 product rounded to the query's dtype), ragged rows included."""
    from llamafn.quant import Int8Weight, dequantize, quantize_int8

    B, H, Hkv, T, S, D = shape
    q, k, v = tensors(seed, B, H, Hkv, T, T + S, D, torch.float32)
    (kq, ks), (vq, vs) = quantize_int8(k), quantize_int8(v)
    q = q.to(dtype)
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, S), min_size=B, max_size=B)), device=DEVICE)
    pos = lengths[:, None] + torch.arange(T, device=DEVICE)[None]                 # (B, T)
    with splits_drawn(data):
        out = get("attention_int8", "triton")(q, kq, ks, vq, vs, pos)
    close(out, q, dequantize(Int8Weight(kq, ks), dtype), dequantize(Int8Weight(vq, vs), dtype), pos)
