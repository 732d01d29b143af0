"""`warmstart adapter MODEL OUT --method M --rank R`: initialize a LoRA adapter (PEFT layout), or export plain LoRA."""

from __future__ import annotations

import argparse

from warmstart import api
from warmstart.commands.common import add_calibration_args, add_json, emit, examples, quiet
from warmstart.errors import WarmstartError

METHOD_HELP = ("default, gaussian, init-b, pissa, pissa_niter_N, olora, nlora, eva, corda, lora-ga, lora-sb, loftq "
               "(eva, corda, lora-ga and lora-sb need --corpus)")


def register(sub) -> None:
    p = sub.add_parser(
        "adapter", help="initialize a LoRA adapter (PiSSA, OLoRA, EVA, CorDA, LoRA-GA, NLoRA, LoRA-SB, ...) or "
                        "export one as plain LoRA against the untouched base",
        description="Writes OUT/adapter (PEFT) and, for methods that move weights into the adapter, OUT/base "
                    "(the residual base). With --export lora: OUT is a plain LoRA adapter against MODEL, equal to "
                    "--trained on the residual base of --initial. See docs/adapter.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples("warmstart adapter SmolLM2-135M pissa16 --method pissa --rank 16",
                        "warmstart adapter SmolLM2-135M plain --export lora --initial pissa16 --trained run/adapter"))
    p.add_argument("model", help="source model directory (never modified)")
    p.add_argument("out", help="output directory")
    p.add_argument("--method", default="default", help=f"initialization: {METHOD_HELP} (default: default)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r (default 8)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: equal to the rank, scaling 1)")
    p.add_argument("--target-modules", nargs="+", default=None, metavar="NAME",
                   help="module names to adapt, e.g. q_proj v_proj, or all-linear, or a regular expression over full "
                        "module names as PEFT takes it, e.g. '.*language_model.*(q|v)_proj' (default: PEFT's for "
                        "the family)")
    add_calibration_args(p, purpose="data-driven methods", batches=8, seq_len=128, corpus_default=[])
    p.add_argument("--seed", type=int, default=0, help="seed of random factors and sketches (default 0)")
    p.add_argument("--sb-lr", type=float, default=None, help="lora-sb: learning rate of the approximated first step "
                   "(default 1e-4)")
    p.add_argument("--sb-rule", choices=["adam", "sgd"], default=None,
                   help="lora-sb: first step of Adam (-lr*sign(g), default) or SGD (-lr*g)")
    p.add_argument("--nlora-oversample", type=int, default=None, metavar="P",
                   help="nlora: extra columns of the left sketch, for a well-conditioned core (default: the rank; "
                        "0 is the plain Nyström form)")
    p.add_argument("--corda-mode", choices=["ipm", "kpm"], default=None,
                   help="corda: instruction-previewed (ipm, default) or knowledge-preserving (kpm)")
    p.add_argument("--export", choices=["lora"], default=None,
                   help="instead of initializing: write OUT as plain LoRA against MODEL (needs --initial)")
    p.add_argument("--initial", metavar="DIR", help="--export: the output of an earlier `warmstart adapter`")
    p.add_argument("--trained", metavar="DIR", help="--export: the trained adapter (default: DIR/adapter as initialized)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                   help="load, compute and write the residual base in this dtype (default: the checkpoint's, but fp32 "
                        "for the residual base of a bf16/fp16 checkpoint, which keeps residual + adapter exact)")
    p.add_argument("--force", action="store_true", help="replace the output if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars (transformers' included)")
    add_json(p)
    p.set_defaults(func=run)


def run(args) -> int:
    quiet(args)
    if args.export:
        if not args.initial:
            raise WarmstartError("--export lora needs --initial DIR (the output of `warmstart adapter`)")
        result = api.export_lora(args.model, args.initial, args.out, trained=args.trained, force=args.force)
    else:
        if args.initial or args.trained:
            raise WarmstartError("--initial and --trained are for --export lora")
        result = api.adapter(args.model, args.out, method=args.method, rank=args.rank, alpha=args.alpha,
                             target_modules=args.target_modules, corpus=args.corpus, batches=args.batches,
                             batch_size=args.batch_size, seq_len=args.seq_len, seed=args.seed, force=args.force,
                             nlora_oversample=args.nlora_oversample, sb_lr=args.sb_lr, sb_rule=args.sb_rule,
                             corda_mode=args.corda_mode, dtype=args.dtype)
    return emit(args, result)
