"""Meta's reference format: `params.json` + `consolidated.{00,01,...}.pth`, one shard per model-parallel
rank (llama/model.py of Meta's llama and llama3 repos).

Shards are merged by shape: column-parallel weights (wq, wk, wv, w1, w3, output) are split along the
output rows, row-parallel ones (wo, w2) along the input columns, the embedding along its columns in
Llama 2 (ParallelEmbedding) and its rows in Llama 3 (VocabParallelEmbedding), and norms are replicated.
For every key the one axis along which the shards add up to the config's shape is the split axis, so
no table of names is needed. `rope.freqs` (a buffer older checkpoints carry) is dropped.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch

from ..config import ModelConfig, read_json
from ..errors import CheckpointError
from ..params import Params, check_params, param_shapes
from .common import Transform, LazyTensor, atomic_dir, copy_tokenizer, materialize

COLUMN_SPLIT = ("wq.weight", "wk.weight", "wv.weight", "w1.weight", "w3.weight", "output.weight")
ROW_SPLIT = ("wo.weight", "w2.weight", "tok_embeddings.weight")
IGNORED = ("rope.freqs",)


def shard_paths(path: Path) -> list[Path]:
    return sorted(path.glob("consolidated.*.pth"))


def is_meta(path: Path) -> bool:
    return path.is_dir() and (path / "params.json").is_file() and bool(shard_paths(path))


def _read_shard(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return {k: v for k, v in state.items() if k not in IGNORED}


def _merge(key: str, parts: list[torch.Tensor], expected: tuple[int, ...] | None, source: str) -> LazyTensor:
    """The one lazy tensor of `key` from its shards: replicated or concatenated along the split axis."""
    if len(parts) == 1 or expected is None or tuple(parts[0].shape) == expected:
        return LazyTensor(tuple(parts[0].shape), lambda: parts[0])
    for axis in range(len(expected)):
        shape = list(parts[0].shape)
        shape[axis] = sum(p.shape[axis] for p in parts)
        if tuple(shape) == expected:
            return LazyTensor(expected, lambda: torch.cat(parts, dim=axis))
    raise CheckpointError(f"{source}: {key} shards {[tuple(p.shape) for p in parts]} do not add up to {expected}")


def load_meta(path: Path, *, dtype: torch.dtype | None, device: str | torch.device,
              transform: Transform | None = None) -> tuple[Params, ModelConfig]:
    shards = [_read_shard(p) for p in shard_paths(path)]
    keys = list(shards[0])
    for p, s in zip(shard_paths(path)[1:], shards[1:]):
        if list(s) != keys:
            raise CheckpointError(f"{p}: its keys differ from {shard_paths(path)[0].name}'s")
    meta = read_json(path / "params.json")
    if int(meta.get("vocab_size", -1)) <= 0 and "tok_embeddings.weight" in shards[0]:
        emb = [s["tok_embeddings.weight"] for s in shards]
        dim = int(meta.get("dim", 0))
        meta["vocab_size"] = emb[0].shape[0] if emb[0].shape[1] != dim else sum(e.shape[0] for e in emb)
    cfg = ModelConfig.from_dict(meta, source=str(path / "params.json"))
    expected = param_shapes(cfg)
    lazy = {k: _merge(k, [s[k] for s in shards], expected.get(k), str(path)) for k in keys}
    return materialize(lazy, cfg, str(path), dtype=dtype, device=device,
                       transform=transform), cfg


def _split(key: str, t: torch.Tensor, n: int) -> list[torch.Tensor]:
    if key.endswith(COLUMN_SPLIT):
        return list(t.chunk(n, dim=0))
    if key.endswith(ROW_SPLIT):
        return list(t.chunk(n, dim=1))
    return [t] * n


def save_meta(path: str | Path, params: Params, cfg: ModelConfig, *, n_shards: int = 1,
              tokenizer: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write Meta's layout with `n_shards` model-parallel shards (Llama 2's split axes), plus
    `tokenizer.model` when given."""
    check_params(params, cfg)
    with atomic_dir(path, overwrite) as tmp:
        for rank in range(n_shards):
            shard = {k: _split(k, v, n_shards)[rank].contiguous().cpu() for k, v in params.items()}
            torch.save(shard, tmp / f"consolidated.{rank:02d}.pth")
        (tmp / "params.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        copy_tokenizer(tokenizer, tmp)
    return Path(path)
