import json

import pytest
import torch

import llamafn as lf
from llamafn.checkpoint import save_meta
from llamafn.config import ModelConfig
from llamafn.errors import CheckpointError

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, hidden_dim=48, max_seq_len=64)


@pytest.fixture(scope="module")
def params():
    return lf.init_params(CFG, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("n_shards", [1, 2])
def test_meta_round_trip_gives_the_same_logits(tmp_path, params, n_shards):
    save_meta(tmp_path / "m", params, CFG, n_shards=n_shards)
    assert len(list((tmp_path / "m").glob("consolidated.*.pth"))) == n_shards
    if n_shards == 2:
        shard = torch.load(tmp_path / "m" / "consolidated.01.pth", weights_only=True)
        assert shard["layers.0.attention.wq.weight"].shape == (16, 32)   # column-parallel: rows split
        assert shard["layers.0.attention.wo.weight"].shape == (32, 16)   # row-parallel: columns split
        assert shard["tok_embeddings.weight"].shape == (40, 16)          # Llama 2 ParallelEmbedding
    loaded, cfg = lf.load(tmp_path / "m")
    assert cfg == CFG and lf.checkpoint.detect_format(tmp_path / "m") == "meta"
    tokens = torch.arange(12)[None]
    torch.testing.assert_close(lf.forward(loaded, tokens, cfg=cfg)[0], lf.forward(params, tokens, cfg=CFG)[0])


def test_llama3_vocab_parallel_embedding_and_metas_vocab_minus_one(tmp_path, params):
    """Llama 3 splits the embedding by rows; Llama 2's params.json says vocab_size -1."""
    save_meta(tmp_path / "m", params, CFG, n_shards=2)
    for rank in range(2):
        path = tmp_path / "m" / f"consolidated.0{rank}.pth"
        shard = torch.load(path, weights_only=True)
        shard["tok_embeddings.weight"] = params["tok_embeddings.weight"].chunk(2, dim=0)[rank].clone()
        shard["rope.freqs"] = torch.zeros(4)
        torch.save(shard, path)
    meta = json.loads((tmp_path / "m" / "params.json").read_text())
    (tmp_path / "m" / "params.json").write_text(json.dumps(meta | {"vocab_size": -1}))
    loaded, cfg = lf.load(tmp_path / "m")
    assert cfg.vocab_size == 40 and torch.equal(loaded["tok_embeddings.weight"], params["tok_embeddings.weight"])


def test_corrupt_shard_and_contradicting_params_json(tmp_path, params):
    save_meta(tmp_path / "m", params, CFG, n_shards=2)
    meta = json.loads((tmp_path / "m" / "params.json").read_text())
    (tmp_path / "m" / "params.json").write_text(json.dumps(meta | {"n_layers": 3}))
    with pytest.raises(CheckpointError, match="layers.2.attention.wq.weight"):
        lf.load(tmp_path / "m")
    (tmp_path / "m" / "params.json").write_text(json.dumps(meta))
    shard = tmp_path / "m" / "consolidated.01.pth"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="consolidated.01.pth: not a readable PyTorch checkpoint"):
        lf.load(tmp_path / "m")
