"""Quality of weight-only quantisation on the shipped target model (CPU is enough): validation
perplexity for the shipped bf16 weights and for int8, int4 g32/g64/g128 made from them, the agreement
of greedy continuations with the bf16 model's, token by token, and the logit error. Writes
benchmarks/results/quant-quality-cpu.json.

    python scripts/quant_quality.py --tokens stdlib-tokens.npz    # the training run's validation stream
    python scripts/quant_quality.py                               # or encode this Python's held-out stdlib files
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import llamafn as lf
from llamafn.config import cards_dir
from llamafn.params import cast
from llamafn.quant import quantize
from llamafn.train.data import encode_corpus, is_validation, stdlib_files, stdlib_root

SCHEMES = {"int8": ("int8", 128), "int4-g32": ("int4", 32), "int4-g64": ("int4", 64), "int4-g128": ("int4", 128)}
PROMPTS = ["def fibonacci(n):\n", "import os\nimport sys\n\n\ndef main(argv):\n", "class Stack:\n    def __init__(self):\n",
           "def read_config(path):\n    with open(path) as f:\n", "    for i, line in enumerate(lines):\n"]


def validation_tokens(tok: lf.Tokenizer, tokens_file: str | None) -> np.ndarray:
    if tokens_file:
        return np.load(tokens_file)["val"]
    root = stdlib_root()
    return encode_corpus(tok, [f for f in stdlib_files(root) if is_validation(f, root)])


@torch.no_grad()
def perplexity(params, cfg, tokens: np.ndarray, window: int, n_windows: int) -> float:
    """exp(mean next-token cross-entropy) over n_windows windows spread evenly over the stream."""
    stream = torch.from_numpy(tokens.astype(np.int64))
    starts = torch.linspace(0, len(stream) - window - 1, n_windows).long().tolist()
    total = 0.0
    for start in starts:
        chunk = stream[start: start + window + 1]
        logits, _ = lf.forward(params, chunk[None, :-1], cfg=cfg)
        total += F.cross_entropy(logits[0], chunk[1:], reduction="sum").item()
    return math.exp(total / (window * len(starts)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", help="a .npz with a 'val' token stream (default: encode the local stdlib's held-out files)")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    path = cards_dir() / "stdlib-coder"
    stored, cfg = lf.load(path)                                  # the shipped bf16 weights
    params = cast(stored, torch.float32)                          # computed in float32 on the CPU
    tok = lf.Tokenizer(path / "tokenizer.model")
    val = validation_tokens(tok, args.tokens)
    prompts = [tok.encode(p) for p in PROMPTS]
    reference = lf.generate(params, cfg, prompts, args.new_tokens)
    probe = torch.from_numpy(val[: args.window].astype(np.int64))[None]
    ref_logits, _ = lf.forward(params, probe, cfg=cfg)
    results = {"benchmark": "quant-quality", "model": "stdlib-coder (17.2M, shipped bf16)", "device": "cpu",
               "validation_tokens": args.window * args.windows,
               "command": "python scripts/quant_quality.py " + " ".join(argv or sys.argv[1:]),
               "rows": [{"weights": "bf16 (shipped)",
                         "perplexity": round(perplexity(params, cfg, val, args.window, args.windows), 4)}]}
    print(results["rows"][-1], flush=True)
    for name, (scheme, group) in SCHEMES.items():
        q = cast(quantize(stored, scheme, group_size=group), torch.float32)   # scales and norms; q stays integer
        out = lf.generate(q, cfg, prompts, args.new_tokens)
        same = [a == b for o, r in zip(out, reference) for a, b in zip(o, r)]
        first_diff = [next((i for i, (a, b) in enumerate(zip(o, r)) if a != b), len(r)) for o, r in zip(out, reference)]
        logits, _ = lf.forward(q, probe, cfg=cfg)
        results["rows"].append({
            "weights": name, "perplexity": round(perplexity(q, cfg, val, args.window, args.windows), 4),
            "greedy_token_agreement": round(sum(same) / len(same), 3),
            "greedy_tokens_before_first_difference": first_diff,
            "top1_agreement": round((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item(), 4),
            "max_abs_logit_err": round((logits - ref_logits).abs().max().item(), 3),
            "relative_rms_logit_err": round(((logits - ref_logits).norm() / ref_logits.norm()).item(), 4)})
        print(results["rows"][-1], flush=True)
    target = Path(args.out) / "quant-quality-cpu.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
