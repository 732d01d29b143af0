"""`warmstart import MODEL.gguf OUT`: a GGUF file to a Hugging Face safetensors directory."""

from __future__ import annotations

import argparse

from warmstart import api
from warmstart.commands.common import add_output_args, emit, examples, output_options


def register(sub) -> None:
    p = sub.add_parser("import", help="convert a GGUF file into a Hugging Face safetensors directory",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=examples("warmstart import smollm2-135m-instruct-q8_0.gguf SmolLM2-135M",
                                       "warmstart import model.gguf model-hf --dtype bf16 --dry-run"))
    p.add_argument("gguf", help="GGUF file")
    p.add_argument("out", help="output directory")
    add_output_args(p, dtype=False)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="dequantized dtype (default fp32)")
    p.set_defaults(func=run)


def run(args) -> int:
    return emit(args, api.import_gguf(args.gguf, args.out, **output_options(args)))
