"""WSM: merging a constant-learning-rate window against a real decay of the same length.

"WSM: Decay-Free Learning Rate Schedule via Checkpoint Merging for LLM
Pre-training" claims that merging the checkpoints of the last stretch of a
constant-learning-rate run matches (or beats) decaying the learning rate
over that stretch. This script tests that claim with the project's own
training loop (:func:`warmstart.bench.train.train`) on real text (the
Shakespeare corpus, a 2048-token BPE trained here):

- **constant**: linear warmup, then a constant learning rate to step T; a
  checkpoint every ``interval`` steps over the last ``window`` steps.
- **decay**: the same run (same seed, data order and warmup) whose last
  ``window`` steps decay the learning rate to 0 with ``--shape``; it resumes
  from the constant run's saved state at step T - window (the two are the
  same run up to there), so its first steps are not recomputed.
- **wsm**: ``warmstart merge --method wsm --wsm-shape SHAPE --input-steps ...`` over
  the constant run's window checkpoints (oldest = step T - window).
- **mean**: a plain ``mean`` of the same window, for reference.

Each is evaluated on the same held-out windows (eval loss = mean next-token
cross-entropy). Repeated over ``--seeds`` seeds; the script prints every
figure, the medians and the gap wsm - decay (negative: wsm is better).

Usage: python benchmarks/merge_wsm.py [--seeds 2] [--steps 800] [--window 160] [--interval 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOCAB = 2048


def corpus_tokens(vocab: int = VOCAB):
    """(train, held-out) token arrays and the tokenizer file, built once into the cache."""
    from warmstart import assets

    root = assets.cache_dir() / "bench-merge-wsm" / f"shakespeare-bpe{vocab}"
    files = assets.shakespeare_files()
    if not (root / "train.npy").exists():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=root.parent if root.parent.exists() else None))
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train([str(f) for f in files], trainer)
        held = files[::10]  # every tenth text held out
        train_files = [f for f in files if f not in held]

        def encode(paths):
            ids = []
            for p in paths:
                ids.extend(tok.encode(p.read_text(encoding="utf-8", errors="replace")).ids)
            return np.asarray(ids, dtype=np.uint16)

        np.save(tmp / "train.npy", encode(train_files))
        np.save(tmp / "heldout.npy", encode(held))
        tok.save(str(tmp / "tokenizer.json"))
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(root)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return np.load(root / "train.npy", mmap_mode="r"), np.load(root / "heldout.npy", mmap_mode="r"), root


def eval_dir(path: Path, heldout, settings: dict) -> float:
    import torch
    import transformers as tf
    from accelerate import Accelerator

    from warmstart.bench.train import eval_offsets, evaluate

    model = tf.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    offsets = eval_offsets(len(heldout), settings["seq_len"], settings["eval_batches"] * settings["batch_size"])
    return evaluate(model, heldout, offsets, settings["seq_len"], settings["batch_size"], Accelerator(cpu=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=800, help="total updates T")
    ap.add_argument("--window", type=int, default=160, help="decay length = merge window, in updates")
    ap.add_argument("--interval", type=int, default=20, help="updates between window checkpoints")
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--shape", default="linear", help="decay shape (linear, cosine, 1-sqrt)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fair on a shared machine)")
    ap.add_argument("--work", help="working directory (default: a temporary one, removed at the end)")
    args = ap.parse_args()
    if args.window % args.interval or args.window >= args.steps - args.warmup or 2 * args.window >= args.steps:
        ap.error("--window must be a multiple of --interval, fit after the warmup and be under half the run")

    import torch

    from warmstart.bench.train import train
    from warmstart.cli import main as cli

    torch.set_num_threads(args.threads)

    train_tok, heldout, tok_root = corpus_tokens()
    print(f"corpus: {len(train_tok):,} training tokens, {len(heldout):,} held-out tokens, BPE vocab {VOCAB}")
    T, D, m, W = args.steps, args.window, args.interval, args.warmup
    config = dict(model_type="llama", vocab_size=VOCAB, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                  num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 32),
                  num_key_value_heads=max(1, args.hidden // 32), max_position_embeddings=args.seq_len,
                  tie_word_embeddings=True)
    settings = dict(batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, eval_every=T,
                    eval_batches=args.eval_batches, weight_decay=0.1, cpu=True)
    constant = f"warmup:linear:{W} > stable:{T - W}"
    decay = f"warmup:linear:{W} > stable:{T - W - D} > decay:{args.shape}:{D}"
    window_steps = list(range(T - D, T + 1, m))
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="merge-wsm-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"model: llama hidden {args.hidden}, {args.layers} layers, tied; batch {args.batch_size} x {args.seq_len}, "
          f"peak lr {args.lr}; T={T}, warmup {W}")
    print(f"constant: {constant}\ndecay:    {decay}\nwsm window: {len(window_steps)} checkpoints, steps "
          f"{window_steps[0]}..{window_steps[-1]} every {m}")
    rows = []
    try:
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            dir_c, dir_d = work / f"s{seed}-constant", work / f"s{seed}-decay"
            branched = []

            def branch(row, dir_c=dir_c, dir_d=dir_d, branched=branched):
                # The decay run equals the constant run up to step T - D: instead of
                # recomputing those steps, it resumes from the constant run's state there.
                if row["step"] == T - D + 1 and not branched:
                    dir_d.mkdir(parents=True, exist_ok=True)
                    shutil.copytree(dir_c / "state", dir_d / "state")
                    shutil.copy2(dir_c / "log.jsonl", dir_d / "log.jsonl")
                    branched.append(True)

            run_c = train(config, train_tok, heldout, out_dir=dir_c, steps=T, schedule=constant, save_every=m,
                          checkpoint_every=T - D, seed=seed, progress=False, force=True, on_step=branch,
                          **settings)
            run_d = train(config, train_tok, heldout, out_dir=dir_d, steps=T, schedule=decay, seed=seed,
                          progress=False, resume=True, **settings)
            if run_d.resumed_from != T - D:
                print(f"decay run did not branch at step {T - D}", file=sys.stderr)
                return 1
            ckpts = [work / f"s{seed}-constant" / "checkpoints" / f"step-{s:06d}" for s in window_steps[:-1]]
            ckpts.append(run_c.final_dir)
            for c in ckpts:  # the tokenizer travels with them, as it would with any real run
                shutil.copy2(tok_root / "tokenizer.json", c / "tokenizer.json")
            steps_arg = ",".join(map(str, window_steps))
            out_wsm, out_mean = work / f"s{seed}-wsm", work / f"s{seed}-mean"
            rc = cli(["merge", *map(str, ckpts), str(out_wsm), "--method", "wsm", "--wsm-shape", args.shape,
                      "--input-steps", steps_arg, "--quiet", "--force"])
            rc |= cli(["merge", *map(str, ckpts), str(out_mean), "--method", "mean", "--quiet", "--force"])
            if rc:
                print("merge failed", file=sys.stderr)
                return 1
            row = {"seed": seed, "constant": run_c.final_eval_loss, "decay": run_d.final_eval_loss,
                   "wsm": eval_dir(out_wsm, heldout, settings), "mean": eval_dir(out_mean, heldout, settings)}
            rows.append(row)
            print(f"seed {seed}: constant {row['constant']:.4f}  decay {row['decay']:.4f}  wsm {row['wsm']:.4f}  "
                  f"mean {row['mean']:.4f}  (wsm - decay {row['wsm'] - row['decay']:+.4f}; "
                  f"{time.perf_counter() - t0:.0f} s)", flush=True)
            for d in work.glob(f"s{seed}-*"):
                shutil.rmtree(d, ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in rows) for k in ("constant", "decay", "wsm", "mean")}
    gaps = [r["wsm"] - r["decay"] for r in rows]
    print(f"\nmedian eval loss over {len(rows)} seeds: constant {med['constant']:.4f}, decay {med['decay']:.4f}, "
          f"wsm {med['wsm']:.4f}, mean of window {med['mean']:.4f}")
    print(f"wsm - decay: median {statistics.median(gaps):+.4f} (per seed: {', '.join(f'{g:+.4f}' for g in gaps)}); "
          f"wsm beats constant by {med['constant'] - med['wsm']:.4f}, decay beats constant by "
          f"{med['constant'] - med['decay']:.4f}")
    print(json.dumps({"rows": rows, "median": med, "args": vars(args)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
