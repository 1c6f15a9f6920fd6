"""Parity with Hugging Face transformers, an independent implementation: random small Llama models
saved with `save_pretrained`, read with `llamafn.load`, must give the same logits."""

import json

import pytest
import torch

import llamafn as lf
from llamafn.checkpoint.hf import permute, unpermute
from llamafn.errors import CheckpointError

transformers = pytest.importorskip("transformers")

CASES = {
    "mha": dict(num_attention_heads=4, num_key_value_heads=4),
    "gqa": dict(num_attention_heads=4, num_key_value_heads=2),
    "mqa": dict(num_attention_heads=4, num_key_value_heads=1),
    "tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "llama31-rope": dict(num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
}


def hf_model(case: str, seed: int = 0):
    kwargs = dict(vocab_size=97, hidden_size=64, intermediate_size=80, num_hidden_layers=2, rms_norm_eps=1e-5,
                  max_position_embeddings=128, tie_word_embeddings=False, attn_implementation="eager")
    kwargs.update(CASES[case])
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_logits_equal_transformers(tmp_path, case):
    model = hf_model(case)
    model.save_pretrained(tmp_path)
    params, cfg = lf.load(tmp_path)
    assert lf.checkpoint.detect_format(tmp_path) == "hf"
    assert cfg.tie_embeddings == (case == "tied") and ("output.weight" in params) != cfg.tie_embeddings
    assert (cfg.rope_scaling is not None) == (case == "llama31-rope")
    tokens = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(tokens).logits
    logits, _ = lf.forward(params, tokens, cfg=cfg)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    cache = lf.init_cache(cfg, 2, 64)
    first, cache = lf.forward(params, tokens[:, :30], cache, cfg=cfg)
    rest, _ = lf.forward(params, tokens[:, 30:], cache, cfg=cfg)
    torch.testing.assert_close(torch.cat([first, rest], 1), expected, rtol=1e-4, atol=1e-4)


def test_sharded_checkpoint_with_an_index(tmp_path):
    model = hf_model("gqa")
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    params, cfg = lf.load(tmp_path, dtype=torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for t in params.values())
    tokens = torch.arange(10)[None]
    with torch.no_grad():
        expected = model(tokens).logits
    logits, _ = lf.forward(lf.params.cast(params, torch.float32), tokens, cfg=cfg)
    torch.testing.assert_close(logits, expected, rtol=0.1, atol=0.15)


def test_permute_and_unpermute_are_inverse():
    w = torch.randn(4 * 8, 16)
    assert torch.equal(unpermute(permute(w, 4), 4), w)
    assert not torch.equal(permute(w, 4), w)


def test_missing_shard_and_bad_config_are_named(tmp_path):
    model = hf_model("gqa")
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    shard = sorted(tmp_path.glob("*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"missing: {shard.name}"):
        lf.load(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"intermediate_size": 81}))
    with pytest.raises(lf.LlamafnError, match="misshapen|missing"):
        lf.load(tmp_path)
