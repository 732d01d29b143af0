"""Fresh-layer initialization, measured: LLaMA Pro's new blocks started at zero, IDInit or LSUV, trained the same.

Miniature scale on CPU, with the bench's own data, training loop and
accounting (:mod:`warmstart.bench`):

1. A dense Llama **source** (``--layers`` blocks) is pretrained once (seed 0)
   on Shakespeare.
2. It is grown with ``expand`` (LLaMA Pro, "LLaMA Pro: Progressive LLaMA with
   Block Expansion") to ``--grown-layers`` blocks, the new blocks' output
   projections started by each registered choice of ``--new-block-init``:

   - ``zero``: LLaMA Pro's zeros (exact: the grown model computes the source's function);
   - ``idinit``: IDInit's IDIZ_eps, an eps-scaled identity-like matrix (eps 1e-6);
   - ``lsuv``: a seeded random orthogonal matrix scaled on a calibration corpus
     (the training split's text, ``--calib-batches`` x 4 x 64 tokens) so each
     new branch's output std is the target (``--lsuv-targets``, one arm each; default
     warmstart's 0.02) x the residual stream's (typical token RMS).

3. Every arm trains all parameters for the same steps, learning rate,
   schedule, batch order and held-out windows (seeds 0..N-1: the batch order
   and lsuv's random matrices follow the seed). Reported: the held-out loss at
   step 0 and at the end, and the steps each arm needs to reach the zero arm's
   final loss (interpolated between evaluations), medians over seeds. LSUV's
   calibration forwards are counted as FLOPs (an upper bound: full forward
   passes, two per new block) next to the training FLOPs.

It prints a markdown table and writes ``curves.png`` and ``summary.json`` under ``--out``.

    nice -n 10 python benchmarks/fresh_layers.py --out runs/fresh-layers [--seeds 3] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ARMS = ("zero", "idinit", "lsuv")
CALIB_BATCH, CALIB_SEQ = 4, 64


def source_config(vocab: int, seq_len: int, hidden: int, layers: int) -> dict:
    return {"model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 4 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": max(1, hidden // 32),
            "num_key_value_heads": max(1, hidden // 64), "max_position_embeddings": max(seq_len, CALIB_SEQ),
            "tie_word_embeddings": True, "rope_theta": 10000.0, "rms_norm_eps": 1e-5}


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec=".4f"):
    return "never" if x == math.inf else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--source-steps", type=int, default=500)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--grown-layers", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--source-lr", type=float, default=3e-3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--eval-batches", type=int, default=4)
    ap.add_argument("--max-corpus-bytes", type=int, default=2_000_000)
    ap.add_argument("--lsuv-targets", type=float, nargs="+", default=None,
                    help="one lsuv arm per target, named lsuv-T (default: warmstart's target, 0.02)")
    ap.add_argument("--calib-batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    args = ap.parse_args()

    import torch
    import transformers

    from warmstart.api import grow
    from warmstart.bench import data as D
    from warmstart.bench.metrics import INF, cost_to_target, evals
    from warmstart.bench.train import read_log, train
    from warmstart.ops.lsuv import DEFAULT_TARGET

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    files = D.corpus_files("shakespeare")
    tokens = D.prepare({"main": files}, vocab_size=args.vocab, max_bytes=args.max_corpus_bytes)["main"]
    common = dict(batch_size=args.batch_size, seq_len=args.seq_len, schedule=None, eval_every=args.eval_every,
                  eval_batches=args.eval_batches, cpu=True, progress=False)
    cfg = source_config(tokens.vocab_size, args.seq_len, args.hidden, args.layers)
    src = train(cfg, tokens.train, tokens.val, out_dir=out / "source", steps=args.source_steps, seed=0,
                resume=True, extra_files=tokens.tokenizer_files(), lr=args.source_lr, **common)
    print(f"source: hidden {args.hidden}, {args.layers} layers, {src.params} params, {args.source_steps} steps, "
          f"eval loss {src.final_eval_loss:.4f}", flush=True)

    arms = [a for a in ARMS if a in args.arms and a != "lsuv"]
    lsuv_targets = {}
    if "lsuv" in args.arms:
        for t in args.lsuv_targets or [DEFAULT_TARGET]:
            lsuv_targets[f"lsuv-{t:g}"] = t
    arms += list(lsuv_targets)
    results: dict[str, list[dict]] = {a: [] for a in arms}
    for seed in range(args.seeds):
        for arm in arms:
            init = out / f"seed-{seed}" / f"{arm}-init"
            init.parent.mkdir(parents=True, exist_ok=True)
            extra = {}
            if arm in lsuv_targets:
                extra = dict(corpus=[str(f) for f in files], batches=args.calib_batches, batch_size=CALIB_BATCH,
                             seq_len=CALIB_SEQ, lsuv_target=lsuv_targets[arm])
            t0 = time.perf_counter()
            if not (init / "config.json").exists():
                g = grow(src.final_dir, init, layers=args.grown_layers, depth_method="expand", new_block_init=arm.split("-")[0],
                         seed=seed, force=True, **extra)
                notes = g.transform.notes
                (out / f"seed-{seed}" / f"{arm}-init.notes").write_text("\n".join(notes))
            grow_s = time.perf_counter() - t0
            r = train(init, tokens.train, tokens.val, out_dir=out / f"seed-{seed}" / arm, steps=args.steps,
                      seed=seed, resume=True, save_final=False, lr=args.lr, **common)
            calib_flops = 0.0
            if arm in lsuv_targets:  # upper bound: a full forward per pass, two passes per new block
                new = args.grown_layers - args.layers
                calib_flops = 2.0 * r.flops_params * args.calib_batches * CALIB_BATCH * CALIB_SEQ * 2 * new
            results[arm].append({"seed": seed, "rows": read_log(r.log_path), "final": r.final_eval_loss,
                                 "first": r.first_eval_loss, "flops": r.flops, "calib_flops": calib_flops,
                                 "grow_s": grow_s, "time": r.time})
            print(f"seed {seed} {arm}: first {r.first_eval_loss:.4f} final {r.final_eval_loss:.4f} "
                  f"(grow {grow_s:.1f} s, train {r.time:.0f} s)", flush=True)

    summary = {"source": {"params": src.params, "final_eval_loss": src.final_eval_loss, "steps": args.source_steps},
               "args": vars(args), "arms": {}}
    lines = ["| new blocks | held-out loss at step 0 | final held-out loss | steps to zero's final loss "
             "(per seed) | over zero's own steps to it (median of per-seed ratios) | final minus zero's final "
             "(per seed) | calibration FLOPs / training FLOPs |", "|---|---|---|---|---|---|---|"]
    for arm in arms:
        runs = results[arm]
        reach, ratios, diffs = [], [], []
        for a, z in zip(runs, results.get("zero", runs)):
            diffs.append(a["final"] - z["final"])
            reach.append(cost_to_target(a["rows"], z["final"], "step"))
            ratios.append(reach[-1] / cost_to_target(z["rows"], z["final"], "step") if reach[-1] != INF else INF)
        first, final = median([r["first"] for r in runs]), median([r["final"] for r in runs])
        med_reach = median(reach)
        frac = median(ratios)
        calib = median([r["calib_flops"] / r["flops"] for r in runs])
        summary["arms"][arm] = {"first": first, "final": final, "finals": [r["final"] for r in runs],
                                "steps_to_zero_final": reach, "median_steps_to_zero_final": med_reach,
                                "over_zero_steps": ratios, "median_over_zero_steps": frac,
                                "final_minus_zero": diffs,
                                "calib_over_train_flops": calib}
        lines.append(f"| {arm} | {first:.4f} | {final:.4f} | {fmt(med_reach, '.0f')} "
                     f"({', '.join(fmt(x, '.0f') for x in reach)}) | {fmt(frac, '.2f')} | "
                     f"{median(diffs):+.4f} ({', '.join(f'{x:+.4f}' for x in diffs)}) | "
                     f"{calib:.4f} |")
    print()
    print(f"source: {src.params:,} params, {args.layers} layers, {args.source_steps} steps, eval loss "
          f"{src.final_eval_loss:.4f}; expand to {args.grown_layers} layers; arms: {args.steps} steps at lr "
          f"{args.lr:g} (cosine), median of {args.seeds} seeds")
    print()
    print("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plot(results, src, out / "curves.png", evals)
    print(f"\n{out / 'curves.png'}; wall {time.time() - t_start:.0f} s")


def plot(results, src, path: Path, evals) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, runs in results.items():
        rows = evals(runs[0]["rows"])
        ax.plot([r["step"] for r in rows], [r["eval_loss"] for r in rows], label=arm)
    ax.axhline(src.final_eval_loss, color="gray", ls=":", label="source")
    ax.set_xlabel("training steps after expand")
    ax.set_ylabel("held-out loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("expand: new blocks started at zero, IDInit or LSUV (seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
