"""llamafn's own format: a folder with `model.safetensors` (Meta key names) and `params.json`
(ModelConfig.to_dict, readable as Meta's params.json too), plus `tokenizer.model` when given.
The only format that stores quantised weights (each as `<key>.q`, `<key>.scale`[, `<key>.zero`])."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..config import ModelConfig, read_json
from ..errors import CheckpointError
from ..params import Params, check_params
from ..quant import to_tensors
from .common import Transform, LazyTensor, atomic_dir, copy_tokenizer, materialize

WEIGHTS = "model.safetensors"
CONFIG = "params.json"


def is_native(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS).is_file() and (path / CONFIG).is_file()


def open_safetensors(path: Path) -> dict[str, LazyTensor]:
    """Lazy, memory-mapped tensors of one .safetensors file; corrupt or truncated files raise CheckpointError."""
    try:
        f = safe_open(str(path), framework="pt", device="cpu")
        return {k: LazyTensor(tuple(f.get_slice(k).get_shape()), lambda k=k: f.get_tensor(k)) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def load_native(path: Path, *, dtype: torch.dtype | None, device: str | torch.device,
                transform: Transform | None = None) -> tuple[Params, ModelConfig]:
    cfg = ModelConfig.from_dict(read_json(path / CONFIG), source=str(path / CONFIG))
    return materialize(open_safetensors(path / WEIGHTS), cfg, str(path / WEIGHTS), dtype=dtype, device=device,
                       transform=transform), cfg


def save(path: str | Path, params: Params, cfg: ModelConfig, *, tokenizer: str | Path | None = None,
         overwrite: bool = False) -> Path:
    """Write `params` and `cfg` to the folder `path` (atomically: all or nothing). Returns the path.
    Quantised params are written in their storage layout (llamafn.quant.to_tensors)."""
    check_params(params, cfg)
    with atomic_dir(path, overwrite) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in to_tensors(params).items()}, str(tmp / WEIGHTS),
                  metadata={"format": "pt", "producer": "llamafn"})
        (tmp / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        copy_tokenizer(tokenizer, tmp)
    return Path(path)
