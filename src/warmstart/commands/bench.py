"""`warmstart bench RECIPE.yaml --out DIR`: how much sooner warm starts reach scratch's loss."""

from __future__ import annotations

from warmstart.commands.common import add_threads, device_flag, set_threads


def register(sub) -> None:
    p = sub.add_parser("bench", help="train warm-started and scratch arms of a recipe and measure the head start",
                       description="Train every arm of a YAML recipe (scratch, grown from a source the bench "
                                   "pretrains, existing checkpoints, continued pretraining) and report tokens, FLOPs "
                                   "and time to the target loss. Writes report.md, curves.png and results.json.")
    p.add_argument("recipe", help="recipe YAML file (see recipes/)")
    p.add_argument("--out", required=True, help="output directory (written as .OUT.partial, renamed when done)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the recipe's, else 1)")
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
    p.set_defaults(func=run)


def run(args) -> int:
    from warmstart.bench import recipe as R
    from warmstart.bench.run import run_bench
    from warmstart.errors import WarmstartError

    if args.seeds is not None and args.seeds < 1:
        raise WarmstartError(f"--seeds must be at least 1, got {args.seeds}")
    recipe = R.load(args.recipe)
    set_threads(args.threads)
    results = run_bench(recipe, args.out, seeds=args.seeds, resume=args.resume, force=args.force,
                        progress=not args.quiet, cpu=device_flag(args.device),
                        source_cache=not args.no_cache, jobs=args.jobs)
    if results is not None:
        from pathlib import Path

        print((Path(args.out) / "report.md").read_text())
        print(f"plot: {Path(args.out) / 'curves.png'}")
    return 0
