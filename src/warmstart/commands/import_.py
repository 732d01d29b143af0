"""`warmstart import MODEL.gguf OUT`: a GGUF file to a Hugging Face safetensors directory."""

from __future__ import annotations

from warmstart.commands.common import parse_size


def register(sub) -> None:
    p = sub.add_parser("import", help="convert a GGUF file into a Hugging Face safetensors directory")
    p.add_argument("gguf", help="GGUF file (llama, mistral, qwen2, qwen3, phi3, gemma2 or gemma3 architecture)")
    p.add_argument("out", help="output directory")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="dequantized dtype (default fp32)")
    p.add_argument("--force", action="store_true", help="replace the output if it exists")
    p.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard (default 2GB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from warmstart.checkpoint.dtypes import parse_user_dtype
    from warmstart.checkpoint.gguf import import_gguf

    out = import_gguf(args.gguf, args.out, dtype=parse_user_dtype(args.dtype), force=args.force,
                      max_shard_bytes=parse_size(args.max_shard_size), progress=not args.quiet)
    print(f"imported {args.gguf} -> {out}")
    return 0
