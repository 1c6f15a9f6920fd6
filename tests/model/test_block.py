"""llamafn.model.block: one pre-norm block on the residual stream x + delta, returning (h, f)."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from llamafn.model.attention import step_rope
from llamafn.model.block import block, residual_norm, subtree
from llamafn.model.ffn import feed_forward
from llamafn.model.norm import rms_norm
from llamafn.params import init_params, layer_params
from tests.strategies import configs, seeds

BACKENDS = st.sampled_from(["reference", "sdpa"])


@given(configs(max_layers=1), seeds(), st.integers(1, 6), BACKENDS)
def test_the_input_is_x_plus_delta_and_the_output_h_plus_f(cfg, seed, T, backend):
    """block(x, delta) gives the block of x + delta, and its output h + f is h + ffn(norm(h)) with
    h = x + delta + attn(norm(x + delta)): the residual adds moved, not changed."""
    gen = torch.Generator().manual_seed(seed)
    p = layer_params(init_params(cfg, generator=gen, dtype=torch.float64), 0)
    x, delta = (torch.randn(2, T, cfg.dim, generator=gen, dtype=torch.float64) for _ in range(2))
    rope = step_rope(None, 2, T, x.device, cfg=cfg, backend=backend)
    h, f, _ = block(p, x, delta, None, 0, cfg=cfg, backend=backend, rope=rope)
    h_sum, f_sum, _ = block(p, x + delta, None, None, 0, cfg=cfg, backend=backend, rope=rope)
    torch.testing.assert_close(h, h_sum)
    torch.testing.assert_close(f, f_sum)
    normed = rms_norm(h, p["ffn_norm.weight"], cfg.norm_eps)
    torch.testing.assert_close(f, feed_forward(subtree(p, "feed_forward."), normed))


@given(seeds(), st.integers(1, 16))
def test_residual_norm_is_the_norm_of_the_sum_or_of_x_alone(seed, dim):
    gen = torch.Generator().manual_seed(seed)
    x, delta, w = (torch.randn(3, dim, generator=gen, dtype=torch.float64) for _ in range(3))
    normed, s = residual_norm(x, delta, w[0], 1e-5, "sdpa")
    torch.testing.assert_close(s, x + delta)
    torch.testing.assert_close(normed, rms_norm(x + delta, w[0], 1e-5))
    normed, s = residual_norm(x, None, w[0], 1e-5, "sdpa")
    assert s is x
    torch.testing.assert_close(normed, rms_norm(x, w[0], 1e-5))
