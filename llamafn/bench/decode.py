"""Decode benchmark: batch-1 and small-batch decoding of 7B/8B shapes (random bf16 weights) on one GPU.

For each preset, batch size and prompt length it runs the compiled path (bucketed compiled prefill,
CUDA-graph decode step over the static cache, fused weights) and reports tokens/s, the bytes a step
must read (weights once, plus the valid part of the KV cache) over the step time as GB/s and as a
fraction of the copy bandwidth measured in the same run, prefill tokens/s and MFU, compile seconds
and peak memory. Baselines in the same process: the naive eager path (reference attention, unfused
weights, no compile) and Hugging Face transformers' generate, eager and with its static cache +
compile. Results go to <out>/decode-<card>.json after every measurement, so a cut-off run keeps what it did.

    python scripts/bench_decode.py --presets llama-2-7b --batch-sizes 1,8,32 --prompt-lengths 5,1024
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

from .. import cache as kv
from ..compile import bucket, compiled, mark_static, round_up
from ..config import ModelConfig, preset
from ..decode import generate, sample
from ..params import Params, fuse, init_params, nbytes, tensors
from ..sampling import sampling_params
from .ceilings import cuda_time, measure, wall_time, write_results

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.0f}s] {msg}", flush=True)


def step_bytes(params: Params, cfg: ModelConfig, batch: int, kv_len: float, kv_dtype: torch.dtype) -> float:
    """Bytes one decode step must read: every weight once (of the embedding table only the B rows
    looked up), and the keys and values of kv_len positions per row in the cache's dtype."""
    weights = nbytes(params)
    emb = params["tok_embeddings.weight"]
    if not cfg.tie_embeddings:
        weights -= emb.numel() * emb.element_size() - batch * cfg.dim * emb.element_size()
    per_value = emb.element_size() if kv_dtype.is_floating_point else 1 + 4 / cfg.head_dim   # int8 + fp32 scale a vector
    kv_bytes = 2 * cfg.n_layers * batch * cfg.n_kv_heads * cfg.head_dim * kv_len * per_value
    return weights + kv_bytes


def prefill_flops(cfg: ModelConfig, n_matmul_params: int, batch: int, length: int) -> float:
    """Useful FLOPs of a causal prefill: 2 per weight per token, plus QK^T and PV over the causal half."""
    attn = 2 * 2 * batch * cfg.n_layers * cfg.dim * length * (length + 1) / 2
    return 2 * n_matmul_params * batch * length + attn


def compiled_decode(params: Params, cfg: ModelConfig, batch: int, prompt_len: int, new_tokens: int,
                    attention: str, ceilings: dict, kv_dtype: torch.dtype = torch.bfloat16) -> dict:
    """Time the compiled prefill and decode steps, the way `generate(compile=True)` runs them."""
    device = params["norm.weight"].device
    gen = torch.Generator(device).manual_seed(0)
    prompts = torch.randint(0, cfg.vocab_size, (batch, prompt_len), device=device, generator=gen)
    T = bucket(prompt_len)
    tokens = torch.cat([prompts, prompts[:, -1:].expand(batch, T - prompt_len)], dim=1)
    lengths = torch.full((batch,), prompt_len, device=device)
    cache_len = round_up(max(T, prompt_len + new_tokens), 256)
    cache = kv.init_cache(cfg, batch, cache_len, dtype=kv_dtype, device=device)
    mark_static([*tensors(params), *kv.tensors(cache)])
    sp = sampling_params(batch, device=device)
    ones = torch.ones(batch, cfg.vocab_size, device=device)
    stops = torch.empty(0, dtype=torch.long, device=device)
    prefill, step = compiled(sample.prefill, mode="reduce-overhead"), compiled(sample.step, mode="reduce-overhead")
    kw = dict(cfg=cfg, attention=attention, all_greedy=True)

    def run_prefill():
        return sample.replayed(prefill, params, tokens, lengths, kv.reset(cache), sp, ones, stops, **kw)

    def run(n_steps: int):
        state = run_prefill()
        for _ in range(n_steps):
            state = sample.replayed(step, params, state, sp, ones, stops, **kw)
        return state

    torch.cuda.reset_peak_memory_stats()
    _, compile_s = wall_time(lambda: run(3))
    run(3)
    prefill_s = sorted(wall_time(run_prefill)[1] for _ in range(3))[1]
    state = run_prefill()

    def decode():
        nonlocal state
        for _ in range(new_tokens):
            state = sample.replayed(step, params, state, sp, ones, stops, **kw)

    step_s = cuda_time(decode) / new_tokens
    bytes_needed = step_bytes(params, cfg, batch, prompt_len + new_tokens / 2, kv_dtype)
    n_matmul = sum(math.prod(t.shape) for k, t in params.items() if k != "tok_embeddings.weight" and len(t.shape) == 2)
    return {
        "batch": batch, "prompt": prompt_len, "new_tokens": new_tokens, "attention": attention,
        "kv_cache": str(kv_dtype).removeprefix("torch."),
        "cache_len": cache_len, "tok_s": round(batch / step_s, 1), "step_ms": round(step_s * 1e3, 3),
        "GB_per_step": round(bytes_needed / 1e9, 3), "effective_GBps": round(bytes_needed / step_s / 1e9, 1),
        "roofline_fraction": round(bytes_needed / (ceilings["copy_GBps"] * 1e9) / step_s, 3),
        "prefill_tok_s": round(batch * prompt_len / prefill_s, 1), "prefill_ms": round(prefill_s * 1e3, 2),
        "prefill_MFU": round(prefill_flops(cfg, n_matmul, batch, prompt_len) / prefill_s
                             / (ceilings["matmul_bf16_TFLOPs"] * 1e12), 4),
        "compile_s": round(compile_s, 1), "peak_mem_GB": round(torch.cuda.max_memory_allocated() / 1e9, 2),
    }


def eager_baseline(params: Params, cfg: ModelConfig, new_tokens: int) -> dict:
    """The naive path: unfused weights, reference attention, no compile, batch 1, 5-token prompt."""
    prompt = torch.randint(0, cfg.vocab_size, (5,), generator=torch.Generator().manual_seed(0)).tolist()
    generate(params, cfg, [prompt], 3, attention="reference")
    _, t = wall_time(lambda: generate(params, cfg, [prompt], new_tokens, attention="reference"))
    return {"name": "llamafn eager (reference attention, no compile)", "batch": 1, "prompt": 5,
            "new_tokens": new_tokens, "tok_s": round(new_tokens / t, 1)}


def generate_end_to_end(params: Params, cfg: ModelConfig, new_tokens: int) -> dict:
    """`generate(compile=True)` as a user calls it: host syncs every 8 tokens, prefill included."""
    prompt = torch.randint(0, cfg.vocab_size, (5,), generator=torch.Generator().manual_seed(0)).tolist()
    generate(params, cfg, [prompt], new_tokens, compile=True)
    _, t = wall_time(lambda: generate(params, cfg, [prompt], new_tokens, compile=True))
    return {"name": "llamafn generate(compile=True), end to end", "batch": 1, "prompt": 5,
            "new_tokens": new_tokens, "tok_s": round(new_tokens / t, 1)}


def hf_baselines(cfg: ModelConfig, new_tokens: int, eager_tokens: int) -> list[dict]:
    """Hugging Face transformers' LlamaForCausalLM.generate on the same shapes, eager and static+compile."""
    try:
        import transformers
    except ImportError:
        return [{"name": "transformers", "skipped": "not installed"}]
    hcfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=cfg.tie_embeddings)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(hcfg).eval()
    torch.set_default_dtype(default)
    model.generation_config.pad_token_id = 0
    ids = torch.randint(0, cfg.vocab_size, (1, 5), device="cuda")
    out = []

    def gen(n: int):
        with torch.no_grad():
            return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    gen(3)
    _, t = wall_time(lambda: gen(eager_tokens))
    out.append({"name": f"transformers {transformers.__version__} eager", "new_tokens": eager_tokens,
                "tok_s": round(eager_tokens / t, 1)})
    log(f"HF eager: {out[-1]['tok_s']} tok/s")
    model.generation_config.cache_implementation = "static"
    _, compile_s = wall_time(lambda: gen(new_tokens))
    gen(new_tokens)
    _, t = wall_time(lambda: gen(new_tokens))
    out.append({"name": f"transformers {transformers.__version__} static cache + compile",
                "new_tokens": new_tokens, "tok_s": round(new_tokens / t, 1), "first_call_s": round(compile_s, 1)})
    log(f"HF static+compile: {out[-1]['tok_s']} tok/s")
    return out


def profile_step(params: Params, cfg: ModelConfig, attention: str) -> list[dict]:
    """Top kernels of 20 compiled decode steps (batch 1): where a step's time goes."""
    device = params["norm.weight"].device
    cache = kv.init_cache(cfg, 1, 256, dtype=torch.bfloat16, device=device)
    mark_static(kv.tensors(cache))
    sp, ones = sampling_params(1, device=device), torch.ones(1, cfg.vocab_size, device=device)
    stops = torch.empty(0, dtype=torch.long, device=device)
    prefill, step = compiled(sample.prefill, mode="reduce-overhead"), compiled(sample.step, mode="reduce-overhead")
    kw = dict(cfg=cfg, attention=attention, all_greedy=True)
    state = sample.replayed(prefill, params, torch.ones(1, 16, dtype=torch.long, device=device),
                            torch.tensor([5], device=device), cache, sp, ones, stops, **kw)
    for _ in range(3):
        state = sample.replayed(step, params, state, sp, ones, stops, **kw)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            state = sample.replayed(step, params, state, sp, ones, stops, **kw)
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)[:15]
    return [{"kernel": e.key[:120], "us_per_step": round(e.device_time_total / 20, 1), "calls_per_step": e.count / 20}
            for e in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llamafn bench decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="llama-2-7b,llama-3-8b")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--prompt-lengths", default="5,1024")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--attention", default="sdpa", help="backends to compare (comma-separated); the first "
                    "runs every configuration, the others batch 1 at every prompt length")
    ap.add_argument("--baselines", default="eager,hf", help="any of eager, hf, e2e (comma-separated) or none")
    ap.add_argument("--profile", action="store_true", help="add the top kernels of a batch-1 step")
    ap.add_argument("--kv-cache", default="bfloat16", choices=("bfloat16", "int8"), help="the KV cache's dtype")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("llamafn bench decode: needs a CUDA GPU", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = True
    results: dict = {"benchmark": "decode", "command": "llamafn bench decode " + " ".join(argv or sys.argv[1:])}
    def save() -> None:
        write_results(results, args.out, "decode")

    results["ceilings"] = measure()
    log(f"ceilings: {results['ceilings']}")
    save()
    backends = args.attention.split(",")
    baselines = set(args.baselines.split(","))
    for name in args.presets.split(","):
        cfg = preset(name)
        entry: dict = {"preset": name, "params_B": None, "runs": [], "baselines": []}
        results.setdefault("models", []).append(entry)
        params = init_params(cfg, generator=torch.Generator("cuda").manual_seed(0), dtype=torch.bfloat16,
                             device="cuda")
        entry["params_B"] = round(sum(t.numel() for t in params.values()) / 1e9, 3)
        if "eager" in baselines:
            entry["baselines"].append(eager_baseline(params, cfg, 50))
            log(f"{name} naive eager: {entry['baselines'][-1]['tok_s']} tok/s")
            save()
        params = fuse(params)
        for batch in map(int, args.batch_sizes.split(",")):
            for prompt_len in map(int, args.prompt_lengths.split(",")):
                for attention in backends if batch == 1 else backends[:1]:
                    r = compiled_decode(params, cfg, batch, prompt_len, args.new_tokens, attention, results["ceilings"],
                                        getattr(torch, args.kv_cache))
                    entry["runs"].append(r)
                    log(f"{name} {r}")
                    save()
                if args.profile and (batch, prompt_len) == (1, 5):   # reuses the graphs just compiled
                    entry["profile_batch1"] = profile_step(params, cfg, backends[0])
                    log(f"profile: {entry['profile_batch1'][:8]}")
                    save()
        if "e2e" in baselines:
            entry["baselines"].append(generate_end_to_end(params, cfg, args.new_tokens))
            save()
        del params
        torch.compiler.reset()
        torch.cuda.empty_cache()
        if "hf" in baselines:
            entry["baselines"] += hf_baselines(cfg, args.new_tokens, 50)
            save()
            torch.compiler.reset()
            torch.cuda.empty_cache()
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
