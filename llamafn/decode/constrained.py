"""Constrained decoding: host-side constraints that give, before each step, the (B, V) mask of tokens
each row may take next; the step applies it to the logits, and the driver feeds the chosen tokens back.

- `TokenSets`: allowed and banned token ids, and banned phrases (token sequences that must not appear:
  a phrase's last token is banned wherever the row's newest tokens spell the rest of it).
- `Grammar`: regular expressions, JSON Schema and Lark context-free grammars through llguidance
  (https://github.com/guidance-ai/llguidance), built from our tokenizer's vocabulary (sentencepiece
  byte-fallback pieces or Llama 3's tiktoken bytes). llguidance over xgrammar: an abi3 wheel with no
  torch/transformers dependency, full JSON Schema, regex and Lark support, a tokenizer made from raw
  token bytes (so both of our vocabularies work), and it is what vLLM, SGLang and llama.cpp use.
  Install it with the `constrained` extra.
"""

from __future__ import annotations

import json
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..tokenizer import Tokenizer


def one_line(error: str) -> str:
    """llguidance's multi-line parse error as one line: its first line and its `error:` lines (the echoed
    source and carets dropped)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    reasons = [line[len("error:"):].strip() for line in lines[1:] if line.startswith("error:")]
    return " ".join([lines[0]] + reasons) if lines else error


class Constraint(Protocol):
    """What the driver needs of a constraint: start on the prompts, say what may come next, hear what came.
    Its masks cover `vocab_size` ids (a tokenizer's, which may be smaller than a model's padded vocabulary;
    ids past it are never allowed)."""

    vocab_size: int

    def begin(self, prompts: Sequence[Sequence[int]]) -> None: ...

    def mask(self) -> torch.Tensor: ...                          # (B, V) bool: allowed next tokens

    def advance(self, tokens: Sequence[int | None]) -> None: ...  # each row's new token (None: row finished)


class TokenSets:
    """Static allowed/banned token sets and banned phrases."""

    def __init__(self, vocab_size: int, *, allowed: Sequence[int] | None = None, banned: Sequence[int] = (),
                 banned_phrases: Sequence[Sequence[int]] = ()):
        self.vocab_size = vocab_size
        self.base = torch.zeros(vocab_size, dtype=torch.bool) if allowed is not None else torch.ones(vocab_size, dtype=torch.bool)
        for name, ids in (("allowed", allowed or ()), ("banned", banned), *(("banned phrase", p) for p in banned_phrases)):
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise InputError(f"{name} token id {bad[0]} is outside [0, {vocab_size})")
        if allowed is not None:
            self.base[list(allowed)] = True
        self.base[list(banned)] = False
        if any(len(p) == 0 for p in banned_phrases):
            raise InputError("a banned phrase is empty")
        self.phrases = [list(p) for p in banned_phrases]

    def begin(self, prompts: Sequence[Sequence[int]]) -> None:
        self.contexts = [list(p) for p in prompts]

    def mask(self) -> torch.Tensor:
        mask = self.base.expand(len(self.contexts), -1).clone()
        for row, ctx in enumerate(self.contexts):
            for phrase in self.phrases:
                if len(phrase) == 1 or ctx[-(len(phrase) - 1):] == phrase[:-1]:
                    mask[row, phrase[-1]] = False
        return mask

    def advance(self, tokens: Sequence[int | None]) -> None:
        for ctx, t in zip(self.contexts, tokens):
            if t is not None:
                ctx.append(t)


class Grammar:
    """A regex, JSON Schema or Lark grammar every row's output must follow (one llguidance matcher a row).
    The output stops at the model's stop token once the grammar is complete."""

    def __init__(self, tokenizer: Tokenizer, *, regex: str | None = None, json_schema: dict[str, Any] | str | None = None,
                 lark: str | None = None):
        try:
            import llguidance
        except ImportError:
            raise InputError("grammar constraints need llguidance: pip install 'llamafn[constrained]'") from None
        given = [g for g in (regex, json_schema, lark) if g is not None]
        if len(given) != 1:
            raise InputError("give exactly one of regex, json_schema, lark")
        if regex is not None:
            grammar = llguidance.LLMatcher.grammar_from_regex(regex)
        elif json_schema is not None:
            try:
                grammar = llguidance.LLMatcher.grammar_from_json_schema(   # compact JSON: no free whitespace
                    json_schema if isinstance(json_schema, str) else json.dumps(json_schema),
                    defaults={"whitespace_flexible": False})
            except ValueError as e:
                raise InputError(f"json_schema is not valid JSON: {e}") from None
        else:
            grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        self.vocab_size = tokenizer.vocab_size
        self.tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocabulary(tokenizer)),
                                                n_vocab=tokenizer.vocab_size, eos_token=list(tokenizer.stop_tokens))
        error = llguidance.LLMatcher.validate_grammar(grammar, self.tokenizer)
        if error:
            raise InputError(f"invalid grammar: {one_line(error)}")
        self.grammar, self._llg = grammar, llguidance

    def begin(self, prompts: Sequence[Sequence[int]]) -> None:
        self.matchers = [self._llg.LLMatcher(self.tokenizer, self.grammar, log_level=0) for _ in prompts]

    def mask(self) -> torch.Tensor:
        rows = []
        for m in self.matchers:
            if m.is_error():
                raise InputError(f"the grammar cannot continue: {m.get_error()}")
            bits = np.unpackbits(np.frombuffer(m.compute_bitmask(), dtype=np.uint8), bitorder="little")
            rows.append(torch.from_numpy(bits[: self.vocab_size].astype(bool)))
        return torch.stack(rows)

    def advance(self, tokens: Sequence[int | None]) -> None:
        for m, t in zip(self.matchers, tokens):
            if t is not None and not m.is_stopped() and not m.consume_token(t):
                raise InputError(f"the grammar rejected token {t}: {m.get_error()}")


class _Vocabulary:
    """What llguidance's TokenizerWrapper reads off a tokenizer: token bytes, specials, EOS/BOS, and an
    encoder of text *in the middle* of a sequence. Sentencepiece models with a dummy prefix (Llama 2)
    would add a space before the text; encoding "\n" + text and dropping the tokens up to that newline
    (the prefix and a byte-fallback <0x0A>, which never merge with what follows) avoids it."""

    def __init__(self, tok: Tokenizer):
        self.tokens, self.special_token_ids = tok.token_bytes()
        self.eos_token_id, self.bos_token_id = tok.eos_id, tok.bos_id
        self._tok = tok
        newline = tok.encode("\n", bos=False)
        self._skip = len(newline) if tok.decode(tok.encode("x", bos=False)) == "x" and \
            self.tokens[tok.encode("x", bos=False)[0]] != b"x" else 0

    def __call__(self, text: str) -> list[int]:
        if self._skip:
            return self._tok.encode("\n" + text, bos=False)[self._skip:]
        return self._tok.encode(text, bos=False)
