"""Tokenizers of the LLaMA family behind one entry, `Tokenizer(path)`, which picks by file content:

- sentencepiece models (Llama 1/2, TinyLlama, TinyStories' tok512): BPE with byte fallback, decoded
  exactly by sentencepiece itself;
- Llama 3's tiktoken BPE file (`base64(token) rank` per line) with Meta's split pattern, its 256
  special tokens and the chat format of Meta's reference tokenizer (llama3/llama/tokenizer.py).

`StreamDecoder` turns a growing list of ids into text pieces without ever emitting half a UTF-8
character or dropping/adding a leading space: it decodes a window that starts before the new tokens
and emits only the difference (the scheme of Hugging Face's TextStreamer and vLLM's detokenizer).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Iterable, Sequence

from .errors import TokenizerError

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIALS = (
    ["<|begin_of_text|>", "<|end_of_text|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(4)]
    + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)]
)
_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/]+=*\s+\d+\s*$")
_MAX_CHARS = 400_000        # Meta: tiktoken is slow on very long inputs, encode in chunks
_MAX_SPACE_RUN = 25_000     # ... and split long runs of (non-)whitespace inside a chunk


def _split_runs(s: str, limit: int) -> Iterable[str]:
    """Cut s where a run of only-whitespace or only-non-whitespace characters exceeds `limit`."""
    start, run, kind = 0, 0, None
    for i, ch in enumerate(s):
        is_space = ch.isspace()
        run = run + 1 if is_space == kind else 1
        kind = is_space
        if run > limit:
            yield s[start:i]
            start, run = i, 1
    yield s[start:]


class Tokenizer:
    """`Tokenizer(path)`: encode(text, bos=True, eos=False) -> ids; decode(ids) -> text."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise TokenizerError(f"{self.path}: tokenizer file not found")
        with open(self.path, "rb") as f:
            head = f.readline(4096)
        if _TIKTOKEN_LINE.match(head):
            self._init_tiktoken()
        else:
            self._init_sentencepiece()

    def _init_sentencepiece(self) -> None:
        import sentencepiece

        sp = sentencepiece.SentencePieceProcessor()
        try:
            sp.Load(str(self.path))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{self.path}: neither a sentencepiece model nor a tiktoken BPE file ({e})") from None
        self.kind = "sentencepiece"
        self._sp = sp
        self.vocab_size = sp.vocab_size()
        self.bos_id, self.eos_id = sp.bos_id(), sp.eos_id()
        self.stop_tokens = (self.eos_id,)

    def _init_tiktoken(self) -> None:
        import tiktoken

        ranks: dict[bytes, int] = {}
        with open(self.path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    token, rank = line.split()
                    ranks[base64.b64decode(token, validate=True)] = int(rank)
                except ValueError:
                    raise TokenizerError(f"{self.path}, line {n}: expected 'base64-token rank'") from None
        specials = {s: len(ranks) + i for i, s in enumerate(LLAMA3_SPECIALS)}
        self.kind = "tiktoken"
        self._tt = tiktoken.Encoding(self.path.name, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                                     special_tokens=specials)
        self.vocab_size = len(ranks) + len(specials)
        self.bos_id, self.eos_id = specials["<|begin_of_text|>"], specials["<|end_of_text|>"]
        self.special_ids = specials
        self.stop_tokens = (self.eos_id, specials["<|eot_id|>"])

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of `text`; special-token strings in the text are encoded as plain text."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode: expected str, got {type(text).__name__}")
        if self.kind == "sentencepiece":
            ids = self._sp.encode(text)
        else:
            ids = []
            for i in range(0, len(text), _MAX_CHARS):
                for part in _split_runs(text[i:i + _MAX_CHARS], _MAX_SPACE_RUN):
                    ids.extend(self._tt.encode(part, allowed_special=set(), disallowed_special=()))
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, exactly (byte-fallback pieces merged; invalid UTF-8 becomes U+FFFD)."""
        ids = list(ids)
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < self.vocab_size]
        if bad:
            raise TokenizerError(f"decode: token id {bad[0]!r} is outside [0, {self.vocab_size})")
        if self.kind == "sentencepiece":
            return self._sp.decode(ids)
        return self._tt.decode(ids)

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """A dialog [{"role": "system"|"user"|"assistant", "content": ...}, ...] in the model family's chat
        format, ending where the assistant's reply starts (Llama 3 headers; Llama 2 [INST] blocks)."""
        if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Sequence):
            raise TokenizerError(f"encode_chat: expected a list of messages ({{'role': ..., 'content': ...}}), "
                                 f"got {type(messages).__name__}")
        for m in messages:
            if (not isinstance(m, dict) or {"role", "content"} - set(m) or not isinstance(m["role"], str)
                    or not isinstance(m["content"], str)):
                raise TokenizerError(f"encode_chat: each message needs a str 'role' and 'content', got {m!r}")
        if self.kind == "tiktoken":
            return self._llama3_chat(messages)
        return self._llama2_chat(messages)

    def _llama3_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        s = self.special_ids

        def header(role: str) -> list[int]:
            return ([s["<|start_header_id|>"]] + self.encode(role, bos=False)
                    + [s["<|end_header_id|>"]] + self.encode("\n\n", bos=False))

        ids = [self.bos_id]
        for m in messages:
            ids += header(m["role"]) + self.encode(m["content"].strip(), bos=False) + [s["<|eot_id|>"]]
        return ids + header("assistant")

    def _llama2_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        msgs = list(messages)
        if msgs and msgs[0]["role"] == "system":
            if len(msgs) < 2:
                raise TokenizerError("encode_chat: a system message must be followed by a user message")
            first = msgs[1]["content"]
            msgs = [{"role": "user", "content": f"<<SYS>>\n{msgs[0]['content']}\n<</SYS>>\n\n{first}"}] + msgs[2:]
        roles = [m["role"] for m in msgs]
        if roles[::2] != ["user"] * len(roles[::2]) or roles[1::2] != ["assistant"] * len(roles[1::2]) \
                or roles[-1:] != ["user"]:
            raise TokenizerError("encode_chat: Llama 2 dialogs alternate user/assistant and end with a user message")
        ids: list[int] = []
        for user, answer in zip(msgs[:-1:2], msgs[1::2]):
            ids += self.encode(f"[INST] {user['content'].strip()} [/INST] {answer['content'].strip()} ", eos=True)
        return ids + self.encode(f"[INST] {msgs[-1]['content'].strip()} [/INST]")

    def token_bytes(self) -> tuple[list[bytes], list[int]]:
        """Each id's bytes (what it contributes to the decoded text) and the ids of special tokens
        (BOS/EOS/control pieces; Llama 3's <|...|> tokens), for grammar engines."""
        if self.kind == "tiktoken":
            n = self.vocab_size - len(self.special_ids)
            specials = sorted(self.special_ids.values())
            names = {i: s.encode() for s, i in self.special_ids.items()}
            return [self._tt.decode_single_token_bytes(i) if i < n else names[i] for i in range(self.vocab_size)], specials
        sp, out, specials = self._sp, [], []
        for i in range(self.vocab_size):
            piece = sp.id_to_piece(i)
            if sp.is_byte(i):
                out.append(bytes([int(piece[3:-1], 16)]))
            elif sp.is_control(i) or sp.is_unknown(i):
                out.append(b"")
                specials.append(i)
            else:
                out.append(piece.replace("\u2581", " ").encode("utf-8"))
        return out, specials

    def stream_decoder(self, context: Sequence[int] = ()) -> "StreamDecoder":
        return StreamDecoder(self, context)


class StreamDecoder:
    """Incremental detokenisation: `push(ids)` returns the text the new ids complete; `flush()` the rest.

    The window decoded starts at the beginning of the last emitted piece (at 0 for the first), so a
    sentencepiece word's leading space is judged with the token before it in view, and the newest text
    is held back while it ends in U+FFFD (a UTF-8 character still missing bytes).
    """

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.ids = list(context)
        self.prefix = 0
        self.read = len(self.ids)

    def push(self, ids: Iterable[int]) -> str:
        self.ids.extend(ids)
        done = self.tokenizer.decode(self.ids[self.prefix:self.read])
        text = self.tokenizer.decode(self.ids[self.prefix:])
        if len(text) <= len(done) or text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(done):]

    def flush(self) -> str:
        done = self.tokenizer.decode(self.ids[self.prefix:self.read])
        text = self.tokenizer.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(done):]
