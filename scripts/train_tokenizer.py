"""Train the code tokenizer: sentencepiece BPE with byte fallback on the standard library's .py files.

Whitespace and newlines must survive exactly, so: identity normalisation, no extra-whitespace removal,
no dummy prefix, whitespace-only pieces allowed (indentation becomes a few tokens), digits split. A
newline ends a training sentence, so it is never a piece: it encodes through byte fallback (<0x0A>).
The script checks decode(encode(text)) == text on every corpus file before it writes the model.

    python scripts/train_tokenizer.py --vocab-size 6000 --out params/stdlib-coder/tokenizer.model
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm

from llamafn.tokenizer import Tokenizer
from llamafn.train.data import read_sources, stdlib_files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vocab-size", type=int, default=6000)
    ap.add_argument("--out", default="params/stdlib-coder/tokenizer.model")
    ap.add_argument("--max-lines", type=int, default=2_000_000, help="training sentences sampled at most")
    args = ap.parse_args()
    files = stdlib_files()
    lines = [line for text in read_sources(files) for line in text.split("\n") if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=args.vocab_size,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, split_digits=True, byte_fallback=True, character_coverage=0.9995,
        max_sentence_length=1 << 16, input_sentence_size=args.max_lines, shuffle_input_sentence=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=2, minloglevel=2, seed_sentencepiece_size=1_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.model"
        path.write_bytes(model.getvalue())
        tok = Tokenizer(path)
        n_tokens = n_chars = 0
        for text in read_sources(files):
            ids = tok.encode(text, bos=False)
            if tok.decode(ids) != text:
                print("round trip failed on a corpus file", file=sys.stderr)
                return 1
            n_tokens, n_chars = n_tokens + len(ids), n_chars + len(text)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(model.getvalue())
    print(f"wrote {out}: {tok.vocab_size} pieces, {len(files)} files round-trip exactly, "
          f"{n_tokens:,} tokens ({n_chars / n_tokens:.2f} chars/token)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
