"""The params dict: Meta's flat key names (DESIGN.md, convention 1), its shapes for a config, random
initialisation, validation, and pure transforms (cast).

Keys (weights are `nn.Linear` layout, (out_features, in_features)):
    tok_embeddings.weight                    (vocab, dim)
    layers.{i}.attention_norm.weight         (dim,)
    layers.{i}.attention.wq.weight           (n_heads * head_dim, dim)
    layers.{i}.attention.wk.weight           (n_kv_heads * head_dim, dim)
    layers.{i}.attention.wv.weight           (n_kv_heads * head_dim, dim)
    layers.{i}.attention.wo.weight           (dim, n_heads * head_dim)
    layers.{i}.ffn_norm.weight               (dim,)
    layers.{i}.feed_forward.w1.weight        (hidden, dim)   gate
    layers.{i}.feed_forward.w2.weight        (dim, hidden)   down
    layers.{i}.feed_forward.w3.weight        (hidden, dim)   up
    norm.weight                              (dim,)
    output.weight                            (vocab, dim)    absent when embeddings are tied

`fuse` is a pure transform to the decode-time layout, which the layers pick by the keys present:
    layers.{i}.attention.wqkv.weight         ((n_heads + 2 * n_kv_heads) * head_dim, dim)   wq; wk; wv
    layers.{i}.feed_forward.w13.weight       (2 * hidden, dim)                              w1; w3
one matrix product instead of three (two), each reading the activations once.

A matrix may also be a quantised weight (llamafn.quant): a NamedTuple of tensors with the output
channels on dim 0, which the transforms here handle field by field.
"""

from __future__ import annotations

import math

import torch

from .config import ModelConfig
from .errors import ParamsError
from .quant.formats import QuantWeight, is_quantized

Params = dict[str, "torch.Tensor | QuantWeight"]

LAYER_KEYS = (
    "attention_norm.weight",
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wqkv.weight",
    "attention.wo.weight",
    "ffn_norm.weight",
    "feed_forward.w1.weight",
    "feed_forward.w3.weight",
    "feed_forward.w13.weight",
    "feed_forward.w2.weight",
)


def param_shapes(cfg: ModelConfig, fused: bool = False) -> dict[str, tuple[int, ...]]:
    """Every key of a model with config `cfg` and its shape, in checkpoint order (or `fuse`'s layout)."""
    d, hd, hid = cfg.dim, cfg.head_dim, cfg.hidden_dim
    if fused:
        attn = {"attention.wqkv.weight": ((cfg.n_heads + 2 * cfg.n_kv_heads) * hd, d)}
        ffn = {"feed_forward.w13.weight": (2 * hid, d), "feed_forward.w2.weight": (d, hid)}
    else:
        attn = {"attention.wq.weight": (cfg.n_heads * hd, d), "attention.wk.weight": (cfg.n_kv_heads * hd, d),
                "attention.wv.weight": (cfg.n_kv_heads * hd, d)}
        ffn = {"feed_forward.w1.weight": (hid, d), "feed_forward.w2.weight": (d, hid),
               "feed_forward.w3.weight": (hid, d)}
    layer = {"attention_norm.weight": (d,), **attn, "attention.wo.weight": (d, cfg.n_heads * hd),
             "ffn_norm.weight": (d,), **ffn}
    shapes = {"tok_embeddings.weight": (cfg.vocab_size, d)}
    for i in range(cfg.n_layers):
        shapes.update({f"layers.{i}.{k}": s for k, s in layer.items()})
    shapes["norm.weight"] = (d,)
    if not cfg.tie_embeddings:
        shapes["output.weight"] = (cfg.vocab_size, d)
    return shapes


def n_params(cfg: ModelConfig) -> int:
    return sum(math.prod(s) for s in param_shapes(cfg).values())


def init_params(cfg: ModelConfig, *, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Params:
    """Random weights: norms are ones, embeddings N(0, 1), matrices N(0, 1/fan_in) so activations stay O(1).

    On the `meta` device nothing is allocated: use it to plan memory (`sum(t.nbytes for t in ...)`).
    Values are drawn on the generator's device (CPU by default) and then moved, so a seed gives the
    same weights on every device.
    """
    params: Params = {}
    gen_device = generator.device if generator is not None else torch.device("cpu")
    for key, shape in param_shapes(cfg).items():
        if torch.device(device).type == "meta":
            params[key] = torch.empty(shape, dtype=dtype, device="meta")
            continue
        if key.endswith("norm.weight"):
            t = torch.ones(shape)
        else:
            std = 1.0 if key == "tok_embeddings.weight" else shape[1] ** -0.5
            t = torch.randn(shape, generator=generator, device=gen_device) * std
        params[key] = t.to(device=device, dtype=dtype)
    return params


def is_fused(params: Params) -> bool:
    return any(k.endswith(".wqkv.weight") for k in params)


def check_params(params: Params, cfg: ModelConfig) -> None:
    """Raise ParamsError naming every missing, unexpected or misshapen key (all of them, not the first).
    Both layouts are accepted: Meta's, and `fuse`'s (recognised by its wqkv keys)."""
    expected = param_shapes(cfg, fused=is_fused(params))
    missing = [k for k in expected if k not in params]
    unexpected = [k for k in params if k not in expected]
    misshapen = [f"{k}: expected {expected[k]}, got {tuple(params[k].shape)}"
                 for k in expected if k in params and tuple(params[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if misshapen:
        problems.append(f"misshapen keys ({len(misshapen)}): {'; '.join(misshapen)}")
    if problems:
        raise ParamsError("params do not match the config:\n  " + "\n  ".join(problems))


def layer_params(params: Params, i: int) -> Params:
    """The slice of layer `i`, keys without the `layers.{i}.` prefix."""
    prefix = f"layers.{i}."
    return {k: params[prefix + k] for k in LAYER_KEYS if prefix + k in params}


def concat_rows(weights: list) -> torch.Tensor | QuantWeight:
    """Matrices stacked along the output channels; quantised weights field by field."""
    if is_quantized(weights[0]):
        return type(weights[0])(*(torch.cat(fields) for fields in zip(*weights)))
    return torch.cat(weights)


def split_rows(w: torch.Tensor | QuantWeight, sizes: list[int]) -> list:
    """The inverse of concat_rows: views of consecutive output-channel blocks."""
    if is_quantized(w):
        return [type(w)(*parts) for parts in zip(*(f.split(sizes) for f in w))]
    return list(w.split(sizes))


def fuse(params: Params) -> Params:
    """A new dict with each layer's wq, wk, wv stacked into wqkv and w1, w3 into w13 (see the module doc)."""
    out: Params = {}
    for key, value in params.items():
        if key.endswith(("attention.wk.weight", "attention.wv.weight", "feed_forward.w3.weight")):
            continue
        if key.endswith("attention.wq.weight"):
            base = key[: -len("wq.weight")]
            out[base + "wqkv.weight"] = concat_rows([value, params[base + "wk.weight"], params[base + "wv.weight"]])
        elif key.endswith("feed_forward.w1.weight"):
            base = key[: -len("w1.weight")]
            out[base + "w13.weight"] = concat_rows([value, params[base + "w3.weight"]])
        else:
            out[key] = value
    return out


def unfuse(params: Params, cfg: ModelConfig) -> Params:
    """The inverse of `fuse`: Meta's layout again (views into the fused tensors)."""
    hd = cfg.head_dim
    out: Params = {}
    for key, value in params.items():
        if key.endswith("attention.wqkv.weight"):
            base = key[: -len("wqkv.weight")]
            q, k, v = split_rows(value, [cfg.n_heads * hd, cfg.n_kv_heads * hd, cfg.n_kv_heads * hd])
            out.update({base + "wq.weight": q, base + "wk.weight": k, base + "wv.weight": v})
        elif key.endswith("feed_forward.w13.weight"):
            base = key[: -len("w13.weight")]
            out[base + "w1.weight"], out[base + "w3.weight"] = split_rows(value, [value.shape[0] // 2] * 2)
        else:
            out[key] = value
    return out


def output_weight(params: Params) -> torch.Tensor | QuantWeight:
    """The classifier (vocab, dim): `output.weight`, or the embedding table when tied."""
    return params.get("output.weight", params["tok_embeddings.weight"])


def cast(params: Params, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> Params:
    """A new dict with every tensor moved/cast (norm weights included, as Meta does in bf16); of a
    quantised weight every field is moved and only its float fields (the scales) are cast."""
    def move(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype if t.is_floating_point() else None)
    return {k: type(v)(*map(move, v)) if is_quantized(v) else move(v) for k, v in params.items()}


def tensors(params: Params) -> list[torch.Tensor]:
    """Every tensor the params hold, the fields of quantised weights included."""
    return [t for v in params.values() for t in (v if is_quantized(v) else (v,))]


def nbytes(params: Params) -> int:
    return sum(t.numel() * t.element_size() for t in tensors(params))
