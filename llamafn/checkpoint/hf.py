"""Hugging Face transformers Llama folders: `config.json` (transformers 4.x or 5.x) and
`model.safetensors` or shards listed in `model.safetensors.index.json`.

Keys are renamed into Meta's scheme, and the rows of q_proj/k_proj are un-permuted: transformers'
conversion script (convert_llama_weights_to_hf.py, `permute`) reorders each head's rows from Meta's
interleaved pairs (2i, 2i+1) to halves (i, i + d/2) for its rotate_half RoPE; we undo it so one RoPE
serves every format.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import ModelConfig, read_json
from ..errors import CheckpointError
from ..params import Params, check_params
from .common import Transform, LazyTensor, atomic_dir, copy_tokenizer, materialize
from .native import open_safetensors

RENAMES = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
}
LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight$")


def is_hf(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def meta_key(hf_key: str) -> str | None:
    """Meta's name of a transformers key (None for buffers to drop, the key itself if unknown)."""
    if hf_key.endswith("rotary_emb.inv_freq"):
        return None
    if hf_key == "model.embed_tokens.weight":
        return "tok_embeddings.weight"
    if hf_key == "model.norm.weight":
        return "norm.weight"
    if hf_key == "lm_head.weight":
        return "output.weight"
    m = LAYER_KEY.match(hf_key)
    if m and m.group(2) in RENAMES:
        return f"layers.{m.group(1)}.{RENAMES[m.group(2)]}.weight"
    return hf_key


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(n_heads * d, dim) in transformers' half-split row order -> Meta's interleaved order."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's interleaved row order -> transformers' (the inverse of `unpermute`)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: has no 'weight_map'")
        files = [path / f for f in sorted(set(weight_map.values()))]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        bins = sorted(p.name for p in path.glob("pytorch_model*.bin"))
        hint = f" (found {', '.join(bins)}: re-save with safe_serialization=True)" if bins else ""
        raise CheckpointError(f"{path}: no .safetensors weights{hint}")
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{path}: weight files listed in the index are missing: {', '.join(missing)}")
    return files


def load_hf(path: Path, *, dtype: torch.dtype | None, device: str | torch.device,
            transform: Transform | None = None) -> tuple[Params, ModelConfig]:
    cfg = ModelConfig.from_hf(read_json(path / "config.json"), source=str(path / "config.json"))
    lazy: dict[str, LazyTensor] = {}
    for f in weight_files(path):
        for hf_key, t in open_safetensors(f).items():
            key = meta_key(hf_key)
            if key is None or (key == "output.weight" and cfg.tie_embeddings):
                continue
            heads = {"wq": cfg.n_heads, "wk": cfg.n_kv_heads}.get(key.split(".")[-2])
            if heads is not None and key.startswith("layers."):
                t = LazyTensor(t.shape, lambda t=t, h=heads: unpermute(t.read(), h))
            lazy[key] = t
    return materialize(lazy, cfg, str(path), dtype=dtype, device=device,
                       transform=transform), cfg


def save_hf(path: str | Path, params: Params, cfg: ModelConfig, *, tokenizer: str | Path | None = None,
            overwrite: bool = False) -> Path:
    """Write a folder transformers' LlamaForCausalLM.from_pretrained reads (config.json + model.safetensors),
    q/k rows permuted to its rotate-half RoPE layout, plus `tokenizer.model` when given."""
    check_params(params, cfg)
    hf_names = {v: k for k, v in RENAMES.items()}
    tensors = {}
    for key, t in params.items():
        t = t.detach().contiguous().cpu()
        if key.startswith("layers."):
            _, i, rest = key.split(".", 2)
            module = rest[: -len(".weight")]
            if module in ("attention.wq", "attention.wk"):
                t = permute(t, cfg.n_heads if module.endswith("wq") else cfg.n_kv_heads).contiguous()
            tensors[f"model.layers.{i}.{hf_names[module]}.weight"] = t
        else:
            tensors[{"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
                     "output.weight": "lm_head.weight"}[key]] = t
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling is not None:
        s = cfg.rope_scaling
        rope = {"rope_type": "llama3", "rope_theta": cfg.rope_theta, "factor": s.factor,
                "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_seq_len}
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "vocab_size": cfg.vocab_size, "rms_norm_eps": cfg.norm_eps,
        "max_position_embeddings": cfg.max_seq_len, "tie_word_embeddings": cfg.tie_embeddings,
        "rope_theta": cfg.rope_theta, "rope_scaling": rope if cfg.rope_scaling is not None else None,
        "rope_parameters": rope, "hidden_act": "silu", "torch_dtype": str(next(iter(tensors.values())).dtype)[6:],
    }
    with atomic_dir(path, overwrite) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        copy_tokenizer(tokenizer, tmp)
    return Path(path)
