import json

import pytest
import torch

import llamafn as lf
from llamafn.config import ModelConfig
from llamafn.errors import CheckpointError, InputError, ParamsError

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, hidden_dim=48, max_seq_len=64,
                  rope_theta=500000.0)


@pytest.fixture(scope="module")
def params():
    return lf.init_params(CFG, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16)


def test_save_and_load_round_trip_with_dtype_and_device(tmp_path, params):
    lf.save(tmp_path / "m", params, CFG)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "params.json"]
    loaded, cfg = lf.load(tmp_path / "m")
    assert cfg == CFG and all(torch.equal(loaded[k], params[k]) for k in params)
    as_f32, _ = lf.load(tmp_path / "m", dtype=torch.float32)
    assert as_f32["norm.weight"].dtype == torch.float32
    assert lf.load(tmp_path / "m", dtype="float16")[0]["norm.weight"].dtype == torch.float16   # by name
    for bad in (torch.int8, "int8", "no_such_dtype"):
        with pytest.raises(InputError, match="dtype must be a floating torch dtype"):
            lf.load(tmp_path / "m", dtype=bad)
    on_meta, _ = lf.load(tmp_path / "m", device="meta")
    assert on_meta["tok_embeddings.weight"].device.type == "meta"


def test_save_refuses_to_overwrite_and_leaves_nothing_half_written(tmp_path, params, monkeypatch):
    lf.save(tmp_path / "m", params, CFG)
    with pytest.raises(CheckpointError, match="already exists"):
        lf.save(tmp_path / "m", params, CFG)
    bad = dict(params)
    del bad["norm.weight"]
    with pytest.raises(ParamsError, match="norm.weight"):
        lf.save(tmp_path / "n", bad, CFG)

    def disk_full(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr("llamafn.checkpoint.native.save_file", disk_full)
    with pytest.raises(CheckpointError, match="o: could not write .*No space left"):
        lf.save(tmp_path / "o", params, CFG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_corrupt_weights_and_a_contradicting_params_json_are_named(tmp_path, params):
    lf.save(tmp_path / "m", params, CFG)
    meta = json.loads((tmp_path / "m" / "params.json").read_text())
    (tmp_path / "m" / "params.json").write_text(json.dumps(meta | {"hidden_dim": 64}))
    with pytest.raises(CheckpointError, match=r"feed_forward.w1.weight: expected \(64, 32\), got \(48, 32\)"):
        lf.load(tmp_path / "m")
    (tmp_path / "m" / "params.json").write_text("{not json")
    with pytest.raises(lf.LlamafnError, match="params.json: not a readable JSON file"):
        lf.load(tmp_path / "m")
    (tmp_path / "m" / "params.json").write_text(json.dumps(meta))
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        lf.load(tmp_path / "m")


def test_unknown_folder_says_what_it_found(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="not a known checkpoint.*found: notes.txt"):
        lf.load(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        lf.load(tmp_path / "nope")


@pytest.mark.parametrize("scheme, group", [("int8", 128), ("int4", 32)])
def test_quantized_round_trip_reads_the_stored_integers(tmp_path, params, scheme, group):
    from llamafn.quant import is_quantized, quantize

    q = quantize(params, scheme, group_size=group)
    lf.save(tmp_path / "q", q, CFG)
    loaded, cfg = lf.load(tmp_path / "q", dtype=torch.float32)
    assert cfg == CFG and loaded.keys() == q.keys()
    for key, value in q.items():
        if is_quantized(value):
            assert type(loaded[key]) is type(value)
            assert all(torch.equal(a, b) for a, b in zip(loaded[key], value) if not b.is_floating_point())
            assert loaded[key].scale.dtype == torch.float32 and torch.equal(loaded[key].scale, value.scale.float())
    on_meta, _ = lf.load(tmp_path / "q", device="meta")
    assert is_quantized(on_meta["layers.0.attention.wq.weight"])


def test_quantized_checkpoint_with_a_missing_or_misshapen_field_is_named(tmp_path, params):
    from safetensors.torch import load_file, save_file

    from llamafn.quant import quantize

    lf.save(tmp_path / "q", quantize(params, "int4", group_size=32), CFG)
    path = tmp_path / "q" / "model.safetensors"
    tensors = load_file(path)
    broken = dict(tensors)
    del broken["layers.1.feed_forward.w2.weight.zero"]
    save_file(broken, path)
    with pytest.raises(CheckpointError, match="layers.1.feed_forward.w2.weight"):
        lf.load(tmp_path / "q")
    broken = dict(tensors)
    broken["layers.0.feed_forward.w2.weight.scale"] = broken["layers.0.feed_forward.w2.weight.scale"][:, :1].contiguous()
    save_file(broken, path)
    with pytest.raises(CheckpointError, match="layers.0.feed_forward.w2.weight"):
        lf.load(tmp_path / "q")


@pytest.mark.parametrize("scheme, group", [("int8", 128), ("int4", 64)])
def test_quantize_while_loading_equals_quantize_after_loading(tmp_path, params, scheme, group):
    """load(quantize=...) quantises each matrix as it is read: the same params as quantize(load(...))."""
    from llamafn.quant import is_quantized, quantize

    lf.save(tmp_path / "m", params, CFG)
    streamed, _ = lf.load(tmp_path / "m", quantize=scheme, group_size=group)
    whole = quantize(lf.load(tmp_path / "m")[0], scheme, group_size=group)
    assert streamed.keys() == whole.keys()
    for key, value in whole.items():
        assert type(streamed[key]) is type(value)
        for a, b in zip(streamed[key] if is_quantized(value) else (streamed[key],), value if is_quantized(value) else (value,)):
            assert torch.equal(a, b), key
    lf.save(tmp_path / "q", whole, CFG)
    with pytest.raises(InputError, match="already quantized"):
        lf.load(tmp_path / "q", quantize="int4")
    with pytest.raises(InputError, match="quantize_head=True needs quantize='int8' or 'int4'"):
        lf.load(tmp_path / "m", quantize_head=True)
