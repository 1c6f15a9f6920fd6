"""Speculative decoding as a pure step over an explicit state (Leviathan et al. 2023, "Fast Inference
from Transformers via Speculative Decoding"; Chen et al. 2023, "Accelerating Large Language Model
Decoding with Speculative Sampling").

Each step proposes k tokens per row, then one target forward over [last, d_1..d_k] scores all k+1
positions. Draft token d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)); at the first
rejection the row's next token is drawn from norm(max(0, p - q)) at that position, and when all k are
accepted a bonus token is drawn from the target's last distribution. Both caches are rolled back to
the accepted length (`truncate`). p and q are the *warped* distributions (temperature, top-k, top-p,
min-p), and a greedy row's distribution is one-hot at its argmax, so the same rule is exact greedy
verification there. The emitted tokens are distributed exactly as the target's own sampling.

Proposers: a draft model (any model with the target's vocabulary), run k+1 single-token steps (the
last only consumes d_k, so its cache is whole when every proposal is accepted); or prompt lookup
(Saxena 2023): the k tokens that followed the latest earlier occurrence of the context's last n-gram
(n = 3, 2, 1), proposed with q one-hot. Shapes are static and nothing syncs with the host; rows that
are `active` False neither emit nor advance.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from .. import cache as kv
from ..cache import KVCache, init_cache
from ..config import ModelConfig
from ..errors import InputError
from ..model import forward
from ..params import Params, tensors
from ..sampling import SamplingParams, draw_noise, process_logits
from ..compile import compiled, mark_static, round_up
from . import sample


class SpecState(NamedTuple):
    cache: KVCache                 # the target's
    draft_cache: KVCache | None    # the draft model's (None for prompt lookup)
    last: torch.Tensor             # (B,) the newest token, not yet in either cache
    history: torch.Tensor          # (B, L) prompt + emitted tokens (last included), for prompt lookup
    history_len: torch.Tensor      # (B,)


class SpecNoise(NamedTuple):
    """Pre-drawn randomness of one step (DESIGN.md, convention 4)."""

    draft: torch.Tensor    # (B, k, V) Exp(1): the draft's exponential races
    accept: torch.Tensor   # (B, k) U[0, 1): acceptance tests
    extra: torch.Tensor    # (B, V) Exp(1): the correction or bonus token's race


def warped_probs(logits: torch.Tensor, sp: SamplingParams) -> torch.Tensor:
    """logits (B, n, V) -> the distributions sampling would draw from, (B, n, V) float32; one-hot at
    the argmax for rows at temperature 0."""
    B, n, V = logits.shape
    per_position = SamplingParams(*(t.repeat_interleave(n) for t in sp))
    processed = process_logits(logits.reshape(B * n, V), per_position)
    probs = processed.softmax(-1)
    one_hot = F.one_hot(processed.argmax(-1), V).to(probs.dtype)
    return torch.where(per_position.temperature[:, None] > 0, probs, one_hot).view(B, n, V)


def race(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample from (unnormalised) probs (..., V) with Exp(1) noise: argmax probs / noise."""
    return (probs / noise).argmax(-1)


def propose_with_draft(params: Params, state: SpecState, sp: SamplingParams, noise: torch.Tensor, k: int, *,
                       cfg: ModelConfig, attention: str = "sdpa") -> tuple[torch.Tensor, torch.Tensor, KVCache]:
    """k draft tokens (B, k), their draft distributions (B, k, V), and the draft cache after k+1 steps."""
    tok, dcache, tokens, dists = state.last, state.draft_cache, [], []
    for i in range(k):
        logits, dcache = forward(params, tok[:, None], dcache, cfg=cfg, attention=attention)
        q = warped_probs(logits, sp)[:, 0]                                  # (B, V)
        tok = race(q, noise[:, i])
        tokens.append(tok)
        dists.append(q)
    _, dcache = forward(params, tok[:, None], dcache, cfg=cfg, attention=attention)  # consume d_k
    return torch.stack(tokens, 1), torch.stack(dists, 1), dcache


def propose_by_lookup(history: torch.Tensor, history_len: torch.Tensor, k: int, vocab_size: int,
                      max_ngram: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """k tokens per row that followed the latest earlier match of the context's last n-gram (longest n
    first), or the last token repeated where nothing matches; q is one-hot. -> (B, k), (B, k, V)."""
    B, L = history.shape
    rows = torch.arange(B, device=history.device)[:, None]
    proposal = history[rows[:, 0], (history_len - 1).clamp(min=0)][:, None].expand(B, k)   # fallback
    found = torch.zeros(B, dtype=torch.bool, device=history.device)
    for n in range(min(max_ngram, L - 1), 0, -1):
        key = history[rows, (history_len[:, None] - n + torch.arange(n, device=history.device)).clamp(min=0)]
        windows = history.unfold(1, n, 1)                                   # (B, L-n+1, n)
        starts = torch.arange(L - n + 1, device=history.device)[None]       # (1, L-n+1)
        match = (windows == key[:, None, :]).all(-1) & (starts + n < history_len[:, None]) & (history_len[:, None] > n)
        latest = torch.where(match, starts, -1).amax(-1)                    # (B,)
        follow = (latest[:, None] + n + torch.arange(k, device=history.device)).clamp(max=L - 1)
        use = (latest >= 0) & ~found
        proposal = torch.where(use[:, None], history[rows, follow], proposal)
        found = found | use
    return proposal, F.one_hot(proposal, vocab_size).float()


def verify(params: Params, state: SpecState, drafts: torch.Tensor, q: torch.Tensor, draft_cache: KVCache | None,
           sp: SamplingParams, noise: SpecNoise, active: torch.Tensor, *, cfg: ModelConfig,
           attention: str = "sdpa") -> tuple[torch.Tensor, torch.Tensor, SpecState]:
    """Score [last, d_1..d_k] with the target and apply the acceptance rule.

    -> emitted (B, k+1): the accepted drafts then the correction/bonus token (entries past a row's count
    are junk), counts (B,) in 1..k+1 (0 for inactive rows), and the state rolled forward.
    """
    B, k = drafts.shape
    start = state.cache.lengths
    logits, cache = forward(params, torch.cat([state.last[:, None], drafts], 1), state.cache, cfg=cfg,
                            attention=attention)                            # (B, k+1, V)
    p = warped_probs(logits, sp)                                            # (B, k+1, V)
    p_d = p[:, :k].gather(-1, drafts[..., None])[..., 0]                    # (B, k)
    q_d = q.gather(-1, drafts[..., None])[..., 0].clamp_min(1e-30)          # (B, k)
    accepted = (noise.accept * q_d < p_d).long().cumprod(-1).sum(-1)        # (B,) leading accepts
    q_next = torch.cat([q, torch.zeros_like(q[:, :1])], 1)                  # (B, k+1, V): none after d_k
    at = accepted[:, None, None].expand(B, 1, p.shape[-1])
    p_j, q_j = p.gather(1, at)[:, 0], q_next.gather(1, at)[:, 0]            # (B, V)
    residual = (p_j - q_j).clamp_min(0)
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_j)
    extra = race(residual, noise.extra)                                     # (B,)
    emitted = torch.cat([drafts, drafts[:, :1]], 1).scatter(1, accepted[:, None], extra[:, None])
    counts = torch.where(active, accepted + 1, 0)
    new_len = start + counts
    hist_pos = (state.history_len[:, None] + torch.arange(k + 1, device=drafts.device)).clamp(
        max=state.history.shape[1] - 1)
    history = state.history.scatter(1, hist_pos, torch.where(active[:, None], emitted, state.history.gather(1, hist_pos)))
    new_state = SpecState(
        cache=kv.truncate(cache, new_len),
        draft_cache=None if draft_cache is None else kv.truncate(draft_cache, new_len),
        last=torch.where(active, extra, state.last),
        history=history, history_len=state.history_len + counts)
    return emitted, counts, new_state


def step(params: Params, state: SpecState, sp: SamplingParams, noise: SpecNoise, active: torch.Tensor, *,
         cfg: ModelConfig, draft_params: Params | None = None, draft_cfg: ModelConfig | None = None,
         attention: str = "sdpa") -> tuple[torch.Tensor, torch.Tensor, SpecState]:
    """One speculative step: propose k = noise.accept.shape[1] tokens (with the draft model when
    `draft_params` is given, else by prompt lookup), verify, roll back. See `verify` for the outputs."""
    k = noise.accept.shape[1]
    if draft_params is not None:
        drafts, q, dcache = propose_with_draft(draft_params, state, sp, noise.draft, k, cfg=draft_cfg,
                                               attention=attention)
    else:
        drafts, q = propose_by_lookup(state.history, state.history_len, k, cfg.vocab_size)
        dcache = None
    return verify(params, state, drafts, q, dcache, sp, noise, active, cfg=cfg, attention=attention)


def own(state: SpecState) -> SpecState:
    """Copies of the per-step tensors a CUDA-graph step returned (see llamafn.decode.sample.own)."""
    def keep(c: KVCache | None) -> KVCache | None:
        return None if c is None else kv.with_lengths(c, c.lengths.clone())
    return SpecState(cache=keep(state.cache), draft_cache=keep(state.draft_cache), last=state.last.clone(),
                     history=state.history.clone(), history_len=state.history_len.clone())


def cut_row(tokens: list[int], row: int, done: list[bool], emitted: list[int], stop_set: set[int],
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


DEFAULT_K = 4                   # tokens proposed a step


def check_k(k: int) -> None:
    """Raise InputError unless k, the tokens proposed a step, is in 1..16."""
    if not 1 <= k <= 16:
        raise InputError(f"k (draft tokens a step) must be in 1..16, got {k}")


def run(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int,
        sp: SamplingParams, stops: torch.Tensor, generator: torch.Generator | None, attention: str,
        mode: str, draft: tuple[Params, ModelConfig] | None, k: int, compile: bool = False,
        adaptive_k: bool = False, kv_dtype: torch.dtype | None = None) -> Iterator[list[list[int]]]:
    """The driver loop of speculative decoding (llamafn.decode.stream with `speculative=`): prefill, then
    one step and one host sync a step, streaming each row's accepted tokens. `compile` runs the step as
    a CUDA graph (llamafn.compile) over static weights and caches. `adaptive_k` varies the proposals a
    step between 1 and k as transformers' assisted generation does: +2 after a step where every live
    row accepted all of them, -1 otherwise (any k is exact, so only speed changes)."""
    if mode not in ("draft", "lookup"):
        raise InputError(f"speculative must be 'draft' or 'lookup', got {mode!r}")
    check_k(k)
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
    T = max(len(p) for p in prompts)
    room = T + max_new_tokens + 2 * (k + 1)   # a row that overshot its budget by k still writes k+1 junk positions
    if compile:
        room = round_up(room, 256)            # nearby prompt lengths share one compiled step
    tokens, lengths = sample.pad_right(prompts, T, device)

    def exp_noise(*shape: int) -> torch.Tensor:
        return torch.ones(*shape, device=device) if all_greedy else draw_noise(shape, generator, device)

    cache = init_cache(cfg, B, room, dtype=kv_dtype or params["tok_embeddings.weight"].dtype, device=device)
    first, state = sample.prefill(params, tokens, lengths, cache, sp, exp_noise(B, V), stops, cfg=cfg,
                                  attention=attention, all_greedy=all_greedy)
    draft_params, draft_cfg, draft_cache = None, None, None
    if mode == "draft":
        draft_params, draft_cfg = draft
        draft_cache = init_cache(draft_cfg, B, room, dtype=kv_dtype or draft_params["tok_embeddings.weight"].dtype,
                                 device=device)
        _, draft_cache = sample.prefill_logits(draft_params, tokens, lengths, draft_cache, cfg=draft_cfg,
                                               attention=attention)
    history = torch.cat([tokens, torch.zeros(B, room - T, dtype=torch.long, device=device)], 1)
    history = history.scatter(1, lengths[:, None], first[:, None])
    spec_state = SpecState(cache=state.cache, draft_cache=draft_cache, last=first, history=history,
                           history_len=lengths + 1)
    step_fn = step
    if compile:
        caches = [state.cache] + ([draft_cache] if draft_cache is not None else [])
        mark_static([*tensors(params), *tensors(draft_params or {}), *(t for c in caches for t in kv.tensors(c))])
        step_fn = compiled(step, mode="reduce-overhead")
    stop_set, done, emitted, k_now = set(stops.tolist()), [False] * B, [0] * B, k
    yield [cut_row([t], row, done, emitted, stop_set, max_new_tokens) for row, t in enumerate(first.tolist())]
    while True:
        active = [not done[b] and emitted[b] < max_new_tokens for b in range(B)]
        if not any(active):
            return
        if all_greedy:
            noise = SpecNoise(torch.ones(B, k_now, V, device=device), torch.zeros(B, k_now, device=device),
                              torch.ones(B, V, device=device))
        else:
            uniform = torch.rand(B, k_now, generator=generator, device=generator.device if generator else "cpu")
            noise = SpecNoise(exp_noise(B, k_now, V), uniform.to(device), exp_noise(B, V))
        if compile:
            torch.compiler.cudagraph_mark_step_begin()
        out, counts, spec_state = step_fn(params, spec_state, sp, noise, torch.tensor(active, device=device),
                                          cfg=cfg, draft_params=draft_params, draft_cfg=draft_cfg, attention=attention)
        rows, counts = out.tolist(), counts.tolist()                       # the one sync a step
        if adaptive_k:
            all_taken = all(c == k_now + 1 for c, a in zip(counts, active) if a)
            k_now = min(k, k_now + 2) if all_taken else max(1, k_now - 1)
        if compile:
            spec_state = own(spec_state)
        yield [cut_row(rows[b][:counts[b]], b, done, emitted, stop_set, max_new_tokens) for b in range(B)]
