"""Speculative decoding benchmark with the shipped pair (target stdlib-coder, draft stdlib-coder-draft):
acceptance rate per draft position and tokens/s against plain decoding of the target, on the same
device in the same run, for k = 2..8 (draft) and prompt lookup on a code-editing prompt (the output
repeats much of its input). Greedy; in float32 (the default) every variant emits the target's tokens,
and the fraction of emitted tokens equal to plain decoding's is reported for any dtype (in bf16 a
(k+1)-token verify and a 1-token step round differently, so near-ties may flip). Every prompt is run
once untimed first, so compilation (one prefill graph per prompt-length bucket, one step graph per k)
is out of the timings.

    python scripts/bench_speculative.py --device cpu --out benchmarks/results
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

import llamafn as lf
from llamafn.config import cards_dir
from llamafn.decode import stream
from llamafn.decode.speculative import check_k
from llamafn.bench.ceilings import write_results

PROMPTS = [
    "def fibonacci(n):\n",
    "import os\nimport sys\n\n\ndef main(argv):\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
]
EDIT_PROMPT = (
    "def parse_header(line):\n    key, _, value = line.partition(':')\n    key = key.strip().lower()\n"
    "    value = value.strip()\n    return key, value\n\n\n"
    "# the same function, renamed to parse_field:\ndef parse_field(line):\n"
)


def timed_run(params, cfg, tok, prompt: str, n: int, device: str, compile: bool = False, **kwargs) -> tuple[list[int], float, list[int]]:
    """(tokens, seconds, tokens emitted by each step after the first)"""
    ids = tok.encode(prompt)
    steps, out = [], []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    cache_len = 1024 if compile and "speculative" not in kwargs else None     # one decode graph for every prompt
    for chunk in stream(params, cfg, [ids], n, sync_every=8, compile=compile, cache_len=cache_len, **kwargs):
        out.extend(chunk[0])
        steps.append(len(chunk[0]))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t, steps[1:]


def timed(params, cfg, tok, prompts: list[str], n: int, device: str, compile: bool, **kwargs) -> list[tuple]:
    """timed_run over every prompt, each after one untimed run of the same prompt (compile, warm-up)."""
    out = []
    for p in prompts:
        timed_run(params, cfg, tok, p, n, device, compile, **kwargs)
        out.append(timed_run(params, cfg, tok, p, n, device, compile, **kwargs))
    return out


def agreement(runs: list[tuple], reference: list[tuple]) -> float:
    """Fraction of emitted tokens equal to the reference's at the same position."""
    pairs = [(a, b) for (x, _, _), (y, _, _) in zip(runs, reference) for a, b in zip(x, y)]
    return round(sum(a == b for a, b in pairs) / max(1, len(pairs)), 4)


def acceptance(step_counts: list[list[int]], k: int) -> list[float]:
    """Fraction of steps whose draft token i (1..k) was accepted (the last, possibly cut, step left out)."""
    counts = [c for steps in step_counts for c in steps[:-1]]
    return [round(sum(c - 1 >= i for c in counts) / max(1, len(counts)), 3) for i in range(1, k + 1)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_speculative", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--ks", default="2,3,4,5,6,8")
    ap.add_argument("--compile", action="store_true", help="compiled prefill/steps (CUDA graphs on a GPU) for both")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    try:
        ks = [int(k) for k in args.ks.split(",")]
    except ValueError:
        ap.error(f"--ks takes comma-separated integers, got {args.ks!r}")
    for k in ks:
        check_k(k)
    dtype = getattr(torch, args.dtype)
    target = lf.load(cards_dir() / "stdlib-coder", dtype=dtype, device=args.device)
    draft = lf.load(cards_dir() / "stdlib-coder-draft", dtype=dtype, device=args.device)
    tok = lf.Tokenizer(cards_dir() / "stdlib-coder" / "tokenizer.model")
    card = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    results = {"benchmark": "speculative", "device": card, "torch": torch.__version__, "compiled": args.compile,
               "dtype": args.dtype,
               "command": "python scripts/bench_speculative.py " + " ".join(argv or sys.argv[1:]), "runs": []}
    n = args.new_tokens
    plain = timed(*target, tok, PROMPTS, n, args.device, args.compile)
    plain_tok_s = sum(len(o) for o, _, _ in plain) / sum(t for _, t, _ in plain)
    results["plain_tok_s"] = round(plain_tok_s, 1)
    print(f"plain decoding: {plain_tok_s:.1f} tok/s", flush=True)
    for k in ks:
        runs = timed(*target, tok, PROMPTS, n, args.device, args.compile, speculative="draft", draft=draft, k=k)
        tok_s = sum(len(o) for o, _, _ in runs) / sum(t for _, t, _ in runs)
        steps = [s for _, _, s in runs]
        mean = sum(sum(s[:-1]) for s in steps) / max(1, sum(len(s) - 1 for s in steps))
        r = {"proposer": "draft", "k": k, "tok_s": round(tok_s, 1), "speedup": round(tok_s / plain_tok_s, 2),
             "tokens_per_step": round(mean, 2), "acceptance_by_position": acceptance(steps, k),
             "same_tokens_as_plain": agreement(runs, plain)}
        results["runs"].append(r)
        print(r, flush=True)
    edit_plain = timed(*target, tok, [EDIT_PROMPT], n, args.device, args.compile)[0]
    for k in (4, 8):
        out, t, steps = timed(*target, tok, [EDIT_PROMPT], n, args.device, args.compile, speculative="lookup", k=k)[0]
        r = {"proposer": "lookup (code-editing prompt)", "k": k, "tok_s": round(len(out) / t, 1),
             "plain_tok_s": round(len(edit_plain[0]) / edit_plain[1], 1),
             "speedup": round((len(out) / t) / (len(edit_plain[0]) / edit_plain[1]), 2),
             "tokens_per_step": round(sum(steps[:-1]) / max(1, len(steps) - 1), 2),
             "acceptance_by_position": acceptance([steps], k),
             "same_tokens_as_plain": agreement([(out, t, steps)], [edit_plain])}
        results["runs"].append(r)
        print(r, flush=True)
    print(f"wrote {write_results(results, args.out, 'speculative', 'cpu' if args.device == 'cpu' else None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
