"""`warmstart grow MODEL OUT`: more layers (depth operators), wider layers (width operators), or both."""

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
from warmstart.ops import registry
from warmstart.ops.fresh import FRESH


def depth_methods() -> list[str]:
    return [n for n in registry.names("depth") if n != "layer_map"]  # layer_map has its own flag


def width_methods() -> list[str]:
    return registry.names("width")


def register(sub) -> None:
    p = sub.add_parser(
        "grow", help="grow a model in depth (stack, interleave, dus, expand, --layer-map) and/or width "
                     "(hyperclone, net2net, aki, fresh-units); width first, then depth, in one streaming pass",
        description="Grow a model. Depth: --layers N with --depth-method, or --layer-map. Width: --width-method "
                    "with target sizes or --width-mult. Both in one command run as a chain (width, then depth).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples("warmstart grow SmolLM2-135M grown --layers 40 --depth-method expand --verify",
                        "warmstart grow SmolLM2-135M wide --width-method hyperclone --width-mult 2 --dry-run"))
    p.add_argument("model", help="source model directory")
    p.add_argument("out", help="output directory")
    d = p.add_argument_group("depth")
    d.add_argument("--layers", type=int, help="number of layers of the output")
    d.add_argument("--depth-method", choices=depth_methods(),
                   help="stack (G_stack), interleave, dus (SOLAR depth up-scaling), expand (LLaMA Pro, exact)")
    d.add_argument("--dus-overlap", type=int, metavar="K",
                   help="dus: layers dropped at the seam of each copy (output has 2*(L-K) layers)")
    d.add_argument("--new-block-init", choices=FRESH.names(), default=None,
                   help="expand: output projections of the new blocks: zero (exact, default), idinit "
                        "(IDInit's eps-scaled identity-like matrix, not exact) or lsuv (orthogonal, scaled on "
                        "--corpus so each new branch's typical token RMS is --lsuv-target x the residual stream's; "
                        "not exact)")
    add_calibration_args(d, purpose="lsuv", batches=8, seq_len=256)
    d.add_argument("--lsuv-target", type=float, metavar="R",
                   help="lsuv: each new branch's typical token RMS (median over tokens) over the residual "
                        "stream's (default 0.02)")
    d.add_argument("--layer-map", metavar="SPEC",
                   help="any mapping: output block j copies source block SPEC[j], e.g. 0-5,0-5,3,4")
    w = p.add_argument_group("width")
    w.add_argument("--width-method", metavar="METHOD", help=f"one of: {', '.join(width_methods())}")
    add_width_args(w)
    w.add_argument("--width-mult", type=float, metavar="K", help="multiply every width by K (hyperclone: integer)")
    w.add_argument("--noise-snr-db", type=float, help="symmetry-breaking noise, signal-to-noise ratio in dB")
    p.add_argument("--seed", type=int, default=0, help="random seed of the width operators and of lsuv's matrices (default 0)")
    p.add_argument("--optimizer-state", metavar="FILE",
                   help="AdamW state of the source to carry over (see docs/grow.md for the format); written as "
                        "OUT/optimizer_state.safetensors")
    p.add_argument("--verify", action="store_true",
                   help="afterwards, run both models on real text and report the logit difference")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    options = {k: getattr(args, k) for k in ("layers", "depth_method", "layer_map", "dus_overlap", "width_method",
                                             "hidden", "intermediate", "heads", "kv_heads", "width_mult",
                                             "noise_snr_db", "seed", "new_block_init")}
    return emit(args, api.grow(args.model, args.out, optimizer_state=args.optimizer_state, verify=args.verify,
                               corpus=args.corpus, batches=args.batches, batch_size=args.batch_size,
                               seq_len=args.seq_len, lsuv_target=args.lsuv_target, **options, **output_options(args)))
