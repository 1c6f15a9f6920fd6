"""The training corpus every machine with Python already has: the `.py` files of the standard library
of the interpreter that runs the script (`sysconfig.get_paths()["stdlib"]`), in sorted order, split
into train and validation by file (a stable hash of the relative path), tokenised into one stream
with BOS before and EOS after each file."""

from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..tokenizer import Tokenizer


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Every .py file under the stdlib folder (site-packages excluded), sorted: a deterministic corpus."""
    root = root or stdlib_root()
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "__pycache__" not in p.parts)


def is_validation(path: Path, root: Path, percent: int = 2) -> bool:
    """A file is held out when a CRC32 of its path relative to the stdlib root falls in the first `percent`."""
    return zlib.crc32(str(path.relative_to(root)).encode()) % 100 < percent


def read_sources(files: list[Path]) -> Iterator[str]:
    """The text of each file that is valid UTF-8 (a few test fixtures are not; they are skipped)."""
    for path in files:
        try:
            yield path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue


def encode_corpus(tok: Tokenizer, files: list[Path]) -> np.ndarray:
    """One uint16 stream: BOS, file, EOS, BOS, file, EOS, ..."""
    if tok.vocab_size > 65535:
        raise ValueError(f"a {tok.vocab_size}-token vocabulary does not fit uint16")
    ids: list[int] = []
    for text in read_sources(files):
        ids.extend(tok.encode(text, bos=True, eos=True))
    return np.asarray(ids, dtype=np.uint16)


def random_batch(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """(batch_size, seq_len + 1) windows at random offsets of a 1-D token stream: inputs and targets."""
    starts = torch.randint(0, tokens.numel() - seq_len - 1, (batch_size,), generator=generator)
    return torch.stack([tokens[s:s + seq_len + 1] for s in starts.tolist()]).long()
