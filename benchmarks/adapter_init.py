"""Which LoRA initialization fine-tunes fastest? SmolLM2-135M adapted to Shakespeare or to Python source code.

Every registered initialization (PEFT's and the ones warmstart adds) starts
from the same base (SmolLM2-135M-Instruct, fetched by warmstart.assets), at
the same rank and target modules, on the same token stream: Shakespeare's
plays (--corpus shakespeare, the default) or the Python standard library's
own source files (--corpus stdlib), domains the instruction-tuned model was
not tuned for. Each (method, learning rate, seed) trains the same number of
AdamW steps on the same batches (the batch order depends on the seed only);
held-out loss (text the training never sees) is measured every --eval-every
steps.

Reported per method, at its best learning rate of the grid (lowest median
final held-out loss over seeds):
- held-out loss at the start (after initialization: LoRA-SB starts one
  approximate step in, residual methods start exactly at the base) and at the end;
- steps to reach the PEFT default's final held-out loss (default at its own
  best learning rate, same seed), median over seeds, and the ratio to the
  default's budget;
- seconds spent on initialization (SVDs; data-driven methods' calibration
  forwards/backwards on --calib-batches training batches, extra compute the
  default does not spend).

Run (the third run of docs/adapter.md; one process per rate, merged with --resume):
    nice -n 10 python benchmarks/adapter_init.py --steps 40 --eval-every 5 --lrs 1e-3 --seeds 3 \
        --batch-size 4 --seq-len 32 --eval-seqs 24 --calib-batches 2 --out lr1e-3.json
The fourth run adds --rank 16 --targets q_proj k_proj v_proj o_proj gate_proj up_proj down_proj.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import sysconfig
import time
import zlib
from pathlib import Path

ALL = ["default", "gaussian", "init-b", "pissa", "pissa_niter_4", "olora", "nlora", "eva", "corda", "lora-ga", "lora-sb"]


def stdlib_split(every: int = 10):
    """(train files, held-out files) of the stdlib: a file is held out by a hash of its path, never by chance."""
    from warmstart.bench.data import stdlib_files

    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files()
    held = [f for f in files if zlib.crc32(str(f.relative_to(root)).encode()) % every == 0]
    train = [f for f in files if f not in set(held)]
    return train, held


def windows(tokenizer, files, seq_len: int, limit: int):
    import torch

    from warmstart.adapter.data import token_stream

    ids = token_stream(tokenizer, files, limit * seq_len)
    rows = min(limit, len(ids) // seq_len)
    return torch.tensor(ids[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def shakespeare_windows(model_dir: Path, seq_len: int, train_count: int, eval_count: int):
    """Training windows (consecutive, from the start of the training split) and held-out windows (evenly spaced
    over the held-out split), tokenized with the model's own tokenizer by the bench's corpus pipeline."""
    import numpy as np
    import torch

    from warmstart.bench import data as D

    tokens = D.prepare({"main": D.corpus_files("shakespeare")}, tokenizer=model_dir)["main"]
    n = min(train_count, len(tokens.train) // seq_len)
    train_x = torch.from_numpy(np.asarray(tokens.train[: n * seq_len], dtype=np.int64).reshape(n, seq_len))
    starts = np.linspace(0, len(tokens.val) - seq_len - 1, eval_count).round().astype(np.int64)
    eval_x = torch.stack([torch.from_numpy(np.asarray(tokens.val[o:o + seq_len], dtype=np.int64)) for o in starts])
    return train_x, eval_x, f"Shakespeare, {len(tokens.train):,} training / {len(tokens.val):,} held-out tokens"


def batch(x):
    import torch

    return {"input_ids": x, "attention_mask": torch.ones_like(x)}


def heldout_loss(model, eval_x, batch_size: int) -> float:
    import torch

    total = 0.0
    n = 0
    with torch.inference_mode():
        for s in range(0, len(eval_x), batch_size):
            x = eval_x[s:s + batch_size]
            total += float(model(**batch(x), labels=x).loss) * len(x)
            n += len(x)
    return total / n


def run_arm(base, method, lr, seed, args, train_x, eval_x, calib):
    import torch

    from warmstart.adapter import AdapterSpec
    from warmstart.adapter.writer import attach

    options = {"sb_lr": lr} if method == "lora-sb" else {}
    spec = AdapterSpec(method=method, rank=args.rank, alpha=args.alpha, target_modules=args.targets, seed=seed,
                       options=options)
    model = copy.deepcopy(base)
    t0 = time.perf_counter()
    peft_model, ctx = attach(model, spec, args.targets, calib if method in DATA else None)
    init_s = time.perf_counter() - t0
    peft_model.train()
    params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(1000 + seed))
    curve = [(0, heldout_loss(peft_model, eval_x, args.batch_size))]
    t1 = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = order[((step - 1) * args.batch_size) % len(order):][: args.batch_size]
        x = train_x[idx]
        loss = peft_model(**batch(x), labels=x).loss
        if not math.isfinite(loss.item()):
            curve.append((step, float("nan")))
            break
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % args.eval_every == 0 or step == args.steps:
            curve.append((step, heldout_loss(peft_model, eval_x, args.batch_size)))
    return {"method": method, "lr": lr, "seed": seed, "init_s": init_s, "train_s": time.perf_counter() - t1,
            "statistics_s": ctx.timings.get("statistics_s", 0.0), "curve": curve}


DATA = {"eva", "corda", "lora-ga", "lora-sb"}


def final(run) -> float:
    loss = run["curve"][-1][1]
    return loss if math.isfinite(loss) else float("inf")


def steps_to(run, target: float):
    for step, loss in run["curve"]:
        if math.isfinite(loss) and loss <= target:
            return step
    return None


def summarize(runs, methods, lrs, seeds, steps):
    def median_final(m, lr):
        return statistics.median(final(r) for r in runs if r["method"] == m and r["lr"] == lr)

    best = {m: min(lrs, key=lambda lr: median_final(m, lr)) for m in methods}
    pick = {(r["method"], r["seed"]): r for r in runs if r["lr"] == best[r["method"]]}
    rows = []
    for m in methods:
        reach, starts, ends, init = [], [], [], []
        for s in seeds:
            r = pick[(m, s)]
            target = final(pick[("default", s)])
            k = steps_to(r, target)
            reach.append(k if k is not None else math.inf)
            starts.append(r["curve"][0][1])
            ends.append(final(r))
            init.append(r["init_s"])
        med = statistics.median(reach)
        if m == "default":
            speedup = 1.0  # the reference: its final loss after the whole budget
        elif not math.isfinite(med):
            speedup = None
        else:
            speedup = steps / med if med else math.inf
        rows.append({"method": m, "best_lr": best[m], "start": statistics.median(starts),
                     "final": statistics.median(ends), "steps_to_default_final": med,
                     "steps_per_seed": reach, "speedup_vs_default": speedup,
                     "init_s": statistics.median(init)})
    return rows


def table(rows, steps) -> str:
    lines = ["| method | best LR | held-out loss at step 0 | final (step %d) | steps to default's final (median; per seed) "
             "| speed-up | init s |" % steps,
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        k = r["steps_to_default_final"]
        per = ", ".join("-" if not math.isfinite(x) else f"{x:g}" for x in r["steps_per_seed"])
        ks = ("not reached" if not math.isfinite(k) else f"{k:g}") + f" ({per})"
        if r["method"] == "default":
            ks += " (reference: first evaluation at or below its own final value)"
        sp = r["speedup_vs_default"]
        sps = "-" if sp is None else ("inf" if sp == math.inf else f"{sp:.2f}x")
        lines.append(f"| {r['method']} | {r['best_lr']:g} | {r['start']:.4f} | {r['final']:.4f} | {ks} | {sps} | "
                     f"{r['init_s']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model directory (default: SmolLM2-135M-Instruct from warmstart.assets)")
    p.add_argument("--methods", nargs="+", default=ALL)
    p.add_argument("--corpus", choices=("shakespeare", "stdlib"), default="shakespeare",
                   help="shakespeare: the plays, held out by the last 5%% of every document (the bench's split); "
                        "stdlib: Python source files, held out by a hash of the path")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=None, help="default: the rank (scaling 1)")
    p.add_argument("--targets", nargs="+", default=["q_proj", "v_proj"])
    p.add_argument("--lrs", nargs="+", type=float, default=[3e-4, 1e-3, 3e-3])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-seqs", type=int, default=16, help="held-out sequences")
    p.add_argument("--calib-batches", type=int, default=4, help="training batches the data-driven methods may read")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write every curve and the summary as JSON")
    p.add_argument("--resume", type=Path, default=None,
                   help="a JSON written by --out with the same settings: its runs are kept, only missing arms run "
                        "(e.g. to widen the learning-rate grid)")
    args = p.parse_args(argv)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    if args.model is None:
        from warmstart import assets

        args.model = assets.ASSETS["smollm2"]()
    model_dir = Path(args.model)
    if "default" not in args.methods:
        args.methods = ["default"] + args.methods
    t_all = time.perf_counter()
    need = max(args.steps * args.batch_size, args.calib_batches * args.batch_size)
    if args.corpus == "stdlib":
        tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
        train_files, held_files = stdlib_split()
        train_x = windows(tok, train_files, args.seq_len, need)
        eval_x = windows(tok, held_files, args.seq_len, args.eval_seqs)
        origin = f"{len(train_files)} train / {len(held_files)} held-out stdlib files"
    else:
        train_x, eval_x, origin = shakespeare_windows(model_dir, args.seq_len, need, args.eval_seqs)
    calib = [batch(train_x[i * args.batch_size:(i + 1) * args.batch_size]) for i in range(args.calib_batches)]
    base = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    base.eval()
    print(f"# {model_dir.name}: {origin}; "
          f"{len(train_x)} train windows, {len(eval_x)} held-out windows of {args.seq_len} tokens; "
          f"rank {args.rank}, targets {' '.join(args.targets)}, {args.steps} steps of {args.batch_size}", flush=True)
    seeds = list(range(args.seeds))
    runs = []
    if args.resume:
        prior = json.loads(args.resume.read_text())
        same = ("corpus", "rank", "alpha", "targets", "steps", "batch_size", "seq_len", "eval_every", "eval_seqs", "calib_batches")
        diff = [k for k in same if prior["args"].get(k) != getattr(args, k)]
        if diff:
            raise SystemExit(f"--resume: {args.resume} was run with other settings ({', '.join(diff)})")
        runs = [r for r in prior["runs"] if r["method"] in args.methods and r["lr"] in args.lrs]
    done = {(r["method"], r["lr"], r["seed"]) for r in runs}
    for method in args.methods:
        for lr in args.lrs:
            for seed in seeds:
                if (method, lr, seed) in done:
                    continue
                r = run_arm(base, method, lr, seed, args, train_x, eval_x, calib)
                runs.append(r)
                print(f"{method:14s} lr {lr:<7g} seed {seed}: loss {r['curve'][0][1]:.4f} -> {final(r):.4f} "
                      f"(init {r['init_s']:.2f} s, train {r['train_s']:.1f} s)", flush=True)
    rows = summarize(runs, args.methods, args.lrs, seeds, args.steps)
    print()
    print(table(rows, args.steps))
    print(f"\n# total wall time {time.perf_counter() - t_all:.0f} s, {args.threads} thread(s)")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                        "runs": runs, "summary": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
