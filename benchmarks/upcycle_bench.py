"""The head start of upcycling, measured: upcycled MoE vs dense continuation vs MoE from scratch.

Miniature scale on CPU, with the bench's own data, training loop and
accounting (:mod:`warmstart.bench`):

1. The dense **source** is either a Llama pretrained once here (seed 0), whose
   FLOPs are counted (reported with and without them), or, with
   ``--source-checkpoint``, a real checkpoint the user already has (for example
   SmolLM2-135M: ``--source-checkpoint smollm2``), whose pretraining is sunk and
   left out. A real checkpoint brings its own tokenizer; the corpus is tokenized
   with it.
2. Arms, each for the same tokens, seeds 0..N-1 (batch order and
   initialization follow the seed):

   - ``dense``: the source continued as it is;
   - ``upcycled``: ``warmstart upcycle`` of the source to Mixtral (fine-grained:
     ``--experts 8 --top-k 2 --granularity 2``, so a token's active MLP has the
     dense MLP's size), router random (seeded);
   - ``drop-upcycled``: the same with Drop-Upcycling ``--drop-ratio 0.5``;
   - ``moe-scratch``: the same Mixtral shape from a random initialization.

   MoE arms train with the router's load-balancing loss (coefficient 0.01,
   ``output_router_logits``); eval loss is the plain next-token loss on the
   same held-out windows for every arm.
3. FLOPs are 6 x active parameters x tokens (:func:`warmstart.bench.train.flops_params`:
   the router and the top-k experts a token uses, not all experts).

It prints a markdown table (medians over seeds) and writes ``curves.png``
(eval loss against tokens and against active FLOPs) and ``summary.json``
under ``--out``.

    python benchmarks/upcycle_bench.py --out runs/upcycle-bench [--seeds 3] [--source-steps 600] [--steps 400]
    python benchmarks/upcycle_bench.py --out runs/upcycle-smollm2 --source-checkpoint smollm2 \
        --steps 40 --batch-size 4 --lr 1e-4 --scratch-lr 1e-3
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

ARMS = ("dense", "upcycled", "drop-upcycled", "moe-scratch")
UPCYCLE = dict(experts=8, top_k=2, granularity=2, aux_loss_coef=0.01)


def source_config(vocab: int, seq_len: int, hidden: int, layers: int) -> dict:
    return {"model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": 4 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": max(1, hidden // 32),
            "num_key_value_heads": max(1, hidden // 64), "max_position_embeddings": seq_len,
            "tie_word_embeddings": True, "rope_theta": 10000.0, "rms_norm_eps": 1e-5}


def moe_module(path: Path):
    """Load an MoE directory for training: fp32, router logits on (so the load-balancing loss is computed)."""
    from warmstart.bench.train import build_model

    net = build_model(path, 0)
    net.config.output_router_logits = True
    return net


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--source-steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate of the arms that start from the source")
    ap.add_argument("--scratch-lr", type=float, default=None,
                    help="peak learning rate of moe-scratch (default: --lr); a random start wants a larger one")
    ap.add_argument("--source-checkpoint", default=None,
                    help="a real HF checkpoint as the dense source (its cost is sunk), or 'smollm2' for the bundled asset")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-batches", type=int, default=4)
    ap.add_argument("--max-corpus-bytes", type=int, default=2_000_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--experts", type=int, default=UPCYCLE["experts"])
    ap.add_argument("--top-k", type=int, default=UPCYCLE["top_k"])
    ap.add_argument("--granularity", type=int, default=UPCYCLE["granularity"],
                    help="fine-grained experts: exact at the start only while top-k picks one copy of every slice, "
                         "which training does not keep; with 1 (whole copies) any top-k choice is the dense MLP")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                    help="arms to train (upcycled and moe-scratch are needed for the ratios)")
    args = ap.parse_args()
    UPCYCLE.update(experts=args.experts, top_k=args.top_k, granularity=args.granularity)

    import torch
    import transformers

    from warmstart.api import upcycle as upcycle_model
    from warmstart.bench import data as D
    from warmstart.bench.metrics import INF, cost_to_target
    from warmstart.bench.moe import balance, expert_load
    from warmstart.bench.train import build_model, eval_offsets, read_log, train

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    common = dict(batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                  schedule=None, eval_every=args.eval_every, eval_batches=args.eval_batches,
                  cpu=True, progress=False)
    if args.source_checkpoint:
        src = real_source(args, common)
        tokens = src.tokens
    else:
        tokens = D.prepare({"main": D.corpus_files("shakespeare")}, vocab_size=args.vocab,
                           max_bytes=args.max_corpus_bytes)["main"]
        cfg = source_config(tokens.vocab_size, args.seq_len, args.hidden, args.layers)
        src = train(cfg, tokens.train, tokens.val, out_dir=out / "source", steps=args.source_steps, seed=0,
                    resume=True, extra_files=tokens.tokenizer_files(), **common)
    print(f"source: {src.params} params, "
          + (f"real checkpoint {args.source_checkpoint} (pretraining sunk)" if args.source_checkpoint
             else f"hidden {args.hidden}, {args.layers} layers, {args.source_steps} steps")
          + f", eval loss {src.final_eval_loss:.4f}, {src.flops:.3e} FLOPs counted", flush=True)

    arms = [a for a in ARMS if a in args.arms]
    results: dict[str, list[dict]] = {a: [] for a in arms}
    for seed in range(args.seeds):
        for arm in arms:
            (out / f"seed-{seed}").mkdir(parents=True, exist_ok=True)
            run = out / f"seed-{seed}" / arm
            init = out / f"seed-{seed}" / f"{arm}-init"
            if arm == "dense":
                model = src.final_dir
            elif arm in ("upcycled", "drop-upcycled"):
                if not (init / "config.json").exists():
                    upcycle_model(src.final_dir, init, seed=seed, force=True,
                                  drop_ratio=0.5 if arm == "drop-upcycled" else 0.0, **UPCYCLE)
                model = moe_module(init)
            else:
                shape = out / "moe-shape"
                if not (shape / "config.json").exists():
                    upcycle_model(src.final_dir, shape, force=True, **UPCYCLE)  # only its config is used
                scratch_cfg = json.loads((shape / "config.json").read_text())
                scratch_cfg["output_router_logits"] = True
                torch.manual_seed(seed)
                model = build_model({k: v for k, v in scratch_cfg.items() if k != "architectures"}, seed)
            lr = args.scratch_lr if arm == "moe-scratch" and args.scratch_lr else args.lr
            r = train(model, tokens.train, tokens.val, out_dir=run, steps=args.steps, seed=seed, resume=True,
                      save_final=arm != "dense", **{**common, "lr": lr})
            rows = read_log(r.log_path)
            load = None
            if arm != "dense":
                net = moe_module(r.final_dir)
                offs = eval_offsets(len(tokens.val), args.seq_len, args.eval_batches * args.batch_size)
                load = balance(expert_load(net, tokens.val, offs, args.seq_len, args.batch_size))
            results[arm].append({"seed": seed, "rows": rows, "final": r.final_eval_loss, "flops": r.flops,
                                 "tokens": r.tokens, "flops_params": r.flops_params, "params": r.params,
                                 "first": r.first_eval_loss, "load": load, "time": r.time})
            print(f"seed {seed} {arm}: first {r.first_eval_loss:.4f} final {r.final_eval_loss:.4f}, "
                  f"active params {r.flops_params}, total {r.params}"
                  + (f", load entropy {load['entropy']:.3f}" if load else ""), flush=True)

    # --- metrics, per seed, then medians
    def reach(arm_runs, ref_runs, key="flops"):
        """Per seed: cost of `arm` to reach `ref`'s final loss, over ref's total cost."""
        out_ = []
        for a, b in zip(arm_runs, ref_runs):
            c = cost_to_target(a["rows"], b["final"], key)
            out_.append(c / b[key] if c != INF else math.inf)
        return out_

    summary = {"source": {"params": src.params, "flops": src.flops, "final_eval_loss": src.final_eval_loss,
                          "steps": args.source_steps}, "args": vars(args), "arms": {}}
    lines = ["| arm | active / total params | first eval loss | final eval loss | active FLOPs | "
             "load entropy (1 = even) | busiest expert share x E |", "|---|---|---|---|---|---|---|"]
    for arm in arms:
        runs = results[arm]
        first, final = median([r["first"] for r in runs]), median([r["final"] for r in runs])
        ent = median([r["load"]["entropy"] for r in runs if r["load"]])
        peak = median([r["load"]["max_over_mean"] for r in runs if r["load"]])
        summary["arms"][arm] = {"first": first, "final": final, "flops": runs[0]["flops"],
                                "flops_params": runs[0]["flops_params"], "params": runs[0]["params"],
                                "finals": [r["final"] for r in runs], "load_entropy": ent, "load_peak": peak}
        lines.append(f"| {arm} | {runs[0]['flops_params']:,} / {runs[0]['params']:,} | {first:.4f} | {final:.4f} | "
                     f"{runs[0]['flops']:.3e} | {'-' if ent is None else f'{ent:.3f}'} | "
                     f"{'-' if peak is None else f'{peak:.2f}'} |")
    ratios = {}
    for arm in [a for a in ("upcycled", "drop-upcycled") if a in results]:
        for ref in [r for r in ("dense", "moe-scratch") if r in results]:
            per_seed = reach(results[arm], results[ref])
            ratios[f"{arm} to {ref} final"] = {"median": median(per_seed), "seeds": per_seed}
        if "moe-scratch" not in results or args.source_checkpoint:
            continue
        # with the source's pretraining counted for the upcycled arm (scratch has no source)
        with_src = []
        for a, b in zip(results[arm], results["moe-scratch"]):
            c = cost_to_target(a["rows"], b["final"], "flops")
            with_src.append((c + src.flops) / b["flops"] if c != INF else math.inf)
        ratios[f"{arm} to moe-scratch final, source counted"] = {"median": median(with_src), "seeds": with_src}
    summary["ratios"] = ratios
    print()
    origin = ("real checkpoint, pretraining sunk" if args.source_checkpoint
              else f"{args.source_steps} steps x {args.batch_size} x {args.seq_len} tokens")
    print(f"source: {src.params:,} params, {origin}, {src.flops:.3e} FLOPs counted, eval loss "
          f"{src.final_eval_loss:.4f}; arms: {args.steps} steps of {args.batch_size} x {args.seq_len} tokens each, "
          f"lr {args.lr:g} (moe-scratch {args.scratch_lr or args.lr:g}), median of {args.seeds} seeds")
    print()
    print("\n".join(lines))
    print()
    print("| active FLOPs to reach ... | median (per seed) |")
    print("|---|---|")
    for k, v in ratios.items():
        per = ", ".join("never" if x == math.inf else f"{x:.2f}" for x in v["seeds"])
        med = v["median"]
        print(f"| {k} (fraction of that arm's FLOPs) | {'never' if med == math.inf else f'{med:.2f}'} ({per}) |")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plot(results, src, out / "curves.png")
    print(f"\n{out / 'curves.png'}; wall {time.time() - t_start:.0f} s")


class RealSource:
    """A checkpoint the user already has, standing where the pretrained source would: zero FLOPs counted."""

    def __init__(self, final_dir: Path, tokens, params: int, final_eval_loss: float):
        self.final_dir, self.tokens, self.params, self.final_eval_loss = final_dir, tokens, params, final_eval_loss
        self.flops = 0.0


def real_source(args, common) -> RealSource:
    """Tokenize the corpus with the checkpoint's own tokenizer and measure its held-out loss once."""
    from accelerate import Accelerator

    from warmstart import assets
    from warmstart.bench import data as D
    from warmstart.bench.train import build_model, count_params, eval_offsets, evaluate
    from warmstart.errors import WarmstartError

    path = assets.smollm2() if args.source_checkpoint == "smollm2" else Path(args.source_checkpoint)
    if not (path / "config.json").is_file() or not (path / "tokenizer.json").is_file():
        raise WarmstartError("not an HF model directory with a tokenizer.json", path)
    tokens = D.prepare({"main": D.corpus_files("shakespeare")}, tokenizer=path,
                       max_bytes=args.max_corpus_bytes)["main"]
    net = build_model(path, 0)
    offs = eval_offsets(len(tokens.val), args.seq_len, args.eval_batches * args.batch_size)
    loss = evaluate(net, tokens.val, offs, args.seq_len, args.batch_size, Accelerator(cpu=True))
    return RealSource(path, tokens, count_params(net), loss)


def plot(results, src, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from warmstart.bench.metrics import evals

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, runs in results.items():
        rows = evals(runs[0]["rows"])
        for ax, key in zip(axes, ("tokens", "flops")):
            ax.plot([r[key] for r in rows], [r["eval_loss"] for r in rows], label=arm)
    axes[0].set_xlabel("tokens (after the source)")
    axes[1].set_xlabel("active training FLOPs (after the source)")
    for ax in axes:
        ax.set_ylabel("eval loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"upcycling, seed 0 (source: {src.flops:.2e} FLOPs, eval loss {src.final_eval_loss:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
