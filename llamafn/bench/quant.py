"""Quantisation benchmark on one GPU, Llama-2-7B shapes with random weights, everything in one run:

- kernels: x @ W^T for each 7B layer shape (wqkv, wo, w13, w2) and several row counts M, bf16 cuBLAS
  against the int8 and int4 Triton kernels and against dequantise + cuBLAS, as time and as the weight
  bytes read per second next to the copy bandwidth (each timing cycles through enough copies of the
  weight that none of it is served from L2);
- quality: logits of a 128-token forward, quantised against bf16 (max and mean absolute error,
  relative RMS error, top-1 agreement);
- decode: compiled decode (the `bench decode` harness: CUDA-graph step, static cache, fused weights)
  for bf16 and each scheme, tokens/s and the fraction of the roofline for the bytes actually read.

    python scripts/bench_quant.py --schemes bf16,int8,int4-g128 --batch-sizes 1,8,32
"""

from __future__ import annotations

import argparse
import re
import sys

import torch
import torch.nn.functional as F

from ..config import preset
from ..errors import InputError
from ..kernels import int4_mma, quant_gemv, quant_matmul
from ..model import forward
from ..params import fuse, init_params, nbytes
from ..quant import dequantize, mma, planar, quantize, tinygemm
from ..quant.decode_layout import LAYOUTS
from ..quant.formats import DEFAULT_GROUP_SIZE, quantize_weight
from .ceilings import copies_past_l2, measure, time_in_graph, write_results
from .decode import compiled_decode, log, profile_step


def parse_scheme(name: str) -> tuple[str, int]:
    """'int4-g32' -> ('int4', 32); 'int8' -> ('int8', 0); 'bf16' -> ('bf16', 0). A decode scheme may end in
    a run-time layout, '+tinygemm' or '+mma' (int4) or '+gemv' (int8, int4; `decode_params`), which is not part of
    the pair."""
    scheme, _, group = name.partition("+")[0].partition("-g")
    return scheme, int(group or 0)


SCHEME = re.compile(r"bf16|int8(\+gemv)?|int4-g(32|64|128|256)(\+(gemv|tinygemm|mma))?")


def check_schemes(flag: str, names: str) -> list[str]:
    """The comma-separated scheme names of `flag`, each bf16, int8 or int4-gN (N 32/64/128/256), perhaps with a
    run-time layout; raises InputError naming the first other one."""
    out = names.split(",")
    for name in out:
        if not SCHEME.fullmatch(name):
            raise InputError(f"{flag} takes bf16, int8 or int4-gN with N 32, 64, 128 or 256 (int8 may end in +gemv, "
                             f"int4 in +gemv, +tinygemm or +mma); got {name!r}")
    return out


def decode_params(params, name: str, head: bool = False):
    """The fused bf16 params quantised as the decode scheme `name` says (the output head too if `head`), in
    storage layout (`laid_out` applies the scheme's run-time layout for a batch)."""
    scheme, group = parse_scheme(name)
    if scheme == "bf16":
        return params
    return quantize(params, scheme, group_size=group or DEFAULT_GROUP_SIZE, output=head)


def laid_out(params, name: str, rows: int):
    """params in the run-time layout the decode scheme `name` ends in, if any, for steps of `rows` rows."""
    layout = name.partition("+")[2]
    return LAYOUTS[layout](params, rows) if layout else params


def weight_bytes(w) -> int:
    return nbytes({"w": w})


def relative_error(out: torch.Tensor, x: torch.Tensor, w) -> float:
    """max |out - x @ w^T| over max |x @ w^T|, w dequantised in fp32 (checks every path it times)."""
    reference = x.float() @ (w if isinstance(w, torch.Tensor) else dequantize(w, torch.float32)).float().T
    return round(((out.float() - reference).abs().max() / reference.abs().max()).item(), 5)


def kernel_paths(s: str, x: torch.Tensor, copies: list) -> dict:
    """{path: (fn(x, prepared weight), prepared copies)} timed for scheme s at x's rows. For one row the
    gemv kernel is also timed alone, on activations laid out beforehand (in the compiled decode step that
    layout is fused into the producer of x where inductor writes the producer), and on a weight in its
    plane order, which reads x as it is."""
    M = x.shape[0]
    if s == "bf16":
        return {"cuBLAS": (lambda x, w: F.linear(x, w), copies)}
    if s == "int8":
        paths = {"triton": (lambda x, w: torch.ops.llamafn.int8_matmul(x, w.q, w.scale), copies)}
        if M == 1:
            xw = quant_gemv.int8_gemv_planes(x)
            paths["triton gemv kernel alone"] = (
                lambda x, w: quant_gemv.int8_gemv(xw, quant_gemv.as_words(w.q), w.scale, x.dtype), copies)
        paths["triton, planar weight"] = (lambda x, w: torch.ops.llamafn.int8_matmul(x, w.q, w.scale, True),
                                          [planar.to_planar(w) for w in copies])
    else:
        paths = {"triton": (lambda x, w: torch.ops.llamafn.int4_matmul(x, w.q, w.scale, w.zero, w.group_size), copies)}
        if M == 1:
            pairs = quant_gemv.int4_gemv_pairs(x, copies[0].group_size)
            paths["triton gemv kernel alone"] = (
                lambda x, w: quant_gemv.int4_gemv(pairs, quant_gemv.as_words(w.q), w.scale, w.zero, w.group_size,
                                                  x.dtype),
                copies)
        paths["triton, planar weight"] = (
            lambda x, w: torch.ops.llamafn.int4_matmul(x, w.q, w.scale, w.zero, w.group_size, True),
            [planar.to_planar(w) for w in copies])
        paths.update(mma_paths(x, copies))
        if M <= 64 and tinygemm.available(x.device):
            paths["tinygemm (torch._weight_int4pack_mm)"] = (tinygemm.tinygemm_matmul,
                                                             [tinygemm.to_tinygemm(w) for w in copies])
    if M >= 128:
        paths["dequantize + cuBLAS"] = (lambda x, w: F.linear(x, dequantize(w, x.dtype)), copies)
    return paths


def mma_paths(x: torch.Tensor, copies: list) -> dict:
    """The tensor-core int4 GEMV (llamafn.kernels.int4_mma) at every count of warps a tile, where it fits;
    past 8 rows (two tiles and two chunks of x a program) also with one chunk a program, and with one tile
    and one or two chunks."""
    w = copies[0]
    if x.dtype != torch.bfloat16 or not mma.fits(*w.shape, w.group_size):
        return {}
    paths = {}
    M, tiles, group = x.shape[0], w.shape[0] // 16, w.group_size
    smaller = {"one chunk a program": (int4_mma.tiles_a_program(M, tiles, group), 1), "one tile, one chunk": (1, 1),
               "one tile, two chunks": (1, 2)}
    for chains in mma.CHAINS:
        prepared = [mma.to_mma(c, chains) for c in copies]
        paths[f"triton mma, {chains} warps a tile"] = (
            lambda x, w: torch.ops.llamafn.int4_mma(x, w.words, w.records, w.group_size), prepared)
        if int4_mma.chunks_a_program(M, group) == 2:
            for label, (t, c) in smaller.items():
                paths[f"triton mma, {chains} warps a tile, {label}"] = (
                    lambda x, w, t=t, c=c: int4_mma.int4_mma_launch(x, w.words, w.records, w.group_size, t, c),
                    prepared)
    return paths


def kernel_rows(cfg, rows: list[int], schemes: list[str], copy_GBps: float) -> list[dict]:
    shapes = {"wqkv": ((cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim, cfg.dim), "wo": (cfg.dim, cfg.dim),
              "w13": (2 * cfg.hidden_dim, cfg.dim), "w2": (cfg.dim, cfg.hidden_dim)}
    gen = torch.Generator("cuda").manual_seed(0)
    out = []
    for name, (N, K) in shapes.items():
        dense = torch.randn(N, K, device="cuda", generator=gen, dtype=torch.bfloat16) * K ** -0.5
        variants = {}
        for s in schemes:
            scheme, group = parse_scheme(s)
            w = dense if scheme == "bf16" else quantize_weight(dense, scheme, group or DEFAULT_GROUP_SIZE)
            n_copies = copies_past_l2(weight_bytes(w))
            variants[s] = (w, [w] + [type(w)(*(f.clone() for f in w)) if isinstance(w, tuple) else w.clone()
                                     for _ in range(n_copies - 1)])
        for M in rows:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, generator=gen)
            for s, (w, copies) in variants.items():
                for path, (fn, prepared) in kernel_paths(s, x, copies).items():
                    err = relative_error(fn(x, prepared[0]), x, w)
                    t = time_in_graph([lambda w=w: fn(x, w) for w in prepared])
                    gbps = weight_bytes(w) / t / 1e9
                    out.append({"layer": name, "N": N, "K": K, "M": M, "weights": s, "path": path,
                                "us": round(t * 1e6, 1), "weight_GBps": round(gbps, 1),
                                "copy_fraction": round(gbps / copy_GBps, 3), "relative_error": err})
                    log(out[-1])
        del variants, dense
    return out


def quality(params, cfg, schemes: list[str]) -> list[dict]:
    """Logit error of each scheme against bf16 on a 128-token forward of the random 7B model."""
    tokens = torch.randint(0, cfg.vocab_size, (1, 128), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    ref, _ = forward(params, tokens, cfg=cfg)
    out = []
    for s in schemes:
        scheme, group = parse_scheme(s)
        if scheme == "bf16":
            continue
        logits, _ = forward(quantize(params, scheme, group_size=group or DEFAULT_GROUP_SIZE), tokens, cfg=cfg)
        err = (logits - ref).abs()
        out.append({"weights": s, "max_abs_err": round(err.max().item(), 4), "mean_abs_err": round(err.mean().item(), 5),
                    "relative_rms_err": round(((logits - ref).norm() / ref.norm()).item(), 5),
                    "top1_agreement": round((logits.argmax(-1) == ref.argmax(-1)).float().mean().item(), 4),
                    "logit_std": round(ref.std().item(), 4)})
        log(out[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench_quant", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="llama-2-7b")
    ap.add_argument("--schemes", default="bf16,int8,int4-g128,int4-g32")
    ap.add_argument("--decode-schemes", help="schemes for the decode part (default: --schemes); an int4 scheme "
                    "ending in +tinygemm runs in tinygemm's layout (llamafn.quant.tinygemm), an int8 or int4 one "
                    "ending in +gemv in the GEMVs' plane orders (llamafn.quant.planar)")
    ap.add_argument("--quantize-head", action="store_true", help="decode with the output head quantised too "
                    "(the library keeps it in bf16 by default; gpt-fast's int8 and int4 quantise it)")
    ap.add_argument("--batch-sizes", default="1")
    ap.add_argument("--kernel-rows", default="1,8,32,512", help="row counts M for the kernel table")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--parts", default="kernels,quality,decode")
    ap.add_argument("--attention", default="sdpa", help="the kernel set of the decode part (sdpa or triton: "
                    "flash attention with the fused add + norm, SwiGLU and RoPE + cache write)")
    ap.add_argument("--profile", action="store_true", help="add the top kernels of each scheme's batch-1 step")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    try:
        schemes = check_schemes("--schemes", args.schemes)
        decode_schemes = check_schemes("--decode-schemes", args.decode_schemes or args.schemes)
    except InputError as e:
        ap.error(str(e))
    if not torch.cuda.is_available():
        print("bench_quant: needs a CUDA GPU", file=sys.stderr)
        return 1
    cfg, parts = preset(args.preset), args.parts.split(",")
    results: dict = {"benchmark": "quant", "preset": args.preset,
                     "command": "python scripts/bench_quant.py " + " ".join(argv or sys.argv[1:]),
                     "ceilings": measure(), "kernels": [], "quality": [], "decode": []}
    log(results["ceilings"])

    def save() -> None:
        write_results(results, args.out, "quant")

    if "kernels" in parts:
        results["kernels"] = kernel_rows(cfg, [int(m) for m in args.kernel_rows.split(",")], schemes,
                                         results["ceilings"]["copy_GBps"])
        results["tuned_configs"] = quant_matmul.tuned_configs()
        save()
    params = fuse(init_params(cfg, generator=torch.Generator("cuda").manual_seed(0), dtype=torch.bfloat16, device="cuda"))
    if "quality" in parts:
        results["quality"] = quality(params, cfg, schemes)
        save()
    if "decode" in parts:
        for s in decode_schemes:
            stored = decode_params(params, s, args.quantize_head)
            for batch in map(int, args.batch_sizes.split(",")):
                p = laid_out(stored, s, batch)
                try:
                    r = compiled_decode(p, cfg, batch, 5, args.new_tokens, args.attention, results["ceilings"])
                    if args.profile and batch == 1:                    # reuses the graphs just compiled
                        r["profile"] = profile_step(p, cfg, args.attention)
                except Exception as e:                                   # keep the run going: one row says what failed
                    r = {"batch": batch, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
                r.update(weights=s, head_quantized=args.quantize_head and s != "bf16",
                         weight_GB=round(nbytes(p) / 1e9, 3))
                results["decode"].append(r)
                results["tuned_configs"] = quant_matmul.tuned_configs()
                log(r)
                save()
            del p, stored
            torch.compiler.reset()
            torch.cuda.empty_cache()
    print(f"wrote {write_results(results, args.out, 'quant')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
