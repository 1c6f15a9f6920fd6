import importlib.util
import subprocess
import sys

import pytest
import torch

import llamafn as lf
from llamafn.cli import main
from llamafn.config import ModelConfig
from tests.conftest import shared_file


def test_generate_reproduces_the_stories260k_golden_text(capsys, stories260k_golden):
    model = shared_file("stories260K", "stories260K.bin")
    _, text = stories260k_golden
    assert main(["generate", "--model", str(model), "--temperature", "0", "--max-new-tokens", "200", ""]) == 0
    assert capsys.readouterr().out == text + "\n"


def test_generate_with_an_int8_kv_cache(capsys, stories260k_golden):
    """The int8 cache keeps the golden greedy text for its first 100 tokens (measured: 118)."""
    model = shared_file("stories260K", "stories260K.bin")
    ids, _ = stories260k_golden
    expected = lf.Tokenizer(shared_file("stories260K", "tok512.model")).decode(ids[1:101])
    assert main(["generate", "--model", str(model), "--temperature", "0", "--max-new-tokens", "100",
                 "--kv-cache", "int8", ""]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_generate_with_a_prompt_and_a_seed_is_repeatable(capsys):
    model = shared_file("stories260K", "stories260K.bin")
    args = ["generate", "--model", str(model), "--seed", "3", "--max-new-tokens", "30", "--top-k", "40",
            "--attention", "reference", "Lily went"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first and first.startswith("Lily went ") and len(first) > 40


def test_info_and_convert(tmp_path, capsys):
    model = shared_file("stories260K", "stories260K.bin")
    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    assert "llama2c" in out and "260,032" in out and "n_kv_heads      4" in out
    assert main(["convert", str(model), str(tmp_path / "ours"), "--dtype", "bfloat16"]) == 0
    assert (tmp_path / "ours" / "tokenizer.model").is_file()
    params, cfg = lf.load(tmp_path / "ours")
    assert params["norm.weight"].dtype == torch.bfloat16 and cfg.n_kv_heads == 4
    assert main(["convert", str(model), str(tmp_path / "ours")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_every_folder_format_carries_the_tokenizer_and_generates_the_same_text(tmp_path, capsys):
    """`convert` to the Hugging Face and Meta layouts copies tokenizer.model next to the weights, as the
    native format does, so `generate --model` runs on the result and greedy decoding gives the same text."""
    prompt = ["--temperature", "0", "--max-new-tokens", "8", "def add(a, b):"]
    assert main(["generate", "--model", "target", *prompt]) == 0
    expected = capsys.readouterr().out
    for fmt in ("hf", "meta"):
        assert main(["convert", "target", str(tmp_path / fmt), "--format", fmt]) == 0
        assert (tmp_path / fmt / "tokenizer.model").is_file()
        capsys.readouterr()
        assert main(["generate", "--model", str(tmp_path / fmt), *prompt]) == 0
        assert capsys.readouterr().out == expected


def test_convert_quantize_then_generate(tmp_path, capsys):
    """`convert --quantize` writes a native int4 checkpoint that `info` reports and `generate` runs;
    exporting it to another format writes its dequantized weights; bad requests are one-line errors."""
    assert main(["convert", "target", str(tmp_path / "q4"), "--quantize", "int4", "--group-size", "64"]) == 0
    assert "int4 g64" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "q4")]) == 0
    assert "quantization    int4" in capsys.readouterr().out
    assert main(["generate", "--model", str(tmp_path / "q4"), "--temperature", "0", "--max-new-tokens", "8",
                 "def f(x):"]) == 0
    assert capsys.readouterr().out.startswith("def f(x):")
    assert main(["convert", str(tmp_path / "q4"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert "dequantized" in capsys.readouterr().err
    assert lf.load(tmp_path / "hf")[0]["layers.0.attention.wq.weight"].__class__ is torch.Tensor
    assert main(["convert", "target", str(tmp_path / "x"), "--quantize", "int4", "--format", "hf"]) == 1
    assert "native format only" in capsys.readouterr().err
    assert main(["convert", "target", str(tmp_path / "y"), "--quantize", "int4", "--group-size", "48"]) == 1
    assert "group_size must be one of" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert main(["convert", "target", str(tmp_path / "y"), "--quantize-head"]) == 1
    assert "--quantize-head applies with --quantize" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert main(["convert", "target", str(tmp_path / "y"), "--shards", "2"]) == 1
    assert "--shards applies to --format meta" in capsys.readouterr().err and not (tmp_path / "y").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the decode layouts are picked on a GPU")
@pytest.mark.parametrize("flags", [[], ["--beams", "4"], ["--speculative", "lookup", "--k", "3"],
                                   ["--speculative", "lookup", "--k", "8"], ["--beams", "33"], ["--beams", "65"]])
def test_int4_generation_on_a_gpu_runs_in_the_layouts_for_its_rows(flags, capsys):
    """1 row a step (the group-plane GEMV), 4 and 4 (the tensor-core mma GEMV), 9 and 33 (the mma GEMV, two
    tiles and two chunks of x a program), 65 (the Triton tile)."""
    extra = [] if "--beams" in flags else ["--temperature", "0"]
    assert main(["generate", "--quantize", "int4", "--device", "cuda", "--max-new-tokens", "12", *extra, *flags,
                 "def f(x):"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("def f(x):") and len(out) > len("def f(x):\n")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamafn", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("extra, message", [
    (["--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
    (["--temperature", "-1"], "temperature must be >= 0, got -1.0"),
    (["--max-new-tokens", "600"], "over the model's context of 512 tokens"),
    (["--tokenizer", "LLAMA2"], "has 32000 tokens but the model's vocabulary has 512"),
])
def test_bad_generate_input_prints_one_error_line_and_no_traceback(extra, message):
    model = shared_file("stories260K", "stories260K.bin")
    extra = [str(shared_file("llama2-tokenizer", "tokenizer.model")) if a == "LLAMA2" else a for a in extra]
    result = run_cli("generate", "--model", str(model), *extra, "Once")
    assert result.returncode == 1
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert message in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the triton kernels run on this machine's GPU")
def test_triton_kernels_without_a_gpu_are_refused_before_any_output():
    import os

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "llamafn", "generate", "--attention", "triton", "def f():"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert "--attention triton needs a CUDA GPU" in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--beams", "0"], "--beams must be >= 1, got 0"),
    (["--diverse-groups", "2"], "--force and --diverse-groups need --beams N"),
    (["--force", "x"], "--force and --diverse-groups need --beams N"),
    (["--beams", "2", "--regex", "a+"], "--beams runs alone"),
    (["--beams", "4", "--diversity-penalty", "2"], "--diversity-penalty needs --diverse-groups G (G > 1)"),
    (["--beams", "4", "--diverse-groups", "2", "--force", "x"], "--force runs one group of beams"),
    (["--beams", "2", "--temperature", "0.5", "--seed", "1"],
     "--beams searches deterministically; sampling flags do not apply: --temperature, --seed"),
    (["--beams", "3", "--top-p", "0.9", "--repetition-penalty", "1.2"], "do not apply: --top-p, --repetition-penalty"),
    (["--speculative", "lookup", "--k", "17"], "k (draft tokens a step) must be in 1..16, got 17"),
    pytest.param(["--regex", "([a-"], 'invalid regex "([a-" (in regex): regex parse error: unclosed character class',
                 marks=pytest.mark.skipif(importlib.util.find_spec("llguidance") is None,
                                          reason="llguidance (pip install 'llamafn[constrained]') parses the regex")),
    (["--k", "3"], "--k, --adaptive-k and --draft-model configure --speculative"),
    (["--speculative", "lookup", "--draft-model", "draft"], "--draft-model is for --speculative draft"),
    (["--quantize", "int8", "--group-size", "64"], "--group-size applies to --quantize int4 only"),
])
def test_flags_that_cannot_run_are_refused_in_one_line_before_any_output(flags, message, capsys):
    assert main(["generate", *flags, "--max-new-tokens", "4", "def f():"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err


@pytest.mark.parametrize("device, message", [
    ("gpu", "--device 'gpu' is not a device"),
    ("cuda:64", "--device cuda:64: "),
    ("meta", "--device meta: only cpu and cuda devices are supported"),
])
def test_a_device_this_machine_lacks_is_one_error_line(device, message):
    result = run_cli("generate", "--device", device, "--max-new-tokens", "2", "hi")
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert message in result.stderr


def test_an_unwritable_destination_is_one_error_line_and_leaves_nothing(tmp_path):
    (tmp_path / "file").write_text("")
    result = run_cli("convert", "target", str(tmp_path / "file" / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'file'}: File exists" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_missing_model_and_a_truncated_checkpoint(tmp_path):
    result = run_cli("generate", "--model", str(tmp_path / "nope.bin"), "hi")
    assert result.returncode == 1 and "nope.bin: no such checkpoint" in result.stderr
    cfg = ModelConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=8, hidden_dim=8)
    lf.save(tmp_path / "m", lf.init_params(cfg), cfg)
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    result = run_cli("info", str(tmp_path / "m"))
    assert result.returncode == 1 and "Traceback" not in result.stderr and "safetensors" in result.stderr
    result = run_cli("generate", "--model", "no-such-model", "hello")
    assert result.returncode == 1 and "no such checkpoint, nor a shipped model (shipped: draft, target" in result.stderr
