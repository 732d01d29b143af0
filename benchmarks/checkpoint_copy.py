"""Streaming copy of a large checkpoint: wall time and peak RSS next to a plain file copy.

The script writes a synthetic Llama-shaped checkpoint of at least 4 GB (never
committed; generated tensor by tensor with the engine itself), then, in the
same run and for several repeats, measures under ``/usr/bin/time -v``:

- ``cp -r``: a plain copy of the same bytes (the floor);
- ``warmstart convert``: the engine's unchanged copy (byte-range copies);
- ``warmstart convert --dtype bf16``: every tensor decoded, cast and re-encoded
  (the path that computed operations take).

It prints medians and the ratios to ``cp``, and checks the memory bound of the
foundation issue: peak RSS < 3 x the largest tensor + 600 MB.

    python benchmarks/checkpoint_copy.py [--gb 4.3] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_checkpoint(path: Path, gb: float, tensor_mb: int) -> int:
    """A llama-shaped directory of `gb` gigabytes in fp32, tensors of `tensor_mb` MB. Returns the largest tensor's bytes."""
    import torch

    from warmstart.checkpoint.writer import OutputTensor, write_model

    side = int((tensor_mb * 1e6 / 4) ** 0.5)
    count = int(gb * 1e9 // (side * side * 4)) + 1
    hidden = side
    tensors = []
    for i in range(count):
        def compute(i=i):
            g = torch.Generator().manual_seed(i)
            return torch.randn(side, side, generator=g)

        tensors.append(OutputTensor(f"model.layers.{i}.mlp.up_proj.weight", "F32", (side, side), compute=compute))
    config = {"model_type": "llama", "hidden_size": hidden, "num_hidden_layers": count, "intermediate_size": side,
              "num_attention_heads": 1, "vocab_size": 1}
    write_model(path, tensors, config=config, progress=True, desc="generating")
    return side * side * 4


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a command under /usr/bin/time -v."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    rss_kb = next(int(line.split(":")[1]) for line in proc.stderr.splitlines() if "Maximum resident set size" in line)
    return wall, rss_kb / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=4.3, help="checkpoint size in GB (default 4.3)")
    ap.add_argument("--tensor-mb", type=int, default=64, help="size of each tensor in MB (default 64)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="where to put the synthetic checkpoint (default: a temp dir)")
    args = ap.parse_args()
    if not Path("/usr/bin/time").exists():
        raise SystemExit("needs /usr/bin/time (Debian package 'time')")
    work = Path(tempfile.mkdtemp(prefix="ws-bench-", dir=args.workdir))
    warmstart = [sys.executable, "-m", "warmstart.cli"]
    try:
        src = work / "src"
        largest = make_checkpoint(src, args.gb, args.tensor_mb)
        total = sum(p.stat().st_size for p in src.iterdir())
        print(f"checkpoint: {total / 1e9:.2f} GB, {len(list(src.glob('*.safetensors')))} shards, "
              f"largest tensor {largest / 1e6:.0f} MB")
        arms = {
            "cp -r": lambda out: ["cp", "-r", str(src), str(out)],
            "warmstart convert": lambda out: warmstart + ["convert", str(src), str(out), "--quiet"],
            "warmstart convert --dtype bf16": lambda out: warmstart + ["convert", str(src), str(out), "--quiet", "--dtype", "bf16"],
        }
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in arms}
        for r in range(args.repeats):
            for name, cmd in arms.items():  # interleaved, so drift hits every arm alike
                out = work / "out"
                results[name].append(timed(cmd(out)))
                shutil.rmtree(out)
        bound = 3 * largest / 2**20 + 600
        base_wall = statistics.median(w for w, _ in results["cp -r"])
        print(f"\n{'arm':<32} {'wall s (median)':>16} {'peak RSS MB':>12} {'wall / cp':>10}")
        rows = {}
        for name, runs in results.items():
            wall = statistics.median(w for w, _ in runs)
            rss = statistics.median(m for _, m in runs)
            rows[name] = {"wall_s": wall, "peak_rss_mb": rss, "wall_ratio_to_cp": wall / base_wall,
                          "runs": runs}
            print(f"{name:<32} {wall:>16.2f} {rss:>12.0f} {wall / base_wall:>10.2f}")
        print(f"\nmemory bound (3 x largest tensor + 600 MB): {bound:.0f} MB")
        ok = all(rows[n]["peak_rss_mb"] < bound for n in arms if n.startswith("warmstart"))
        print("bound held" if ok else "BOUND EXCEEDED")
        print(json.dumps({"checkpoint_gb": total / 1e9, "largest_tensor_mb": largest / 1e6, "bound_mb": bound,
                          "arms": rows}, indent=1))
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
