"""Beam search as a pure init/step pair, with the semantics of Hugging Face transformers'
`generate(num_beams=...)` (the vectorised beam search of transformers 4.50+): each step keeps the top
K = max(2, 1 + n_eos) * num_beams continuations over all beams, finalises the ones that hit a stop
token (or the length limit) among the top num_beams with score logprob / length ** length_penalty,
continues the best num_beams unfinished ones, and stops as `early_stopping` says (True: once
num_beams hypotheses are done; False: when the best running beam cannot beat the worst finished one
at the current length; "never": ... at the longest possible length). The cache rows are gathered
after each step, never recomputed: steps alternate between two cache buffers (`cache.reorder_into`),
and each moves only the positions in use.

Rows of a batch are independent searches over B * num_beams cache rows; ragged prompts need nothing
special because positions come from the cache.

Diverse beam search (Vijayakumar et al. 2016) splits the beams into groups, each a beam search of its
own (`fork`), stepped in turn; a group's log-probabilities are first lowered by `diversity_penalty`
times the number of earlier groups' beams that chose each token at the same step.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from .. import cache as kv
from ..cache import KVCache, init_cache
from ..config import ModelConfig
from ..errors import InputError
from ..model import forward
from ..params import Params
from .sample import check_prompts, pad_right, prefill_logits

NEG = -1.0e9


class BeamState(NamedTuple):
    cache: KVCache                 # B * num_beams rows
    spare: KVCache                 # the other buffer: the next step gathers the surviving rows into it
    tokens: torch.Tensor           # (B, nb, max_new) running hypotheses' generated tokens
    scores: torch.Tensor           # (B, nb) their summed log-probabilities
    logits: torch.Tensor           # (B * nb, V) next-token logits of each running hypothesis
    done_tokens: torch.Tensor      # (B, nb, max_new) finished hypotheses
    done_scores: torch.Tensor      # (B, nb) their length-penalised scores (NEG: empty slot)
    done_lengths: torch.Tensor     # (B, nb) their lengths (stop token included)
    is_done: torch.Tensor          # (B, nb) bool: the slot holds a finished hypothesis
    improvable: torch.Tensor       # (B, 1) bool: running beams may still beat the finished ones


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t (B, n, ...) gathered along dim 1 by index (B, m) -> (B, m, ...)."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


def init(params: Params, prompts: torch.Tensor, prompt_lengths: torch.Tensor, cache: KVCache, num_beams: int,
         max_new_tokens: int, *, cfg: ModelConfig, attention: str = "sdpa") -> BeamState:
    """Prefill the right-padded prompts (B, T) once per row, then give every row num_beams copies of its
    cache; only beam 0 starts live (the others at NEG), as in transformers."""
    B = prompts.shape[0]
    logits, cache = prefill_logits(params, prompts, prompt_lengths, cache, cfg=cfg, attention=attention)  # (B, V)
    expand = torch.arange(B, device=prompts.device).repeat_interleave(num_beams)
    scores = torch.full((B, num_beams), NEG, device=prompts.device)
    scores[:, 0] = 0.0
    empty = torch.zeros(B, num_beams, max_new_tokens, dtype=torch.long, device=prompts.device)
    expanded = kv.reorder(cache, expand)
    return BeamState(
        cache=expanded, spare=kv.zeros_like(expanded), tokens=empty, scores=scores, logits=logits[expand],
        done_tokens=empty.clone(), done_scores=torch.full_like(scores, NEG),
        done_lengths=torch.zeros(B, num_beams, dtype=torch.long, device=prompts.device),
        is_done=torch.zeros(B, num_beams, dtype=torch.bool, device=prompts.device),
        improvable=torch.ones(B, 1, dtype=torch.bool, device=prompts.device))


def step(params: Params, state: BeamState, t: int, stop_tokens: torch.Tensor, *, cfg: ModelConfig,
         length_penalty: float = 1.0, early_stopping: bool | str = False, penalty: torch.Tensor | None = None,
         attention: str = "sdpa", upto: int | None = None) -> tuple[BeamState, torch.Tensor]:
    """Choose generated token t (0-based) of every hypothesis; -> (new state, unfinished (bool scalar)).
    `penalty` (B, V), if given, is subtracted from every beam's log-probabilities first (diverse beam
    search); the beams' scores accumulate the penalised values, as in transformers. `upto` bounds every
    row's cache length (the padded prompt length + t; default: the whole capacity), the positions the
    step moves. `state` is donated: its two cache buffers become the new state's."""
    B, nb, max_new = state.tokens.shape
    V = state.logits.shape[-1]
    K = max(2, 1 + stop_tokens.numel()) * nb
    log_probs = F.log_softmax(state.logits.float(), -1).view(B, nb, V)
    if penalty is not None:
        log_probs = log_probs - penalty[:, None, :]
    log_probs = log_probs + state.scores[..., None]
    top_lp, top_idx = log_probs.view(B, nb * V).topk(K)                           # (B, K)
    source, token = top_idx // V, top_idx % V
    top_tokens = _gather(state.tokens, source)                                      # (B, K, max_new)
    top_tokens[:, :, t] = token
    hits = torch.isin(token, stop_tokens) | (t + 1 >= max_new)                    # (B, K)

    running_lp = top_lp + hits.float() * NEG
    keep = running_lp.topk(nb).indices                                            # (B, nb)
    tokens, scores, parent = _gather(top_tokens, keep), _gather(running_lp, keep), _gather(source, keep)

    just_done = hits & (torch.arange(K, device=hits.device) < nb)
    candidate = top_lp / float(t + 1) ** length_penalty
    candidate = candidate + (state.is_done.all(-1, keepdim=True) & (early_stopping is True)).float() * NEG
    candidate = candidate + (~state.improvable).float() * NEG + (~just_done).float() * NEG
    merged = torch.cat([state.done_scores, candidate], 1).topk(nb).indices         # (B, nb) of 2 * ...
    done_tokens = _gather(torch.cat([state.done_tokens, top_tokens], 1), merged)
    done_scores = _gather(torch.cat([state.done_scores, candidate], 1), merged)
    done_lengths = _gather(torch.cat([state.done_lengths, torch.full_like(top_lp, t + 1, dtype=torch.long)], 1), merged)
    is_done = _gather(torch.cat([state.is_done, just_done], 1), merged)

    rows = (torch.arange(B, device=parent.device)[:, None] * nb + parent).flatten()
    cache = kv.reorder_into(state.cache, rows, state.spare, kv.capacity(state.cache) if upto is None else upto)
    logits, cache = forward(params, tokens[:, :, t].reshape(B * nb, 1), cache, cfg=cfg, attention=attention)

    best_len = max_new if early_stopping == "never" and length_penalty > 0 else t + 1
    best_possible = scores[:, :1] / float(best_len) ** length_penalty
    worst_done = torch.where(is_done, done_scores.min(1, keepdim=True).values, NEG)
    improvable = state.improvable & (best_possible > worst_done).any(-1, keepdim=True)
    unfinished = improvable.any() & ~(is_done.all() & (early_stopping is True)) & ~hits.all()
    new = BeamState(cache=cache, spare=state.cache, tokens=tokens, scores=scores, logits=logits[:, -1], done_tokens=done_tokens,
                    done_scores=done_scores, done_lengths=done_lengths, is_done=is_done, improvable=improvable)
    return new, unfinished


def fork(state: BeamState) -> BeamState:
    """An independent copy (its own cache buffers), for another group of diverse beam search."""
    rows = torch.arange(state.logits.shape[0], device=state.logits.device)
    return state._replace(cache=kv.reorder(state.cache, rows), spare=kv.zeros_like(state.spare))


def hamming_penalty(groups: list[BeamState], t: int, strength: float, vocab_size: int) -> torch.Tensor:
    """Hamming diversity (Vijayakumar et al. 2016, "Diverse Beam Search"): (B, V) strength times how many
    running beams of the groups given chose each token at step t."""
    chosen = torch.cat([g.tokens[:, :, t] for g in groups], 1)                   # (B, n)
    counts = torch.zeros(chosen.shape[0], vocab_size, device=chosen.device).scatter_add_(
        1, chosen, torch.ones_like(chosen, dtype=torch.float))
    return strength * counts


def beam_search(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int = 128, *,
                num_beams: int = 4, length_penalty: float = 1.0, early_stopping: bool | str = False,
                num_return_sequences: int = 1, stop_tokens: Sequence[int] = (), num_beam_groups: int = 1,
                diversity_penalty: float = 0.0, attention: str = "sdpa",
                kv_dtype: torch.dtype | None = None) -> list[list[tuple[list[int], float]]]:
    """The beam search driver over ragged prompts (Hugging Face's semantics, see the module doc): for each prompt
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
    if num_beam_groups == 1 and diversity_penalty != 0.0:
        raise InputError("diversity_penalty is diverse beam search's: it needs num_beam_groups > 1")
    if early_stopping not in (True, False, "never"):
        raise InputError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    emb = params["tok_embeddings.weight"]
    device, B = emb.device, len(prompts)
    tokens, lengths = pad_right(prompts, max(len(p) for p in prompts), device)
    stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=device)
    cache = init_cache(cfg, B, tokens.shape[1] + max_new_tokens, dtype=kv_dtype or emb.dtype, device=device)
    first = init(params, tokens, lengths, cache, num_beams // num_beam_groups,
                      max_new_tokens, cfg=cfg, attention=attention)
    groups = [first] + [fork(first) for _ in range(num_beam_groups - 1)]
    for t in range(max_new_tokens):
        unfinished = False
        for g in range(num_beam_groups):
            penalty = hamming_penalty(groups[:g], t, diversity_penalty, cfg.vocab_size) if g else None
            groups[g], more = step(params, groups[g], t, stops, cfg=cfg, length_penalty=length_penalty,
                                   early_stopping=early_stopping, penalty=penalty, attention=attention,
                                   upto=tokens.shape[1] + t)
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
