from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamafn.errors import TokenizerError
from llamafn.tokenizer import Tokenizer
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def llama2():
    return Tokenizer(shared_file("llama2-tokenizer", "tokenizer.model"))


@pytest.fixture(scope="module")
def llama3():
    return Tokenizer(shared_file("llama3-tokenizer", "tokenizer.model"))


@pytest.fixture(scope="module")
def tok512():
    return Tokenizer(shared_file("stories260K", "tok512.model"))


# sentencepiece reads U+2581 (the word-boundary mark) as a space: text containing it cannot round trip
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"), max_size=60)


def test_llama2_encodings_from_its_readme(llama2):
    assert llama2.kind == "sentencepiece" and llama2.vocab_size == 32000
    assert llama2.encode("Hello world") == [1, 15043, 3186]
    assert llama2.decode([1, 15043, 3186]) == "Hello world"
    assert llama2.encode("The quick brown fox jumps over the lazy dog.") == \
        [1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203, 29889]
    assert (llama2.bos_id, llama2.eos_id, llama2.stop_tokens) == (1, 2, (2,))


def test_llama3_encodings_from_its_readme(llama3):
    assert llama3.kind == "tiktoken" and llama3.vocab_size == 128256
    assert llama3.encode("This is a test sentence.", bos=True, eos=True) == \
        [128000, 2028, 374, 264, 1296, 11914, 13, 128001]
    assert llama3.special_ids["<|eot_id|>"] == 128009 and llama3.special_ids["<|start_header_id|>"] == 128006
    assert set(llama3.stop_tokens) == {128001, 128009}
    assert llama3.encode("<|eot_id|>", bos=False) != [128009]     # special text in user input stays text


@given(TEXT)
def test_llama2_round_trips_any_text(llama2, text):
    assert llama2.decode(llama2.encode(text)) == text


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_llama3_round_trips_any_text(llama3, text):
    assert llama3.decode(llama3.encode(text, bos=False)) == text


@given(TEXT)
def test_tok512_round_trips_through_byte_fallback(tok512, text):
    assert tok512.decode(tok512.encode(text, bos=False)) == text


@pytest.mark.parametrize("name", ["llama2", "llama3", "tok512"])
@given(prompt=TEXT, completion=TEXT, data=st.data())
def test_streamed_text_equals_the_whole_decode(request, name, prompt, completion, data):
    """Pushing ids in any chunks yields exactly decode(prompt + completion)[len(decode(prompt)):]."""
    tok = request.getfixturevalue(name)
    context = tok.encode(prompt)
    ids = tok.encode(prompt + completion, bos=True)[len(context):] or tok.encode(completion, bos=False)
    decoder = tok.stream_decoder(context)
    pieces, i = [], 0
    while i < len(ids):
        n = data.draw(st.integers(1, 3))
        piece = decoder.push(ids[i:i + n])
        assert "\ufffd" not in piece or "\ufffd" in tok.decode(ids)
        pieces.append(piece)
        i += n
    pieces.append(decoder.flush())
    assert "".join(pieces) == tok.decode(context + ids)[len(tok.decode(context)):]


def test_stream_never_splits_a_multibyte_character(tok512):
    ids = tok512.encode("é€😀", bos=False)                # byte-fallback pieces, one byte each
    assert len(ids) > 3
    decoder = tok512.stream_decoder([tok512.bos_id])
    pieces = [decoder.push([t]) for t in ids]
    assert [p for p in pieces if p] == ["é", "€", "😀"]


def test_llama3_chat_format(llama3):
    ids = llama3.encode_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert llama3.decode(ids) == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                                  "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                                  "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_llama2_chat_format(llama2):
    ids = llama2.encode_chat([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}])
    assert ids[0] == 1 and llama2.decode(ids) == "[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST]"
    with pytest.raises(TokenizerError, match="alternate"):
        llama2.encode_chat([{"role": "assistant", "content": "x"}])


def test_bad_tokenizer_files(tmp_path, llama2):
    with pytest.raises(TokenizerError, match="not found"):
        Tokenizer(tmp_path / "missing.model")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00\x01garbage")
    with pytest.raises(TokenizerError, match="neither a sentencepiece model nor a tiktoken"):
        Tokenizer(junk)
    with pytest.raises(TokenizerError, match=r"token id 40000 is outside \[0, 32000\)"):
        llama2.decode([1, 40000])


@pytest.mark.parametrize("messages, message", [
    ("hello", "expected a list of messages"),
    ({"role": "user", "content": "hi"}, "expected a list of messages"),
    ([{"role": "user"}], "each message needs a str 'role' and 'content'"),
    ([{"role": "user", "content": 3}], "each message needs a str 'role' and 'content'"),
])
def test_a_chat_that_is_not_a_list_of_role_content_messages_is_named(messages, message):
    shipped = Tokenizer(Path(__file__).parents[1] / "params" / "stdlib-coder" / "tokenizer.model")
    with pytest.raises(TokenizerError, match=message):
        shipped.encode_chat(messages)
