"""The generation driver: a thin Python loop over the pure prefill/step functions that owns what
needs the host, namely validating input, stopping rows at stop tokens and streaming tokens out.

Tokens are brought to the host every `sync_every` steps (one device->host copy per chunk, not per
token); rows that finished inside a chunk are cut at their stop token, and the loop ends at the first
sync where every row has finished.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from .. import cache as kv
from ..cache import init_cache
from ..compile import bucket, compiled, mark_static, round_up
from ..config import ModelConfig
from ..errors import InputError
from ..params import Params, tensors
from ..sampling import draw_noise, sampling_params
from . import beam, forced, sample
from . import speculative as spec
from .speculative import DEFAULT_K
from .constrained import Constraint


def stream(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int = 128, *,
           temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
           stop_tokens: Sequence[int] = (), generator: torch.Generator | None = None,
           attention: str = "sdpa", sync_every: int = 8, compile: bool = False,
           cache_len: int | None = None, speculative: str | None = None,
           draft: tuple[Params, ModelConfig] | None = None, k: int = DEFAULT_K, adaptive_k: bool = False,
           constraints: Sequence[Constraint] = (), kv_dtype: torch.dtype | None = None) -> Iterator[list[list[int]]]:
    """Yield, every `sync_every` steps, the new tokens of each row (a list per row, possibly empty).

    Sampling settings are scalars or one value per row (see llamafn.sampling). A row stops after its
    first stop token, which is not yielded. `generator` seeds the sampling noise.

    `compile=True` runs the compiled prefill (prompts padded to a length bucket) and the compiled
    decode step (CUDA graphs on a GPU) from llamafn.compile; `cache_len` fixes the cache length, so
    calls with different prompt lengths share one decode graph (default: rounded up to 256).

    `speculative="draft"` (with `draft=(params, cfg)`, a model of the same vocabulary) or "lookup"
    (prompt lookup, no second model) proposes `k` tokens a step and verifies them in one target
    forward (llamafn.decode.speculative); the output is distributed exactly as without it. It syncs
    once a step (to learn how many tokens each row accepted), so `sync_every` does not apply.

    `constraints` (llamafn.decode.constrained: TokenSets, Grammar) mask each step's logits to the tokens
    they allow; they need the chosen tokens back, so such a run syncs every step and is not compiled.

    `kv_dtype` is the KV cache's dtype (default: the weights'); torch.int8 stores it quantised with a
    scale per token and head (llamafn.cache), half the bytes of bf16.
    """
    sample.check_prompts(prompts, cfg, max_new_tokens)
    sample.check_stop_tokens(stop_tokens, cfg)
    if sync_every < 1:
        raise InputError(f"sync_every must be >= 1, got {sync_every}")
    emb = params["tok_embeddings.weight"]
    device, B = emb.device, len(prompts)
    if generator is not None and generator.device.type != device.type:
        raise InputError(f"the generator is on {generator.device}, the model on {device}")
    sp = sampling_params(B, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                         repetition_penalty=repetition_penalty, device=device)
    all_greedy = bool((sp.temperature == 0).all())
    stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)
    if constraints and (compile or speculative is not None):
        raise InputError("constraints work with plain decoding only (not with compile or speculative)")
    if speculative is None and (draft is not None or adaptive_k or k != DEFAULT_K):
        raise InputError("draft, k and adaptive_k configure speculative decoding: pass speculative='draft' or 'lookup'")
    if speculative == "lookup" and draft is not None:
        raise InputError("speculative='lookup' proposes from the prompt: it takes no draft model")
    if speculative is not None and cache_len is not None:
        raise InputError("cache_len applies to plain decoding (speculative decoding sizes its own caches)")
    if constraints:
        sync_every = 1
        for c in constraints:
            if c.vocab_size > cfg.vocab_size:
                raise InputError(f"a constraint covers {c.vocab_size} token ids, more than the model's vocabulary of "
                                 f"{cfg.vocab_size}")
            c.begin(prompts)
    if speculative is not None:
        yield from spec.run(params, cfg, prompts, max_new_tokens, sp, stops, generator, attention,
                            speculative, draft, k, compile=compile, adaptive_k=adaptive_k, kv_dtype=kv_dtype)
        return
    lengths = [len(p) for p in prompts]
    T = bucket(max(lengths)) if compile else max(lengths)
    needed = max(T, max(lengths) + max_new_tokens)
    cache_len = cache_len or (round_up(needed, 256) if compile else needed)
    if cache_len < needed:
        raise InputError(f"cache_len {cache_len} is too short for {needed} positions (prompt + max_new_tokens)")
    tokens, prompt_lengths = sample.pad_right(prompts, T, device)
    cache = init_cache(cfg, B, cache_len, dtype=kv_dtype or emb.dtype, device=device)
    ones = torch.ones(B, cfg.vocab_size, device=device)
    prefill, step = sample.prefill, sample.step
    if compile:
        mark_static([*tensors(params), *kv.tensors(cache)])
        prefill, step = compiled(sample.prefill, mode="reduce-overhead"), compiled(sample.step, mode="reduce-overhead")

    def noise() -> torch.Tensor:
        return ones if all_greedy else draw_noise((B, cfg.vocab_size), generator, device)

    stop_set, done = set(stop_tokens), [False] * B

    def mask() -> torch.Tensor | None:
        """The constraints' joint mask of next tokens, or None; a live row with no token left is an error."""
        if not constraints:
            return None
        allowed = torch.ones(B, cfg.vocab_size, dtype=torch.bool)
        for c in constraints:
            allowed[:, :c.vocab_size] &= c.mask()
            allowed[:, c.vocab_size:] = False                                     # ids the constraint does not know
        for row in range(B):
            if not done[row] and not bool(allowed[row].any()):
                raise InputError(f"row {row}: no token satisfies the constraints (they cannot be met)")
        return allowed.to(device)

    def run(fn, *args, **kwargs) -> sample.SampleState:
        """The new state of a prefill or step (its token is `last`); compiled, owned out of the graph's pool."""
        return sample.replayed(fn, *args, **kwargs) if compile else fn(*args, **kwargs)[1]

    state = run(prefill, params, tokens, prompt_lengths, cache, sp, noise(), stops,
                cfg=cfg, attention=attention, all_greedy=all_greedy, mask=mask())
    pending = [state.last]
    for n in range(1, max_new_tokens + 1):
        if len(pending) == sync_every or n == max_new_tokens:
            chunk = torch.stack(pending, dim=1).tolist()                   # (B, n_pending): the one sync
            pending, done_before = [], list(done)
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
            for c in constraints:                                           # sync_every is 1 here
                c.advance([toks[-1] if not was_done else None for toks, was_done in zip(chunk, done_before)])
        state = run(step, params, state, sp, noise(), stops, cfg=cfg, attention=attention, all_greedy=all_greedy,
                    mask=mask())
        pending.append(state.last)


def generate(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int = 128, *,
             temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
             stop_tokens: Sequence[int] = (), generator: torch.Generator | None = None,
             on_token: Callable[[int, int], None] | None = None, attention: str = "sdpa",
             sync_every: int = 8, compile: bool = False, cache_len: int | None = None,
             speculative: str | None = None, draft: tuple[Params, ModelConfig] | None = None,
             k: int = DEFAULT_K, adaptive_k: bool = False, num_beams: int = 1, length_penalty: float = 1.0,
             early_stopping: bool | str = False, num_return_sequences: int = 1, num_beam_groups: int = 1,
             diversity_penalty: float = 0.0, constraints: Sequence[Constraint] = (),
             force_phrases: Sequence[Sequence[int]] = (), kv_dtype: torch.dtype | None = None) -> list[list[int]]:
    """Generate up to `max_new_tokens` for each prompt (token-id lists, ragged); return the new tokens
    of each row, without the stop token. Greedy at temperature 0 (the default). `on_token(row, id)` is
    called for every token as it reaches the host. See `stream` for the arguments. With `num_beams` > 1
    it is beam search (`llamafn.decode.beam.beam_search`), returning each prompt's best `num_return_sequences` in turn;
    with `force_phrases` too, constrained beam search (`llamafn.decode.forced`)."""
    if num_beams < 1:
        raise InputError(f"num_beams must be >= 1, got {num_beams}")
    beam_only = [name for name, on in (
        ("force_phrases", bool(force_phrases)), ("num_beam_groups", num_beam_groups != 1),
        ("num_return_sequences", num_return_sequences != 1), ("length_penalty", length_penalty != 1.0),
        ("early_stopping", early_stopping is not False), ("diversity_penalty", diversity_penalty != 0.0)) if on]
    if num_beams == 1 and beam_only:
        raise InputError(f"{', '.join(beam_only)}: beam search's settings, they need num_beams > 1")
    if num_beams > 1:
        sample.check_stop_tokens(stop_tokens, cfg)                                # `stream` checks its own
        given = [name for name, value, off in (
            ("temperature > 0", temperature, 0.0), ("top_k", top_k, 0), ("top_p", top_p, 1.0), ("min_p", min_p, 0.0),
            ("repetition_penalty", repetition_penalty, 1.0)) if not torch.as_tensor(value).eq(off).all()]
        given += [name for name, on in (("generator", generator is not None), ("constraints", bool(constraints)),
                                        ("speculative", speculative is not None), ("draft", draft is not None),
                                        ("k", k != DEFAULT_K), ("adaptive_k", adaptive_k), ("compile", compile),
                                        ("cache_len", cache_len is not None)) if on]
        if given:
            raise InputError(f"beam search (num_beams > 1) is deterministic and runs alone: {', '.join(given)} "
                             f"cannot go with it")
        if force_phrases and (num_beam_groups != 1 or early_stopping is not False):
            raise InputError("constrained beam search (force_phrases) runs every step with one group: no "
                             "num_beam_groups or early_stopping with it")
        if force_phrases:
            beams = forced.forced_beam_search(params, cfg, prompts, max_new_tokens, force_phrases, num_beams=num_beams,
                                              length_penalty=length_penalty, num_return_sequences=num_return_sequences,
                                              stop_tokens=stop_tokens, attention=attention, kv_dtype=kv_dtype)
        else:
            beams = beam.beam_search(params, cfg, prompts, max_new_tokens, num_beams=num_beams,
                                     length_penalty=length_penalty, early_stopping=early_stopping,
                                     num_return_sequences=num_return_sequences, stop_tokens=stop_tokens,
                                     num_beam_groups=num_beam_groups, diversity_penalty=diversity_penalty,
                                     attention=attention, kv_dtype=kv_dtype)
        out = [tokens for row in beams for tokens, _ in row]
        if on_token is not None:
            for row, tokens in enumerate(out):
                for t in tokens:
                    on_token(row, t)
        return out
    results: list[list[int]] = [[] for _ in prompts]
    for chunk in stream(params, cfg, prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        min_p=min_p, repetition_penalty=repetition_penalty, stop_tokens=stop_tokens,
                        generator=generator, attention=attention, sync_every=sync_every, compile=compile,
                        cache_len=cache_len, speculative=speculative, draft=draft, k=k, adaptive_k=adaptive_k,
                        constraints=constraints, kv_dtype=kv_dtype):
        for row, toks in enumerate(chunk):
            results[row].extend(toks)
            if on_token is not None:
                for t in toks:
                    on_token(row, t)
    return results
