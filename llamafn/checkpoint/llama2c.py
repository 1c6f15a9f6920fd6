"""karpathy/llama2.c `.bin` checkpoints (export.py): float32 weights after a small header.

- legacy "version 0": 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
  a negative vocab_size means a separate classifier), then tok_embeddings, attention_norm, wq, wk, wv,
  wo, ffn_norm, w1, w2, w3 (each stacked over layers), norm, two RoPE tables, [output].
- "version 1": magic "ak42" (uint32 0x616b3432), int32 version 1, the same 7 ints, a uint8 "shared
  classifier" flag, zero padding to 256 bytes, then the norms first (attention_norm, ffn_norm, norm),
  tok_embeddings, wq, wk, wv, wo, w1, w2, w3, [output].
Weights are Meta's layout (interleaved RoPE pairs), so nothing is permuted. The file is memory-mapped.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from ..params import Params, check_params
from ..model.rope import rope_angles
from .common import Transform, LazyTensor, atomic_file, materialize

MAGIC = 0x616B3432
V1_HEADER_BYTES = 256
STACKED = ("attention_norm", "attention.wq", "attention.wk", "attention.wv", "attention.wo",
           "ffn_norm", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


def is_llama2c(path: Path) -> bool:
    """A `.bin` file (version 0 has no magic), or any file that starts with version 1's magic."""
    if not path.is_file():
        return False
    if path.suffix == ".bin":
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    return len(head) == 4 and struct.unpack("<I", head)[0] == MAGIC


def _layout(cfg: ModelConfig, version: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, stacked shape) in file order; per-layer names are stacked (n_layers, ...) arrays."""
    L, d, hd, hid, V = cfg.n_layers, cfg.dim, cfg.head_dim, cfg.hidden_dim, cfg.vocab_size
    kv = cfg.n_kv_heads * hd
    shape = {
        "attention_norm": (L, d), "attention.wq": (L, d, d), "attention.wk": (L, kv, d),
        "attention.wv": (L, kv, d), "attention.wo": (L, d, d), "ffn_norm": (L, d),
        "feed_forward.w1": (L, hid, d), "feed_forward.w2": (L, d, hid), "feed_forward.w3": (L, hid, d),
        "norm": (d,), "tok_embeddings": (V, d), "output": (V, d),
        "freq_cis": (2, cfg.max_seq_len, hd // 2),
    }
    if version == 0:
        order = ["tok_embeddings", "attention_norm", "attention.wq", "attention.wk", "attention.wv",
                 "attention.wo", "ffn_norm", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3",
                 "norm", "freq_cis"]
    else:
        order = ["attention_norm", "ffn_norm", "norm", "tok_embeddings", "attention.wq", "attention.wk",
                 "attention.wv", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"]
    if not cfg.tie_embeddings:
        order.append("output")
    return [(name, shape[name]) for name in order]


def _header(path: Path) -> tuple[int, int, ModelConfig]:
    """(version, byte offset of the weights, config)."""
    with open(path, "rb") as f:
        head = f.read(V1_HEADER_BYTES)
    if len(head) < 28:
        raise CheckpointError(f"{path}: {len(head)} bytes is too short for a llama2.c header")
    if struct.unpack("<I", head[:4])[0] == MAGIC:
        version = struct.unpack("<i", head[4:8])[0]
        if version != 1:
            raise CheckpointError(f"{path}: llama2.c version {version} is not supported "
                                  "(1 = float32 and the legacy version 0 are; 2 is int8 Q8_0)")
        if len(head) < 37:
            raise CheckpointError(f"{path}: truncated llama2.c v1 header")
        dims = struct.unpack("<7i", head[8:36])
        shared, offset = bool(head[36]), V1_HEADER_BYTES
    else:
        version, offset = 0, 28
        dims = struct.unpack("<7i", head[:28])
        shared = dims[5] > 0
        dims = dims[:5] + (abs(dims[5]),) + dims[6:]
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq = dims
    try:
        cfg = ModelConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, vocab_size=vocab,
                          hidden_dim=hidden, max_seq_len=seq, tie_embeddings=shared)
    except ConfigError as e:
        raise CheckpointError(f"{path}: not a llama2.c checkpoint, its header is inconsistent ({e})") from None
    return version, offset, cfg


def load_llama2c(path: Path, *, dtype: torch.dtype | None, device: str | torch.device,
                 transform: Transform | None = None) -> tuple[Params, ModelConfig]:
    version, offset, cfg = _header(path)
    layout = _layout(cfg, version)
    expected = offset + 4 * sum(int(np.prod(s)) for _, s in layout)
    size = path.stat().st_size
    if size != expected:
        raise CheckpointError(f"{path}: {size} bytes, but a llama2.c v{version} checkpoint with this header "
                              f"({cfg.dim=}, {cfg.n_layers=}, {cfg.vocab_size=}) has {expected} bytes"
                              + (" (truncated)" if size < expected else ""))
    data = np.memmap(path, dtype=np.float32, mode="r", offset=offset)
    lazy: dict[str, LazyTensor] = {}
    pos = 0
    for name, shape in layout:
        n = int(np.prod(shape))
        array = data[pos:pos + n].reshape(shape)
        pos += n
        if name in STACKED:
            for i in range(cfg.n_layers):
                lazy[f"layers.{i}.{name}.weight"] = LazyTensor(shape[1:], lambda a=array, i=i: torch.from_numpy(np.array(a[i])))
        elif name != "freq_cis":
            lazy[f"{name}.weight"] = LazyTensor(shape, lambda a=array: torch.from_numpy(np.array(a)))
    return materialize(lazy, cfg, str(path), dtype=dtype, device=device,
                       transform=transform), cfg


def save_llama2c(path: str | Path, params: Params, cfg: ModelConfig, *, version: int = 1,
                 overwrite: bool = False) -> Path:
    """Write a llama2.c checkpoint (legacy version 0 or version 1), readable by llama2.c's `run`."""
    check_params(params, cfg)
    if version not in (0, 1):
        raise CheckpointError(f"save_llama2c: version must be 0 or 1, got {version}")
    dims = [cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size, cfg.max_seq_len]
    if version == 0:
        dims[5] = cfg.vocab_size if cfg.tie_embeddings else -cfg.vocab_size
        header = struct.pack("<7i", *dims)
    else:
        header = struct.pack("<Ii7iB", MAGIC, 1, *dims, int(cfg.tie_embeddings)).ljust(V1_HEADER_BYTES, b"\0")
    with atomic_file(path, overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(header)
            for name, shape in _layout(cfg, version):
                if name == "freq_cis":
                    f.write(_rope_tables(cfg).numpy().tobytes())
                elif name in STACKED:
                    for i in range(cfg.n_layers):
                        f.write(params[f"layers.{i}.{name}.weight"].float().contiguous().cpu().numpy().tobytes())
                else:
                    f.write(params[f"{name}.weight"].float().contiguous().cpu().numpy().tobytes())
    return Path(path)


def _rope_tables(cfg: ModelConfig) -> torch.Tensor:
    """The (2, seq_len, head_dim/2) cos/sin tables version 0 files carry (unused when loading)."""
    cos, sin = rope_angles(torch.arange(cfg.max_seq_len)[None], cfg)
    return torch.stack((cos[0], sin[0]))
