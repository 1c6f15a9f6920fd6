import torch
from hypothesis import given

from llamafn.model import feed_forward
from llamafn.params import init_params, layer_params
from llamafn.model.block import subtree
from tests.strategies import configs, seeds


@given(configs(max_layers=1), seeds())
def test_swiglu_is_w2_of_silu_gate_times_up(cfg, seed):
    params = init_params(cfg, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    p = subtree(layer_params(params, 0), "feed_forward.")
    x = torch.randn(2, 3, cfg.dim, dtype=torch.float64)
    a, b = x @ p["w1.weight"].T, x @ p["w3.weight"].T
    expected = (a * torch.sigmoid(a) * b) @ p["w2.weight"].T
    torch.testing.assert_close(feed_forward(p, x), expected)
