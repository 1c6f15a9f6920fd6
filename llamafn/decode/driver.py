"""The generation driver: a thin Python loop over the pure prefill/step functions that owns what
needs the host, namely validating input, stopping rows at stop tokens and streaming tokens out.

Tokens are brought to the host every `sync_every` steps (one device->host copy per chunk, not per
token); rows that finished inside a chunk are cut at their stop token, and the loop ends at the first
sync where every row has finished.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from ..cache import init_cache
from ..compile import bucket, compiled, mark_static, round_up
from ..config import ModelConfig
from ..errors import InputError
from ..params import Params
from ..sampling import draw_noise, sampling_params
from . import sample


def check_prompts(prompts: Sequence[Sequence[int]], cfg: ModelConfig, max_new_tokens: int) -> None:
    """Raise InputError for an empty batch or prompt, an id outside [0, vocab), or a prompt that with
    `max_new_tokens` does not fit the model's context."""
    if isinstance(prompts, torch.Tensor) or not isinstance(prompts, Sequence) or not prompts:
        raise InputError("prompts must be a non-empty list of token-id lists")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    for row, prompt in enumerate(prompts):
        if isinstance(prompt, (str, bytes)) or not isinstance(prompt, Sequence):
            raise InputError(f"prompt {row}: expected a list of token ids, got {type(prompt).__name__}")
        if len(prompt) == 0:
            raise InputError(f"prompt {row} is empty; start it with the BOS token")
        for i, t in enumerate(prompt):
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < cfg.vocab_size:
                raise InputError(f"prompt {row}, position {i}: token id {t!r} is outside [0, {cfg.vocab_size})")
        if len(prompt) + max_new_tokens > cfg.max_seq_len:
            raise InputError(
                f"prompt {row} has {len(prompt)} tokens; with max_new_tokens={max_new_tokens} that is "
                f"{len(prompt) + max_new_tokens}, over the model's context of {cfg.max_seq_len} tokens")


def stream(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int = 128, *,
           temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
           stop_tokens: Sequence[int] = (), generator: torch.Generator | None = None,
           attention: str = "sdpa", sync_every: int = 8, compile: bool = False,
           cache_len: int | None = None) -> Iterator[list[list[int]]]:
    """Yield, every `sync_every` steps, the new tokens of each row (a list per row, possibly empty).

    Sampling settings are scalars or one value per row (see llamafn.sampling). A row stops after its
    first stop token, which is not yielded. `generator` seeds the sampling noise.

    `compile=True` runs the compiled prefill (prompts padded to a length bucket) and the compiled
    decode step (CUDA graphs on a GPU) from llamafn.compile; `cache_len` fixes the cache length, so
    calls with different prompt lengths share one decode graph (default: rounded up to 256).
    """
    check_prompts(prompts, cfg, max_new_tokens)
    if sync_every < 1:
        raise InputError(f"sync_every must be >= 1, got {sync_every}")
    emb = params["tok_embeddings.weight"]
    device, B = emb.device, len(prompts)
    sp = sampling_params(B, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                         repetition_penalty=repetition_penalty, device=device)
    all_greedy = bool((sp.temperature == 0).all())
    stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)
    lengths = [len(p) for p in prompts]
    T = bucket(max(lengths)) if compile else max(lengths)
    needed = max(T, max(lengths) + max_new_tokens)
    cache_len = cache_len or (round_up(needed, 256) if compile else needed)
    if cache_len < needed:
        raise InputError(f"cache_len {cache_len} is too short for {needed} positions (prompt + max_new_tokens)")
    tokens = torch.tensor([list(p) + [p[-1]] * (T - len(p)) for p in prompts], dtype=torch.long, device=device)
    cache = init_cache(cfg, B, cache_len, dtype=emb.dtype, device=device)
    ones = torch.ones(B, cfg.vocab_size, device=device)
    prefill, step = sample.prefill, sample.step
    if compile:
        mark_static([*params.values(), *cache.k, *cache.v])
        prefill, step = compiled(sample.prefill), compiled(sample.step, mode="reduce-overhead")

    def noise() -> torch.Tensor:
        return ones if all_greedy else draw_noise((B, cfg.vocab_size), generator, device)

    tok, state = prefill(params, tokens, torch.tensor(lengths, device=device), cache, sp, noise(), stops,
                         cfg=cfg, attention=attention, all_greedy=all_greedy)
    stop_set, pending, done = set(stop_tokens), [tok], [False] * B
    for n in range(1, max_new_tokens + 1):
        if len(pending) == sync_every or n == max_new_tokens:
            chunk = torch.stack(pending, dim=1).tolist()                   # (B, n_pending): the one sync
            pending = []
            out = [[] for _ in range(B)]
            for row, toks in enumerate(chunk):
                for t in toks:
                    if done[row]:
                        break
                    if t in stop_set:
                        done[row] = True
                    else:
                        out[row].append(t)
            yield out
            if all(done) or n == max_new_tokens:
                return
        if compile:
            torch.compiler.cudagraph_mark_step_begin()
        tok, state = step(params, state, sp, noise(), stops, cfg=cfg, attention=attention, all_greedy=all_greedy)
        if compile:
            state = sample.own(state)
        pending.append(state.last)


def generate(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int = 128, *,
             temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
             stop_tokens: Sequence[int] = (), generator: torch.Generator | None = None,
             on_token: Callable[[int, int], None] | None = None, attention: str = "sdpa",
             sync_every: int = 8, compile: bool = False, cache_len: int | None = None) -> list[list[int]]:
    """Generate up to `max_new_tokens` for each prompt (token-id lists, ragged); return the new tokens
    of each row, without the stop token. Greedy at temperature 0 (the default). `on_token(row, id)` is
    called for every token as it reaches the host. See `stream` for the arguments."""
    results: list[list[int]] = [[] for _ in prompts]
    for chunk in stream(params, cfg, prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        min_p=min_p, repetition_penalty=repetition_penalty, stop_tokens=stop_tokens,
                        generator=generator, attention=attention, sync_every=sync_every, compile=compile,
                        cache_len=cache_len):
        for row, toks in enumerate(chunk):
            results[row].extend(toks)
            if on_token is not None:
                for t in toks:
                    on_token(row, t)
    return results
