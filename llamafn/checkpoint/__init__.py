"""Everything that reads or writes weight files. `load(path)` detects the format:

- a llama2.c `.bin` file (legacy version 0 or version 1);
- a folder with `config.json`: Hugging Face transformers (safetensors, sharded or not);
- a folder with `params.json` and `consolidated.*.pth`: Meta's reference format (any number of shards);
- a folder with `params.json` and `model.safetensors`: ours (`save`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import CheckpointError, InputError
from ..params import Params
from ..quant import quantizer
from ..quant.formats import DEFAULT_GROUP_SIZE
from .hf import is_hf, load_hf, save_hf
from .llama2c import is_llama2c, load_llama2c, save_llama2c
from .meta import is_meta, load_meta, save_meta
from .native import is_native, load_native, save

FORMATS = (("llama2c", is_llama2c, load_llama2c), ("native", is_native, load_native),
           ("hf", is_hf, load_hf), ("meta", is_meta, load_meta))


def detect_format(path: str | Path) -> str:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    for name, matches, _ in FORMATS:
        if matches(path):
            return name
    found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) if path.is_dir() else path.name
    raise CheckpointError(
        f"{path}: not a known checkpoint (expected a llama2.c .bin, a Hugging Face folder with config.json, "
        f"Meta's params.json + consolidated.*.pth, or params.json + model.safetensors); found: {found or 'nothing'}")


def float_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A floating torch dtype, given as one or by its name ("bfloat16"); None stays None (as stored)."""
    if dtype is None:
        return None
    named = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not (isinstance(named, torch.dtype) and named.is_floating_point):
        raise InputError(f"dtype must be a floating torch dtype or its name (e.g. torch.bfloat16, 'float16'), "
                         f"got {dtype!r}")
    return named


def load(path: str | Path, *, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
         quantize: str | None = None, group_size: int = DEFAULT_GROUP_SIZE, quantize_head: bool = False) -> tuple[Params, ModelConfig]:
    """Read a checkpoint of any supported format into (params, cfg), cast to `dtype` (None: as stored)
    on `device`. Tensors are read lazily from memory-mapped files, one at a time. With `quantize`
    ("int8" or "int4", llamafn.quant.quantize's schemes) each matrix is quantised on `device` as soon as
    it is read, so the float model is never whole in memory: a 7B model loads to int4 on a GPU in
    about 4 GB."""
    if quantize_head and not quantize:
        raise InputError("load: quantize_head=True needs quantize='int8' or 'int4'")
    path = Path(path)
    dtype = float_dtype(dtype)
    fmt = detect_format(path)
    loader = next(load_fn for name, _, load_fn in FORMATS if name == fmt)
    transform = quantizer(quantize, group_size=group_size, output=quantize_head) if quantize else None
    return loader(path, dtype=dtype, device=device, transform=transform)


__all__ = ["detect_format", "load", "save", "save_hf", "save_llama2c", "save_meta"]
