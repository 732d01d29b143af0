"""`warmstart bench RECIPE.yaml OUT`: how much sooner warm starts reach scratch's loss."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from warmstart import api
from warmstart.commands.common import add_json, add_threads, examples, quiet, set_threads
from warmstart.errors import WarmstartError


def register(sub) -> None:
    p = sub.add_parser("bench", help="train warm-started and scratch arms of a recipe and measure the head start",
                       description="Train every arm of a YAML recipe (scratch, grown from a source the bench "
                                   "pretrains, existing checkpoints, continued pretraining) and report tokens, FLOPs "
                                   "and time to the target loss. Writes report.md, curves.png and results.json.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=examples("warmstart bench recipes/tiny.yaml runs/tiny",
                                       "warmstart bench recipes/demo.yaml runs/demo --seeds 3 --jobs 2 --resume",
                                       "warmstart bench recipes/prune_distill.yaml runs/pd --device gpu "
                                       "--set train.tokens=4194304 --set arms.prune.tokens=1048576"))
    p.add_argument("recipe", help="recipe YAML file (see recipes/)")
    p.add_argument("out", nargs="?", help="output directory (written as .OUT.partial, renamed when done)")
    p.add_argument("--out", dest="out_flag", help=argparse.SUPPRESS)  # the grammar before OUT was positional
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the recipe's, else 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change one field of the recipe before it is validated (repeatable): a dotted key, arms "
                        "by name or * (train.tokens=4194304, arms.prune.lr=1e-3, lr_grid=[1e-3,3e-3], "
                        "arms.*.tokens=1048576); a value is YAML, null removes the field")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: finished arms are skipped, an interrupted arm goes on from "
                        "its last checkpoint")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="train on the CPU or an accelerator (default: an accelerator if present)")
    p.add_argument("--no-cache", action="store_true",
                   help="train every source and scratch arm (by default one trained earlier with exactly the same "
                        "data and settings is reused from the cache; a source's cost is counted either way)")
    add_threads(p)
    p.add_argument("--jobs", type=int, default=1,
                   help="sources and arms trained at once, each in its own process with cores/jobs torch threads "
                        "(default 1); on a CPU, one job per core finishes the runs soonest")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_json(p)
    p.add_argument("--figure-format", action="append", choices=["pdf", "svg"], default=None, metavar="{pdf,svg}",
                   help="also write the figure as curves.pdf or curves.svg (repeatable); curves.png is always "
                        "written. With --resume on a finished run, redraws without training")
    p.set_defaults(func=run)


def run(args) -> int:
    out = args.out or args.out_flag
    if out is None:
        raise WarmstartError("give the output directory: warmstart bench RECIPE OUT")
    quiet(args)
    set_threads(args.threads)
    results = api.bench(args.recipe, out, seeds=args.seeds, resume=args.resume, force=args.force, device=args.device,
                        cache=not args.no_cache, jobs=args.jobs, progress=not args.quiet,
                        figure_formats=args.figure_format or (), overrides=args.overrides)
    if results is not None:
        if args.json:
            print(json.dumps(results, indent=2, default=str))
        else:
            print((Path(out) / "report.md").read_text())
            print(f"plot: {Path(out) / 'curves.png'}")
    return 0
