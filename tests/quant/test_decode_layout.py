"""The decode layouts chosen by rows a step (llamafn.quant.decode_layout): the choice on a GPU, with the
kernels' availability stubbed, and the params it makes."""

import pytest
import torch

import llamafn as lf
from llamafn.errors import InputError
from llamafn.quant import Int4Weight, Int8Weight, for_decode, quantize, quantize_int4, quantize_int8
from llamafn.quant import decode_layout, mma, tinygemm

CUDA = torch.device("cuda")


@pytest.fixture
def kernels(monkeypatch):
    """Both kernels present (as on an H100), whatever this machine has."""
    monkeypatch.setattr(mma, "available", lambda device, chains=8: True)
    monkeypatch.setattr(tinygemm, "available", lambda device: True)


@pytest.mark.parametrize("rows, dtype, layouts", [
    (1, torch.bfloat16, ("gemv",)),                       # batch-1 decode: the plane-order GEMVs
    (2, torch.bfloat16, ("mma",)), (5, torch.bfloat16, ("mma",)), (8, torch.bfloat16, ("mma",)),
    (9, torch.bfloat16, ("mma",)), (64, torch.bfloat16, ("mma",)),   # 1-4 programs a pair of tiles
    (65, torch.bfloat16, ()),                             # past 64 rows: dequantised for cuBLAS
    (1, torch.float16, ("tinygemm", "gemv")), (4, torch.float16, ("tinygemm",)), (5, torch.float16, ()),
])
def test_rows_a_step_pick_the_measured_fastest_layouts(kernels, rows, dtype, layouts):
    assert decode_layout.layouts_for(rows, dtype, CUDA) == layouts


def test_params_without_tensors_are_refused():
    with pytest.raises(InputError, match="the params hold no tensors"):
        for_decode({}, 1, torch.bfloat16)


@pytest.mark.parametrize("rows", [0, -1, 2.0])
def test_rows_a_step_must_be_a_positive_int(rows):
    with pytest.raises(InputError, match=f"rows a step must be an int >= 1, got {rows!r}"):
        for_decode({"norm.weight": torch.ones(8)}, rows, torch.bfloat16)


def test_a_gpu_without_the_kernels_keeps_what_runs(monkeypatch):
    monkeypatch.setattr(mma, "available", lambda device, chains=8: False)
    monkeypatch.setattr(tinygemm, "available", lambda device: False)
    assert decode_layout.layouts_for(4, torch.bfloat16, CUDA) == ()
    assert decode_layout.layouts_for(1, torch.bfloat16, CUDA) == ("gemv",)


def test_the_mma_layout_takes_its_warps_a_tile_from_the_rows_a_step(kernels):
    """The same weight laid out for 8 rows (one program a tile), 16 (two) and 32 (four) gets the chains that
    chains_for gives those rows and its group: 32 rows halve the warps a tile where the launch would pass
    the budget, at group 64 (one tile a program) already 16 do."""
    for group in (64, 128):
        w = quantize_int4(torch.randn(16 * 200, 256), group)                        # 200 tiles
        for rows in (2, 8, 16, 32):
            out = decode_layout.LAYOUTS["mma"]({"a": w}, rows)["a"]
            assert out.words.shape[2] == 128 * mma.chains_for(w.shape[0], rows, group)
    assert mma.chains_for(16 * 200, 32) == mma.chains_for(16 * 200, 16) // 2 == 4
    assert mma.chains_for(16 * 200, 16, 64) == mma.chains_for(16 * 200, 8, 64) // 2 == 4


def test_the_cpu_keeps_the_params_as_they_are(kernels):
    params = {"a": quantize_int4(torch.randn(32, 256), 128), "b": quantize_int8(torch.randn(16, 64)),
              "norm.weight": torch.ones(8)}
    assert decode_layout.layouts_for(1, torch.bfloat16, torch.device("cpu")) == ()
    out = for_decode(params, 1, torch.bfloat16)
    assert out is params and isinstance(out["a"], Int4Weight) and isinstance(out["b"], Int8Weight)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the decode layouts are GPU layouts")
@pytest.mark.parametrize("rows, kind", [(1, "Int4GemvWeight"), (2, "Int4MmaWeight"), (8, "Int4MmaWeight"),
                                        (16, "Int4MmaWeight"), (32, "Int4MmaWeight")])
def test_on_a_gpu_the_chosen_layout_gives_the_natural_logits(small_fused_model, rows, kind):
    """A decode step of `rows` rows (a batch's last positions) in the chosen layout against the stored one."""
    params, cfg, tokens = small_fused_model
    quantized = quantize(params, "int4", group_size=64)
    laid_out = for_decode(quantized, rows, torch.bfloat16)
    assert type(laid_out["layers.0.attention.wqkv.weight"]).__name__ == kind
    step = tokens[:, -1:].repeat(rows, 1)[:rows]                                  # (rows, 1)
    expected, _ = lf.forward(quantized, step, cfg=cfg)
    got, _ = lf.forward(laid_out, step, cfg=cfg)
    torch.testing.assert_close(got, expected, atol=5e-2, rtol=5e-2)
