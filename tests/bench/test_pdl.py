"""llamafn.bench.pdl: the step it times runs, here on the CPU through Triton's interpreter."""

import pytest
import torch

pytest.importorskip("triton")

from llamafn.bench import pdl  # noqa: E402
from llamafn.kernels.runtime import INTERPRET  # noqa: E402


@pytest.mark.skipif(not INTERPRET, reason="the CPU runs the kernels in Triton's interpreter (TRITON_INTERPRET=1)")
def test_the_timed_step_runs_every_layer_and_stays_finite():
    dim, hidden, n_heads, n_kv_heads, head_dim, n_layers, cache_len = 128, 256, 4, 2, 32, 2, 64
    gen = torch.Generator().manual_seed(0)
    ones = torch.ones(dim, dtype=torch.bfloat16)
    layers = [{"wqkv": pdl.int4_weight((n_heads + 2 * n_kv_heads) * head_dim, dim, gen),
               "wo": pdl.int4_weight(dim, dim, gen), "w13": pdl.int4_weight(2 * hidden, dim, gen),
               "w2": pdl.int4_weight(dim, hidden, gen), "attention_norm": ones, "ffn_norm": ones}
              for _ in range(n_layers)]
    cache_k, cache_v = (torch.randn(n_layers, 1, n_kv_heads, cache_len, head_dim, dtype=torch.bfloat16, generator=gen)
                        for _ in range(2))
    before = cache_k.clone()
    rope = (torch.full((1, 1), 10, dtype=torch.int64), *(torch.rand(1, 1, head_dim // 2, generator=gen) for _ in range(2)))
    x = torch.randn(1, dim, dtype=torch.bfloat16, generator=gen)
    out = pdl.step_kernels(layers, x, cache_k, cache_v, rope, n_heads, n_kv_heads)
    assert out.shape == (1, dim) and out.dtype == torch.bfloat16 and out.isfinite().all()
    written = (cache_k != before).any(-1)                                          # (layers, 1, kv heads, positions)
    assert written[:, 0, :, 10].all() and not written[..., :10].any() and not written[..., 11:].any()
