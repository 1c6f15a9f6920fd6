"""What speculative decoding and beam search cost at 7B shapes (random bf16 weights, one GPU):

- the time of one (k+1)-token verify forward against a 1-token decode step, k = 1..`--max-k`, over a cache
  of `--context` positions (each captured in a CUDA graph, so launch overhead is out of both), and the
  speedup that follows for draft acceptance rates 0.6/0.8/0.9 with a draft costing `--draft-cost` of
  a target step: E[tokens a step] = (1 - a^(k+1)) / (1 - a), speedup = E * t_1 / (t_(k+1) + k * c * t_1);
- beam search's per-step overhead against greedy for 1..8 beams: the step over num_beams rows plus
  the cache row gather (`cache.reorder_into`: every layer's K and V positions in use, in one Triton
  launch, into the search's other buffer).

With `--weights int8|int4-g128|...` the weights are quantised and every row count runs in the layouts
`llamafn generate` picks for it (llamafn.quant.for_decode).

    python scripts/bench_verify.py --preset llama-2-7b --context 512 [--weights int4-g128]
"""

from __future__ import annotations

import argparse
import sys

import torch

from .. import cache as kv
from ..config import preset
from ..model import forward
from ..params import fuse, init_params
from ..quant import for_decode, quantize
from ..quant.formats import DEFAULT_GROUP_SIZE
from .ceilings import graphed, measure, median_cuda_time, write_results
from .quant import SCHEME, parse_scheme


def forward_time(params, cfg, batch: int, n_tokens: int, context: int) -> float:
    """Seconds of one forward of n_tokens per row at `context` cached positions (graph replay, median of 3)."""
    device = params["norm.weight"].device
    cache = kv.init_cache(cfg, batch, context + n_tokens, dtype=params["norm.weight"].dtype, device=device)
    cache = kv.truncate(cache, context)
    tokens = torch.randint(0, cfg.vocab_size, (batch, n_tokens), device=device)

    def run():
        forward(params, tokens, cache, cfg=cfg)   # writes the same positions every replay: lengths are not advanced

    replay = graphed(run)
    return median_cuda_time(replay, repeat=20)


def reorder_time(cfg, beams: int, context: int, device: torch.device | str = "cuda") -> float:
    """Seconds of beam search's row gather at `context` positions in use (`cache.reorder_into`)."""
    cache = kv.init_cache(cfg, beams, context, dtype=torch.bfloat16, device=device)
    spare = kv.zeros_like(cache)
    index = torch.arange(beams, device=device).flip(0)
    return median_cuda_time(lambda: kv.reorder_into(cache, index, spare, context), repeat=20)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_verify", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="llama-2-7b")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--draft-cost", type=float, default=0.05, help="draft step time / target step time")
    ap.add_argument("--weights", default="bf16", help="bf16, int8 or int4-gN (N: 32, 64, 128, 256)")
    ap.add_argument("--max-k", type=int, default=8, help="the most draft tokens a verify forward checks (1..16)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if not SCHEME.fullmatch(args.weights) or "+" in args.weights:
        ap.error(f"--weights takes one of bf16, int8 or int4-gN with N 32, 64, 128 or 256; got {args.weights!r}")
    if not 1 <= args.max_k <= 16:
        ap.error(f"--max-k takes 1..16 (the CLI's range of --k); got {args.max_k}")
    scheme, group = parse_scheme(args.weights)
    if not torch.cuda.is_available():
        print("bench_verify: needs a CUDA GPU", file=sys.stderr)
        return 1
    cfg = preset(args.preset)
    params = fuse(init_params(cfg, generator=torch.Generator("cuda").manual_seed(0), dtype=torch.bfloat16, device="cuda"))
    if scheme != "bf16":
        params = quantize(params, scheme, group_size=group or DEFAULT_GROUP_SIZE)

    def time_rows(batch: int, n_tokens: int) -> float:
        """forward_time in the layouts for batch x n_tokens rows a step."""
        return forward_time(for_decode(params, batch * n_tokens, torch.bfloat16), cfg, batch, n_tokens, args.context)

    results: dict = {"benchmark": "verify", "preset": args.preset, "context": args.context, "weights": args.weights,
                     "command": "python scripts/bench_verify.py " + " ".join(argv or sys.argv[1:]),
                     "ceilings": measure(), "verify": [], "beams": []}
    t1 = time_rows(1, 1)
    for k in range(1, args.max_k + 1):
        tk = time_rows(1, k + 1)
        row = {"k": k, "verify_ms": round(tk * 1e3, 3), "step_ms": round(t1 * 1e3, 3), "ratio": round(tk / t1, 3)}
        for a in (0.6, 0.8, 0.9):
            expected = (1 - a ** (k + 1)) / (1 - a)
            row[f"speedup_at_{a}"] = round(expected * t1 / (tk + k * args.draft_cost * t1), 2)
        results["verify"].append(row)
        print(row, flush=True)
    for beams in (1, 2, 4, 8):
        step = time_rows(beams, 1)
        reorder = reorder_time(cfg, beams, args.context)
        row = {"beams": beams, "step_ms": round(step * 1e3, 3), "reorder_ms": round(reorder * 1e3, 3),
               "overhead_vs_greedy": round((step + reorder) / t1, 3)}
        results["beams"].append(row)
        print(row, flush=True)
    name = "verify" if scheme == "bf16" else f"verify-{args.weights}"
    print(f"wrote {write_results(results, args.out, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
