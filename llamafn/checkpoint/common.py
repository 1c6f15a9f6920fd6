"""What every loader shares: turning lazily read tensors into the params dict (cast, moved, checked),
with a progress bar on big loads, and writing a folder atomically."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch

from ..config import ModelConfig
from ..errors import CheckpointError, InputError, ParamsError
from ..params import Params, check_params, is_fused, param_shapes, tensors
from ..quant import from_tensors, is_quantized
from ..quant.formats import check_weight



class LazyTensor(NamedTuple):
    """A tensor in a file: its shape is known without reading it; `read()` returns it (mmap-backed
    where the format allows)."""

    shape: tuple[int, ...]
    read: Callable[[], torch.Tensor]


PROGRESS_MIN_WEIGHTS = 500_000_000
Transform = Callable[[str, object, bool], object]


def progress(total: int, label: str) -> Callable[[int], None]:
    """A stderr progress bar over `total` weights (on a terminal, for models over 500M weights);
    call it with the count done."""
    if total < PROGRESS_MIN_WEIGHTS or not sys.stderr.isatty():
        return lambda done: None
    start = time.monotonic()

    def update(done: int) -> None:
        rate = done / max(time.monotonic() - start, 1e-6) / 1e9
        bar = "#" * int(30 * done / total)
        end = "\n" if done >= total else ""
        print(f"\r{label} [{bar:<30}] {done / 1e9:.2f}/{total / 1e9:.2f} G weights, {rate:.2f} G/s",
              end=end, file=sys.stderr, flush=True)
    return update


def materialize(lazy: dict[str, LazyTensor], cfg: ModelConfig, source: str, *,
                dtype: torch.dtype | None, device: str | torch.device, transform: Transform | None = None) -> Params:
    """Check every key and shape against `cfg` before reading anything, then read each tensor, cast it
    to `dtype` (None: keep the stored dtype) and move it to `device`, one at a time. On the `meta`
    device nothing is read (shapes are still checked): that is how `llamafn info` plans memory.

    Quantised weights (`<key>.q`, `.scale`, `.zero` tensors, llamafn.quant) are read as they are stored,
    never through a float copy; `dtype` casts only their scales. `transform(key, value, tied_embeddings)`
    replaces each value as soon as it is read (llamafn.quant.quantizer), so only one float weight at a
    time is ever held."""
    lazy = from_tensors(lazy)
    try:
        for key, t in lazy.items():
            if is_quantized(t):
                check_weight(t, key)
        check_params({k: type(t)(*(torch.empty(f.shape, device="meta") for f in t)) if is_quantized(t)
                      else torch.empty(t.shape, device="meta") for k, t in lazy.items()}, cfg)
    except (ParamsError, InputError) as e:
        raise CheckpointError(f"{source}: the weights contradict the model config: {e}") from None
    total = sum(torch.Size(f.shape).numel() for f in tensors(lazy))
    bar, done, params = progress(total, f"loading {Path(source).name}"), 0, {}

    def read(f: LazyTensor) -> torch.Tensor:
        nonlocal done
        if torch.device(device).type == "meta":
            return torch.empty(f.shape, dtype=dtype or torch.float32, device="meta")
        t = f.read()
        done += t.numel()
        bar(done)
        return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)

    for key in param_shapes(cfg, fused=is_fused(lazy)):
        t = lazy[key]
        params[key] = type(t)(*map(read, t)) if is_quantized(t) else read(t)
        if transform is not None and torch.device(device).type != "meta":
            params[key] = transform(key, params[key], cfg.tie_embeddings)   # e.g. quantise it before the next read
    return params


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path`, on error it is removed,
    so a failed save never leaves a half-written checkpoint."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path}: already exists (pass overwrite=True / --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    except OSError as e:
        raise e if isinstance(e, CheckpointError) else CheckpointError(f"{path}: could not write ({e})") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def copy_tokenizer(tokenizer: str | Path | None, folder: Path) -> None:
    """tokenizer.model in `folder`, a copy of the tokenizer file (sentencepiece or Llama 3's tiktoken), if
    one is given: where `llamafn generate` and `load` look for it next to the weights."""
    if tokenizer is not None:
        shutil.copyfile(tokenizer, folder / "tokenizer.model")


@contextlib.contextmanager
def atomic_file(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file name beside `path`, renamed onto `path` on success and removed on error."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path}: already exists (pass overwrite=True / --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise e if isinstance(e, CheckpointError) else CheckpointError(f"{path}: could not write ({e})") from e
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process umask (tempfile creates private files; a saved checkpoint should get the usual mode)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
