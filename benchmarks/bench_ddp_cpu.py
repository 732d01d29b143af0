"""Two processes on one CPU follow the same loss curve as one process at the same global batch.

Runs ``warmstart.bench.train.train`` on a small Llama over the Shakespeare
tokens twice: once in this process, once under ``torchrun --nproc_per_node
2`` with ``Accelerator(cpu=True)`` (DDP over gloo; each rank takes half of
every global batch and gradients are averaged). Prints the largest
per-step difference in train loss and in eval loss, and the wall time of
each run.

    .venv/bin/python benchmarks/bench_ddp_cpu.py --steps 40

(``accelerate launch --num_processes 2 --cpu`` starts a single process on a
2-core machine, hence torchrun.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = dict(model_type="llama", vocab_size=2048, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128, tie_word_embeddings=False)


def settings(steps: int) -> dict:
    return dict(steps=steps, batch_size=16, seq_len=128, lr=3e-3, eval_every=10, eval_batches=4, seed=0,
                schedule=f"cosine(warmup={max(1, steps // 10)}, min_ratio=0.1)")


def run(tokens_dir: Path, out: Path, steps: int, accelerator=None):
    import numpy as np

    from warmstart.bench.train import train

    tr = np.load(tokens_dir / "train.npy", mmap_mode="r")
    va = np.load(tokens_dir / "val.npy", mmap_mode="r")
    return train(CONFIG, tr, va, out_dir=out, progress=False, save_final=False, accelerator=accelerator,
                 cpu=True, **settings(steps))


def worker(args) -> None:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    run(Path(args.tokens), Path(args.out), args.steps, accelerator=acc)
    acc.wait_for_everyone()
    acc.end_training()  # tears down the gloo process group so torchrun exits cleanly


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tokens", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    import numpy as np
    import torch

    from warmstart import assets
    from warmstart.bench import data as D
    from warmstart.bench.train import read_log

    tok = D.prepare({"main": assets.shakespeare_files()}, vocab_size=2048)["main"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "train.npy", np.asarray(tok.train))
        np.save(tmp / "val.npy", np.asarray(tok.val))
        torch.set_num_threads(1)  # the same per-process thread count as each torchrun rank
        t0 = time.perf_counter()
        one = run(tmp, tmp / "one", args.steps)
        t_one = time.perf_counter() - t0
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               __file__, "--worker", "--tokens", str(tmp), "--out", str(tmp / "two"), "--steps", str(args.steps)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        t_two = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            raise SystemExit(f"torchrun failed with exit code {proc.returncode}")
        a, b = read_log(one.log_path), read_log(tmp / "two" / "log.jsonl")
        settings_two = json.loads((tmp / "two" / "settings.json").read_text())
    assert [r["step"] for r in a] == [r["step"] for r in b]
    d_train = max(abs(x["train_loss"] - y["train_loss"]) for x, y in zip(a[1:], b[1:]))
    pairs = [(x["eval_loss"], y["eval_loss"]) for x, y in zip(a, b) if x.get("eval_loss") is not None]
    d_eval = max(abs(x - y) for x, y in pairs)
    print(f"steps: {args.steps}, global batch 16 x 128 tokens; processes: 1 vs {settings_two['processes']} (gloo)")
    print(f"final eval loss: 1 process {pairs[-1][0]:.5f}, 2 processes {pairs[-1][1]:.5f}")
    print(f"largest per-step difference: train loss {d_train:.2e}, eval loss {d_eval:.2e}")
    print(f"loss fell by {a[0]['eval_loss'] - pairs[-1][0]:.3f} nats over the run (the scale of 'noise' to compare)")
    print(f"wall time: 1 process {t_one:.1f} s, torchrun 2 processes {t_two:.1f} s (shared machine: inflated)")


if __name__ == "__main__":
    main()
