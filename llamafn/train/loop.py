"""Next-token training of a llamafn model: AdamW (Loshchilov & Hutter 2019) with linear warm-up and
cosine decay, bf16 autocast on the GPU, gradient clipping, periodic validation, deterministic seeding,
atomic checkpoints that a run resumes from, a progress line with tokens/s, and a JSON log of the losses.

The params dict is the model: its tensors are the optimiser's parameters, and `next_token_loss`
differentiates through `llamafn.forward` itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from ..config import ModelConfig
from ..params import Params, init_params
from .data import random_batch
from .loss import next_token_loss


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int = 64
    seq_len: int = 512
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 20
    checkpoint_every: int = 500
    seed: int = 0
    max_seconds: float = float("inf")


def training_init(cfg: ModelConfig, seed: int, device: str) -> Params:
    """init_params, rescaled for training as GPT-2 does: embeddings N(0, 0.02^2) (so a tied classifier
    starts near uniform), and the residual projections wo and w2 shrunk by 1/sqrt(2 * n_layers)."""
    params = init_params(cfg, generator=torch.Generator().manual_seed(seed), device=device)
    with torch.no_grad():
        params["tok_embeddings.weight"].mul_(0.02)
        for key, t in params.items():
            if key.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                t.mul_((2 * cfg.n_layers) ** -0.5)
    return params


def learning_rate(step: int, tc: TrainConfig) -> float:
    """Linear warm-up to tc.lr, then cosine decay to tc.lr * min_lr_ratio at tc.steps."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    progress = min(1.0, (step - tc.warmup) / max(1, tc.steps - tc.warmup))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(params: Params, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only (not on norms)."""
    decay = [t for t in params.values() if t.dim() >= 2]
    no_decay = [t for t in params.values() if t.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.95),
                             fused=torch.cuda.is_available())


@torch.no_grad()
def evaluate(params: Params, tokens: torch.Tensor, cfg: ModelConfig, tc: TrainConfig, device: str) -> float:
    """Mean loss over tc.eval_batches fixed windows of the validation stream (the same windows every time)."""
    g = torch.Generator().manual_seed(1234)
    losses = []
    for _ in range(tc.eval_batches):
        batch = random_batch(tokens, tc.batch_size, tc.seq_len, g).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            losses.append(next_token_loss(params, batch, cfg=cfg).item())
    return sum(losses) / len(losses)


def save_checkpoint(path: Path, params: Params, opt: torch.optim.Optimizer, step: int, gen: torch.Generator,
                    log: list[dict]) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save({"params": params, "opt": opt.state_dict(), "step": step, "rng": gen.get_state(), "log": log}, tmp)
    tmp.replace(path)


def train(cfg: ModelConfig, tc: TrainConfig, train_tokens: torch.Tensor, val_tokens: torch.Tensor, out_dir: Path,
          *, device: str = "cpu", resume: bool = False) -> tuple[Params, list[dict]]:
    """Train from scratch (or resume from out_dir/ckpt.pt); returns the float32 params and the log."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "ckpt.pt"
    torch.manual_seed(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    params = training_init(cfg, tc.seed, device)
    for t in params.values():
        t.requires_grad_(True)
    opt = make_optimizer(params, tc)
    start, log = 0, []
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        with torch.no_grad():
            for k, t in params.items():
                t.copy_(state["params"][k])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["rng"])
        start, log = state["step"], state["log"]
        print(f"resumed from {ckpt} at step {start}", file=sys.stderr)
    tokens_per_step = tc.batch_size * tc.seq_len
    t0, last_t, last_step = time.perf_counter(), time.perf_counter(), start
    step = start
    for step in range(start, tc.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, tc)
        batch = random_batch(train_tokens, tc.batch_size, tc.seq_len, gen).to(device, non_blocking=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = next_token_loss(params, batch, cfg=cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), tc.grad_clip)
        opt.step()
        done = step + 1
        timed_out = time.perf_counter() - t0 > tc.max_seconds
        if sys.stderr.isatty() and done % 10 == 0:
            rate = (done - last_step) * tokens_per_step / (time.perf_counter() - last_t)
            bar = "#" * (30 * done // tc.steps)
            print(f"\r[{bar:<30}] step {done}/{tc.steps}  loss {loss.item():.3f}  {rate / 1e3:.0f}k tok/s",
                  end="", file=sys.stderr, flush=True)
        if done % tc.eval_every == 0 or done == tc.steps or timed_out:
            now = time.perf_counter()
            rate = (done - last_step) * tokens_per_step / (now - last_t)
            val = evaluate(params, val_tokens, cfg, tc, device)
            log.append({"step": done, "tokens": done * tokens_per_step, "train_loss": round(loss.item(), 4),
                        "val_loss": round(val, 4), "lr": learning_rate(step, tc),
                        "grad_norm": round(float(grad_norm), 3), "tok_s": round(rate)})
            print(f"\rstep {done}/{tc.steps}  train {loss.item():.3f}  val {val:.3f}  {rate / 1e3:.0f}k tok/s",
                  file=sys.stderr, flush=True)
            (out_dir / "log.json").write_text(json.dumps(log, indent=1) + "\n")
            last_t, last_step = time.perf_counter(), done
        if done % tc.checkpoint_every == 0 or done == tc.steps or timed_out:
            save_checkpoint(ckpt, params, opt, done, gen, log)
        if timed_out:
            print(f"stopped at step {done}: --max-seconds reached", file=sys.stderr)
            break
    return {k: t.detach() for k, t in params.items()}, log
