"""Programmatic dependent launch (llamafn.kernels.runtime.pdl) on the decode step's own kernels: the
Triton kernels of one Llama-2-7B int4 g128 batch-1 step (per layer the fused add + norm, the wqkv GEMV
with RoPE and the cache write in its epilogue, flash-decoding, the wo GEMV, the fused add + norm, the
w13 GEMV, SwiGLU and the w2 GEMV; no embedding, head or sampling) launched back to back in one CUDA
graph, with PDL off and on (LLAMAFN_PDL, two rounds each), and the replays' outputs compared bit for
bit. The weights are random words (the timing does not depend on their values), every layer its own,
2.8 GB in all.

    python scripts/bench_pdl.py
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from ..config import preset
from ..kernels import flash_decode, fused, quant_gemv
from .ceilings import graphed, measure, median_cuda_time, write_results
from .decode import log

GROUP = 128


def int4_weight(n: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random int4 words (n, k/8) int32 in the GEMV's group-plane order, scales and zero points (n, k/GROUP),
    on the generator's device."""
    device = gen.device
    words = torch.randint(-2**31, 2**31 - 1, (n, k // 8), dtype=torch.int32, device=device, generator=gen)
    scale = (torch.rand(n, k // GROUP, device=device, generator=gen) * 2e-3 + 1e-3).to(torch.bfloat16)
    zero = torch.randint(0, 16, (n, k // GROUP), dtype=torch.uint8, device=device, generator=gen)
    return words, scale, zero


def gemv(x: torch.Tensor, w: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
         rope: quant_gemv.RopeWrite | None = None) -> torch.Tensor:
    """x (1, K) bf16 against a group-plane int4 weight -> (1, N) bf16, or q with `rope` (quant_gemv.store_rows)."""
    return quant_gemv.int4_gemv(x.contiguous().view(torch.int32), *w, GROUP, torch.bfloat16, rope)


def step_kernels(layers: list[dict], x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor,
                 rope: tuple[torch.Tensor, torch.Tensor, torch.Tensor], n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """The layers' kernels on x (1, dim), the residual add of each block left to the next (llamafn.model.block)."""
    pos, cos, sin = rope
    dim, head_dim = x.shape[1], x.shape[1] // n_heads
    h, f = x, torch.zeros_like(x)
    for i, p in enumerate(layers):
        normed, h = fused.add_rms_norm_launch(h, f, p["attention_norm"], 1e-5)
        q = gemv(normed, p["wqkv"], quant_gemv.RopeWrite(cos, sin, pos, cache_k[i], cache_v[i], n_heads))
        q = q.view(1, n_heads, 1, head_dim)                                    # (B, H, T, D)
        a = gemv(flash_decode.flash_decode_launch(q, cache_k[i], cache_v[i], pos).reshape(1, dim), p["wo"])
        normed, h = fused.add_rms_norm_launch(h, a, p["ffn_norm"], 1e-5)
        up = gemv(normed, p["w13"])
        f = gemv(fused.swiglu_launch(up[:, :up.shape[1] // 2], up[:, up.shape[1] // 2:]), p["w2"])
    return h + f


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_pdl", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="llama-2-7b")
    ap.add_argument("--cache-len", type=int, default=256, help="KV cache positions a layer (50 of them attended)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_pdl: needs a CUDA GPU", file=sys.stderr)
        return 1
    cfg = preset(args.preset)
    gen = torch.Generator("cuda").manual_seed(0)
    head_dim = cfg.dim // cfg.n_heads
    ones = torch.ones(cfg.dim, dtype=torch.bfloat16, device="cuda")
    layers = [{"wqkv": int4_weight((cfg.n_heads + 2 * cfg.n_kv_heads) * head_dim, cfg.dim, gen),
               "wo": int4_weight(cfg.dim, cfg.dim, gen), "w13": int4_weight(2 * cfg.hidden_dim, cfg.dim, gen),
               "w2": int4_weight(cfg.dim, cfg.hidden_dim, gen), "attention_norm": ones, "ffn_norm": ones}
              for _ in range(cfg.n_layers)]
    cache_k, cache_v = (torch.randn(cfg.n_layers, 1, cfg.n_kv_heads, args.cache_len, head_dim, dtype=torch.bfloat16,
                                    device="cuda", generator=gen) for _ in range(2))
    rope = (torch.full((1, 1), 50, dtype=torch.int64, device="cuda"),
            *(torch.rand(1, 1, head_dim // 2, device="cuda", generator=gen) for _ in range(2)))
    x = torch.randn(1, cfg.dim, dtype=torch.bfloat16, device="cuda", generator=gen)
    results = {"benchmark": "pdl", "preset": args.preset, "command": "python scripts/bench_pdl.py "
               + " ".join(argv or sys.argv[1:]), "ceilings": measure(), "step_us": {"plain": [], "pdl": []}}
    log(results["ceilings"])
    outputs = []
    for flag in ("0", "1", "0", "1"):
        os.environ["LLAMAFN_PDL"] = flag
        out = torch.empty_like(x)
        replay = graphed(lambda: out.copy_(step_kernels(layers, x, cache_k, cache_v, rope, cfg.n_heads,
                                                        cfg.n_kv_heads)))
        us = median_cuda_time(replay, repeat=20) * 1e6
        replay()
        outputs.append(out.clone())
        results["step_us"]["pdl" if flag == "1" else "plain"].append(round(us, 1))
        log(f"LLAMAFN_PDL={flag}: {us:.1f} us a step")
    results["outputs_bitwise_equal"] = all(torch.equal(o, outputs[0]) for o in outputs)
    results["outputs_finite"] = bool(outputs[0].isfinite().all())
    log(results)
    print(f"wrote {write_results(results, args.out, 'pdl')}")
    return 0 if results["outputs_bitwise_equal"] else 1
