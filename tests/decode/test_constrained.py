"""Constrained decoding: every output under a JSON Schema parses and validates, under a regex fully
matches, under a Lark grammar parses; token sets and banned phrases hold; impossible constraints fail
with a clear error. Random-weight models over the real Llama 2 (sentencepiece, byte fallback) and
Llama 3 (tiktoken) vocabularies, sampled at temperature 1 so that the mask does all the work."""

import json
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import llamafn as lf
from llamafn.config import ModelConfig, cards_dir
from llamafn.decode.constrained import Grammar, TokenSets
from llamafn.errors import InputError
from tests.conftest import shared_file

pytest.importorskip("llguidance")

TOKENIZERS = {
    "llama2": ("llama2-tokenizer", "tokenizer.model"),
    "llama3": ("llama3-tokenizer", "tokenizer.model"),
}
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["id", "ok", "tags"],
          "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 9999},
                         "ok": {"type": "boolean"},
                         "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 5}}}}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def setup(request):
    tok = lf.Tokenizer(shared_file(*TOKENIZERS[request.param]))
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size, hidden_dim=32,
                      max_seq_len=256)
    return tok, cfg, lf.init_params(cfg, generator=torch.Generator().manual_seed(0))


def run(setup, constraint, n=96, seed=0, rows=4):
    tok, cfg, params = setup
    prompts = [tok.encode(f"Answer {i}:") for i in range(rows)]
    out = lf.generate(params, cfg, prompts, n, temperature=1.0, generator=torch.Generator().manual_seed(seed),
                      stop_tokens=tok.stop_tokens, constraints=[constraint])
    return [tok.decode(o) for o in out]


def validates(value) -> bool:
    return (isinstance(value, dict) and set(value) == {"id", "ok", "tags"}
            and isinstance(value["id"], int) and not isinstance(value["id"], bool) and 0 <= value["id"] <= 9999
            and isinstance(value["ok"], bool) and isinstance(value["tags"], list) and len(value["tags"]) <= 2
            and all(isinstance(t, str) and len(t) <= 5 for t in value["tags"]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_schema_outputs_parse_and_validate(setup, seed):
    for text in run(setup, Grammar(setup[0], json_schema=SCHEMA), seed=seed):
        assert validates(json.loads(text)), text


@pytest.mark.parametrize("pattern", [r"[0-9]{3}-[a-z]{2,5}", r"(yes|no|maybe), because [a-z ]{1,12}\.", r"#[0-9a-f]{6}"])
def test_regex_outputs_fully_match(setup, pattern):
    for text in run(setup, Grammar(setup[0], regex=pattern)):
        assert re.fullmatch(pattern, text), (pattern, text)


def test_lark_grammar_outputs_parse(setup):
    lark = '''
start: "SELECT " col ", " col " FROM " table ";"
col: /[a-z]{1,6}/
table: /[A-Z][a-z]{1,6}/
'''
    for text in run(setup, Grammar(setup[0], lark=lark)):
        assert re.fullmatch(r"SELECT [a-z]{1,6}, [a-z]{1,6} FROM [A-Z][a-z]{1,6};", text), text


def test_the_shipped_code_tokenizer_works_too():
    tok = lf.Tokenizer(cards_dir() / "stdlib-coder" / "tokenizer.model")
    params, cfg = lf.load(cards_dir() / "stdlib-coder-draft")
    out = lf.generate(params, cfg, [tok.encode("x = ")] * 3, 40, temperature=1.0, stop_tokens=tok.stop_tokens,
                      generator=torch.Generator().manual_seed(0), constraints=[Grammar(tok, regex=r"[0-9]{1,4}\n")])
    assert all(re.fullmatch(r"[0-9]{1,4}\n", tok.decode(o)) for o in out)


CFG = ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=12, hidden_dim=32, max_seq_len=64)
TINY = lf.init_params(CFG, generator=torch.Generator().manual_seed(0))


@given(st.sets(st.integers(0, 11), min_size=1, max_size=6), st.integers(0, 1000))
def test_allowed_token_sets_hold(allowed, seed):
    out = lf.generate(TINY, CFG, [[1, 2], [3]], 10, temperature=1.0, generator=torch.Generator().manual_seed(seed),
                      constraints=[TokenSets(12, allowed=sorted(allowed))])
    assert all(t in allowed for row in out for t in row)


@given(st.lists(st.lists(st.integers(0, 11), min_size=1, max_size=3), min_size=1, max_size=4), st.integers(0, 1000))
def test_banned_tokens_and_phrases_never_appear(phrases, seed):
    out = lf.generate(TINY, CFG, [[1, 2], [3]], 16, temperature=1.0, generator=torch.Generator().manual_seed(seed),
                      constraints=[TokenSets(12, banned=[0], banned_phrases=phrases)])
    for prompt, row in zip([[1, 2], [3]], out):
        seq = prompt + row
        assert 0 not in row
        for p in phrases:
            for end in range(len(prompt), len(seq)):        # no phrase ends at a generated token
                start = end - len(p) + 1
                assert start < 0 or seq[start:end + 1] != p


@given(st.integers(0, 1000))
def test_a_constraint_over_fewer_ids_than_the_model_never_allows_the_rest(seed):
    """A tokenizer's vocabulary can be smaller than a model's padded one: ids past the constraint's are
    never drawn; a constraint over more ids than the model has is refused."""
    out = lf.generate(TINY, CFG, [[1, 2], [3]], 12, temperature=1.0, generator=torch.Generator().manual_seed(seed),
                      constraints=[TokenSets(8, banned=[0])])
    assert all(0 < t < 8 for row in out for t in row)
    with pytest.raises(InputError, match="a constraint covers 13 token ids, more than the model's vocabulary of 12"):
        lf.generate(TINY, CFG, [[1]], 4, constraints=[TokenSets(13)])


def test_impossible_constraints_fail_clearly(setup):
    tok = setup[0]
    with pytest.raises(InputError, match="no token satisfies the constraints"):
        lf.generate(TINY, CFG, [[1]], 4, constraints=[TokenSets(12, allowed=[3]), TokenSets(12, banned=[3])])
    with pytest.raises(InputError, match="invalid grammar"):
        Grammar(tok, regex="[0-9")
    with pytest.raises(InputError, match="exactly one"):
        Grammar(tok, regex="a", lark="start: \"a\"")
    with pytest.raises(InputError, match="plain decoding only"):
        lf.generate(TINY, CFG, [[1]], 4, compile=True, constraints=[TokenSets(12, banned=[3])])
    with pytest.raises(InputError, match=r"banned token id 12 is outside \[0, 12\)"):
        TokenSets(12, banned=[12])
