import pytest
import torch
from hypothesis import given

from llamafn.errors import ParamsError
from llamafn.params import check_params, init_params, n_params, nbytes, param_shapes
from llamafn.config import preset
from tests.strategies import configs, seeds


@given(configs(), seeds())
def test_init_params_matches_the_shapes_and_is_seeded(cfg, seed):
    a = init_params(cfg, generator=torch.Generator().manual_seed(seed))
    b = init_params(cfg, generator=torch.Generator().manual_seed(seed))
    check_params(a, cfg)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ("output.weight" in a) != cfg.tie_embeddings
    assert sum(t.numel() for t in a.values()) == n_params(cfg)


def test_meta_device_plans_a_7b_without_memory():
    cfg = preset("llama-2-7b")
    params = init_params(cfg, dtype=torch.bfloat16, device="meta")
    assert all(t.device.type == "meta" for t in params.values())
    assert nbytes(params) == 2 * n_params(cfg) == 13_476_831_232


def test_check_params_names_every_problem():
    cfg = preset("stories260k")
    params = init_params(cfg)
    del params["layers.1.attention.wq.weight"], params["norm.weight"]
    params["layers.0.feed_forward.w2.weight"] = torch.zeros(3, 3)
    params["extra.bias"] = torch.zeros(1)
    with pytest.raises(ParamsError) as e:
        check_params(params, cfg)
    text = str(e.value)
    for needle in ("layers.1.attention.wq.weight", "norm.weight", "extra.bias",
                   "layers.0.feed_forward.w2.weight: expected (64, 172), got (3, 3)"):
        assert needle in text


def test_shapes_follow_gqa():
    shapes = param_shapes(preset("llama-3-8b"))
    assert shapes["layers.0.attention.wk.weight"] == (1024, 4096)
    assert shapes["layers.31.feed_forward.w1.weight"] == (14336, 4096)


@given(configs(), seeds())
def test_fused_params_give_the_same_logits_and_unfuse_back(cfg, seed):
    import llamafn as lf
    from llamafn.params import fuse, unfuse

    params = init_params(cfg, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    fused = fuse(params)
    check_params(fused, cfg)
    assert not any(k.endswith(("wq.weight", "w1.weight")) for k in fused)
    tokens = torch.randint(0, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(lf.forward(fused, tokens, cfg=cfg)[0], lf.forward(params, tokens, cfg=cfg)[0])
    back = unfuse(fused, cfg)
    assert back.keys() == params.keys() and all(torch.equal(back[k], params[k]) for k in params)
