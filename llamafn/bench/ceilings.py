"""Hardware ceilings measured in the same run as every benchmark: device-to-device copy bandwidth
(bytes read + bytes written) and bf16 matrix-product throughput; and the timing helpers."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable

import torch


def card_name() -> str:
    """A file-name slug of the GPU, e.g. 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


def cuda_time(fn: Callable[[], object], repeat: int = 1) -> float:
    """Seconds per call of fn, timed with CUDA events around `repeat` calls (after a sync)."""
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / repeat


def median_cuda_time(fn: Callable[[], object], repeat: int = 10) -> float:
    """The median of three cuda_time measurements of `repeat` calls each."""
    return sorted(cuda_time(fn, repeat=repeat) for _ in range(3))[1]


def graphed(fn: Callable[[], object]) -> Callable[[], None]:
    """fn captured in a CUDA graph (after a warm-up on a side stream); returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


L2_DEFEAT_BYTES = 512 << 20


def copies_past_l2(bytes_per_call: int, most: int = 64) -> int:
    """How many distinct input sets a timing cycles through so that together they are L2_DEFEAT_BYTES
    (ten times an H100's L2) and no call reads what the one before left in the cache."""
    return max(1, min(most, -(-L2_DEFEAT_BYTES // bytes_per_call)))


def time_in_graph(calls: list[Callable[[], object]]) -> float:
    """Seconds per call of `calls` captured back to back in one CUDA graph and replayed (median of 3):
    kernels run as they do inside a compiled step, without a graph launch or host cost between them."""
    def run():
        for call in calls:
            call()
    return median_cuda_time(graphed(run), repeat=3) / len(calls)


def wall_time(fn: Callable[[], object]) -> tuple[object, float]:
    """(fn(), seconds) with the device synchronised on both sides (for work that syncs with the host)."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


def copy_bandwidth(n_bytes: int = 2 << 30) -> float:
    """GB/s of a large device-to-device copy, counting bytes read plus bytes written (median of 3)."""
    src = torch.randn(n_bytes // 2, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * n_bytes / median_cuda_time(lambda: dst.copy_(src)) / 1e9


def matmul_tflops(n: int = 8192) -> float:
    """TFLOP/s of an n x n x n bf16 matrix product on random data (median of 3)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    return 2 * n**3 / median_cuda_time(lambda: a @ b) / 1e12


def measure() -> dict[str, float | str]:
    return {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
            "copy_GBps": round(copy_bandwidth(), 1), "matmul_bf16_TFLOPs": round(matmul_tflops(), 1)}


def write_results(results: dict, out_dir: str | Path, name: str, slug: str | None = None) -> Path:
    """Write results to <out_dir>/<name>-<slug (the card)>.json and return the path."""
    path = Path(out_dir) / f"{name}-{slug or card_name()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path
