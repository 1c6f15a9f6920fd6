"""Train the shipped code models (target or draft) on the standard library's .py files.

    python scripts/train.py --size target --out runs/target     # then: --resume to continue a run
    python scripts/train.py --size draft --out runs/draft

It tokenises the corpus with the project's code tokenizer (or reads --tokens, a .npz of train/val
streams made here, for a machine whose Python differs), trains, and writes the bf16 model in the
project's format to OUT/model (safetensors + params.json + tokenizer.model) and the loss log to OUT/log.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import torch

import llamafn as lf
from llamafn.config import ModelConfig, cards_dir
from llamafn.params import cast, n_params
from llamafn.train.data import encode_corpus, is_validation, stdlib_files, stdlib_root
from llamafn.train.loop import TrainConfig, train

SIZES = {
    "target": dict(dim=384, n_layers=8, n_heads=6, n_kv_heads=2, hidden_dim=1024),
    "draft": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=384, tie_embeddings=True),
}


def corpus_tokens(tokenizer: Path, tokens_file: str | None) -> tuple[np.ndarray, np.ndarray]:
    if tokens_file:
        data = np.load(tokens_file)
        return data["train"], data["val"]
    tok, root = lf.Tokenizer(tokenizer), stdlib_root()
    files = stdlib_files(root)
    return (encode_corpus(tok, [f for f in files if not is_validation(f, root)]),
            encode_corpus(tok, [f for f in files if is_validation(f, root)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="target")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", default=str(cards_dir() / "stdlib-coder" / "tokenizer.model"))
    ap.add_argument("--tokens", help=".npz with 'train' and 'val' uint16 streams (see --dump-tokens)")
    ap.add_argument("--dump-tokens", help="write the tokenised corpus to this .npz and exit")
    ap.add_argument("--resume", action="store_true")
    for f in dataclasses.fields(TrainConfig):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = ap.parse_args()
    train_np, val_np = corpus_tokens(Path(args.tokenizer), args.tokens)
    if args.dump_tokens:
        np.savez(args.dump_tokens, train=train_np, val=val_np)
        print(f"wrote {args.dump_tokens}: {len(train_np):,} train and {len(val_np):,} validation tokens")
        return 0
    tok = lf.Tokenizer(args.tokenizer)
    cfg = ModelConfig(vocab_size=tok.vocab_size, max_seq_len=1024, **SIZES[args.size])
    tc = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"{args.size}: {n_params(cfg) / 1e6:.2f}M parameters; {len(train_np):,} train / {len(val_np):,} "
          f"validation tokens; {tc.steps * tc.batch_size * tc.seq_len / len(train_np):.1f} epochs", file=sys.stderr)
    params, log = train(cfg, tc, torch.from_numpy(train_np.astype(np.int64)),
                        torch.from_numpy(val_np.astype(np.int64)), Path(args.out), device=device, resume=args.resume)
    lf.save(Path(args.out) / "model", cast(params, torch.bfloat16), cfg, tokenizer=args.tokenizer, overwrite=True)
    val = log[-1]["val_loss"]
    print(f"wrote {args.out}/model: validation loss {val:.3f}, perplexity {math.exp(val):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
