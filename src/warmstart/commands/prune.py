"""`warmstart prune MODEL OUT --corpus FILES`: a smaller model keeping the units and blocks that matter most."""

from __future__ import annotations

import argparse

from warmstart import api
from warmstart.commands.common import (
    add_calibration_args,
    add_output_args,
    add_width_args,
    emit,
    examples,
    output_options,
)
from warmstart.ops.prune import DEPTH_METHODS, IMPORTANCE_METHODS


def register(sub) -> None:
    p = sub.add_parser(
        "prune", help="prune a model by importance measured on a calibration corpus (Minitron's activation "
                      "importance, ShortGPT's block influence), or by magnitude / Weight Selection",
        description="Measure importance in one pass over --batches calibration batches, then write the pruned "
                    "checkpoint tensor by tensor. Not function-preserving: train (or distill) afterwards.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples("warmstart prune SmolLM2-135M small --corpus plays/ --layers 6 --hidden 192 --heads 3 "
                        "--kv-heads 1 --intermediate 512",
                        "warmstart prune SmolLM2-135M small --importance magnitude --layers 15 --dry-run"))
    p.add_argument("model", help="source model directory")
    p.add_argument("out", help="output directory")
    add_calibration_args(p, purpose="", batches=16, seq_len=256)
    p.add_argument("--importance", choices=IMPORTANCE_METHODS, default="activation",
                   help="width: activation (Minitron, needs --corpus; default), magnitude (weight norms) or "
                        "select (Weight Selection, evenly spaced)")
    p.add_argument("--layers", type=int, help="number of blocks to keep")
    p.add_argument("--depth-importance", choices=DEPTH_METHODS,
                   help="which blocks to keep: block-influence (ShortGPT; default with --corpus), loss (loss "
                        "increase when the block is skipped), even (default without --corpus) or first")
    add_width_args(p, "whole KV groups are kept")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    return emit(args, api.prune(args.model, args.out, corpus=args.corpus, importance=args.importance,
                                layers=args.layers, depth_importance=args.depth_importance, hidden=args.hidden,
                                intermediate=args.intermediate, heads=args.heads, kv_heads=args.kv_heads,
                                batches=args.batches, batch_size=args.batch_size, seq_len=args.seq_len,
                                **output_options(args)))
