"""The compiled path (inductor on the CPU here): same tokens as eager, whole graphs (fullgraph=True
raises on any graph break), and no recompilation across decode steps or prompt lengths in one bucket."""

import torch
from torch._dynamo.utils import counters

import llamafn as lf
from llamafn.compile import bucket, round_up
from llamafn.config import ModelConfig
from llamafn.params import fuse


def test_buckets():
    assert [bucket(n) for n in (1, 16, 17, 100, 1024, 1025)] == [16, 16, 32, 128, 1024, 2048]
    assert round_up(257, 256) == 512


def test_compiled_greedy_is_the_golden_output_and_never_recompiles(stories260k, stories260k_golden):
    params, cfg, _ = stories260k
    ids, _ = stories260k_golden
    params = fuse(params)
    out = lf.generate(params, cfg, [ids[:1]], max_new_tokens=200, compile=True, cache_len=512, sync_every=16)
    assert ids[:1] + out[0] == ids
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        # 9 and 14 tokens share the 16-token prefill bucket; 50 more decode steps reuse the step graph
        a = lf.generate(params, cfg, [ids[:9]], max_new_tokens=50, compile=True, cache_len=512)
        b = lf.generate(params, cfg, [ids[:14]], max_new_tokens=50, compile=True, cache_len=512)
    assert counters["stats"]["unique_graphs"] == graphs
    assert ids[:9] + a[0] == ids[:59] and ids[:14] + b[0] == ids[:64]


def test_compiled_sampling_equals_eager_sampling_on_a_random_gqa_model():
    cfg = ModelConfig(dim=48, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=64, hidden_dim=64, max_seq_len=128)
    params = fuse(lf.init_params(cfg, generator=torch.Generator().manual_seed(0)))
    prompts = [[1, 2, 3, 4, 5], [7, 8]]
    kwargs = dict(max_new_tokens=20, temperature=[0.8, 1.2], top_k=20, top_p=0.9, min_p=0.02,
                  repetition_penalty=1.1)
    for kv_dtype in (None, torch.int8):                                       # a float and an int8 KV cache
        eager = lf.generate(params, cfg, prompts, generator=torch.Generator().manual_seed(5), kv_dtype=kv_dtype, **kwargs)
        fast = lf.generate(params, cfg, prompts, generator=torch.Generator().manual_seed(5), compile=True,
                           kv_dtype=kv_dtype, **kwargs)
        assert fast == eager


def test_compiled_speculative_step_equals_eager():
    cfg = ModelConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=40, hidden_dim=32, max_seq_len=96)
    target = lf.init_params(cfg, generator=torch.Generator().manual_seed(0))
    draft = lf.init_params(cfg, generator=torch.Generator().manual_seed(1))
    prompts = [[1, 2, 3, 1, 2], [5]]
    expected = lf.generate(target, cfg, prompts, 16)
    for mode, proposer in (("draft", (draft, cfg)), ("lookup", None)):
        assert lf.generate(target, cfg, prompts, 16, speculative=mode, draft=proposer, k=3, compile=True) == expected
    kwargs = dict(temperature=0.9, top_p=0.9, speculative="draft", draft=(draft, cfg), k=3)
    eager = lf.generate(target, cfg, prompts, 16, generator=torch.Generator().manual_seed(2), **kwargs)
    assert lf.generate(target, cfg, prompts, 16, generator=torch.Generator().manual_seed(2), compile=True, **kwargs) == eager
