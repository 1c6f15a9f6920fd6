"""Greedy and sampled decoding as a pure init/step pair over an explicit state.

`prefill` runs the (right-padded, ragged) prompts through one forward and picks each row's first new
token from the logits at its own last prompt position; `step` feeds the previous tokens and picks the
next. Both are free of host syncs; the driver (llamafn.decode.driver) owns stopping and streaming.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from .. import cache as kv
from ..cache import KVCache
from ..config import ModelConfig
from ..errors import InputError
from ..model import forward, lm_head, transformer
from ..params import Params
from ..sampling import SamplingParams, greedy, sample


def id_problem(t: object, vocab_size: int) -> str | None:
    """What is wrong with `t` as a token id (not an int, or outside the vocabulary), or None."""
    if not isinstance(t, int) or isinstance(t, bool):
        return f"{t!r} is not an int token id ({type(t).__name__})"
    return None if 0 <= t < vocab_size else f"token id {t} is outside [0, {vocab_size})"


def check_stop_tokens(stop_tokens: Sequence[int], cfg: ModelConfig) -> None:
    """Raise InputError for a stop token that is not an id of the vocabulary (it could never be drawn)."""
    for t in stop_tokens:
        if problem := id_problem(t, cfg.vocab_size):
            raise InputError(f"stop_tokens: {problem}")


def check_prompts(prompts: Sequence[Sequence[int]], cfg: ModelConfig, max_new_tokens: int) -> None:
    """Raise InputError for an empty batch or prompt, an id outside [0, vocab), or a prompt that with
    `max_new_tokens` does not fit the model's context."""
    if isinstance(prompts, torch.Tensor) or not isinstance(prompts, Sequence) or not prompts:
        raise InputError("prompts must be a non-empty list of token-id lists")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    for row, prompt in enumerate(prompts):
        if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence):
            raise InputError(f"prompt {row}: expected a list of token ids, got {type(prompt).__name__}")
        if len(prompt) == 0:
            raise InputError(f"prompt {row} is empty; start it with the BOS token")
        for i, t in enumerate(prompt):
            if problem := id_problem(t, cfg.vocab_size):
                raise InputError(f"prompt {row}, position {i}: {problem}")
        if len(prompt) + max_new_tokens > cfg.max_seq_len:
            raise InputError(
                f"prompt {row} has {len(prompt)} tokens; with max_new_tokens={max_new_tokens} that is "
                f"{len(prompt) + max_new_tokens}, over the model's context of {cfg.max_seq_len} tokens")


def pad_right(prompts: Sequence[Sequence[int]], length: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prompts -> (B, length) int64 right-padded with each row's last token, and their lengths (B,)."""
    tokens = torch.tensor([list(p) + [p[-1]] * (length - len(p)) for p in prompts], dtype=torch.long, device=device)
    return tokens, torch.tensor([len(p) for p in prompts], device=device)


def prefill_logits(params: Params, prompts: torch.Tensor, prompt_lengths: torch.Tensor, cache: KVCache, *,
                   cfg: ModelConfig, attention: str = "sdpa") -> tuple[torch.Tensor, KVCache]:
    """Run right-padded prompts (B, T) through the model once -> each row's next-token logits (B, V),
    taken at its own last prompt position, and the cache truncated to each row's own length (the
    padding written past it stays unseen until overwritten). Every strategy starts here."""
    start = cache.lengths
    h, cache = transformer(params, prompts, cache, cfg=cfg, attention=attention)  # (B, T, dim)
    rows = torch.arange(prompts.shape[0], device=prompts.device)
    return lm_head(params, h[rows, prompt_lengths - 1]), kv.truncate(cache, start + prompt_lengths)


class SampleState(NamedTuple):
    cache: KVCache
    last: torch.Tensor      # (B,) int64: the token each row emitted last
    seen: torch.Tensor      # (B, V) bool: tokens in each row's context (for the repetition penalty)
    finished: torch.Tensor  # (B,) bool: the row has emitted a stop token


def _emit(logits: torch.Tensor, cache: KVCache, state: SampleState, sp: SamplingParams, noise: torch.Tensor,
          stop_tokens: torch.Tensor, all_greedy: bool, mask: torch.Tensor | None) -> tuple[torch.Tensor, SampleState]:
    """Pick the next token of every row from logits (B, V) (only where `mask` (B, V) allows, if given)
    and fold it and `cache` into a new state."""
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    token = greedy(logits, sp, state.seen) if all_greedy else sample(logits, sp, noise, state.seen)  # (B,)
    token = torch.where(state.finished, state.last, token)                # finished rows repeat themselves
    finished = state.finished | torch.isin(token, stop_tokens)
    seen = state.seen.scatter(1, token[:, None], True)
    return token, SampleState(cache=cache, last=token, seen=seen, finished=finished)


def prefill(params: Params, prompts: torch.Tensor, prompt_lengths: torch.Tensor, cache: KVCache,
            sp: SamplingParams, noise: torch.Tensor, stop_tokens: torch.Tensor, *, cfg: ModelConfig,
            attention: str = "sdpa", all_greedy: bool = False,
            mask: torch.Tensor | None = None) -> tuple[torch.Tensor, SampleState]:
    """prompts (B, T) right-padded, prompt_lengths (B,) >= 1 -> first new tokens (B,), state.

    `all_greedy` (a compile-time constant) skips the sampling warpers when every row is at temperature 0.
    `mask` (B, V) bool, if given, limits the tokens each row may take (constrained decoding).
    """
    B, T = prompts.shape
    last_logits, cache = prefill_logits(params, prompts, prompt_lengths, cache, cfg=cfg, attention=attention)
    valid = torch.arange(T, device=prompts.device)[None, :] < prompt_lengths[:, None]  # (B, T)
    seen = torch.zeros(B, cfg.vocab_size, dtype=torch.bool, device=prompts.device)
    seen = seen.scatter(1, torch.where(valid, prompts, prompts[:, :1]), True)
    state = SampleState(cache=cache, last=prompts[:, 0], seen=seen,
                        finished=torch.zeros(B, dtype=torch.bool, device=prompts.device))
    return _emit(last_logits, cache, state, sp, noise, stop_tokens, all_greedy, mask)


def step(params: Params, state: SampleState, sp: SamplingParams, noise: torch.Tensor, stop_tokens: torch.Tensor,
         *, cfg: ModelConfig, attention: str = "sdpa", all_greedy: bool = False,
         mask: torch.Tensor | None = None) -> tuple[torch.Tensor, SampleState]:
    """One token per row: feed state.last, return the next tokens (B,) and the new state."""
    logits, cache = forward(params, state.last[:, None], state.cache, cfg=cfg, attention=attention)
    return _emit(logits[:, -1], cache, state, sp, noise, stop_tokens, all_greedy, mask)


def own(state: SampleState) -> SampleState:
    """Copies of the per-step tensors of a state a CUDA-graph step returned (its outputs live in the
    graph's memory pool and are overwritten by the next replay); the cache storage is static and kept."""
    c = state.cache
    return SampleState(cache=kv.with_lengths(c, c.lengths.clone()), last=state.last.clone(),
                       seen=state.seen.clone(), finished=state.finished.clone())


def replayed(fn, *args, **kwargs) -> SampleState:
    """The state a CUDA-graph prefill or step `fn` returns (its token is the state's `last`), owned
    before the next replay (see `own`)."""
    torch.compiler.cudagraph_mark_step_begin()
    return own(fn(*args, **kwargs)[1])
