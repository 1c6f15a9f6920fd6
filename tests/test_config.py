import pytest

from llamafn.config import ModelConfig, ffn_hidden_dim, preset, preset_names
from llamafn.errors import ConfigError


@pytest.mark.parametrize("name, hidden, params_b", [
    ("llama-2-7b", 11008, 6.74), ("llama-2-13b", 13824, 13.0), ("llama-2-70b", 28672, 69.0),
    ("llama-3-8b", 14336, 8.03), ("llama-3-70b", 28672, 70.6), ("llama-3.1-8b", 14336, 8.03),
    ("llama-3.1-70b", 28672, 70.6), ("tinyllama-1.1b", 5632, 1.10),
])
def test_presets_have_the_published_ffn_width_and_size(name, hidden, params_b):
    from llamafn.params import n_params

    cfg = preset(name)
    assert cfg.hidden_dim == hidden
    assert n_params(cfg) / 1e9 == pytest.approx(params_b, rel=0.01)


def test_every_card_is_a_preset():
    assert {"llama-2-7b", "llama-3.1-8b", "stories260k", "stories15m", "stories110m"} <= set(preset_names())
    assert preset("llama-3.1-8b").rope_scaling.factor == 8.0
    assert preset("stories260k").n_kv_heads == 4


def test_ffn_rule():
    assert ffn_hidden_dim(4096, 256) == 11008
    assert ffn_hidden_dim(8192, 4096, 1.3) == 28672


def test_hf_config_4x_and_5x_give_the_same_config():
    common = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 100, "intermediate_size": 96, "rms_norm_eps": 1e-5,
              "max_position_embeddings": 128, "tie_word_embeddings": True}
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}
    v4 = ModelConfig.from_hf(common | {"rope_theta": 500000.0, "rope_scaling": scaling})
    v5 = ModelConfig.from_hf(common | {"rope_parameters": scaling | {"rope_theta": 500000.0}})
    assert v4 == v5 and v4.rope_theta == 500000.0 and v4.rope_scaling.original_max_seq_len == 32
    assert v4.tie_embeddings and v4.n_kv_heads == 2


def test_meta_params_json_round_trips():
    cfg = preset("llama-3.1-70b")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("bad, message", [
    ({"dim": 64, "n_layers": 2, "n_heads": 3, "vocab_size": 10}, "not divisible by n_heads"),
    ({"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 3, "vocab_size": 10}, "not a multiple of n_kv_heads"),
    ({"dim": 64, "n_heads": 4, "vocab_size": 10}, "missing required field 'n_layers'"),
    ({"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": -1}, "vocab_size is -1"),
    ({"dim": "x", "n_layers": 2, "n_heads": 4, "vocab_size": 10}, "bad value"),
])
def test_bad_configs_name_the_field(bad, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(bad)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="llama-2-7b"):
        preset("gpt-2")


def test_non_llama_hf_config_is_refused():
    with pytest.raises(ConfigError, match="model_type is 'mistral'"):
        ModelConfig.from_hf({"model_type": "mistral"})
