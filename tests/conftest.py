"""Shared fixtures and Hypothesis profiles: `ci` (the default when CI is set: derandomised, no
deadline, few examples) and `dev` (more examples). Choose with HYPOTHESIS_PROFILE=dev."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("ci", deadline=None, derandomize=True, max_examples=15, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, max_examples=100,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, torch.get_num_threads()))

# Triton kernels run in Triton's interpreter on a machine without a GPU (DESIGN.md, Testing); the
# variable must be set before llamafn's kernels are decorated, so before any test imports llamafn.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"


def shared_file(*parts: str) -> Path:
    """A file of ../shared/models, or skip the test saying which file is missing."""
    path = SHARED_MODELS.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"real-model data not available: {path} is missing (it lives in ../shared/models)")
    return path


@pytest.fixture(scope="session")
def stories260k():
    """(params, cfg, tokenizer) of the real stories260K model, float32 on the CPU."""
    import llamafn as lf

    params, cfg = lf.load(shared_file("stories260K", "stories260K.bin"))
    return params, cfg, lf.Tokenizer(shared_file("stories260K", "tok512.model"))


@pytest.fixture(scope="session")
def stories260k_golden() -> tuple[list[int], str]:
    """The known-good greedy output of stories260K from its README: (ids incl. BOS, text)."""
    readme = shared_file("stories260K", "README.md").read_text()
    ids_line = next(line for line in readme.splitlines() if line.startswith("[1, "))
    ids = [int(x) for x in ids_line.strip("[] \n").split(",")]
    text = readme.split("```text\n", 1)[1].split("\n```", 1)[0]
    return ids, text


@pytest.fixture(scope="module")
def quant_kernels_first_config():
    """On a GPU each new (N, K) a test draws would autotune the quantised matmul kernels over every
    config (minutes across a Hypothesis run); inside a module using this, each kernel takes its first
    config (test_every_gemv_config checks all of them). A no-op on the CPU, where the interpreter runs
    one fixed config."""
    if not torch.cuda.is_available():
        yield
        return
    from llamafn.kernels import quant_gemv, quant_matmul

    with pytest.MonkeyPatch.context() as mp:
        gemv, dot = quant_gemv.gemv_configs, quant_matmul._dot_configs
        mp.setattr(quant_gemv, "gemv_configs",        # two rows a program: the "rope" epilogue needs an even count
                   lambda name, group: [c for c in gemv(name, group) if c.kwargs["BLOCK_N"] == 2][:1])
        mp.setattr(quant_matmul, "_dot_configs", lambda M, group: dot(M, group)[:1])
        mp.setattr(quant_gemv, "TUNED", {})
        yield
