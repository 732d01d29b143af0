"""`warmstart shrink MODEL OUT`: fewer layers (drop) and/or narrower layers (select)."""

from __future__ import annotations

import argparse

from warmstart import api
from warmstart.commands.common import add_output_args, add_width_args, emit, examples, output_options


def register(sub) -> None:
    p = sub.add_parser(
        "shrink", help="shrink a model: keep N layers (evenly spaced or the first N) and/or select "
                       "evenly spaced units of every width (Weight Selection)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples("warmstart shrink SmolLM2-135M small --layers 6 --hidden 192 --intermediate 512 "
                        "--heads 3 --kv-heads 1",
                        "warmstart shrink SmolLM2-135M shallow --layers 15 --dry-run"))
    p.add_argument("model", help="source model directory")
    p.add_argument("out", help="output directory")
    p.add_argument("--layers", type=int, help="number of layers to keep")
    p.add_argument("--depth-method", "--layer-method", dest="depth_method", choices=("drop", "select"), default="drop",
                   help="drop: keep N evenly spaced layers, first and last included (default); "
                        "select: keep the first N layers (Weight Selection's layer selection)")
    add_width_args(p, "whole heads are kept")
    p.add_argument("--seed", type=int, default=0, help="random seed, where the width method uses one")
    p.add_argument("--optimizer-state", metavar="FILE",
                   help="AdamW state of the source to carry over (layer dropping only; see docs/grow.md)")
    p.add_argument("--verify", action="store_true", help="afterwards, compare both models on real text")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    options = {k: getattr(args, k) for k in ("layers", "depth_method", "hidden", "intermediate", "heads", "kv_heads",
                                             "seed")}
    return emit(args, api.shrink(args.model, args.out, optimizer_state=args.optimizer_state, verify=args.verify,
                                 **options, **output_options(args)))
