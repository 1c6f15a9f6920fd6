"""The inner loop of the quantised GEMV kernels in the SASS for sm_90 (Hopper), without a GPU.

Compiles every autotuning config of `int8_gemv_kernel` / `int4_gemv_kernel` (llamafn.kernels.quant_gemv)
with the divisibility hints a real launch of the 7B shapes gets, disassembles the cubin with the
nvdisasm that ships with Triton, and prints for the loop body: instructions, instructions a weight,
barriers, shared-memory operations and spills (local memory). The GEMV was shaped this way before any
GPU time was spent: the kernel it replaced had 12-20 barriers an iteration and 11.5 instructions a weight.

    python scripts/sass_mix.py --kernel int4 --group 128 [--rows 1]
    python scripts/sass_mix.py --kernel int4-mma --group 128 [--tiles 2] [--chunks 2]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from llamafn.kernels import int4_mma, quant_gemv
from llamafn.quant import mma

EPILOGUE_ARGS = ["COS:*fp32", "SIN:*fp32", "POS:*i64", "CK:*bf16", "CV:*bf16", "scos:i32", "spos:i32", "sckb:i32",
                 "sckh:i32", "scks:i32", "NQ:i32", "NK:i32"]     # the "rope" epilogue's (quant_gemv.store_rows)
ARGS = {
    "int8": ["x_ptr:*bf16", "q_ptr:*i32", "s_ptr:*bf16", "out_ptr:*bf16", "N:i32", "KW:i32", "stride_xm:i32",
             "stride_qn:i32", "stride_om:i32", "magic:i32"] + EPILOGUE_ARGS,
    "int4": ["x_ptr:*i32", "q_ptr:*i32", "s_ptr:*bf16", "z_ptr:*u8", "out_ptr:*bf16", "N:i32", "G:i32",
             "stride_xm:i32", "stride_qn:i32", "stride_sn:i32", "stride_om:i32"] + EPILOGUE_ARGS,
    "int4-mma": ["x_ptr:*i64", "w_ptr:*i32", "r_ptr:*i64", "out_ptr:*bf16", "M:i32", "G:i32", "GPC:i32",
                 "stride_xm:i32", "stride_om:i32", "PER_TILE:i32"],
}
MULTIPLES_OF_16 = {"x_ptr", "q_ptr", "s_ptr", "z_ptr", "out_ptr", "N", "KW", "stride_xm", "stride_qn", "stride_om", "magic",
                   "w_ptr", "r_ptr"}


def compile_sm90(kernel, args: list[str], constexprs: dict, num_warps: int):
    signature = dict(a.split(":") for a in args) | {name: "constexpr" for name in constexprs}
    hints = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(signature) if name in MULTIPLES_OF_16}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=hints)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": 1})


def disassemble(cubin: bytes) -> str:
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    if not nvdisasm.exists():
        raise SystemExit(f"sass_mix: no nvdisasm at {nvdisasm} (it ships with Triton's Linux wheels)")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(nvdisasm), "-c", f.name], capture_output=True, text=True, check=True).stdout


def loop_opcodes(sass: str) -> Counter:
    """Opcodes between the first label that a later branch jumps back to and that branch."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"\s*\.(L_x_\d+):", line))}
    for i, line in enumerate(lines):
        target = re.search(r"BRA `?\(?\.?(L_x_\d+)", line)
        if target and labels.get(target.group(1), i) < i:
            body = lines[labels[target.group(1)]:i + 1]
            return Counter(m.group(1) for b in body if (m := re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9]+)", b)))
    return Counter()


def mma_mix(group: int, tiles: int, chunks: int) -> int:
    """The tensor-core int4 GEMV's loop at every count of warps a tile: a thread takes 8 weights a word, 4
    words a step, group / 64 steps a loop, for each of `tiles` tiles (each word against `chunks` chunks of x)."""
    for chains in mma.CHAINS:
        compiled = compile_sm90(int4_mma.int4_mma_kernel, ARGS["int4-mma"],
                                {"NW": chains, "S": group // 16, "TILES": tiles, "CHUNKS": chunks, "ASM": True}, chains)
        sass = disassemble(compiled.asm["cubin"])
        ops = loop_opcodes(sass)
        total, weights = sum(ops.values()), 8 * 4 * group // 64 * tiles
        print(f"warps a tile={chains}: {total} instructions a loop, "
              f"{total / weights:.2f} a weight; HMMA {ops['HMMA']}, BAR {ops['BAR']}, shared {ops['LDS'] + ops['STS']}, spills {sass.count('LDL') + sass.count('STL')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sass_mix", description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", choices=("int8", "int4", "int4-mma"), default="int4")
    ap.add_argument("--group", type=int, default=128, help="int4 group size")
    ap.add_argument("--rows", type=int, help="only the configs with this many rows a program (BLOCK_N)")
    ap.add_argument("--tiles", type=int, default=1, help="int4-mma: tiles a program (2 needs group 128)")
    ap.add_argument("--chunks", type=int, default=1, help="int4-mma: chunks of 8 rows of x a program (2 needs group 128)")
    args = ap.parse_args(argv)
    if args.kernel == "int4-mma":
        return mma_mix(args.group, args.tiles, args.chunks)
    kernel = quant_gemv.int8_gemv_kernel if args.kernel == "int8" else quant_gemv.int4_gemv_kernel
    for config in quant_gemv.gemv_configs(args.kernel, args.group):
        if args.rows is not None and config.kwargs["BLOCK_N"] != args.rows:
            continue
        constexprs = (dict(config.kwargs, PDL=False, EPILOGUE="plain", HEAD_DIM=2)
                      | ({"GROUP": args.group} if args.kernel == "int4" else {}))
        compiled = compile_sm90(kernel, ARGS[args.kernel], constexprs, config.num_warps)
        sass = disassemble(compiled.asm["cubin"])
        ops = loop_opcodes(sass)
        words = config.kwargs["BLOCK_W"] if args.kernel == "int8" else config.kwargs["BLOCK_G"] * args.group // 8
        weights = config.kwargs["BLOCK_N"] * words * (4 if args.kernel == "int8" else 8) / (32 * config.num_warps)
        total = sum(ops.values())
        print(f"{config.kwargs} warps={config.num_warps}: {total} instructions a loop, {total / weights:.2f} a weight; "
              f"BAR {ops['BAR']}, shared {ops['LDS'] + ops['STS']}, spills {sass.count('LDL') + sass.count('STL')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
