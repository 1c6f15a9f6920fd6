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
from ..params import Params
from ..model import transformer
from ..sampling import SamplingParams, draw_noise, sampling_params
from . import sample
from . import beam
from .constrained import Constraint
from . import speculative as spec


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
           cache_len: int | None = None, speculative: str | None = None,
           draft: tuple[Params, ModelConfig] | None = None, k: int = 4,
           constraints: Sequence[Constraint] = ()) -> Iterator[list[list[int]]]:
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
    if constraints and (compile or speculative is not None):
        raise InputError("constraints work with plain decoding only (not with compile or speculative)")
    if constraints:
        sync_every = 1
        for c in constraints:
            c.begin(prompts)
    if speculative is not None:
        yield from _speculative(params, cfg, prompts, max_new_tokens, sp, stops, generator, attention,
                                speculative, draft, k)
        return
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

    stop_set, done = set(stop_tokens), [False] * B

    def mask() -> torch.Tensor | None:
        """The constraints' joint mask of next tokens, or None; a live row with no token left is an error."""
        if not constraints:
            return None
        allowed = constraints[0].mask()
        for c in constraints[1:]:
            allowed = allowed & c.mask()
        for row in range(B):
            if not done[row] and not bool(allowed[row].any()):
                raise InputError(f"row {row}: no token satisfies the constraints (they cannot be met)")
        return allowed.to(device)

    tok, state = prefill(params, tokens, torch.tensor(lengths, device=device), cache, sp, noise(), stops,
                         cfg=cfg, attention=attention, all_greedy=all_greedy, mask=mask())
    pending = [tok]
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
        if compile:
            torch.compiler.cudagraph_mark_step_begin()
        tok, state = step(params, state, sp, noise(), stops, cfg=cfg, attention=attention, all_greedy=all_greedy,
                          mask=mask())
        if compile:
            state = sample.own(state)
        pending.append(state.last)


def generate(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int = 128, *,
             temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
             stop_tokens: Sequence[int] = (), generator: torch.Generator | None = None,
             on_token: Callable[[int, int], None] | None = None, attention: str = "sdpa",
             sync_every: int = 8, compile: bool = False, cache_len: int | None = None,
             speculative: str | None = None, draft: tuple[Params, ModelConfig] | None = None,
             k: int = 4, num_beams: int = 1, length_penalty: float = 1.0, early_stopping: bool | str = False,
             num_return_sequences: int = 1, num_beam_groups: int = 1,
             diversity_penalty: float = 0.0, constraints: Sequence[Constraint] = ()) -> list[list[int]]:
    """Generate up to `max_new_tokens` for each prompt (token-id lists, ragged); return the new tokens
    of each row, without the stop token. Greedy at temperature 0 (the default). `on_token(row, id)` is
    called for every token as it reaches the host. See `stream` for the arguments. With `num_beams` > 1
    it is beam search (`beam_search`), returning each prompt's best `num_return_sequences` in turn."""
    if num_beams > 1:
        if constraints or speculative is not None or compile or any(
                t > 0 for t in torch.as_tensor(temperature, dtype=torch.float32).flatten().tolist()):
            raise InputError("beam search (num_beams > 1) is deterministic and runs alone: no temperature, "
                             "constraints, speculative or compile with it")
        beams = beam_search(params, cfg, prompts, max_new_tokens, num_beams=num_beams, length_penalty=length_penalty,
                            early_stopping=early_stopping, num_return_sequences=num_return_sequences,
                            stop_tokens=stop_tokens, num_beam_groups=num_beam_groups,
                            diversity_penalty=diversity_penalty, attention=attention)
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
                        cache_len=cache_len, speculative=speculative, draft=draft, k=k, constraints=constraints):
        for row, toks in enumerate(chunk):
            results[row].extend(toks)
            if on_token is not None:
                for t in toks:
                    on_token(row, t)
    return results


def _cut(tokens: list[int], row: int, done: list[bool], emitted: list[int], stop_set: set[int],
         max_new_tokens: int) -> list[int]:
    """The part of a row's new tokens the caller gets: up to its first stop token and its budget."""
    out = []
    for t in tokens:
        if done[row] or emitted[row] >= max_new_tokens:
            break
        emitted[row] += 1
        if t in stop_set:
            done[row] = True
        else:
            out.append(t)
    return out


def _speculative(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 sp: SamplingParams, stops: torch.Tensor, generator: torch.Generator | None, attention: str,
                 mode: str, draft: tuple[Params, ModelConfig] | None, k: int) -> Iterator[list[list[int]]]:
    """The driver loop of speculative decoding (see `stream`)."""
    if mode not in ("draft", "lookup"):
        raise InputError(f"speculative must be 'draft' or 'lookup', got {mode!r}")
    if not 1 <= k <= 16:
        raise InputError(f"k (draft tokens a step) must be in 1..16, got {k}")
    if mode == "draft":
        if draft is None:
            raise InputError("speculative='draft' needs draft=(params, cfg), a draft model")
        if draft[1].vocab_size != cfg.vocab_size:
            raise InputError(f"the draft model's vocabulary ({draft[1].vocab_size}) differs from the "
                             f"target's ({cfg.vocab_size})")
    if bool((sp.repetition_penalty != 1).any()):
        raise InputError("repetition_penalty is not supported with speculative decoding")
    device, B, V = stops.device, len(prompts), cfg.vocab_size
    all_greedy = bool((sp.temperature == 0).all())
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    T = max(len(p) for p in prompts)
    room = T + max_new_tokens + 2 * (k + 1)   # a row that overshot its budget by k still writes k+1 junk positions
    tokens = torch.tensor([list(p) + [p[-1]] * (T - len(p)) for p in prompts], dtype=torch.long, device=device)

    def exp_noise(*shape: int) -> torch.Tensor:
        return torch.ones(*shape, device=device) if all_greedy else draw_noise(shape, generator, device)

    cache = init_cache(cfg, B, room, dtype=params["tok_embeddings.weight"].dtype, device=device)
    first, state = sample.prefill(params, tokens, lengths, cache, sp, exp_noise(B, V), stops, cfg=cfg,
                                  attention=attention, all_greedy=all_greedy)
    draft_params, draft_cfg, draft_cache = None, None, None
    if mode == "draft":
        draft_params, draft_cfg = draft
        draft_cache = init_cache(draft_cfg, B, room, dtype=draft_params["tok_embeddings.weight"].dtype, device=device)
        _, draft_cache = transformer(draft_params, tokens, draft_cache, cfg=draft_cfg, attention=attention)
        draft_cache = kv.truncate(draft_cache, lengths)
    history = torch.cat([tokens, torch.zeros(B, room - T, dtype=torch.long, device=device)], 1)
    history = history.scatter(1, lengths[:, None], first[:, None])
    spec_state = spec.SpecState(cache=state.cache, draft_cache=draft_cache, last=first, history=history,
                                history_len=lengths + 1)
    stop_set, done, emitted = set(stops.tolist()), [False] * B, [0] * B
    yield [_cut([t], row, done, emitted, stop_set, max_new_tokens) for row, t in enumerate(first.tolist())]
    while True:
        active = [not done[b] and emitted[b] < max_new_tokens for b in range(B)]
        if not any(active):
            return
        if all_greedy:
            noise = spec.SpecNoise(torch.ones(B, k, V, device=device), torch.zeros(B, k, device=device),
                                   torch.ones(B, V, device=device))
        else:
            uniform = torch.rand(B, k, generator=generator, device=generator.device if generator else "cpu")
            noise = spec.SpecNoise(exp_noise(B, k, V), uniform.to(device), exp_noise(B, V))
        out, counts, spec_state = spec.step(params, spec_state, sp, noise, torch.tensor(active, device=device),
                                            cfg=cfg, draft_params=draft_params, draft_cfg=draft_cfg,
                                            attention=attention)
        rows, counts = out.tolist(), counts.tolist()                       # the one sync a step
        yield [_cut(rows[b][:counts[b]], b, done, emitted, stop_set, max_new_tokens) for b in range(B)]


def beam_search(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int = 128, *,
                num_beams: int = 4, length_penalty: float = 1.0, early_stopping: bool | str = False,
                num_return_sequences: int = 1, stop_tokens: Sequence[int] = (), num_beam_groups: int = 1,
                diversity_penalty: float = 0.0, attention: str = "sdpa") -> list[list[tuple[list[int], float]]]:
    """Beam search over ragged prompts (llamafn.decode.beam, Hugging Face's semantics): for each prompt
    the best `num_return_sequences` hypotheses, best first, as (new tokens without the stop token,
    score = sum of log-probabilities / length ** length_penalty). `num_beam_groups` > 1 is diverse beam
    search: num_beams / num_beam_groups beams a group, `diversity_penalty` per earlier choice of a token."""
    check_prompts(prompts, cfg, max_new_tokens)
    if num_beams < 1 or not 1 <= num_return_sequences <= num_beams:
        raise InputError(f"need num_beams >= 1 and 1 <= num_return_sequences <= num_beams, "
                         f"got num_beams={num_beams}, num_return_sequences={num_return_sequences}")
    if num_beam_groups < 1 or num_beams % num_beam_groups or diversity_penalty < 0:
        raise InputError(f"num_beam_groups ({num_beam_groups}) must divide num_beams ({num_beams}) and "
                         f"diversity_penalty ({diversity_penalty}) must be >= 0")
    if early_stopping not in (True, False, "never"):
        raise InputError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    emb = params["tok_embeddings.weight"]
    device, B = emb.device, len(prompts)
    lengths = [len(p) for p in prompts]
    T = max(lengths)
    tokens = torch.tensor([list(p) + [p[-1]] * (T - len(p)) for p in prompts], dtype=torch.long, device=device)
    stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)
    cache = init_cache(cfg, B, T + max_new_tokens, dtype=emb.dtype, device=device)
    first = beam.init(params, tokens, torch.tensor(lengths, device=device), cache, num_beams // num_beam_groups,
                      max_new_tokens, cfg=cfg, attention=attention)
    groups = [first] + [beam.fork(first) for _ in range(num_beam_groups - 1)]
    for t in range(max_new_tokens):
        unfinished = False
        for g in range(num_beam_groups):
            penalty = beam.diversity_penalty(groups[:g], t, diversity_penalty, cfg.vocab_size) if g else None
            groups[g], more = beam.step(params, groups[g], t, stops, cfg=cfg, length_penalty=length_penalty,
                                        early_stopping=early_stopping, penalty=penalty, attention=attention)
            unfinished = unfinished or bool(more)                          # the driver's one sync a group step
        if not unfinished:
            break
    done_tokens = torch.cat([g.done_tokens for g in groups], 1)
    done_lengths = torch.cat([g.done_lengths for g in groups], 1)
    done_scores = torch.cat([g.done_scores for g in groups], 1)
    order = done_scores.sort(dim=1, descending=True, stable=True).indices[:, :num_return_sequences]
    stop_set, results = set(stop_tokens), []
    for toks, lens, scores in zip(done_tokens.gather(1, order[..., None].expand(-1, -1, max_new_tokens)).tolist(),
                                  done_lengths.gather(1, order).tolist(), done_scores.gather(1, order).tolist()):
        row = []
        for seq, n, score in zip(toks, lens, scores):
            seq = seq[:n]
            row.append((seq[:-1] if seq and seq[-1] in stop_set else seq, score))
        results.append(row)
    return results
