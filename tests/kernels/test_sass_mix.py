"""scripts/sass_mix.py reads the quantised GEMV loops from the SASS for sm_90, without a GPU (Triton's
bundled ptxas and nvdisasm): the loop finder on a known listing, and the GEMV kernels' loops at the rows
a program the tuner picks on an H100 free of barriers, shared-memory traffic and spills."""

import importlib.util
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
SCRIPT = Path(__file__).parents[2] / "scripts" / "sass_mix.py"
NVDISASM = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"


def load_script():
    spec = importlib.util.spec_from_file_location("sass_mix", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loop_opcodes_reads_the_body_of_the_backward_branch():
    sass = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_1:
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   FFMA R8, R4, R5, R8 ;
        /*0030*/              @P0 BRA `(.L_x_1) ;
.L_x_2:
        /*0040*/                   BRA `(.L_x_3) ;
.L_x_3:
        /*0050*/                   EXIT ;
"""
    assert load_script().loop_opcodes(sass) == Counter({"LDG": 1, "FFMA": 1, "BRA": 1})


@pytest.mark.skipif(not NVDISASM.exists(), reason="Triton's nvdisasm is not bundled on this platform")
@pytest.mark.parametrize("kernel, rows", [("int8", 2), ("int4", 1)])
def test_gemv_loop_has_no_barrier_shared_memory_or_spill(kernel, rows):
    """At the rows a program the tuner picked on an H100 for every 7B shape (two for int8, one for int4),
    every config's loop."""
    from llamafn.kernels import quant_gemv

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}       # compile for real, not interpret
    run = subprocess.run([sys.executable, str(SCRIPT), "--kernel", kernel, "--rows", str(rows)], capture_output=True,
                         text=True, env=env, cwd=SCRIPT.parents[1], timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if "instructions a loop" in line]
    configs = [c for c in quant_gemv.gemv_configs(kernel, 128) if c.kwargs["BLOCK_N"] == rows]
    assert len(lines) == len(configs) > 0, run.stdout
    for line in lines:
        assert re.search(r"BAR 0, shared 0, spills 0$", line), line
        per_weight = float(re.search(r"([\d.]+) a weight", line).group(1))
        assert per_weight < 7, line                                              # the replaced kernel: 11.5


@pytest.mark.skipif(not NVDISASM.exists(), reason="Triton's nvdisasm is not bundled on this platform")
def test_mma_gemv_loop_runs_on_the_tensor_cores_without_barriers():
    """The tensor-core int4 GEMV's PTX assembles for sm_90, and at 1-8 warps a tile its loop is one HMMA a
    word (8 at group 128), free of barriers, shared memory and spills, under 2.5 instructions a weight."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(SCRIPT), "--kernel", "int4-mma", "--group", "128"], capture_output=True,
                         text=True, env=env, cwd=SCRIPT.parents[1], timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if "instructions a loop" in line]
    assert len(lines) == 4, run.stdout                                           # 1, 2, 4, 8 warps
    for line in lines:
        assert re.search(r"HMMA 8, BAR 0, shared 0, spills 0$", line), line
        assert float(re.search(r"([\d.]+) a weight", line).group(1)) < 2.5, line
