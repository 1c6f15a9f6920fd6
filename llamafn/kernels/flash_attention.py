"""FlashAttention-2 forward in Triton (Dao 2023, "FlashAttention-2: Faster Attention with Better
Parallelism and Work Partitioning") and the attention backend "triton", which routes decode steps to
flash-decoding (llamafn.kernels.flash_decode).

One kernel serves every prefill layout. Each sequence b has its queries at rows q_start[b] ..
q_start[b] + q_len[b] - 1 and its keys at k_start[b] .. k_start[b] + k_len[b] - 1 of the sequence
axis (plus b times the batch stride), and each query a position: key j of its sequence is visible iff
j <= position (causal) or j < k_len (not causal). That covers
- the padded batch with a dense cache (the model's layout): q_start = k_start = 0, positions from
  `cache.lengths`, so a cached prefix (chunked prefill) and ragged rows need nothing else;
- packed variable-length batches (`cu_seqlens`, batch stride 0): `flash_attention_varlen`.
Per (query block, head) program: K/V tiles stream through SRAM with an online softmax in fp32 (exp2,
the running max and sum rescaled per tile), nothing of size T x S is ever written. GQA/MQA maps query
head h to KV head h // (H / Hkv) without repeating K/V.

Decode (a few query rows a KV head, at most DECODE_MAX_ROWS) is split along the keys instead
(llamafn.kernels.flash_decode).

Scores are cast to fp32 after the scale, so that the loop-carried softmax statistics stay fp32 whatever
type a launcher gives the Python-float scale (inductor, which once launched these kernels, gave fp64).
float32 inputs use IEEE products (`runtime.dot`), not TF32.

Head dims up to 256 (padded to a power of two >= 16). Prefill and decode are one custom op
(`torch.ops.llamafn.flash_attention`) so compiled steps capture them with fullgraph; in Triton's
interpreter (TRITON_INTERPRET=1) the launchers run on CPU tensors.
"""

from __future__ import annotations

import functools
import math

import torch

from ..compile import bucket
from ..errors import InputError
from ..quant.formats import Int8Weight, dequantize
from .flash_decode import block_d, flash_decode_launch
from .registry import register
from .runtime import INTERPRET, kernel_op, launcher, require_triton, triton

if triton is not None:
    import triton.language as tl

    from .flash_decode import attend_tile

    @triton.jit
    def flash_fwd_kernel(Q, K, V, O, POS, Q_START, Q_LEN, K_START, K_LEN, qk_scale,
                         sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot, spb, H, GROUP, D, T_BUCKET,
                         CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """Keys below every row's position (and k_len) stream without masks; the band from there to the
        block's last visible key is masked (FlashAttention-2, section 3.1.1). Causal query blocks run
        last-first, so the longest rows start in the first wave. T_BUCKET (the longest query run, a power
        of two from 16 to 16384) is read by the autotuner only: each bucket of lengths gets its own tile."""
        pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
        if CAUSAL:
            pid_m = tl.num_programs(0) - 1 - pid_m
        b, h = pid_bh // H, pid_bh % H
        hk = h // GROUP
        q_len = tl.load(Q_LEN + b)
        q_start, k_start, k_len = tl.load(Q_START + b), tl.load(K_START + b), tl.load(K_LEN + b)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                                  # (BM,) query rows
        rd = tl.arange(0, BLOCK_D)                                                    # (BD,)
        row_ok = rm < q_len
        q = tl.load(Q + b * sqb + h * sqh + (q_start + rm)[:, None] * sqt + rd[None, :],
                    mask=row_ok[:, None] & (rd[None, :] < D), other=0.0)              # (BM, BD)
        if CAUSAL:
            pos = tl.load(POS + b * spb + q_start + rm, mask=row_ok, other=-1)        # (BM,)
            hi = tl.minimum(tl.max(pos, axis=0) + 1, k_len)
            full = tl.minimum(tl.min(tl.where(row_ok, pos + 1, hi), axis=0), hi)      # keys every row sees
        else:
            pos = tl.zeros((BLOCK_M,), dtype=tl.int32)
            hi = k_len
            full = hi
        full = tl.maximum(full, 0) // BLOCK_N * BLOCK_N
        kv_k, kv_v = b * skb + hk * skh + k_start * skt, b * svb + hk * svh + k_start * svt
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for n0 in range(0, full, BLOCK_N):
            m_i, l_i, acc = attend_tile(q, K, V, K, V, kv_k, kv_v, 0, 0, skt, svt, n0 + tl.arange(0, BLOCK_N), rd, pos,
                                        hi, D, qk_scale, m_i, l_i, acc, CAUSAL=CAUSAL, MASKED=False, QUANT=False)
        for n0 in range(full, hi, BLOCK_N):
            m_i, l_i, acc = attend_tile(q, K, V, K, V, kv_k, kv_v, 0, 0, skt, svt, n0 + tl.arange(0, BLOCK_N), rd, pos,
                                        hi, D, qk_scale, m_i, l_i, acc, CAUSAL=CAUSAL, MASKED=True, QUANT=False)
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(O + b * sob + h * soh + (q_start + rm)[:, None] * sot + rd[None, :], out.to(O.dtype.element_ty),
                 mask=row_ok[:, None] & (rd[None, :] < D))


def flash_attention_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor | None,
                           q_start: torch.Tensor, q_len: torch.Tensor, k_start: torch.Tensor, k_len: torch.Tensor,
                           max_q_len: int, batch_strides: bool = True, causal: bool = True) -> torch.Tensor:
    """The general prefill launcher over (batch, head, sequence, dim)-strided q/k/v (see the module doc).
    q (B, H, T, D) or packed (1, H, total, D) with batch_strides False; likewise k/v with Hkv heads."""
    B = q_len.shape[0]
    H, D, Hkv = q.shape[1], q.shape[3], k.shape[1]
    out = torch.empty_like(q)
    if pos is None:
        pos = torch.zeros(1, 1, dtype=torch.int32, device=q.device)
    stride = (lambda t: t.stride(0)) if batch_strides else (lambda t: 0)
    kernel, fixed = (flash_fwd_kernel, {"BLOCK_M": 16, "BLOCK_N": 16}) if INTERPRET else (prefill_tuned(), {})

    def grid(meta):
        return triton.cdiv(max(max_q_len, 1), meta["BLOCK_M"]), B * H

    launcher(kernel)[grid](
        q, k, v, out, pos, q_start, q_len, k_start, k_len, 1.4426950408889634 / math.sqrt(D),
        stride(q), q.stride(1), q.stride(2), stride(k), k.stride(1), k.stride(2), stride(v), v.stride(1), v.stride(2),
        stride(out), out.stride(1), out.stride(2), pos.stride(0) if batch_strides else 0, H, H // Hkv, D,
        length_bucket(max_q_len), CAUSAL=causal, BLOCK_D=block_d(D), **fixed)
    return out


def prefill_configs() -> list:
    """Tile shapes, warps and pipelining stages for flash_fwd_kernel (Hopper favours 128 x 64 tiles with
    8 warps at head dim 128, larger at 64)."""
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn in ((64, 64), (128, 64), (128, 128), (64, 32)) for w, s in ((4, 3), (8, 3), (8, 4))]


def length_bucket(max_q_len: int) -> int:
    """The autotuner's length class of a prefill: its padding bucket (`compile.bucket`), at most 16384 (a
    tile tuned on a 1k prompt need not be the best at 16k)."""
    return min(16384, bucket(max_q_len))


@functools.cache
def prefill_tuned():
    """flash_fwd_kernel autotuned on a GPU per (head dim, causal, length bucket)."""
    return triton.autotune(prefill_configs(), key=["D", "CAUSAL", "BLOCK_D", "T_BUCKET"])(flash_fwd_kernel)


DECODE_MAX_ROWS = 64


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor | None,
                    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The model's layout: q (B, H, T, D), k/v (B, Hkv, S, D), query positions (B, T) or None (causal, S == T).
    With k_scale / v_scale (B, Hkv, S), k/v are an int8 cache's rows: decode reads them as int8, longer
    query blocks (compute-bound) dequantise them first."""
    B, H, T, _ = q.shape
    if q_pos is not None and (H // k.shape[1]) * T <= DECODE_MAX_ROWS:
        return flash_decode_launch(q, k, v, q_pos, k_scale, v_scale)           # int64 positions, read as they are
    if k_scale is not None:
        k, v = dequantize(Int8Weight(k, k_scale), q.dtype), dequantize(Int8Weight(v, v_scale), q.dtype)
    zeros = torch.zeros(B, dtype=torch.int32, device=q.device)
    if q_pos is None:
        q_pos = torch.arange(T, dtype=torch.int32, device=q.device).expand(B, T)
        k_len = torch.full((B,), T, dtype=torch.int32, device=q.device)
    else:
        k_len = torch.full((B,), k.shape[2], dtype=torch.int32, device=q.device)
    q_len = torch.full((B,), T, dtype=torch.int32, device=q.device)
    return flash_attention_launch(q, k, v, q_pos, zeros, q_len, zeros, k_len, T)


def flash_attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_seqlen_q: int, causal: bool = True) -> torch.Tensor:
    """Packed variable-length attention: q (total_q, H, D), k/v (total_k, Hkv, D), sequence i at rows
    cu_seqlens[i] .. cu_seqlens[i+1] - 1. Causal aligns each sequence's queries with the end of its keys
    (the last query sees every key), as for a chunk of new tokens after a cached prefix. -> (total_q, H, D)."""
    if q.dim() != 3 or k.dim() != 3 or q.shape[1] % k.shape[1] or cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise InputError(f"flash_attention_varlen: need q (total, H, D), k/v (total, Hkv, D) with Hkv dividing H "
                         f"and cu_seqlens of one length, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"cu_seqlens {tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}")
    q_start, k_start = cu_seqlens_q[:-1].int(), cu_seqlens_k[:-1].int()
    q_len, k_len = (cu_seqlens_q[1:] - cu_seqlens_q[:-1]).int(), (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).int()
    seq = torch.repeat_interleave(torch.arange(len(q_len), device=q.device), q_len, output_size=q.shape[0])
    pos = (torch.arange(q.shape[0], device=q.device) - q_start[seq] + (k_len - q_len)[seq]).int()   # (total_q,)
    as_4d = [t.transpose(0, 1)[None] for t in (q, k, v)]                         # (1, heads, total, D) views
    out = flash_attention_launch(*as_4d, pos, q_start, q_len, k_start, k_len, max_seqlen_q,
                                 batch_strides=False, causal=causal)
    return out[0].transpose(0, 1)                                               # (total_q, H, D)


if triton is not None:
    @kernel_op("llamafn::flash_attention", mutates_args=())
    def flash_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor | None,
                           k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
        """The "triton" attention backend on a GPU (prefill and decode, float or int8 K/V), as one op
        for torch.compile."""
        return dense_attention(q, k, v, q_pos, k_scale, v_scale)


@register("attention", "triton")
def triton_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor | None) -> torch.Tensor:
    require_triton(q.device, "the triton attention backend")
    if q.is_cuda:
        return torch.ops.llamafn.flash_attention(q, k, v, q_pos)
    return dense_attention(q, k, v, q_pos)


@register("attention_int8", "triton")
def triton_attention_int8(q: torch.Tensor, k: torch.Tensor, k_scale: torch.Tensor, v: torch.Tensor,
                          v_scale: torch.Tensor, q_pos: torch.Tensor) -> torch.Tensor:
    """Attention over an int8 KV cache's rows (llamafn.cache): k/v (B, Hkv, S, D) int8 with scales
    (B, Hkv, S). Flash-decoding reads the int8 values and scales (about half the bytes of bf16)."""
    require_triton(q.device, "the triton attention backend")
    if q.is_cuda:
        return torch.ops.llamafn.flash_attention(q, k, v, q_pos, k_scale, v_scale)
    return dense_attention(q, k, v, q_pos, k_scale, v_scale)
