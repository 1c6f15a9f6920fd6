"""The models the project ships in params/: they load, fit their config, share one tokenizer, and
greedy generation is deterministic and reads as Python."""

import codeop

import pytest
import torch

import llamafn as lf
from llamafn.cli import main, resolve_model
from llamafn.config import cards_dir
from llamafn.params import n_params

TARGET, DRAFT = cards_dir() / "stdlib-coder", cards_dir() / "stdlib-coder-draft"


def valid_python_prefix(source: str) -> bool:
    """True if `source` compiles, or is an incomplete but so far valid program (codeop's test)."""
    try:
        codeop.compile_command(source, symbol="exec")
        return True
    except (SyntaxError, ValueError, OverflowError):
        return False


def test_the_checker_tells_prefixes_from_garbage():
    assert valid_python_prefix("def f(n):\n    if n < 2:\n")
    assert valid_python_prefix('def f(n):\n    """Return the\n')
    assert not valid_python_prefix("def f(n):\n    elif x, y:\n")


@pytest.mark.parametrize("folder, low, high", [(TARGET, 15e6, 30e6), (DRAFT, 1e6, 3e6)])
def test_shipped_models_load_and_fit_their_config(folder, low, high):
    params, cfg = lf.load(folder)
    lf.check_params(params, cfg)
    assert low <= n_params(cfg) <= high
    assert cfg.n_kv_heads < cfg.n_heads                           # GQA
    assert params["norm.weight"].dtype == torch.bfloat16
    assert lf.Tokenizer(folder / "tokenizer.model").vocab_size == cfg.vocab_size


def test_both_models_share_one_tokenizer_and_stay_small():
    assert (TARGET / "tokenizer.model").read_bytes() == (DRAFT / "tokenizer.model").read_bytes()
    total = sum(f.stat().st_size for d in (TARGET, DRAFT) for f in d.iterdir())
    assert total < 60e6


@pytest.mark.parametrize("folder", [TARGET, DRAFT])
def test_greedy_completion_is_deterministic_and_valid_python(folder):
    params, cfg = lf.load(folder, dtype=torch.float32)
    tok = lf.Tokenizer(folder / "tokenizer.model")
    prompt = "def fibonacci(n):\n"
    ids = tok.encode(prompt)
    a = lf.generate(params, cfg, [ids], max_new_tokens=48, stop_tokens=tok.stop_tokens)[0]
    b = lf.generate(params, cfg, [ids], max_new_tokens=48, stop_tokens=tok.stop_tokens)[0]
    assert a == b
    text = prompt + tok.decode(a)
    lines = text.split("\n")
    assert len(lines) >= 3, f"no complete generated line in {text!r}"
    assert valid_python_prefix("\n".join(lines[:2]) + "\n"), text      # the prompt and the first whole line
    if folder == TARGET:                                                  # the target: every whole line
        assert valid_python_prefix("\n".join(lines[:-1]) + "\n"), text


def test_cli_defaults_to_the_shipped_target(capsys):
    assert resolve_model(None) == TARGET and resolve_model("draft") == DRAFT
    assert main(["generate", "--temperature", "0", "--max-new-tokens", "20", "def fibonacci(n):"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("def fibonacci(n):") and len(out) > len("def fibonacci(n):") + 5


def test_cli_speculative_decoding_gives_the_same_greedy_text(capsys):
    args = ["generate", "--temperature", "0", "--max-new-tokens", "30", "def parse(line):"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    for extra in (["--speculative", "draft", "--k", "3"], ["--speculative", "lookup"]):
        assert main(args + extra) == 0
        assert capsys.readouterr().out == plain


def test_cli_constraints_and_beams(tmp_path, capsys):
    import json
    import re

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "additionalProperties": False, "required": ["name", "line"],
                                  "properties": {"name": {"type": "string", "maxLength": 12},
                                                 "line": {"type": "integer", "minimum": 0, "maximum": 999}}}))
    assert main(["generate", "--json-schema", str(schema), "--seed", "1", "--max-new-tokens", "60", "cfg = "]) == 0
    value = json.loads(capsys.readouterr().out[len("cfg = "):])
    assert set(value) == {"name", "line"} and isinstance(value["line"], int)
    assert main(["generate", "--regex", r"def [a-z_]{3,12}\(self\):", "--seed", "0", "--max-new-tokens", "30", "    "]) == 0
    assert re.fullmatch(r"    def [a-z_]{3,12}\(self\):\n", capsys.readouterr().out)
    assert main(["generate", "--beams", "3", "--max-new-tokens", "12", "import"]) == 0
    assert capsys.readouterr().out.startswith("import")
    assert main(["generate", "--beams", "3", "--force", "return", "--max-new-tokens", "16", "def f(x):"]) == 0
    assert "return" in capsys.readouterr().out
