"""ModelConfig: the shape of a LLaMA model as one frozen (hashable) dataclass, so that it can be a
compile-time constant; readers for Meta's `params.json` and Hugging Face's `config.json`; the presets
(model cards) shipped under `params/`.

The feed-forward width follows Meta's rule (llama/model.py, `FeedForward.__init__`):
hidden = multiple_of * ceil(ffn_dim_multiplier * int(2 * 4 * dim / 3) / multiple_of).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1 frequency scaling (Meta's `apply_scaling`): long wavelengths are divided by `factor`,
    short ones kept, and the band between `low_freq_factor` and `high_freq_factor` interpolated."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_seq_len: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    hidden_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 2048
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads:
            raise ConfigError(f"ModelConfig: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"ModelConfig: n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"ModelConfig: head_dim {self.head_dim} must be even for RoPE")
        if not self.norm_eps > 0 or not self.rope_theta > 0:
            raise ConfigError(
                f"ModelConfig: norm_eps ({self.norm_eps}) and rope_theta ({self.rope_theta}) must be positive")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def n_rep(self) -> int:
        """How many query heads share one key/value head (1 for MHA, n_heads for MQA)."""
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict[str, Any]:
        """A params.json-style dict that `from_dict` reads back (also readable as Meta's params.json)."""
        out = dataclasses.asdict(self)
        if self.rope_scaling is None:
            del out["rope_scaling"]
        else:
            out["use_scaled_rope"] = True
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "params.json") -> "ModelConfig":
        """Read Meta's params.json keys (and ours, which add `hidden_dim` and `tie_embeddings`)."""
        with _fields_of(source):
            dim, n_heads = int(d["dim"]), int(d["n_heads"])
            hidden_dim = d.get("hidden_dim") or ffn_hidden_dim(
                dim, int(d.get("multiple_of", 256)), d.get("ffn_dim_multiplier"))
            scaling = None
            if d.get("use_scaled_rope") or d.get("rope_scaling"):
                s = d.get("rope_scaling") or {}
                scaling = RopeScaling(
                    factor=float(s.get("factor", 8.0)),
                    low_freq_factor=float(s.get("low_freq_factor", 1.0)),
                    high_freq_factor=float(s.get("high_freq_factor", 4.0)),
                    original_max_seq_len=int(s.get("original_max_position_embeddings",
                                                   s.get("original_max_seq_len", 8192))),
                )
            vocab_size = int(d["vocab_size"])
            if vocab_size <= 0:
                raise ConfigError(f"{source}: vocab_size is {vocab_size}; set it to the tokenizer's size")
            return cls(
                dim=dim, n_layers=int(d["n_layers"]), n_heads=n_heads,
                n_kv_heads=int(d.get("n_kv_heads") or n_heads), vocab_size=vocab_size,
                hidden_dim=int(hidden_dim), norm_eps=float(d.get("norm_eps", 1e-5)),
                rope_theta=float(d.get("rope_theta", 10000.0)), rope_scaling=scaling,
                max_seq_len=int(d.get("max_seq_len", 2048)),
                tie_embeddings=bool(d.get("tie_embeddings", False)),
            )

    @classmethod
    def from_hf(cls, d: dict[str, Any], *, source: str = "config.json") -> "ModelConfig":
        """Read a transformers `LlamaConfig` dict: 4.x (`rope_theta`, `rope_scaling`) or 5.x (`rope_parameters`)."""
        model_type = d.get("model_type", "llama")
        if model_type != "llama":
            raise ConfigError(f"{source}: model_type is {model_type!r}; only 'llama' checkpoints are supported")
        with _fields_of(source):
            dim, n_heads = int(d["hidden_size"]), int(d["num_attention_heads"])
            head_dim = d.get("head_dim")
            if head_dim is not None and int(head_dim) != dim // n_heads:
                raise ConfigError(f"{source}: head_dim {head_dim} != hidden_size/num_attention_heads "
                                  f"({dim // n_heads}); decoupled head sizes are not supported")
            rope = dict(d.get("rope_parameters") or {})
            rope.update({k: v for k, v in (d.get("rope_scaling") or {}).items() if v is not None})
            theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
            rope_type = rope.get("rope_type", rope.get("type", "default"))
            scaling = None
            if rope_type == "llama3":
                scaling = RopeScaling(
                    factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                    high_freq_factor=float(rope["high_freq_factor"]),
                    original_max_seq_len=int(rope["original_max_position_embeddings"]))
            elif rope_type not in ("default", None):
                raise ConfigError(f"{source}: rope type {rope_type!r} is not supported (default, llama3)")
            return cls(
                dim=dim, n_layers=int(d["num_hidden_layers"]), n_heads=n_heads,
                n_kv_heads=int(d.get("num_key_value_heads") or n_heads), vocab_size=int(d["vocab_size"]),
                hidden_dim=int(d["intermediate_size"]), norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                rope_theta=float(theta), rope_scaling=scaling,
                max_seq_len=int(d.get("max_position_embeddings", 2048)),
                tie_embeddings=bool(d.get("tie_word_embeddings", False)),
            )


@contextlib.contextmanager
def _fields_of(source: str) -> Iterator[None]:
    """Turn a missing key or an unconvertible value met while reading `source` into a ConfigError."""
    try:
        yield
    except KeyError as e:
        raise ConfigError(f"{source}: missing required field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{source}: bad value ({e})") from None


def ffn_hidden_dim(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """Meta's SwiGLU width: 2/3 of 4*dim, scaled, rounded up to a multiple of `multiple_of`."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file, turning I/O and syntax errors into a ConfigError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def cards_dir() -> Path:
    """The folder of model cards and shipped checkpoints: `params/` of a source checkout, else the copy
    that a regular install places in the package as `llamafn.cards`."""
    checkout = Path(__file__).resolve().parent.parent / "params"
    if checkout.is_dir():
        return checkout
    return Path(str(resources.files("llamafn.cards")))


def preset_names() -> list[str]:
    return sorted(p.stem for p in cards_dir().glob("*.json"))


def preset(name: str) -> ModelConfig:
    """The ModelConfig of a known model by name, e.g. `preset("llama-2-7b")`."""
    path = cards_dir() / f"{name.lower()}.json"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(preset_names())}")
    return ModelConfig.from_dict(read_json(path), source=str(path))
