"""Plot training logs (the JSON scripts/train.py writes) as train/validation loss against tokens seen.

    python scripts/plot_loss.py benchmarks/training/stdlib-coder.json benchmarks/training/stdlib-coder-draft.json \
        --out benchmarks/training/loss.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for path in args.logs:
        log = json.loads(Path(path).read_text())
        tokens = [e["tokens"] / 1e6 for e in log]
        line, = ax.plot(tokens, [e["train_loss"] for e in log], "--", alpha=0.6, label=f"{Path(path).stem} train")
        ax.plot(tokens, [e["val_loss"] for e in log], "-", color=line.get_color(), label=f"{Path(path).stem} validation")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("llamafn code models on the Python standard library")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
