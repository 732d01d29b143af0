"""Held-out loss before any training: importance pruning vs Weight Selection vs magnitude.

SmolLM2-135M-Instruct (30 layers, hidden 576, 9 heads over 3 KV heads,
intermediate 1536) is pruned to one target shape (default 6 layers, hidden
192, 3 heads over 1 KV head, intermediate 512) by every width importance
(activation, magnitude, select) crossed with every depth choice
(block-influence, loss, even, first), plus a same-shaped random init for
scale. Importance is measured once, on calibration text taken from the
training part (the first 95% of every Shakespeare document); every arm is
evaluated on the same held-out windows (the last 5% of every document),
under the teacher's tokenizer.

    PYTHONPATH=src python benchmarks/prune_start.py --out /tmp/prune-start

Prints a markdown table (also written to OUT/table.md) and OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path


def heldout_windows(tok, texts: list[str], n: int, seq_len: int):
    import torch

    ids: list[int] = []
    for t in texts:
        ids += tok.encode(t, add_special_tokens=False) + [tok.eos_token_id]
    windows = (len(ids) - 1) // seq_len
    if windows < n:
        raise SystemExit(f"held-out text holds only {windows} windows of {seq_len}")
    starts = [(i * windows // n) * seq_len for i in range(n)]
    return torch.tensor([ids[s:s + seq_len] for s in starts], dtype=torch.long)


def eval_loss(model_dir, windows, batch: int = 8) -> float:
    import torch
    import transformers

    lm = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(windows), batch):
            x = windows[i:i + batch]
            logits = lm(input_ids=x, use_cache=False).logits.float()
            total += float(torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"))
            count += x[:, 1:].numel()
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--kv-heads", type=int, default=1)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--loss-batches", type=int, default=1, help="calibration batches for the loss-based depth (0: leave it out)")
    ap.add_argument("--eval-windows", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    import transformers

    from warmstart import assets
    from warmstart.bench.data import read_documents, split_document
    from warmstart.ops import importance as I
    from warmstart.ops.prune import prune_model

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = assets.smollm2()
    docs = read_documents(assets.shakespeare_files())
    pairs = [split_document(d, 0.05) for d in docs]
    tok = I.load_tokenizer(src)
    windows = heldout_windows(tok, [h for _, h in pairs], args.eval_windows, args.seq_len)

    # Calibration text: a slice of the training part of every document, so no play dominates.
    per_doc = max(2000, 4 * args.batches * args.batch_size * args.seq_len * 5 // max(1, len(pairs)))
    calib = Path(tempfile.mkdtemp(prefix="calib-", dir=out)) / "calibration.txt"
    calib.write_text("\n".join(t[len(t) // 3: len(t) // 3 + per_doc] for t, _ in pairs), encoding="utf-8")

    t0 = time.time()
    tokens = I.calibration_tokens(src, [calib], batches=args.batches, batch_size=args.batch_size,
                                  seq_len=args.seq_len)
    imp = I.activation_importance(src, tokens)
    t_act = time.time() - t0
    print(f"activation importance: {imp.tokens} calibration tokens in {t_act:.0f}s", flush=True)
    depths = ["block-influence", "loss", "even", "first"]
    if args.loss_batches > 0:
        t0 = time.time()
        from warmstart.arch import open_model

        lm = I.load_causal_lm(src, open_model(src))
        imp.block_loss = I.block_loss_increase(lm, open_model(src), tokens[: args.loss_batches])
        t_loss = time.time() - t0
        del lm
        print(f"block loss on {args.loss_batches} batches in {t_loss:.0f}s", flush=True)
    else:
        depths.remove("loss")

    teacher = eval_loss(src, windows)
    shape = dict(hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads, intermediate=args.intermediate)
    rows = []
    for width in ("activation", "magnitude", "select"):
        for depth in depths:
            d = out / f"{width}-{depth}"
            r = prune_model(src, d, importance=width, layers=args.layers, depth_importance=depth, force=True,
                            measured=imp, corpus=[calib], **shape)
            loss = eval_loss(d, windows)
            rows.append({"width": width, "depth": depth, "blocks": r.layers, "heldout_loss": loss})
            print(f"{width:10s} {depth:15s} blocks {r.layers}  held-out loss {loss:.3f}", flush=True)

    # A same-shaped random init, for scale.
    cfg = json.loads((out / f"select-{depths[-1]}" / "config.json").read_text())
    torch.manual_seed(0)
    rnd = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{k: v for k, v in cfg.items()
                                                                    if k not in ("architectures",)}))
    rnd.save_pretrained(str(out / "random-init"))
    rows.append({"width": "random init", "depth": "-", "blocks": None,
                 "heldout_loss": eval_loss(out / "random-init", windows)})

    lines = ["| width importance | depth importance | kept blocks | held-out loss |", "|---|---|---|---|"]
    for r in rows:
        blocks = "-" if r["blocks"] is None else ",".join(map(str, r["blocks"]))
        lines.append(f"| {r['width']} | {r['depth']} | {blocks} | {r['heldout_loss']:.3f} |")
    lines.append(f"| teacher (30 layers, 576) | - | all | {teacher:.3f} |")
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({
        "target": {"layers": args.layers, **shape}, "calibration_tokens": imp.tokens,
        "eval_tokens": int(windows[:, 1:].numel()), "teacher_loss": teacher, "rows": rows,
        "block_influence": [float(x) for x in imp.block_influence],
        "block_loss": None if imp.block_loss is None else [float(x) for x in imp.block_loss],
        "uniform_loss": math.log(cfg["vocab_size"]),
    }, indent=1))


if __name__ == "__main__":
    main()
