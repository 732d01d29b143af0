"""`warmstart merge CKPT CKPT... OUT --method M`: average checkpoints, streamed tensor by tensor."""

from __future__ import annotations

import argparse

from warmstart import api
from warmstart.commands.common import add_output_args, emit, examples, output_options
from warmstart.errors import WarmstartError
from warmstart.merge.methods import METHODS


def _numbers(text: str | None, what: str, kind=float) -> list | None:
    if text is None:
        return None
    out = []
    for part in text.replace(",", " ").split():
        try:
            out.append(kind(part))
        except ValueError:
            raise WarmstartError(f"{what}: cannot read {part!r} as a number") from None
    if not out:
        raise WarmstartError(f"{what}: no values given")
    return out


def register(sub) -> None:
    p = sub.add_parser(
        "merge", help="average checkpoints of one architecture: mean, weighted, ema, wsm, fisher",
        description="Merge checkpoints of the same architecture, shapes and tokenizer into one, "
                    "reading one tensor of each input at a time. Ordered methods (ema, wsm) take the "
                    "checkpoints oldest first.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples("warmstart merge run/step-1000 run/step-2000 run/step-3000 merged --method mean",
                        "warmstart merge ckpt-a ckpt-b merged --method wsm --input-steps 1000,2000 --dry-run"))
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="input model directories (at least two)")
    p.add_argument("out", help="output model directory")
    p.add_argument("--method", default="mean", choices=sorted(METHODS),
                   help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()) + " (default: mean)")
    p.add_argument("--weights", help="weighted/fisher: one weight per checkpoint, e.g. 0.5,0.3,0.2")
    p.add_argument("--no-normalize", action="store_true",
                   help="weighted: use the weights as raw coefficients although they do not sum to 1")
    p.add_argument("--ema-decay", type=float, help="ema: decay per checkpoint (per step with --input-steps)")
    p.add_argument("--ema-half-life", type=float, metavar="STEPS", help="ema: half-life in steps (needs --input-steps)")
    p.add_argument("--input-steps", "--steps", dest="input_steps", metavar="STEPS",
                   help="ema/wsm: the checkpoints' training steps, e.g. 1000,2000,3000")
    p.add_argument("--wsm-shape", help="wsm: decay shape to emulate: linear, cosine, 1-sqrt, exp (default linear)")
    p.add_argument("--wsm-end", type=float, help="wsm: the emulated decay's final ratio (default 0; exp needs > 0)")
    p.add_argument("--fisher-data", metavar="FILE", help="fisher: text to estimate each model's Fisher on")
    p.add_argument("--fisher-batches", type=int, metavar="N", help="fisher: batches of that text (default 8)")
    p.add_argument("--fisher-batch-size", type=int, default=4, help="fisher: sequences per batch (default 4)")
    p.add_argument("--fisher-seq-len", type=int, default=128, help="fisher: tokens per sequence (default 128)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for the arithmetic (default 1: the merge is bound by memory and reads; "
                        "0: torch's default)")
    add_output_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    return emit(args, api.merge(
        args.checkpoints, args.out, method=args.method, weights=_numbers(args.weights, "--weights"), normalize=not args.no_normalize,
        ema_decay=args.ema_decay, ema_half_life=args.ema_half_life,
        input_steps=_numbers(args.input_steps, "--input-steps", int), wsm_shape=args.wsm_shape, wsm_end=args.wsm_end,
        fisher_data=args.fisher_data, fisher_batches=args.fisher_batches, fisher_batch_size=args.fisher_batch_size,
        fisher_seq_len=args.fisher_seq_len, threads=args.threads, **output_options(args)))
