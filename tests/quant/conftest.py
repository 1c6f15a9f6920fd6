"""Fixtures of the quantisation tests."""

import pytest
import torch

import llamafn as lf
from llamafn.params import fuse


@pytest.fixture(scope="module")
def small_fused_model():
    """(params, cfg, tokens): a 2-layer GQA model with fused bf16 params and a (2, 7) batch of token ids,
    on the GPU where there is one (where the quantised kernels run), for the run-time layouts' forwards."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = lf.ModelConfig(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=256, max_seq_len=32)
    params = fuse(lf.init_params(cfg, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16, device=device))
    tokens = torch.randint(0, cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1)).to(device)
    return params, cfg, tokens
