"""Logits processors and samplers, pure functions of logits, per-row parameters and noise.

Every parameter is a (B,) tensor so that one compiled step serves any mix of settings. Noise is an
argument (DESIGN.md, convention 4): sampling is the exponential race (argmax of p / E with E ~ Exp(1),
equivalent to the Gumbel-max trick), which needs no sort, no cumulative sum and no host sync.

References: nucleus (top-p) sampling, Holtzman et al. 2020; min-p, Nguyen et al. 2024; repetition
penalty, Keskar et al. 2019 (CTRL), applied as Hugging Face transformers does.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from .errors import InputError

NEG_INF = float("-inf")


class SamplingParams(NamedTuple):
    """Per-row settings, each (B,). temperature 0 means greedy; top_k 0, top_p 1, min_p 0 and
    repetition_penalty 1 mean off."""

    temperature: torch.Tensor         # float32
    top_k: torch.Tensor               # int64
    top_p: torch.Tensor               # float32
    min_p: torch.Tensor               # float32
    repetition_penalty: torch.Tensor  # float32


def _per_row(name: str, value: float | Sequence[float] | torch.Tensor, batch_size: int,
             dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype).flatten()
    if t.numel() == 1:
        t = t.expand(batch_size)
    if t.numel() != batch_size:
        raise InputError(f"{name}: expected one value or {batch_size} (one per row), got {t.numel()}")
    return t.to(device).clone()


def sampling_params(batch_size: int, *, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                    repetition_penalty=1.0, device: torch.device | str = "cpu") -> SamplingParams:
    """Validate settings (scalars or one per row) and make them tensors; bad values raise InputError."""
    sp = SamplingParams(
        temperature=_per_row("temperature", temperature, batch_size, torch.float32, "cpu"),
        top_k=_per_row("top_k", top_k, batch_size, torch.int64, "cpu"),
        top_p=_per_row("top_p", top_p, batch_size, torch.float32, "cpu"),
        min_p=_per_row("min_p", min_p, batch_size, torch.float32, "cpu"),
        repetition_penalty=_per_row("repetition_penalty", repetition_penalty, batch_size, torch.float32, "cpu"),
    )
    checks = [
        ("temperature", sp.temperature, (sp.temperature >= 0) & sp.temperature.isfinite(), ">= 0"),
        ("top_k", sp.top_k, sp.top_k >= 0, ">= 0 (0 = off)"),
        ("top_p", sp.top_p, (sp.top_p > 0) & (sp.top_p <= 1), "in (0, 1]"),
        ("min_p", sp.min_p, (sp.min_p >= 0) & (sp.min_p <= 1), "in [0, 1]"),
        ("repetition_penalty", sp.repetition_penalty,
         (sp.repetition_penalty > 0) & sp.repetition_penalty.isfinite(), "> 0 (1 = off)"),
    ]
    for name, value, ok, rule in checks:
        if not bool(ok.all()):
            bad = value[~ok][0].item()
            raise InputError(f"{name} must be {rule}, got {bad}")
    return SamplingParams(*(t.to(device) for t in sp))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """logits (B, V), seen (B, V) bool (tokens in the context), penalty (B,): seen logits are divided by
    the penalty where positive and multiplied where negative."""
    pen = penalty[:, None]
    penalised = torch.where(logits > 0, logits / pen, logits * pen)
    return torch.where(seen, penalised, logits)


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide by the temperature (rows at 0 are left as they are: they are decoded greedily)."""
    t = temperature[:, None]
    return logits / torch.where(t > 0, t, torch.ones_like(t))


def apply_top_k(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Keep each row's k largest logits (ties at the k-th value kept); k 0 keeps all."""
    V = logits.shape[-1]
    k = torch.where(k > 0, k.clamp(max=V), torch.full_like(k, V))
    sorted_logits = logits.sort(dim=-1, descending=True).values          # (B, V)
    kth = sorted_logits.gather(-1, (k - 1)[:, None])                      # (B, 1)
    return logits.masked_fill(logits < kth, NEG_INF)


def apply_top_p(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability mass reaches p (at least one)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)          # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs                            # mass of strictly better tokens
    drop_sorted = mass_before >= p[:, None]
    drop_sorted[:, 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)                    # back to vocabulary order
    return logits.masked_fill(drop, NEG_INF)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    probs = logits.softmax(dim=-1)
    threshold = min_p[:, None] * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, NEG_INF)


def process_logits(logits: torch.Tensor, sp: SamplingParams, seen: torch.Tensor | None = None) -> torch.Tensor:
    """The full warper chain, in Hugging Face's order: penalty, temperature, top-k, top-p, min-p."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, sp.repetition_penalty)
    logits = apply_temperature(logits, sp.temperature)
    logits = apply_top_k(logits, sp.top_k)
    logits = apply_top_p(logits, sp.top_p)
    return apply_min_p(logits, sp.min_p)


def draw_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """Exp(1) noise for `sample`, drawn from `generator` (on its device) and moved to `device`."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.empty(shape, device=gen_device).exponential_(generator=generator)
    return noise.clamp_min_(torch.finfo(noise.dtype).tiny).to(device)


def greedy(logits: torch.Tensor, sp: SamplingParams, seen: torch.Tensor | None = None) -> torch.Tensor:
    """The argmax of the (repetition-penalised) logits (B, V) -> (B,): what `sample` gives at temperature 0,
    without the sorts the warpers need."""
    if seen is not None:
        logits = apply_repetition_penalty(logits.float(), seen, sp.repetition_penalty)
    return logits.argmax(dim=-1)


def sample(logits: torch.Tensor, sp: SamplingParams, noise: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
    """logits (B, V), noise (B, V) Exp(1) -> tokens (B,) int64. Rows with temperature 0 take the
    argmax of the (penalised) logits; the others race: argmax softmax(processed) / noise."""
    processed = process_logits(logits, sp, seen)
    greedy = processed.argmax(dim=-1)
    probs = processed.softmax(dim=-1)
    sampled = (probs / noise).argmax(dim=-1)
    return torch.where(sp.temperature > 0, sampled, greedy)
