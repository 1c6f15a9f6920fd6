"""The command line: `llamafn generate | info | convert` (also `python -m llamafn`).

Errors the project raises on purpose (LlamafnError) and the file system's refusals (OSError: a path
that cannot be written, permissions, a full disk) are printed as one line, without a traceback, and the
exit status is 1; an interrupted run exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from . import checkpoint, quant
from .config import cards_dir
from .decode import check_prompts, generate
from .decode.speculative import DEFAULT_K, check_k
from .errors import InputError, LlamafnError, TokenizerError
from .kernels import backends
from .kernels.runtime import require_triton
from .quant.formats import DEFAULT_GROUP_SIZE
from .params import n_params
from .sampling import sampling_params
from .tokenizer import Tokenizer

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SAMPLING_DEFAULTS = {"temperature": 0.8, "top_k": 0, "top_p": 0.95, "min_p": 0.0, "repetition_penalty": 1.0}
DEFAULT_DIVERSITY_PENALTY = 1.0


def find_tokenizer(model: Path) -> Path:
    """tokenizer.model next to the model (in its folder, or beside a single-file checkpoint), else the
    only *.model file there."""
    folder = model if model.is_dir() else model.parent
    if (folder / "tokenizer.model").is_file():
        return folder / "tokenizer.model"
    candidates = sorted(folder.glob("*.model"))
    if len(candidates) == 1:
        return candidates[0]
    raise TokenizerError(f"no tokenizer found next to {model} "
                         f"({'several' if candidates else 'no'} *.model files in {folder}); pass --tokenizer")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(name: str) -> str:
    """--device as given, if it names a CPU or a CUDA GPU this machine has; else InputError."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise InputError(f"--device {name}: no CUDA GPU is available (torch {torch.__version__}, {build})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type != "cpu":
        raise InputError(f"--device {name}: only cpu and cuda devices are supported")
    return name


SHIPPED = {"target": "stdlib-coder", "draft": "stdlib-coder-draft"}


def resolve_model(name: str | None) -> Path:
    """A checkpoint path, or the name of a model shipped in params/ (`target`, the default, or `draft`)."""
    name = name or "target"
    if Path(name).exists():
        return Path(name)
    shipped = cards_dir() / SHIPPED.get(name, name)
    if shipped.is_dir():
        return shipped
    known = ", ".join(sorted(SHIPPED) + sorted(p.name for p in cards_dir().iterdir() if p.is_dir()))
    raise InputError(f"{name}: no such checkpoint, nor a shipped model (shipped: {known})")


def check_generate_flags(args: argparse.Namespace) -> None:
    """Refuse values and combinations of `generate`'s flags that cannot run, before any weight is read or
    any text printed."""
    sampling_params(1, **sampling_flags(args))
    if args.beams < 1:
        raise InputError(f"--beams must be >= 1, got {args.beams}")
    given = [f"--{name.replace('_', '-')}" for name in (*SAMPLING_DEFAULTS, "seed") if getattr(args, name) is not None]
    if args.beams > 1 and given:
        raise InputError(f"--beams searches deterministically; sampling flags do not apply: {', '.join(given)}")
    if args.beams > 1 and (args.json_schema or args.regex or args.speculative or args.compile):
        raise InputError("--beams runs alone: not with --json-schema, --regex, --speculative or --compile")
    if args.beams < 2 and (args.force or args.diverse_groups != 1):
        raise InputError("--force and --diverse-groups need --beams N (N > 1): they are beam searches")
    if args.diversity_penalty is not None and args.diverse_groups < 2:
        raise InputError("--diversity-penalty needs --diverse-groups G (G > 1)")
    if args.force and args.diverse_groups != 1:
        raise InputError("--force runs one group of beams: not with --diverse-groups")
    if args.speculative:
        check_k(speculative_k(args))
    elif args.k is not None or args.adaptive_k or args.draft_model:
        raise InputError("--k, --adaptive-k and --draft-model configure --speculative")
    if args.speculative == "lookup" and args.draft_model:
        raise InputError("--draft-model is for --speculative draft (lookup proposes from the prompt)")
    check_group_size_flag(args)


def sampling_flags(args: argparse.Namespace) -> dict:
    """The sampling settings given, the rest at SAMPLING_DEFAULTS."""
    return {name: default if getattr(args, name) is None else getattr(args, name)
            for name, default in SAMPLING_DEFAULTS.items()}


def check_group_size_flag(args: argparse.Namespace) -> None:
    if args.group_size is not None and args.quantize != "int4":
        raise InputError("--group-size applies to --quantize int4 only")


def int4_group_size(args: argparse.Namespace) -> int:
    return DEFAULT_GROUP_SIZE if args.group_size is None else args.group_size


def speculative_k(args: argparse.Namespace) -> int:
    return DEFAULT_K if args.k is None else args.k


def cmd_generate(args: argparse.Namespace) -> int:
    check_generate_flags(args)
    model = resolve_model(args.model)
    checkpoint.detect_format(model)
    device = check_device(args.device) if args.device else default_device()
    if args.attention == "triton":
        require_triton(device, "--attention triton")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    tok = Tokenizer(args.tokenizer or find_tokenizer(model))
    params, cfg = checkpoint.load(model, dtype=dtype, device=device, quantize=args.quantize,
                                  group_size=int4_group_size(args))
    k = speculative_k(args)
    rows_a_step = args.beams if args.beams > 1 else k + 1 if args.speculative else 1
    params = quant.for_decode(params, rows_a_step, dtype)
    if tok.vocab_size > cfg.vocab_size:
        raise TokenizerError(f"tokenizer {tok.path} has {tok.vocab_size} tokens but the model's vocabulary "
                             f"has {cfg.vocab_size}: they do not belong together")
    prompt = tok.encode(args.prompt, bos=True)
    room = cfg.max_seq_len - len(prompt)
    if room < 1:
        raise InputError(f"the prompt is {len(prompt)} tokens, the model's context is {cfg.max_seq_len}")
    max_new = args.max_new_tokens if args.max_new_tokens is not None else min(256, room)
    check_prompts([prompt], cfg, max_new)
    generator = torch.Generator(device).manual_seed(args.seed) if args.seed is not None else None
    kv_dtype = torch.int8 if args.kv_cache == "int8" else None
    draft = None
    if args.speculative == "draft":
        draft_path = resolve_model(args.draft_model or "draft")
        draft = checkpoint.load(draft_path, dtype=dtype, device=device)
    constraints = []
    if args.json_schema or args.regex:
        from .decode.constrained import Grammar

        schema = None
        if args.json_schema:
            try:
                schema = Path(args.json_schema).read_text(encoding="utf-8")
            except OSError as e:
                raise InputError(f"--json-schema {args.json_schema}: cannot read it ({e.strerror})") from None
        constraints.append(Grammar(tok, json_schema=schema, regex=args.regex))
    if args.beams > 1:
        penalty = DEFAULT_DIVERSITY_PENALTY if args.diversity_penalty is None else args.diversity_penalty
        diverse = {"num_beam_groups": args.diverse_groups, "diversity_penalty": penalty} if args.diverse_groups > 1 else {}
        best = generate(params, cfg, [prompt], max_new, num_beams=args.beams, **diverse, stop_tokens=tok.stop_tokens,
                        attention=args.attention, force_phrases=[tok.encode(text, bos=False) for text in args.force],
                        kv_dtype=kv_dtype)
        print(args.prompt + tok.decode(prompt + best[0])[len(tok.decode(prompt)):])
        return 0
    decoder = tok.stream_decoder(prompt)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()

    def on_token(row: int, token: int) -> None:
        sys.stdout.write(decoder.push([token]))
        sys.stdout.flush()

    generate(params, cfg, [prompt], max_new, **sampling_flags(args), stop_tokens=tok.stop_tokens,
             generator=generator, on_token=on_token, attention=args.attention, sync_every=1, compile=args.compile,
             speculative=args.speculative, draft=draft, k=k, adaptive_k=args.adaptive_k, constraints=constraints,
             kv_dtype=kv_dtype)
    sys.stdout.write(decoder.flush() + "\n")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    path = resolve_model(args.path)
    fmt = checkpoint.detect_format(path)
    params, cfg = checkpoint.load(path, device="meta")
    on_disk = sum(f.stat().st_size for f in ([path] if path.is_file() else path.iterdir()) if f.is_file())
    print(f"{'path':<16}{path}\n{'format':<16}{fmt}")
    for key, value in cfg.to_dict().items():
        print(f"{key:<16}{value}")
    count = n_params(cfg)
    print(f"{'parameters':<16}{count:,}\n{'bf16 bytes':<16}{count * 2:,}\n{'bytes on disk':<16}{on_disk:,}")
    print(f"{'quantization':<16}{quant.scheme_of(params) or 'none'}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    src = resolve_model(args.src)
    if args.quantize and args.format != "native":
        raise InputError(f"--quantize writes the native format only (got --format {args.format})")
    check_group_size_flag(args)
    if args.quantize_head and not args.quantize:
        raise InputError("--quantize-head applies with --quantize")
    if args.shards != 1 and args.format != "meta":
        raise InputError("--shards applies to --format meta (Meta's model-parallel files)")
    group_size = int4_group_size(args)
    params, cfg = checkpoint.load(src, dtype=DTYPES[args.dtype] if args.dtype else None, quantize=args.quantize,
                                  group_size=group_size, quantize_head=args.quantize_head)
    try:
        tokenizer = find_tokenizer(src)
    except TokenizerError:
        tokenizer = None
    if args.format != "native" and quant.scheme_of(params):
        print(f"{args.src} is quantized ({quant.scheme_of(params)}); writing its dequantized weights", file=sys.stderr)
        params = quant.dequantize_params(params)
    if args.format == "native":
        checkpoint.save(args.dst, params, cfg, tokenizer=tokenizer, overwrite=args.overwrite)
    elif args.format == "hf":
        checkpoint.save_hf(args.dst, params, cfg, tokenizer=tokenizer, overwrite=args.overwrite)
    elif args.format == "meta":
        checkpoint.save_meta(args.dst, params, cfg, n_shards=args.shards, tokenizer=tokenizer, overwrite=args.overwrite)
    else:
        checkpoint.save_llama2c(args.dst, params, cfg, version=1, overwrite=args.overwrite)
    scheme = f", {args.quantize}" + (f" g{group_size}" if args.quantize == "int4" else "") if args.quantize else ""
    print(f"wrote {args.dst} ({args.format}{scheme}, {n_params(cfg):,} parameters)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import decode, kernels, quant, speculative, verify

    benches = {"decode": decode, "speculative": speculative, "verify": verify, "quant": quant, "kernels": kernels}
    return benches[args.name].main(args.args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llamafn", description="LLaMA inference, functional style.")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt, streamed to stdout")
    g.add_argument("prompt", nargs="?", default="", help="the prompt text (empty: start from BOS alone)")
    g.add_argument("--model", help="checkpoint (llama2.c .bin, or a Hugging Face, Meta or llamafn folder), or a "
                   "shipped model: target (default, stdlib-coder) or draft (stdlib-coder-draft)")
    g.add_argument("--tokenizer", help="tokenizer file (default: the one next to the model)")
    g.add_argument("--max-new-tokens", type=int, help="default: 256, or what fits the context")
    g.add_argument("--temperature", type=float, help="0 means greedy (default 0.8)")
    g.add_argument("--top-k", type=int, help="keep the k most likely tokens (default 0: off)")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1] (default 0.95)")
    g.add_argument("--min-p", type=float, help="drop tokens below min_p x the top probability (default 0: off)")
    g.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeats (default 1: off)")
    g.add_argument("--seed", type=int, help="seed of the sampling noise")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--dtype", choices=sorted(DTYPES), help="default: bfloat16 on cuda, float32 on cpu")
    g.add_argument("--quantize", choices=quant.SCHEMES, help="quantize the layer matrices while loading "
                   "(weight-only; int8 per channel, int4 in groups)")
    g.add_argument("--group-size", type=int, help="int4 group size: 32, 64, 128 or 256 (default 128)")
    g.add_argument("--attention", default="sdpa", choices=backends("attention"), help="attention backend")
    g.add_argument("--kv-cache", choices=("int8",), help="store the KV cache as int8 with a scale per token and "
                   "head (half the bytes of bf16; default: the weights' dtype)")
    g.add_argument("--compile", action="store_true", help="compiled prefill and CUDA-graph decode step "
                   "(pays a one-off compile; worth it on a GPU for long generations)")
    g.add_argument("--speculative", choices=("draft", "lookup"),
                   help="speculative decoding with a draft model or by prompt lookup (same output distribution)")
    g.add_argument("--draft-model", help="the draft checkpoint for --speculative draft (default: the shipped draft)")
    g.add_argument("--k", type=int, help=f"tokens proposed per speculative step (default {DEFAULT_K})")
    g.add_argument("--adaptive-k", action="store_true", help="vary the proposals a step between 1 and --k")
    g.add_argument("--json-schema", help="a JSON Schema file the output must follow (compact JSON)")
    g.add_argument("--regex", help="a regular expression the output must match in full")
    g.add_argument("--beams", type=int, default=1, help="beam search with this many beams (prints the best)")
    g.add_argument("--force", action="append", default=[], metavar="TEXT",
                   help="a phrase the output must contain (repeatable; with --beams)")
    g.add_argument("--diverse-groups", type=int, default=1, help="diverse beam search: groups of beams")
    g.add_argument("--diversity-penalty", type=float,
                   help=f"diverse beam search's penalty (default {DEFAULT_DIVERSITY_PENALTY:g})")
    g.set_defaults(run=cmd_generate)

    i = sub.add_parser("info", help="print a checkpoint's config, parameter count and size")
    i.add_argument("path", help="a checkpoint, or a shipped model's name (target, draft)")
    i.set_defaults(run=cmd_info)

    c = sub.add_parser("convert", help="convert a checkpoint (any readable format) to another")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--format", choices=("native", "hf", "meta", "llama2c"), default="native")
    c.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights (default: keep)")
    c.add_argument("--shards", type=int, default=1, help="model-parallel shards for --format meta")
    c.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    c.add_argument("--quantize", choices=quant.SCHEMES, help="weight-only quantization of the layer matrices "
                   "(int8: per-channel; int4: groups with scale and zero point); native format only")
    c.add_argument("--group-size", type=int, help="int4 group size: 32, 64, 128 or 256 (default 128)")
    c.add_argument("--quantize-head", action="store_true", help="quantize the output head too (default: keep it)")
    c.set_defaults(run=cmd_convert)

    b = sub.add_parser("bench", help="GPU benchmarks: `llamafn bench decode --help`")
    b.add_argument("name", choices=("decode", "speculative", "verify", "quant", "kernels"))
    b.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own arguments")
    b.set_defaults(run=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except LlamafnError as e:
        print(f"llamafn: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:                      # the file system refused a read or write (a path, permissions, space)
        where = f"{e.filename}: " if e.filename else ""
        print(f"llamafn: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
