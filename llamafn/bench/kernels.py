"""Attention kernel benchmark on one GPU, everything in one run next to the ceilings:

- causal prefill, batch 1, 32 heads, head dim 128 at 1k-16k tokens and head dim 64 at 4k: TFLOP/s
  of the "triton" backend (FlashAttention-2, llamafn.kernels.flash_attention) against PyTorch SDPA
  forced to its flash, cuDNN and memory-efficient backends and the naive materialised formula
  ("reference", up to 8k), each replayed from a CUDA graph, with each one's peak memory above the
  inputs in an eager call (O(N) against O(N^2));
- decode attention, one query token a head over a KV cache of 4k-128k positions (Llama-2 MHA 32/32 and
  Llama-3 GQA 32/8 heads, head dim 128): the bytes of K and V read per second against the copy bandwidth,
  flash-decoding against SDPA over the folded groups (the "sdpa" backend's decode path), each replayed
  from a CUDA graph as in the compiled decode step.

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

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import cache as kv
from ..config import preset
from ..kernels import get
from ..model.rope import rope_angles
from .ceilings import measure, median_cuda_time, write_results
from .decode import log
from .verify import graphed

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


def decode_rows(contexts: list[int], head_configs: list[tuple[int, int]], copy_GBps: float) -> list[dict]:
    rows = []
    for H, Hkv in head_configs:
        for S in contexts:
            q = torch.randn(1, H, 1, 128, device="cuda", dtype=torch.bfloat16)
            k, v = (torch.randn(1, Hkv, S, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            pos = torch.full((1, 1), S - 1, device="cuda")
            kv_bytes = 2 * Hkv * S * 128 * 2
            reference = get("attention", "grouped")(q.float(), k.float(), v.float(), pos)
            for name in ("triton", "sdpa"):
                attend = get("attention", name)
                err = max_abs_diff(attend(q, k, v, pos), reference)
                replay = graphed(lambda: attend(q, k, v, pos))                   # launch cost out, as in a decode step
                t = median_cuda_time(replay, repeat=20)
                gbps = kv_bytes / t / 1e9
                rows.append({"heads": H, "kv_heads": Hkv, "context": S, "path": f"{name} decode", "us": round(t * 1e6, 1),
                             "KV_GBps": round(gbps, 1), "copy_fraction": round(gbps / copy_GBps, 3),
                             "max_abs_diff_vs_fp32": err})
                log(rows[-1])
    return rows


def fused_rows(rows: list[int], cfg, copy_GBps: float) -> list[dict]:
    """Each fused kernel against its eager reference and the reference compiled by inductor (what the
    compiled decode step would otherwise run), as bytes moved per second (graph replays)."""
    out = []
    cfg_dim, hidden = cfg.dim, cfg.hidden_dim
    for M in rows:
        x, delta = (torch.randn(M, cfg_dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        w = torch.randn(cfg_dim, device="cuda", dtype=torch.bfloat16)
        gate_up = torch.randn(M, 2 * hidden, device="cuda", dtype=torch.bfloat16)
        cases = {
            "add_rms_norm": (lambda f: f(x, delta, w, 1e-5), 5 * M * cfg_dim * 2 + cfg_dim * 2),
            "swiglu": (lambda f: f(*gate_up.chunk(2, dim=-1)), 3 * M * hidden * 2),
        }
        B, T = (M, 1) if M <= 32 else (1, M)                                   # decode rows or one prefill
        q, k, v = (torch.randn(B, T, 32, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        cos, sin = rope_angles(torch.arange(T, device="cuda").expand(B, T), cfg)
        cache = kv.init_cache(cfg, B, T, dtype=torch.bfloat16, device="cuda")
        pos = torch.arange(T, device="cuda").expand(B, T)
        cases["rope_write"] = (lambda f: f(q, k, v, cos, sin, cache, 0, pos),
                               6 * M * cfg_dim * 2 + 2 * cos.numel() * 4)      # q, k, v in; q, k, v out; the angles
        for op, (call, n_bytes) in cases.items():
            reference = get(op, "reference")
            expected = first(call(reference)).clone()                          # rope_write: q rotated
            for path, fn in (("triton", get(op, "triton")), ("inductor (compiled reference)", torch.compile(reference)),
                             ("eager reference", reference)):
                err = max_abs_diff(first(call(fn)), expected)
                replay = graphed(lambda fn=fn: call(fn))
                t = median_cuda_time(replay, repeat=20)
                gbps = n_bytes / t / 1e9
                out.append({"op": op, "rows": M, "path": path, "us": round(t * 1e6, 2), "GBps": round(gbps, 1),
                            "copy_fraction": round(gbps / copy_GBps, 3), "max_abs_diff_vs_eager": err})
                log(out[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    ap.add_argument("--contexts", default="4096,16384,32768,65536,131072")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU", file=sys.stderr)
        return 1
    results: dict = {"benchmark": "kernels", "command": "python scripts/bench_kernels.py " + " ".join(argv or sys.argv[1:]),
                     "ceilings": measure()}
    log(results["ceilings"])
    results["prefill"] = prefill_rows([int(n) for n in args.lengths.split(",")], 128)
    write_results(results, args.out, "kernels")
    results["prefill"] += prefill_rows([4096], 64)
    write_results(results, args.out, "kernels")
    results["decode"] = decode_rows([int(n) for n in args.contexts.split(",")], [(32, 32), (32, 8)],
                                    results["ceilings"]["copy_GBps"])
    write_results(results, args.out, "kernels")
    results["fused"] = fused_rows([1, 8, 32, 2048], preset("llama-2-7b"), results["ceilings"]["copy_GBps"])
    print(f"wrote {write_results(results, args.out, 'kernels')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
