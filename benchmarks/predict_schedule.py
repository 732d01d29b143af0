"""Loss-curve laws on real runs: fit a cosine run, predict a WSD run's final loss.

"Scaling Law with Learning Rate Annealing" and "A Multi-Power Law for Loss
Curve Prediction Across Learning Rate Schedules" claim that the loss curve
of one schedule predicts the loss of another. This script trains the same
small llama (same seed, same data order) twice with the project's training
loop (:func:`warmstart.bench.train.train`) on the Shakespeare corpus:

- **cosine**: linear warmup, cosine decay to ``--min-ratio`` (the fitted run);
- **wsd**: the same warmup, constant, then a 1-sqrt decay to 0 over the last
  ``--decay-frac`` of the steps (the run to predict).

It fits both laws to the cosine run's eval losses with
:func:`warmstart.schedules.loss_law.predict` (the law with the lower fit
error is the prediction) and compares the predicted final eval loss of the
WSD run with the measured one. Baseline, side by side: "the WSD run ends
where the cosine run ended" (the cosine run's final loss). Repeated over
``--seeds``; prints every figure, then medians.

Usage: python benchmarks/predict_schedule.py [--seeds 3] [--steps 800] [--eval-every 20]
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--min-ratio", type=float, default=0.1, help="cosine run's final lr / peak")
    ap.add_argument("--decay-frac", type=float, default=0.2, help="WSD decay length / steps")
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--cpu", action="store_true", help="train on the CPU even if an accelerator is present")
    ap.add_argument("--work", help="working directory (default: a temporary one, removed at the end)")
    args = ap.parse_args()

    import numpy as np

    from warmstart import assets
    from warmstart.bench.data import prepare
    from warmstart.bench.train import train
    from warmstart.schedules import parse
    from warmstart.schedules.loss_law import leading_warmup, predict, read_log

    data = prepare({"shakespeare": assets.shakespeare_files()}, vocab_size=args.vocab)["shakespeare"]
    print(f"corpus: {len(data.train):,} training tokens, {len(data.val):,} held-out tokens, BPE vocab {data.vocab_size}")
    T, W = args.steps, args.warmup
    fit_spec = f"peak={args.lr}; cosine(total={T}, warmup={W}, min_ratio={args.min_ratio})"
    target_spec = f"peak={args.lr}; wsd(total={T}, warmup={W}, decay_frac={args.decay_frac}, shape=1-sqrt)"
    fit_sched, target_sched = parse(fit_spec), parse(target_spec)
    config = dict(model_type="llama", vocab_size=data.vocab_size, hidden_size=args.hidden,
                  intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
                  num_attention_heads=max(1, args.hidden // 32), num_key_value_heads=max(1, args.hidden // 32),
                  max_position_embeddings=args.seq_len, tie_word_embeddings=True)
    settings = dict(batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, eval_every=args.eval_every,
                    eval_batches=args.eval_batches, cpu=True if args.cpu else None, save_final=False)
    print(f"model: llama hidden {args.hidden}, {args.layers} layers; batch {args.batch_size} x {args.seq_len}; "
          f"{T} steps, eval every {args.eval_every}")
    print(f"fit on:  {fit_sched.to_string()}\npredict: {target_sched.to_string()}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="predict-schedule-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            runs = {}
            for name, spec in (("cosine", fit_spec), ("wsd", target_spec)):
                runs[name] = train(config, data.train, data.val, out_dir=work / f"s{seed}-{name}", steps=T,
                                   schedule=spec, seed=seed, progress=False, force=True, **settings)
            t_train = time.perf_counter() - t0
            t1 = time.perf_counter()
            pred = predict(read_log(runs["cosine"].log_path), fit_sched, target_sched)
            t_fit = time.perf_counter() - t1
            per_law = {}
            n = target_sched.num_steps
            lrs = np.array(target_sched.lrs(n))
            for fit in pred.fits:
                per_law[fit.law] = float(fit.predict(lrs, [n], leading_warmup(target_sched))[0])
            actual = runs["wsd"].final_eval_loss
            cosine_final = runs["cosine"].final_eval_loss
            row = {
                "seed": seed, "actual_wsd": actual, "cosine_final": cosine_final, "predicted": pred.final_loss,
                "law": pred.best.law, "fit_rmse": {f.law: f.rmse for f in pred.fits}, "per_law": per_law,
                "err_pred": abs(pred.final_loss - actual) / actual, "err_baseline": abs(cosine_final - actual) / actual,
                "train_s": t_train, "fit_s": t_fit,
            }
            rows.append(row)
            laws = "  ".join(f"{k} {v:.4f} (rmse {row['fit_rmse'][k]:.4f})" for k, v in per_law.items())
            print(f"seed {seed}: wsd actual {actual:.4f}; predicted {pred.final_loss:.4f} ({pred.best.law}, "
                  f"error {100 * row['err_pred']:.2f}%); baseline cosine final {cosine_final:.4f} "
                  f"(error {100 * row['err_baseline']:.2f}%); laws: {laws}; train {t_train:.0f} s, fit {t_fit:.1f} s",
                  flush=True)
            for d in work.glob(f"s{seed}-*"):
                shutil.rmtree(d, ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    med_pred = statistics.median(r["err_pred"] for r in rows)
    med_base = statistics.median(r["err_baseline"] for r in rows)
    print(f"\nmedian relative error of the WSD final loss over {len(rows)} seeds: law {100 * med_pred:.2f}%, "
          f"baseline (cosine's final loss) {100 * med_base:.2f}%; ratio baseline/law "
          f"{med_base / med_pred if med_pred else float('inf'):.2f}")
    for law in rows[0]["per_law"]:
        med = statistics.median(abs(r["per_law"][law] - r["actual_wsd"]) / r["actual_wsd"] for r in rows)
        print(f"  {law} law alone: median error {100 * med:.2f}%")
    print(json.dumps({"rows": rows, "args": vars(args)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
