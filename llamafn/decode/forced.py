"""Constrained beam search: phrases that must appear in the output (lexically constrained decoding,
Hokamp & Liu 2017, with the dynamic beam allocation of Post & Vilar 2018).

Each step's candidates are the usual top 2 * num_beams continuations plus, for every beam, its own
best next token and the next token of every phrase it has not completed (so a hypothesis can always
make progress on a constraint, and one that has met them all can always go on). A candidate's *bank* is how many constraint tokens it has met; the num_beams running
slots are filled round-robin across banks, highest bank first and best score first within a bank,
so hypotheses that honour the constraints survive next to the highest-scoring ones. Only hypotheses
that contain every phrase may finish (at a stop token or the length limit); their score is the sum
of log-probabilities / length ** length_penalty, as in plain beam search.

Phrase progress is tracked per hypothesis (a phrase is met once its tokens appear contiguously; the
tracker restarts a phrase on a mismatch, so a phrase that overlaps its own prefix may be met later
than possible, never falsely). The candidate bookkeeping runs on the host, one sync a step, while
the model runs batched over B * beams; as in `beam`, the cache rows are gathered each step into the
search's other buffer (`cache.reorder_into`), only the positions in use.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .. import cache as kv
from ..cache import init_cache
from ..config import ModelConfig
from ..errors import InputError
from ..model import forward
from ..params import Params
from .beam import init
from .sample import check_prompts, pad_right


def _advance(phrases: list[list[int]], progress: tuple[int, ...], token: int) -> tuple[int, ...]:
    """New progress per phrase (len(phrase) once met) after one more token."""
    out = []
    for p, done in zip(phrases, progress):
        if done == len(p):
            out.append(done)
        elif token == p[done]:
            out.append(done + 1)
        else:
            out.append(1 if token == p[0] else 0)
    return tuple(out)


def forced_beam_search(params: Params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       phrases: Sequence[Sequence[int]], *, num_beams: int = 4, length_penalty: float = 1.0,
                       num_return_sequences: int = 1, stop_tokens: Sequence[int] = (),
                       attention: str = "sdpa", kv_dtype: torch.dtype | None = None) -> list[list[tuple[list[int], float]]]:
    """Beam search whose every returned hypothesis contains each of `phrases` (token-id lists); per
    prompt up to `num_return_sequences` best hypotheses as (new tokens without the stop token, score).
    It runs the full `max_new_tokens` steps (no early stop) and raises InputError if no hypothesis
    fitted every phrase."""
    check_prompts(prompts, cfg, max_new_tokens)
    phrases = [list(p) for p in phrases]
    if not phrases or any(not p or not all(0 <= t < cfg.vocab_size for t in p) for p in phrases):
        raise InputError(f"forced phrases must be non-empty lists of token ids in [0, {cfg.vocab_size})")
    if sum(map(len, phrases)) > max_new_tokens:
        raise InputError(f"the forced phrases need {sum(map(len, phrases))} tokens, more than "
                         f"max_new_tokens={max_new_tokens}")
    if num_beams < 1 or not 1 <= num_return_sequences <= num_beams:
        raise InputError(f"need num_beams >= 1 and 1 <= num_return_sequences <= num_beams, "
                         f"got num_beams={num_beams}, num_return_sequences={num_return_sequences}")
    emb = params["tok_embeddings.weight"]
    device, B, nb, V = emb.device, len(prompts), num_beams, cfg.vocab_size
    stops, goal = set(stop_tokens), tuple(len(p) for p in phrases)
    tokens, lengths = pad_right(prompts, max(len(p) for p in prompts), device)
    cache = init_cache(cfg, B, tokens.shape[1] + max_new_tokens, dtype=kv_dtype or emb.dtype, device=device)
    state = init(params, tokens, lengths, cache, nb, max_new_tokens, cfg=cfg, attention=attention)
    cache, spare, logits = state.cache, state.spare, state.logits
    # host-side hypotheses per row: (score, tokens, progress); dead slots have score -inf
    beams = [[(0.0 if i == 0 else float("-inf"), [], (0,) * len(phrases)) for i in range(nb)] for _ in range(B)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    for t in range(max_new_tokens):
        log_probs = F.log_softmax(logits.float(), -1).view(B, nb, V)
        scores = torch.tensor([[s for s, _, _ in row] for row in beams], device=device)
        top = (log_probs + scores[..., None]).view(B, nb * V).topk(2 * nb).indices.tolist()
        best = log_probs.argmax(-1).tolist()                                # (B, nb): each beam's own best next token
        lp = log_probs.cpu()                                                # the one sync a step
        last = t + 1 == max_new_tokens
        parents, new_tokens = [], []
        for b in range(B):
            pool = {(i // V, i % V) for i in top[b]}
            for j, (score, _, prog) in enumerate(beams[b]):
                if score > float("-inf"):
                    pool |= {(j, best[b][j])} | {(j, p[d]) for p, d in zip(phrases, prog) if d < len(p)}
            cands = []
            for j, tok in sorted(pool):
                score, seq, prog = beams[b][j]
                new_prog = _advance(phrases, prog, tok)
                cands.append((score + float(lp[b, j, tok]), j, tok, new_prog))
            for value, j, tok, prog in cands:
                if (tok in stops or last) and prog == goal and value > float("-inf"):
                    finished[b].append((value / float(t + 1) ** length_penalty, beams[b][j][1] + [tok]))
            finished[b] = sorted(finished[b], key=lambda f: -f[0])[:nb]
            banks: dict[int, list] = {}
            for c in sorted(cands, key=lambda c: -c[0]):
                if c[2] not in stops and c[0] > float("-inf"):
                    banks.setdefault(sum(c[3]), []).append(c)
            chosen: list = []
            while len(chosen) < nb and any(banks.values()):                 # round-robin, highest bank first
                for bank in sorted(banks, reverse=True):
                    if banks[bank] and len(chosen) < nb:
                        chosen.append(banks[bank].pop(0))
            chosen += [(float("-inf"), 0, 0, (0,) * len(phrases))] * (nb - len(chosen))
            beams[b] = [(v, beams[b][j][1] + [tok], prog) for v, j, tok, prog in chosen]
            parents += [b * nb + j for _, j, _, _ in chosen]
            new_tokens += [tok for _, _, tok, _ in chosen]
        if last:
            break
        in_use = tokens.shape[1] + t                                        # the padded prompt and t tokens
        cache, spare = kv.reorder_into(cache, torch.tensor(parents, device=device), spare, in_use), cache
        logits, cache = forward(params, torch.tensor(new_tokens, device=device)[:, None], cache, cfg=cfg,
                                attention=attention)
        logits = logits[:, -1]
    results = []
    for b, f in enumerate(finished):
        if not f:
            raise InputError(f"prompt {b}: no hypothesis fitted every forced phrase within {max_new_tokens} tokens")
        results.append([(seq[:-1] if seq[-1] in stops else seq, score) for score, seq in f[:num_return_sequences]])
    return results
