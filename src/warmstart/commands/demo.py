"""`warmstart demo`: the main job of `make demo`: prove the head start on a small model."""

from __future__ import annotations

import argparse
import json

from warmstart.arch.summary import summarize
from warmstart.bench import recipe as R
from warmstart.bench.demo import demo_recipe, smollm2_summary
from warmstart.bench.run import run_bench
from warmstart.commands.common import add_json, add_threads, device_flag, examples, set_threads
from warmstart.errors import WarmstartError


def register(sub) -> None:
    p = sub.add_parser("demo", help="pretrain, grow and race a small Llama against scratch; print the speedup",
                       description="Inspect the real SmolLM2-135M checkpoint, then run the embedded demo recipe: "
                                   "pretrain a small Llama on Shakespeare, grow it (hyperclone width x2, expand "
                                   "depth x2), train it and a same-sized scratch model on the same budget, and print the "
                                   "speedup table and the plot's path. A finished demo in --out is reused (its arms "
                                   "are not retrained) unless --force.",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=examples("warmstart demo", "warmstart demo --seeds 3 --out runs/demo3"))
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--steps", type=int, default=None, help="training steps of each arm (default 800)")
    p.add_argument("--source-steps", type=int, default=None, help="pretraining steps of the source (default 800)")
    p.add_argument("--seeds", type=int, default=1, help="seeds (default 1); medians are reported")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                   help="train on the CPU or an accelerator (default: an accelerator if present)")
    p.add_argument("--force", action="store_true", help="retrain everything, replacing --out")
    p.add_argument("--no-cache", action="store_true",
                   help="train the source and scratch even if the same runs are in the cache")
    p.add_argument("--skip-inspect", action="store_true", help="do not fetch and inspect SmolLM2")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    add_threads(p)
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once, each in its own process (default: one per CPU core, up to 2, on a "
                        "CPU; 1 on an accelerator)")
    add_json(p)
    p.set_defaults(func=run)


def default_jobs(device: str) -> int:
    """Scratch and the grown arm side by side on a CPU with two cores or more: the demo's wall time halves."""
    import os

    import torch

    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return min(2, os.cpu_count() or 1) if on_cpu else 1


def busy_machine_threads() -> int | None:
    """1 when other work already keeps the CPUs busy, else None (torch's default).

    Several torch threads per process on oversubscribed cores spend their time
    waiting for each other: on a 2-core machine under load, a training step
    took 22 s with 2 threads and 3.5 s with 1.
    """
    import os

    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    cores = os.cpu_count() or 1
    if cores > 1 and load > cores - 1:
        print(f"(the machine is busy: load {load:.1f} on {cores} cores; training with 1 torch thread, "
              "--threads to choose)")
        return 1
    return None


def run(args) -> int:
    import time
    from pathlib import Path

    for name in ("steps", "source_steps", "seeds", "jobs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise WarmstartError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    threads = args.threads
    if threads is None:
        threads = busy_machine_threads()
    set_threads(threads)
    start = time.perf_counter()
    if not args.skip_inspect:
        from warmstart.assets import AssetUnavailable

        print("== A real checkpoint: SmolLM2-135M-Instruct (warmstart inspect) ==")
        try:
            print(smollm2_summary())
        except AssetUnavailable as err:
            print(f"(SmolLM2 unavailable here: {err.line()})")
        print()
    recipe = R.parse(demo_recipe(args.steps, args.source_steps), "<demo recipe>")
    out = Path(args.out)
    resume = not args.force and (out.exists() or (out.parent / f".{out.name}.partial").exists())
    if resume:
        print(f"(continuing the demo in {out}: finished arms are reused; --force retrains)")
    print("== The head start: a grown model against scratch on the same budget ==")
    results = run_bench(recipe, out, seeds=args.seeds, resume=resume, force=args.force, progress=not args.quiet,
                        cpu=device_flag(args.device), source_cache=not args.no_cache,
                        jobs=args.jobs or default_jobs(args.device))
    if results is None:  # a non-main process of a distributed launch
        return 0
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return 0

    grown = out / "seed-0" / "grown" / "grown"
    source = out / "seed-0" / "sources" / "small" / "final"
    if grown.exists() and source.exists():
        print("== The source before growth, and the grown start (warmstart inspect) ==")
        for path in (source, grown):
            s = summarize(path)
            print(f"{path}: {s['layers']} layers, hidden {s['hidden']}, {s['heads']} heads, {s['kv_heads']} KV heads, "
                  f"{s['parameters']:,} parameters")
        print()
    print((out / "report.md").read_text().replace("![eval loss curves](curves.png)", "").rstrip())
    print()
    print(f"plot: {out / 'curves.png'}")
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0
