"""`warmstart convert MODEL OUT`: rewrite a checkpoint (dtype, sharding) through the streaming engine."""

from __future__ import annotations

import argparse

from warmstart import api
from warmstart.commands.common import add_output_args, emit, examples, output_options


def register(sub) -> None:
    p = sub.add_parser("convert", help="rewrite a model directory: change dtype or shard size, or copy it unchanged",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=examples("warmstart convert SmolLM2-135M SmolLM2-bf16 --dtype bf16",
                                       "warmstart convert big-model resharded --max-shard-size 500MB --dry-run"))
    p.add_argument("model", help="source model directory")
    p.add_argument("out", help="output directory")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    return emit(args, api.convert(args.model, args.out, **output_options(args)))
