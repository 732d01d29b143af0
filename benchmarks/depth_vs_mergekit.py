"""SOLAR depth up-scaling (dus) of SmolLM2-135M, 30 -> 48 layers: warmstart vs mergekit.

Both tools build the same model: layers 0..23 of one copy of SmolLM2 followed
by layers 6..29 of another (SOLAR's recipe with 6 layers dropped at the seam
of each copy). warmstart runs ``warmstart grow --depth-method dus``; mergekit
runs its ``passthrough`` merge method on the same two slices. Each run is a
separate process measured with ``/usr/bin/time -v`` (wall time and peak
resident memory); the two tools alternate, the first run of each is a warm-up
that fills the page cache and is not counted, and the script prints the
medians and the ratios ours / mergekit's. Finally the two outputs are compared
tensor for tensor: they must be bit-identical.

mergekit is installed by this script, by package name, into its own virtual
environment in the warmstart cache (shared with the merge benchmark and reused
while it works): first the CPU build of torch, pinned so that pip never pulls a
CUDA build, then mergekit.

Usage: python benchmarks/depth_vs_mergekit.py [--repeats 5] [--setup-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from mergekit_env import ensure_mergekit, mergekit_command, require_time, timed

KEEP = 24  # layers taken from each copy: 0..23 and 6..29


def compare_outputs(ours: Path, theirs: Path) -> tuple[int, list[str]]:
    """Tensor-for-tensor comparison of two model directories; returns (count, problems)."""
    import torch

    from warmstart.checkpoint.reader import Checkpoint

    a, b = Checkpoint(ours), Checkpoint(theirs)
    problems = []
    names_a, names_b = set(a.names()), set(b.names())
    for n in sorted(names_a ^ names_b):
        problems.append(f"{n}: only in {'warmstart' if n in names_a else 'mergekit'}")
    count = 0
    for n in sorted(names_a & names_b):
        ia, ib = a.info(n), b.info(n)
        if ia.dtype != ib.dtype or tuple(ia.shape) != tuple(ib.shape):
            problems.append(f"{n}: {ia.dtype}{list(ia.shape)} vs {ib.dtype}{list(ib.shape)}")
            continue
        if not torch.equal(a.get(n).reshape(-1).view(torch.uint8), b.get(n).reshape(-1).view(torch.uint8)):
            problems.append(f"{n}: bytes differ")
            continue
        count += 1
    cfg_a, cfg_b = a.config, b.config
    if cfg_a.get("num_hidden_layers") != cfg_b.get("num_hidden_layers"):
        problems.append(f"config layers {cfg_a.get('num_hidden_layers')} vs {cfg_b.get('num_hidden_layers')}")
    return count, problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="counted runs of each tool (default 5)")
    ap.add_argument("--setup-only", action="store_true", help="only create the mergekit environment")
    ap.add_argument("--workdir", default=None, help="where outputs go (default: a temporary folder)")
    args = ap.parse_args()

    require_time()
    venv = ensure_mergekit()
    if args.setup_only:
        print(f"mergekit environment ready: {venv.name}")
        return 0

    from warmstart import assets

    src = assets.smollm2()
    layers = json.loads((src / "config.json").read_text())["num_hidden_layers"]
    overlap = layers - KEEP
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="depth-vs-mergekit-"))
    work.mkdir(parents=True, exist_ok=True)
    ours_out, theirs_out = work / "warmstart-dus", work / "mergekit-passthrough"
    recipe = work / "passthrough.yml"
    recipe.write_text(
        "slices:\n"
        f"  - sources:\n      - model: {src}\n        layer_range: [0, {KEEP}]\n"
        f"  - sources:\n      - model: {src}\n        layer_range: [{overlap}, {layers}]\n"
        "merge_method: passthrough\n"
        "dtype: float32\n"
    )
    ours_cmd = [sys.executable, "-m", "warmstart.cli", "grow", str(src), str(ours_out), "--layers", str(2 * KEEP),
                "--depth-method", "dus", "--dus-overlap", str(overlap), "--force", "--quiet"]
    theirs_cmd = mergekit_command(venv) + [str(recipe), str(theirs_out), "--copy-tokenizer"]

    results: dict[str, list[tuple[float, int, float]]] = {"warmstart": [], "mergekit": []}
    print(f"dus {layers} -> {2 * KEEP} layers of SmolLM2-135M (fp32): slices [0, {KEEP}) + [{overlap}, {layers})")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    for r in range(args.repeats + 1):
        for label, cmd, out in (("mergekit", theirs_cmd, theirs_out), ("warmstart", ours_cmd, ours_out)):
            if out.exists():
                shutil.rmtree(out)
            wall, rss, cpu = timed(cmd, work / f"{label}.time.log")
            tag = "warm-up" if r == 0 else f"run {r}"
            print(f"  {tag:8s} {label:10s} {wall:7.2f} s wall  {cpu:7.2f} s CPU  {rss / 1e9:6.3f} GB peak RSS",
                  flush=True)
            if r > 0:
                results[label].append((wall, rss, cpu))

    count, problems = compare_outputs(ours_out, theirs_out)
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in results.items()}
    print()
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'tool':12s} {'wall (s)':>10s} {'CPU (s)':>10s} {'peak RSS (GB)':>14s}   median of {args.repeats} runs")
    for k in ("mergekit", "warmstart"):
        print(f"{k:12s} {med[k][0]:10.2f} {med[k][2]:10.2f} {med[k][1] / 1e9:14.3f}")
    ratio = [med["warmstart"][i] / med["mergekit"][i] for i in range(3)]
    print(f"{'ratio':12s} {ratio[0]:9.3f}x {ratio[2]:9.3f}x {ratio[1]:13.3f}x   "
          "(warmstart / mergekit; target <= 0.5x wall, <= 0.6x peak RSS)")
    print(f"outputs: {count} tensors bit-identical" + (f"; {len(problems)} PROBLEMS:" if problems else ""))
    for p in problems[:20]:
        print(f"  {p}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
