"""Quantisation as a pure transform of the params dict: `quantize(params, "int8" | "int4")` returns a
new dict whose matrices are Int8Weight / Int4Weight (llamafn.quant.formats); `dequantize_params`
goes back to float tensors (for tests and for export). The storage layout flattens each quantised
weight into one tensor per field, `<key>.q`, `<key>.scale` (and `<key>.zero` for int4), so a
quantised checkpoint is a plain safetensors file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import InputError
from .formats import (DEFAULT_GROUP_SIZE, GROUP_SIZES, Int4GemvWeight, Int4MmaWeight, Int4TinyGemmWeight, Int4Weight, Int8GemvWeight,
                      Int8Weight, dequantize, is_quantized, quantize_weight)

if TYPE_CHECKING:
    from ..params import Params

SCHEMES = ("int8", "int4")
LINEAR_SUFFIXES = ("wq.weight", "wk.weight", "wv.weight", "wqkv.weight", "wo.weight",
                   "w1.weight", "w2.weight", "w3.weight", "w13.weight")
FIELDS = {Int8Weight: ("q", "scale"), Int4Weight: ("q", "scale", "zero")}


def selected(key: str, tied: bool, *, embeddings: bool = False, output: bool = False) -> bool:
    """Whether `quantize` replaces `key`: every layer matrix; the output head and the embedding table on
    request (with tied embeddings the table is the head, so either flag selects it)."""
    if key.startswith("layers."):
        return key.endswith(LINEAR_SUFFIXES)
    if key == "output.weight":
        return output
    return key == "tok_embeddings.weight" and (embeddings or (output and tied))


def check_scheme(scheme: str, group_size: int) -> None:
    if scheme not in SCHEMES:
        raise InputError(f"unknown quantization scheme {scheme!r}; available: {', '.join(SCHEMES)}")
    if scheme == "int4" and group_size not in GROUP_SIZES:
        raise InputError(f"int4 group_size must be one of {GROUP_SIZES}, got {group_size}")


def quantizer(scheme: str, *, group_size: int = DEFAULT_GROUP_SIZE, embeddings: bool = False, output: bool = False):
    """fn(key, value, tied) -> the value `quantize` puts at `key` (for loaders that quantise each weight
    as it is read, so the float model is never whole in memory)."""
    check_scheme(scheme, group_size)

    def apply(key: str, value, tied: bool):
        if is_quantized(value):
            raise InputError(f"{key} is already quantized: quantize from a float checkpoint (or dequantize_params first)")
        if selected(key, tied, embeddings=embeddings, output=output):
            return quantize_weight(value, scheme, group_size)
        return value
    return apply


def quantize(params: Params, scheme: str, *, group_size: int = DEFAULT_GROUP_SIZE, embeddings: bool = False,
             output: bool = False) -> Params:
    """A new params dict with the linear weights quantised to `scheme` ("int8": per-channel symmetric;
    "int4": groups of `group_size` inputs with scale and zero point). The embedding table and the output
    head stay in their float dtype unless `embeddings` / `output` is set. Works on either layout (fused
    or Meta's); norms are never quantised."""
    apply = quantizer(scheme, group_size=group_size, embeddings=embeddings, output=output)
    already = [k for k, v in params.items() if is_quantized(v)]
    if already:
        raise InputError(f"params are already quantized ({len(already)} weights, e.g. {already[0]}); "
                         f"dequantize_params them first")
    tied = "output.weight" not in params
    return {k: apply(k, v, tied) for k, v in params.items()}


def dequantize_params(params: Params, dtype: torch.dtype | None = None) -> Params:
    """Every quantised weight back to a float tensor (in `dtype`, default its scale's dtype)."""
    return {k: dequantize(v, dtype) if is_quantized(v) else v for k, v in params.items()}


def scheme_of(params: Params) -> str | None:
    """"int8", "int4", "int8+int4" for a mix, or None for float params."""
    kinds = sorted({"int8" if isinstance(v, (Int8Weight, Int8GemvWeight)) else "int4"
                    for v in params.values() if is_quantized(v)})
    return "+".join(kinds) or None


RUN_TIME_LAYOUTS = {Int4TinyGemmWeight: "tinygemm.for_tinygemm", Int8GemvWeight: "planar.for_gemv",
                    Int4GemvWeight: "planar.for_gemv", Int4MmaWeight: "mma.for_mma"}   # and the transform that makes each


def to_tensors(params: Params) -> dict[str, torch.Tensor]:
    """The storage layout: each quantised weight becomes `<key>.<field>` tensors."""
    out: dict[str, torch.Tensor] = {}
    for k, v in params.items():
        if type(v) in RUN_TIME_LAYOUTS:
            raise InputError(f"{k} is in a run-time layout ({type(v).__name__}), which is not saved: "
                             f"save the params from before {RUN_TIME_LAYOUTS[type(v)]}")
        if is_quantized(v):
            out.update({f"{k}.{name}": t for name, t in zip(FIELDS[type(v)], v)})
        else:
            out[k] = v
    return out


def from_tensors(tensors: dict) -> dict:
    """The inverse of to_tensors. Values may be anything field-like (tensors, lazy tensors); a weight
    with `.q`, `.scale` and `.zero` is int4, with `.q` and `.scale` int8."""
    out: dict = {}
    for k, v in tensors.items():
        base, _, field = k.rpartition(".")
        if field not in ("q", "scale", "zero") or f"{base}.q" not in tensors:
            out[k] = v
        elif field == "q":
            kind = Int4Weight if f"{base}.zero" in tensors else Int8Weight
            try:
                out[base] = kind(*(tensors[f"{base}.{name}"] for name in FIELDS[kind]))
            except KeyError as e:
                raise InputError(f"quantized weight {base} lacks its {e.args[0]} tensor") from None
    return out

