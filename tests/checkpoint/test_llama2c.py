import pytest
import torch

import llamafn as lf
from llamafn.checkpoint import detect_format, save_llama2c
from llamafn.config import ModelConfig
from llamafn.errors import CheckpointError
from tests.conftest import shared_file


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("tied", [True, False])
def test_llama2c_round_trip(tmp_path, version, tied):
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, hidden_dim=48,
                      max_seq_len=64, tie_embeddings=tied)
    params = lf.init_params(cfg, generator=torch.Generator().manual_seed(version))
    path = save_llama2c(tmp_path / "m.bin", params, cfg, version=version)
    loaded, loaded_cfg = lf.load(path)
    assert loaded_cfg == cfg
    assert all(torch.equal(loaded[k], params[k]) for k in params)


def test_a_version_1_file_is_recognised_by_its_magic_whatever_its_name(tmp_path):
    """`convert --format llama2c DST` writes DST as named; without a .bin suffix, the v1 magic identifies it."""
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=40, hidden_dim=48, max_seq_len=64)
    params = lf.init_params(cfg, generator=torch.Generator().manual_seed(0))
    path = save_llama2c(tmp_path / "exported", params, cfg, version=1)
    assert detect_format(path) == "llama2c"
    assert lf.load(path)[1] == cfg
    (tmp_path / "notes").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a known checkpoint"):
        lf.load(tmp_path / "notes")


def test_stories260k_is_legacy_v0_and_survives_conversion_to_v1(tmp_path, stories260k):
    params, cfg, _ = stories260k
    path = shared_file("stories260K", "stories260K.bin")
    assert path.read_bytes()[:4] != b"\x32\x34\x6b\x61"
    v1 = save_llama2c(tmp_path / "v1.bin", params, cfg, version=1)
    assert v1.read_bytes()[:4] == b"\x32\x34\x6b\x61" and v1.stat().st_size == 256 + 4 * 260_032
    again, cfg1 = lf.load(v1)
    assert cfg1 == cfg and all(torch.equal(again[k], params[k]) for k in params)


def test_truncated_and_unsupported_files_are_named(tmp_path, stories260k):
    params, cfg, _ = stories260k
    data = shared_file("stories260K", "stories260K.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match=r"cut.bin: 1056440 bytes, but .* has 1056540 bytes \(truncated\)"):
        lf.load(tmp_path / "cut.bin")
    v2 = bytearray(save_llama2c(tmp_path / "v.bin", params, cfg).read_bytes())
    v2[4] = 2
    (tmp_path / "v2.bin").write_bytes(bytes(v2))
    with pytest.raises(CheckpointError, match="version 2 is not supported"):
        lf.load(tmp_path / "v2.bin")
    (tmp_path / "junk.bin").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="junk.bin: not a llama2.c checkpoint"):
        lf.load(tmp_path / "junk.bin")
    (tmp_path / "tiny.bin").write_bytes(b"\x01")
    with pytest.raises(CheckpointError, match="too short"):
        lf.load(tmp_path / "tiny.bin")
