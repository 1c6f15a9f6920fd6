"""Flash-decoding (Dao, Haziza, Massa and Sizov 2023, "Flash-Decoding for long-context inference"): the
"triton" attention backend's kernels for a few query rows a KV head (decode steps, speculative
verification), over a dense cache in bf16/fp16 or int8 with a scale per position (llamafn.cache).

The keys are split across programs: one program per (row, KV head, split) takes every query head of
the group as its rows, so K and V are read once per group, and a second kernel (one program a query
row, BLOCK_S splits' partials loaded together and folded into running statistics) merges the splits'
partial softmaxes. Batch-1 long-context decode then spreads over the whole GPU (one program an SM);
a cache that one split covers is written out directly, with no merge.
"""

from __future__ import annotations

import functools
import math

import torch

from ..errors import InputError
from .runtime import INTERPRET, launcher, pdl, sm_count, triton

if triton is not None:
    import triton.language as tl

    from .runtime import await_producers, dot, release_dependents

    @triton.jit
    def attend_tile(q, K, V, KS, VS, k_at, v_at, ks_at, vs_at, skt, svt, rn, rd, pos, hi, D, qk_scale, m_i, l_i, acc,
                    CAUSAL: tl.constexpr, MASKED: tl.constexpr, QUANT: tl.constexpr):
        """One K/V tile of the online softmax (FlashAttention-2): keys rn (BN,) at K + k_at + rn * skt,
        running max m_i and sum l_i (BM,), acc (BM, BD) in fp32, scores in log2 units. MASKED tiles hide
        keys from `hi` on and, CAUSAL, past each row's position; unmasked ones (every key visible to every
        row) skip that arithmetic. QUANT: int8 K/V with a scale per position at KS + ks_at / VS + vs_at."""
        if MASKED:
            k = tl.load(K + k_at + rn[None, :] * skt + rd[:, None], mask=(rn[None, :] < hi) & (rd[:, None] < D),
                        other=0)                                                      # (BD, BN)
        else:
            k = tl.load(K + k_at + rn[None, :] * skt + rd[:, None], mask=rd[:, None] < D, other=0)
        if QUANT:
            if MASKED:
                ks = tl.load(KS + ks_at + rn, mask=rn < hi, other=0.0)                # (BN,)
            else:
                ks = tl.load(KS + ks_at + rn)
            k = (k.to(tl.float32) * ks[None, :]).to(q.dtype)
        s = (dot(q, k) * qk_scale).to(tl.float32)                                     # (BM, BN)
        if MASKED:
            visible = rn[None, :] < hi
            if CAUSAL:
                visible = visible & (rn[None, :] <= pos[:, None])
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)                         # rows with nothing visible yet
        p = tl.exp2(s - m_safe[:, None])                                              # (BM, BN)
        alpha = tl.exp2(m_i - m_safe)
        if MASKED:
            v = tl.load(V + v_at + rn[:, None] * svt + rd[None, :], mask=(rn[:, None] < hi) & (rd[None, :] < D),
                        other=0)                                                      # (BN, BD)
        else:
            v = tl.load(V + v_at + rn[:, None] * svt + rd[None, :], mask=rd[None, :] < D, other=0)
        if QUANT:
            if MASKED:
                vs = tl.load(VS + vs_at + rn, mask=rn < hi, other=0.0)                # (BN,)
            else:
                vs = tl.load(VS + vs_at + rn)
            v = (v.to(tl.float32) * vs[:, None]).to(q.dtype)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v)
        return m_new, l_i, acc

    @triton.jit
    def flash_decode_kernel(Q, K, V, KS, VS, POS, PART_O, PART_ML, O, qk_scale, S, T, Hkv, GROUP, D, CHUNK,
                            sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sksb, sksh, svsb, svsh, spb, sob, soh, sot,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                            QUANT: tl.constexpr, DIRECT: tl.constexpr, PDL: tl.constexpr):
        """One split of the keys for every query of one KV head: rows r = (head in group) * T + t. With
        QUANT, K and V are int8 with a scale per (row, head, position) in KS / VS (llamafn.cache). DIRECT
        (a single split): the normalised output goes to O, with no partials to merge. Tiles below every
        row's position run unmasked; the rest of the split is masked."""
        release_dependents(PDL)
        await_producers(PDL)
        pid_bk, split = tl.program_id(0), tl.program_id(1)
        n_splits = tl.num_programs(1)
        b, hk = pid_bk // Hkv, pid_bk % Hkv
        rr = tl.arange(0, BLOCK_M)                                                    # (BM,) rows
        row_ok = rr < GROUP * T
        g, t = rr // T, rr % T
        rd = tl.arange(0, BLOCK_D)
        q = tl.load(Q + b * sqb + (hk * GROUP + g)[:, None] * sqh + t[:, None] * sqt + rd[None, :],
                    mask=row_ok[:, None] & (rd[None, :] < D), other=0.0)              # (BM, BD)
        pos = tl.load(POS + b * spb + t, mask=row_ok, other=-1)                       # (BM,)
        lo = split * CHUNK
        hi = tl.minimum(tl.minimum(lo + CHUNK, tl.max(pos, axis=0) + 1), S)
        full = tl.minimum(tl.min(tl.where(row_ok, pos + 1, hi), axis=0), hi)          # keys every row sees
        full = lo + tl.maximum(full - lo, 0) // BLOCK_N * BLOCK_N
        k_at, v_at, ks_at, vs_at = b * skb + hk * skh, b * svb + hk * svh, b * sksb + hk * sksh, b * svsb + hk * svsh
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for n0 in range(lo, full, BLOCK_N):
            m_i, l_i, acc = attend_tile(q, K, V, KS, VS, k_at, v_at, ks_at, vs_at, skt, svt, n0 + tl.arange(0, BLOCK_N),
                                        rd, pos, hi, D, qk_scale, m_i, l_i, acc, CAUSAL=True, MASKED=False, QUANT=QUANT)
        for n0 in range(full, hi, BLOCK_N):
            m_i, l_i, acc = attend_tile(q, K, V, KS, VS, k_at, v_at, ks_at, vs_at, skt, svt, n0 + tl.arange(0, BLOCK_N),
                                        rd, pos, hi, D, qk_scale, m_i, l_i, acc, CAUSAL=True, MASKED=True, QUANT=QUANT)
        if DIRECT:
            out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]                       # (BM, BD)
            tl.store(O + b * sob + (hk * GROUP + g)[:, None] * soh + t[:, None] * sot + rd[None, :],
                     out.to(O.dtype.element_ty), mask=row_ok[:, None] & (rd[None, :] < D))
        else:
            base = (pid_bk * n_splits + split) * BLOCK_M + rr                         # (BM,) scratch rows
            tl.store(PART_O + base[:, None] * BLOCK_D + rd[None, :], acc, mask=row_ok[:, None])   # padding rows unread
            tl.store(PART_ML + base * 2, m_i, mask=row_ok)
            tl.store(PART_ML + base * 2 + 1, l_i, mask=row_ok)

    @triton.jit
    def flash_decode_merge_kernel(PART_O, PART_ML, O, T, Hkv, GROUP, N_SPLITS, D, sob, soh, sot,
                                  BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
                                  PDL: tl.constexpr):
        """Merge the splits' (acc, max, sum) of one query row, out = sum_i e^(m_i - m) acc_i / sum_i e^(m_i - m) l_i,
        in one pass: BLOCK_S splits' partials are loaded together and folded into running statistics (one
        round trip to memory when every split fits in one step)."""
        release_dependents(PDL)
        await_producers(PDL)
        pid_bk, r = tl.program_id(0), tl.program_id(1)                                # r = (head in group) * T + t
        b, hk = pid_bk // Hkv, pid_bk % Hkv
        rs = tl.arange(0, BLOCK_S)
        rd = tl.arange(0, BLOCK_D)
        m_run = tl.full([], float("-inf"), dtype=tl.float32)
        l_run = tl.zeros([], dtype=tl.float32)
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for i0 in range(0, N_SPLITS, BLOCK_S):
            ok = i0 + rs < N_SPLITS
            rows = (pid_bk * N_SPLITS + i0 + rs) * BLOCK_M + r                        # (BS,) scratch rows
            m_i = tl.load(PART_ML + rows * 2, mask=ok, other=float("-inf"))           # (BS,)
            l_i = tl.load(PART_ML + rows * 2 + 1, mask=ok, other=0.0)
            o_i = tl.load(PART_O + rows[:, None] * BLOCK_D + rd[None, :], mask=ok[:, None], other=0.0)  # (BS, BD)
            m_new = tl.maximum(m_run, tl.max(m_i, axis=0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            w = tl.exp2(m_i - m_safe)                                                 # (BS,) 0 for empty splits
            alpha = tl.exp2(m_run - m_safe)
            l_run = l_run * alpha + tl.sum(w * l_i, axis=0)
            acc = acc * alpha + tl.sum(w[:, None] * o_i, axis=0)
            m_run = m_new
        out = acc / tl.where(l_run == 0.0, 1.0, l_run)                                # (BD,)
        g, t = r // T, r % T
        tl.store(O + b * sob + (hk * GROUP + g) * soh + t * sot + rd, out.to(O.dtype.element_ty), mask=rd < D)


def block_d(D: int) -> int:
    if D > 256:
        raise InputError(f"the triton attention backend supports head dims up to 256, got {D}")
    return max(16, 1 << (D - 1).bit_length())


def decode_configs() -> list:
    """Key tile (any divisor of a split's chunk, a multiple of 64), warps and pipelining stages for
    flash_decode_kernel."""
    return [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s) for bn in (32, 64) for w in (4, 8) for s in (2, 3, 4)]


@functools.cache
def decode_tuned():
    """flash_decode_kernel autotuned on a GPU per (cache length, rows a group, head dim)."""
    return triton.autotune(decode_configs(), key=["S", "T", "GROUP", "D"])(flash_decode_kernel)


MIN_SPLIT_KEYS = 256


def decode_splits(batch: int, n_kv_heads: int, n_keys: int, block_n: int, n_sms: int) -> int:
    """Splits of the key axis: about one program an SM over all (row, KV head) pairs, each split at
    least MIN_SPLIT_KEYS keys and one tile (at most 2 programs in the interpreter, where every program
    costs milliseconds). On an H100 at 16k-32k keys one program an SM and two were within 4% of each
    other (either ahead across runs), and both ahead of half, four and eight; the merge grows with the
    split count. A cache of at most MIN_SPLIT_KEYS gets one split, written out directly with no merge
    launch. On an H100 (MHA 32 heads, batch 1, 256-key cache, in a CUDA graph) that took 4.4 us at 100
    live keys and 6.3 at 250, against 5.7 for four splits and the merge at either; at 512 keys, two
    splits took 8.3 us at 400 live keys against 7.4 for five. Over a generation filling the cache the
    single split wins, and a compiled 7B int8 step lost its 32 merge launches (316.3 tok/s)."""
    programs = 2 if INTERPRET else n_sms
    return max(1, min(triton.cdiv(n_keys, max(block_n, MIN_SPLIT_KEYS)), triton.cdiv(programs, batch * n_kv_heads)))


def flash_decode_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                        k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, H, T, D) with few rows per KV group (decode), k/v (B, Hkv, S, D), pos (B, T) -> (B, H, T, D).
    With k_scale / v_scale (B, Hkv, S), k and v are int8 rows of an int8 cache, dequantised in registers.

    Two launches (one where a single split covers the cache). On an H100 (GQA 32/8, 16k keys, back to
    back in a CUDA graph) a call takes 29.0-29.3 us: the split kernel 26.5-26.9, the merge in one warp
    the rest (29.8-30.1 with four warps; at 32k keys 51.2-51.7 against 52.1-52.7). Tried and slower or
    no better: the last split merging after an atomic ticket (33.3 us with a serial merge; 30.2 with
    every split's partials loaded at once: the ticket's registers and fence slow every split; 39.7 at
    best merging one query row at a time, a few splits at a time: its loads wait on each other), the
    merge alone as a programmatic dependent launch (griddepcontrol, no change; both kernels are now
    launched so, with the rest of the decode step's, runtime.pdl), K and V through TMA
    descriptors (split kernel 26.9 us at best), key tiles of 128 and other split counts (8-66 a KV
    head: 16 and 33 within noise of the default 17, 8, 24 and 66 slower)."""
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    group = H // Hkv
    BLOCK_M, BLOCK_N, BLOCK_D = max(16, 1 << (group * T - 1).bit_length()), 64, block_d(D)
    n_splits = decode_splits(B, Hkv, S, BLOCK_N, sm_count(q.device))
    chunk = triton.cdiv(triton.cdiv(S, n_splits), BLOCK_N) * BLOCK_N
    direct = n_splits == 1
    scratch = 0 if direct else B * Hkv * n_splits * BLOCK_M                     # rows of partials to merge
    part_o = torch.empty(scratch, BLOCK_D, dtype=torch.float32, device=q.device)
    part_ml = torch.empty(scratch, 2, dtype=torch.float32, device=q.device)
    out = torch.empty_like(q)
    kernel, fixed = (flash_decode_kernel, {"BLOCK_N": BLOCK_N}) if INTERPRET else (decode_tuned(), {})
    quant = k_scale is not None
    ks, vs = (k_scale, v_scale) if quant else (k, v)                           # unread without QUANT
    launcher(kernel)[(B * Hkv, n_splits)](
        q, k, v, ks, vs, pos, part_o, part_ml, out, 1.4426950408889634 / math.sqrt(D), S, T, Hkv, group, D, chunk,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), ks.stride(0), ks.stride(1), vs.stride(0), vs.stride(1), pos.stride(0),
        out.stride(0), out.stride(1), out.stride(2), BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D, QUANT=quant, DIRECT=direct,
        PDL=pdl(q.device), **fixed)
    if direct:
        return out
    launcher(flash_decode_merge_kernel)[(B * Hkv, group * T)](
        part_o, part_ml, out, T, Hkv, group, n_splits, D, out.stride(0), out.stride(1), out.stride(2),
        BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D, BLOCK_S=min(32, triton.next_power_of_2(n_splits)), PDL=pdl(q.device),
        **({} if INTERPRET else {"num_warps": 1}))
    return out
