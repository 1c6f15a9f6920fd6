"""Attention kernel benchmark on one GPU, everything in one run next to the ceilings:

- causal prefill, batch 1, 32 heads, head dim 128 at 1k-16k tokens and head dim 64 at 4k: TFLOP/s
  of the "triton" backend (FlashAttention-2, llamafn.kernels.flash_attention) against PyTorch SDPA
  forced to its flash, cuDNN and memory-efficient backends and the naive materialised formula
  ("reference", up to 8k), each replayed from a CUDA graph, with each one's peak memory above the
  inputs in an eager call (O(N) against O(N^2));
- decode attention, one query token a head over a KV cache of 4k-128k positions (Llama-2 MHA 32/32 and
  Llama-3 GQA 32/8 heads, head dim 128): the bytes of K and V read per second against the copy bandwidth,
  flash-decoding against SDPA over the folded groups (the "sdpa" backend's decode path), each replayed
  from a CUDA graph as in the compiled decode step, next to a copy moving the same bytes (the copy rate
  at the size of one call).

- the fused elementwise kernels (residual add + RMSNorm, SwiGLU, RoPE + KV-cache write) at 7B widths, against their references
  eager and compiled by inductor, as GB/s next to the copy bandwidth.

The end-to-end 7B decode and prefill with and without the kernels is
`bench_decode.py --attention sdpa,triton` (the name picks the kernel set: flash attention, the fused
add + norm and SwiGLU).

    python scripts/bench_kernels.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import cache as kv
from ..config import preset
from ..kernels import get
from ..model.rope import rope_angles
from .ceilings import copies_past_l2, graphed, measure, median_cuda_time, time_in_graph, write_results
from .decode import log

SDPA_BACKENDS = {"sdpa flash": SDPBackend.FLASH_ATTENTION, "sdpa cuDNN": SDPBackend.CUDNN_ATTENTION,
                 "sdpa memory-efficient": SDPBackend.EFFICIENT_ATTENTION}


def timed(fn) -> tuple[float, float]:
    """(seconds per call replayed from a CUDA graph, so host-side launch cost is out as in a compiled
    step; peak bytes allocated during one eager call above what was allocated before)."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    peak = torch.cuda.max_memory_allocated() - base
    return median_cuda_time(graphed(fn), repeat=5), peak


def prefill_rows(lengths: list[int], head_dim: int, heads: int = 32, naive_max: int = 8192) -> list[dict]:
    rows = []
    for T in lengths:
        q, k, v = (torch.randn(1, heads, T, head_dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * heads * head_dim * T * (T + 1) / 2                          # QK^T and PV over the causal half
        paths = {"triton": lambda: get("attention", "triton")(q, k, v, None)}
        for name, backend in SDPA_BACKENDS.items():
            paths[name] = lambda backend=backend: _sdpa(q, k, v, backend)
        if T <= naive_max:
            paths["naive (reference)"] = lambda: get("attention", "reference")(q, k, v, None)
        reference = get("attention", "sdpa")(q, k, v, None)
        for name, fn in paths.items():
            try:
                err = max_abs_diff(fn(), reference)
                t, peak = timed(fn)
            except RuntimeError as e:                                            # a backend that does not apply
                rows.append({"T": T, "head_dim": head_dim, "path": name, "error": str(e).splitlines()[0][:200]})
                continue
            rows.append({"T": T, "head_dim": head_dim, "path": name, "ms": round(t * 1e3, 3),
                         "TFLOPs": round(flops / t / 1e12, 1), "peak_extra_MB": round(peak / 2**20, 1),
                         "max_abs_diff_vs_sdpa": err})
            log(rows[-1])
    return rows


def _sdpa(q, k, v, backend):
    with sdpa_kernel(backend):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def max_abs_diff(out: torch.Tensor, expected: torch.Tensor) -> float:
    return round((out.float() - expected.float()).abs().max().item(), 4)


def first(out: torch.Tensor | tuple) -> torch.Tensor:
    """An op's main output: the tensor, or the first of a tuple (the normed rows, the rotated q)."""
    return out if isinstance(out, torch.Tensor) else out[0]


def rotation(make_inputs, bytes_per_call: int, calls: int = 8) -> list:
    """Input sets for back-to-back calls in one graph: enough distinct sets that no call finds its
    inputs in L2 (`copies_past_l2`), cycled to at least `calls` calls."""
    sets = [make_inputs() for _ in range(copies_past_l2(bytes_per_call))]
    return [sets[i % len(sets)] for i in range(max(calls, len(sets)))]


def decode_row(H: int, Hkv: int, S: int, path: str, seconds: float, kv_bytes: int, copy_GBps: float) -> dict:
    gbps = kv_bytes / seconds / 1e9
    return {"heads": H, "kv_heads": Hkv, "context": S, "path": path, "us": round(seconds * 1e6, 1),
            "KV_GBps": round(gbps, 1), "copy_fraction": round(gbps / copy_GBps, 3)}


def decode_rows(contexts: list[int], head_configs: list[tuple[int, int]], copy_GBps: float) -> list[dict]:
    """Decode attention over K/V of `context` positions, timed back to back in one CUDA graph as inside a
    compiled decode step, each call on K/V not left in L2 by the call before. Next to it, what the copy
    rate is at that size: a copy of K into another buffer moves the bytes the attention reads (half read,
    half written), timed the same way, so its fraction is the copy's own at the size of one call."""
    rows = []
    for H, Hkv in head_configs:
        for S in contexts:
            kv_bytes = 2 * Hkv * S * 128 * 2

            def inputs():
                return (torch.randn(1, H, 1, 128, device="cuda", dtype=torch.bfloat16),
                        *(torch.randn(1, Hkv, S, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2)))
            sets = rotation(inputs, kv_bytes)
            q, k, v = sets[0]
            pos = torch.full((1, 1), S - 1, device="cuda")
            reference = get("attention", "grouped")(q.float(), k.float(), v.float(), pos)
            for name in ("triton", "sdpa"):
                attend = get("attention", name)
                err = max_abs_diff(attend(q, k, v, pos), reference)
                t = time_in_graph([lambda qkv=qkv: attend(*qkv, pos) for qkv in sets])
                rows.append({**decode_row(H, Hkv, S, f"{name} decode", t, kv_bytes, copy_GBps),
                             "calls_per_graph": len(sets), "max_abs_diff_vs_fp32": err})
                log(rows[-1])
            dst = torch.empty_like(k)
            t = time_in_graph([lambda qkv=qkv: dst.copy_(qkv[1]) for qkv in sets])        # K read, K written
            rows.append({**decode_row(H, Hkv, S, "copy of the same bytes", t, kv_bytes, copy_GBps),
                         "calls_per_graph": len(sets)})
            log(rows[-1])
            del sets, q, k, v
            torch.cuda.empty_cache()
    return rows


def fused_rows(rows: list[int], cfg, copy_GBps: float) -> list[dict]:
    """Each fused kernel against its eager reference and the reference compiled by inductor (what the
    compiled decode step would otherwise run), as bytes moved per second (back to back in one graph,
    on input sets that do not fit in L2 together)."""
    out = []
    dim, hidden = cfg.dim, cfg.hidden_dim
    for M in rows:
        B, T = (M, 1) if M <= 32 else (1, M)                                   # decode rows or one prefill

        def norm_inputs():
            return (*(torch.randn(M, dim, device="cuda", dtype=torch.bfloat16) for _ in range(2)),
                    torch.randn(dim, device="cuda", dtype=torch.bfloat16), 1e-5)

        def swiglu_inputs():
            return torch.randn(M, 2 * hidden, device="cuda", dtype=torch.bfloat16).chunk(2, dim=-1)

        def rope_inputs():
            cos, sin = rope_angles(torch.arange(T, device="cuda").expand(B, T), cfg)
            cache = kv.init_cache(replace(cfg, n_layers=1), B, T, dtype=torch.bfloat16, device="cuda")
            q, k, v = (torch.randn(B, T, heads, cfg.head_dim, device="cuda", dtype=torch.bfloat16)
                       for heads in (cfg.n_heads, cfg.n_kv_heads, cfg.n_kv_heads))
            return q, k, v, cos, sin, cache, 0, torch.arange(T, device="cuda").expand(B, T)

        cases = {"add_rms_norm": (norm_inputs, 5 * M * dim * 2 + dim * 2),
                 "swiglu": (swiglu_inputs, 3 * M * hidden * 2),
                 "rope_write": (rope_inputs, 2 * M * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim * 2
                                + 2 * M * cfg.head_dim // 2 * 4)}                # q, k, v in and out; the angles
        for op, (make_inputs, n_bytes) in cases.items():
            sets = rotation(make_inputs, n_bytes)
            reference = get(op, "reference")
            expected = first(reference(*sets[0])).clone()                      # rope_write: q rotated
            for path, fn in (("triton", get(op, "triton")), ("inductor (compiled reference)", torch.compile(reference)),
                             ("eager reference", reference)):
                err = max_abs_diff(first(fn(*sets[0])), expected)
                t = time_in_graph([lambda fn=fn, a=a: fn(*a) for a in sets])
                gbps = n_bytes / t / 1e9
                out.append({"op": op, "rows": M, "path": path, "us": round(t * 1e6, 2), "GBps": round(gbps, 1),
                            "copy_fraction": round(gbps / copy_GBps, 3), "calls_per_graph": len(sets),
                            "max_abs_diff_vs_eager": err})
                log(out[-1])
            del sets
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    ap.add_argument("--contexts", default="4096,16384,32768,65536,131072")
    ap.add_argument("--parts", default="prefill,decode,fused", help="which tables to measure")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU", file=sys.stderr)
        return 1
    results: dict = {"benchmark": "kernels", "command": "python scripts/bench_kernels.py " + " ".join(argv or sys.argv[1:]),
                     "ceilings": measure()}
    log(results["ceilings"])
    copy_GBps = results["ceilings"]["copy_GBps"]
    if "prefill" in parts:
        lengths = [int(n) for n in args.lengths.split(",")]
        results["prefill"] = prefill_rows(lengths, 128)
        write_results(results, args.out, "kernels")
        results["prefill"] += prefill_rows([n for n in lengths if n >= 4096], 64)       # the 1.1x target's range
        write_results(results, args.out, "kernels")
    if "decode" in parts:
        contexts = [int(n) for n in args.contexts.split(",")]
        results["decode"] = decode_rows(contexts, [(32, 32), (32, 8)], copy_GBps)
        write_results(results, args.out, "kernels")
    if "fused" in parts:
        results["fused"] = fused_rows([1, 8, 32, 2048], preset("llama-2-7b"), copy_GBps)
    print(f"wrote {write_results(results, args.out, 'kernels')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
