"""Mean of 3 perturbed copies of SmolLM2-135M: `warmstart merge --method mean` against mergekit's `linear`.

Three copies of the real SmolLM2-135M-Instruct (fp32) are made, each with
its own Gaussian noise (1% of every tensor's standard deviation; seeds 1, 2,
3), so the mean is a real computation. Both tools merge them into fp32:
warmstart with ``warmstart merge A B C OUT --method mean``, mergekit with its
``linear`` method (weight 1 each, normalized) through ``mergekit-yaml``.

Each run is its own process under ``/usr/bin/time -v`` (wall time and peak
resident memory). The tools alternate; the first run of each is a warm-up
that fills the page cache and is not counted; the script prints the medians
of the rest and the ratios warmstart / mergekit, then the memory bound of
the issue, (inputs + 2) x largest tensor + 600 MB, against warmstart's peak.
Each tool runs with one torch thread (warmstart's default; mergekit's
``--num-threads 1``) and with torch's default threads (``warmstart merge
--threads 0``; mergekit as it comes): the rows warmstart, mergekit-1,
warmstart-t and mergekit.
Finally the two outputs are compared tensor by tensor: both accumulate in
fp32 in a different order, so they must agree within a few fp32 units in
the last place of the inputs' magnitude.

mergekit is installed by this script, by package name, into its own virtual
environment in the warmstart cache, shared with the depth benchmark and
reused while it works (built in a temporary sibling and renamed into place,
under a lock): first the CPU build of torch, pinned, so that pip never pulls
a CUDA build; then mergekit.

Usage: python benchmarks/merge_vs_mergekit.py [--repeats 3] [--noise 0.01] [--setup-only]
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import sys
import tempfile
import zlib
from pathlib import Path

from mergekit_env import ensure_mergekit, mergekit_command, require_time, timed

N_INPUTS = 3


def make_copies(src: Path, work: Path, noise: float) -> list[Path]:
    """Three noisy copies of `src`, written with warmstart's streaming engine."""
    import torch

    from warmstart.checkpoint.reader import Checkpoint
    from warmstart.plan import Plan, Ref, Step, execute

    ck = Checkpoint(src)
    out = []
    for seed in range(1, N_INPUTS + 1):
        path = work / f"copy{seed}"
        out.append(path)
        if (path / "config.json").exists():
            continue

        def perturb(x, _key=0):
            g = torch.Generator().manual_seed(_key)
            x = x.float()
            return x + noise * float(x.std()) * torch.randn(x.shape, generator=g)

        steps = [Step(n, ck.info(n).shape, ck.info(n).dtype, (Ref(0, n),),
                      functools.partial(perturb, _key=seed * 2**32 + zlib.crc32(n.encode()))) for n in ck.names()]
        execute(Plan([ck], steps), path, config=ck.config, copy_files=ck.extra_files(), progress=True,
                desc=f"copy {seed}")
    return out


def compare(ours: Path, theirs: Path, inputs: list[Path]) -> tuple[int, float, list[str]]:
    """Tensor-by-tensor comparison; returns (tensors compared, worst error in fp32 ulps of the inputs, problems)."""
    from warmstart.checkpoint.reader import Checkpoint

    a, b = Checkpoint(ours), Checkpoint(theirs)
    ins = [Checkpoint(p) for p in inputs]
    problems = [f"{n}: only in {'warmstart' if n in a else 'mergekit'}" for n in sorted(set(a.names()) ^ set(b.names()))]
    worst = 0.0
    count = 0
    for n in sorted(set(a.names()) & set(b.names())):
        x, y = a.get(n), b.get(n)
        if x.dtype != y.dtype or x.shape != y.shape:
            problems.append(f"{n}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
            continue
        scale = max(float(c.get(n).abs().max()) for c in ins)
        ulps = float((x.double() - y.double()).abs().max()) / (scale * 2.0**-24) if scale else 0.0
        worst = max(worst, ulps)
        count += 1
    return count, worst, problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each tool (after one warm-up each)")
    ap.add_argument("--noise", type=float, default=0.01, help="perturbation, relative to each tensor's std")
    ap.add_argument("--work", help="working directory (default: a temporary one, removed at the end)")
    ap.add_argument("--setup-only", action="store_true", help="only install mergekit")
    args = ap.parse_args()
    require_time()
    venv = ensure_mergekit()
    if args.setup_only:
        print(f"mergekit environment ready: {venv.name}")
        return 0

    from warmstart import assets
    from warmstart.checkpoint.reader import Checkpoint

    src = assets.smollm2()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="merge-vs-mergekit-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        inputs = make_copies(src, work, args.noise)
        recipe = work / "linear.yml"
        recipe.write_text("merge_method: linear\ndtype: float32\nmodels:\n" + "".join(
            f"  - model: {p}\n    parameters:\n      weight: 1.0\n" for p in inputs))
        ours_out, theirs_out = work / "ours", work / "theirs"
        ours = [sys.executable, "-m", "warmstart.cli", "merge", *map(str, inputs), str(ours_out),
                "--method", "mean", "--quiet", "--force"]
        theirs = mergekit_command(venv) + [str(recipe), str(theirs_out), "--copy-tokenizer", "--quiet"]
        theirs_1 = theirs + ["--num-threads", "1"]
        # Both tools with torch's default threads (warmstart-t: --threads 0; mergekit as it
        # comes) and with one thread (warmstart's default; mergekit-1: --num-threads 1).
        ours_t = ours + ["--threads", "0"]
        runs = (("warmstart", ours, ours_out), ("warmstart-t", ours_t, ours_out),
                ("mergekit", theirs, theirs_out), ("mergekit-1", theirs_1, theirs_out))
        results: dict[str, list[tuple[float, int]]] = {name: [] for name, _, _ in runs}
        for rep in range(args.repeats + 1):
            for name, cmd, out in runs:
                shutil.rmtree(out, ignore_errors=True)
                wall, rss, _ = timed(cmd, work / f"{name}-{rep}.log")
                label = "warm-up" if rep == 0 else f"run {rep}"
                print(f"{name:10s} {label:8s} wall {wall:6.2f} s   peak RSS {rss / 2**20:7.0f} MiB", flush=True)
                if rep:
                    results[name].append((wall, rss))
        med = {k: (statistics.median(w for w, _ in v), statistics.median(r for _, r in v)) for k, v in results.items()}
        ck = Checkpoint(inputs[0])
        largest = max(ck.info(n).nbytes for n in ck.names())
        bound = (N_INPUTS + 2) * largest + 600 * 10**6
        print(f"\nmedians over {args.repeats} runs (3 inputs of {sum(ck.info(n).nbytes for n in ck.names()) / 1e6:.0f} MB):")
        for k, (w, r) in med.items():
            print(f"  {k:10s} wall {w:6.2f} s   peak RSS {r / 2**20:7.0f} MiB")
        wo, ro = med["warmstart"]
        for ours_k, k in (("warmstart", "mergekit"), ("warmstart", "mergekit-1"), ("warmstart-t", "mergekit")):
            (wa, ra), (wm, rm) = med[ours_k], med[k]
            print(f"ratio {ours_k} / {k}: wall {wa / wm:.2f}x, peak RSS {ra / rm:.2f}x")
        print(f"memory bound (inputs + 2) x largest tensor ({largest / 2**20:.0f} MiB) + 600 MB = {bound / 2**20:.0f} MiB;"
              f" warmstart's peak {ro / 2**20:.0f} MiB: {'within' if ro <= bound else 'OVER'}")
        count, worst, problems = compare(ours_out, theirs_out, inputs)
        print(f"outputs: {count} tensors compared, largest difference {worst:.2f} fp32 ulps of the inputs' magnitude"
              + ("" if not problems else f"; {len(problems)} problems: {problems[:5]}"))
        ok = not problems and worst <= 4
        print("equal within fp32 rounding" if ok else "NOT equal within fp32 rounding")
        return 0 if ok else 1
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
