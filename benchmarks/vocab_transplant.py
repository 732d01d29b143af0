"""Vocabulary transplant on the real SmolLM2-135M: bits per byte on held-out Python source.

A new byte-level BPE tokenizer (same kind as SmolLM2's) is trained on Python
standard-library source; SmolLM2 is moved onto it with every method, and
each result is scored in bits per byte (summed token NLL in nats / ln 2 /
UTF-8 bytes predicted), a figure that does not depend on the tokenizer, on
held-out standard-library files:

- the untouched model with its own tokenizer (the floor);
- the segmentation floor: the untouched model reading the text cut at the
  new tokenizer's boundaries, each new token spelled in the old tokenizer's
  pieces. No row given to a new token can undo what the new segmentation
  itself costs the old model, so this separates the tokenizer's share of
  the gap from the method's;
- each method zero-shot, and random initialization;
- the methods of `--train-methods` after the same short continued training
  (same batches, same optimizer, all parameters trained).

`--mode replace` gives the model the new tokenizer alone; `--mode extend`
keeps SmolLM2's vocabulary and appends the new tokens (and merges).

No model exists with the new vocabulary, so there is no donor and
mergekit-tokensurgeon (which needs one) cannot run side by side here.

    python benchmarks/vocab_transplant.py                # defaults below
    python benchmarks/vocab_transplant.py --steps 0      # zero-shot only
    python benchmarks/vocab_transplant.py --mode extend --steps 200 --train-methods omp fvt copy
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

METHODS = ["copy", "multivariate", "fvt", "focus", "omp", "wechsel", "random"]


def split_stdlib(eval_bytes: int):
    """Top-level stdlib modules, sorted; every tenth is held out for evaluation."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.stat().st_size > 0)
    train = [p for i, p in enumerate(files) if i % 10]
    held = [p for i, p in enumerate(files) if not i % 10]
    text = ""
    for p in held:
        text += p.read_text(encoding="utf-8", errors="replace")
        if len(text.encode("utf-8")) >= eval_bytes:
            break
    data = text.encode("utf-8")[:eval_bytes]
    cut = data.rfind(b"\n")
    return train, held, data[: cut + 1].decode("utf-8")


def bits_per_byte(model, tokenizer, text: str, seq: int) -> float:
    """Summed NLL of every token that has context, over the UTF-8 bytes of those tokens."""
    from warmstart.vocab.match import vocab_of

    canon = vocab_of(tokenizer).canon
    return ids_bits_per_byte(model, tokenizer(text, add_special_tokens=False)["input_ids"], canon, text, seq)


def segmentation_floor(model, old_tok, new_tok, text: str, seq: int) -> tuple[float, int]:
    """Bits per byte of the untouched model on the new tokenizer's segmentation, spelled in old tokens.

    A new token the old vocabulary has is its old id; any other is the old
    tokenizer's pieces of its text. Returns (bits per byte, old tokens read).
    """
    from warmstart.vocab.match import retokenize, vocab_of

    old, new = vocab_of(old_tok), vocab_of(new_tok)
    by_bytes = {c: i for i, c in enumerate(old.canon) if c is not None and i not in old.special}
    ids: list[int] = []
    for t in new_tok(text, add_special_tokens=False)["input_ids"]:
        c = new.canon[t]
        ids += [by_bytes[c]] if c in by_bytes else retokenize(c, old)
    return ids_bits_per_byte(model, ids, old.canon, text, seq), len(ids)


def ids_bits_per_byte(model, ids: list[int], canon, text: str, seq: int) -> float:
    import torch

    assert sum(len(canon[i]) for i in ids) == len(text.encode("utf-8")), "tokens do not spell the text"
    nll = 0.0
    nbytes = 0
    model.eval()
    with torch.no_grad():
        for s in range(0, len(ids) - 1, seq):
            window = ids[s:s + seq]
            if len(window) < 2:
                break
            x = torch.tensor([window])
            logits = model(x).logits[0, :-1].float()
            nll += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
            nbytes += sum(len(canon[i]) for i in window[1:])
    return nll / math.log(2) / nbytes


def train_stream(tokenizer, files, max_chars: int) -> list[int]:
    text = ""
    for p in files:
        text += p.read_text(encoding="utf-8", errors="replace")
        if len(text) >= max_chars:
            break
    return tokenizer(text[:max_chars], add_special_tokens=False)["input_ids"]


def continue_training(model, stream: list[int], steps: int, batch: int, seq: int, lr: float, seed: int) -> float:
    """AdamW on random windows of the target stream (same windows for every method); returns seconds."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    data = torch.tensor(stream)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    warmup = max(1, steps // 10)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warmup)
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s:s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=16000)
    ap.add_argument("--eval-bytes", type=int, default=8000, help="held-out bytes scored")
    ap.add_argument("--eval-seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=200, help="continued-training steps per method (0: zero-shot only)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--train-methods", nargs="+", help="methods given continued training (default: all of --methods)")
    ap.add_argument("--mode", choices=["replace", "extend"], default="replace")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="keep intermediate files here (default: a temporary directory)")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from warmstart import assets
    from warmstart.vocab import transplant
    from warmstart.vocab.aux_embeddings import token_vectors, train_word_vectors
    from warmstart.vocab.match import load_tokenizer, vocab_of
    from warmstart.vocab.tokenizer_train import train_tokenizer

    torch.set_num_threads(args.threads)
    base = assets.smollm2()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vocab-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    train_files, held_files, eval_text = split_stdlib(args.eval_bytes)
    print(f"python {sys.version.split()[0]} stdlib: {len(train_files)} training files "
          f"({sum(p.stat().st_size for p in train_files) / 1e6:.1f} MB), {len(held_files)} held out; "
          f"scoring {len(eval_text.encode())} held-out bytes")

    tok_dir = work / f"tok{args.vocab_size}"
    t = time.perf_counter()
    if not tok_dir.exists():
        train_tokenizer(train_files, tok_dir, args.vocab_size, like=base)
    print(f"tokenizer: {args.vocab_size} tokens trained in {time.perf_counter() - t:.1f}s")
    new_tok = AutoTokenizer.from_pretrained(str(tok_dir))
    old_tok = AutoTokenizer.from_pretrained(str(base))
    aux = token_vectors(vocab_of(load_tokenizer(tok_dir)), train_files, seed=args.seed)
    print(f"aux token embeddings (FastText on the corpus): {aux.seconds:.1f}s"
          + (" (read from cache)" if aux.cached else ""))
    vec = work / "words.vec"
    if not vec.exists():
        secs = train_word_vectors(train_files, vec, seed=args.seed)
        print(f"word vectors for wechsel (FastText, one space for both sides): {secs:.1f}s")

    if args.mode == "extend":
        # The tokenizer the model will read is the old one plus the new tokens; transplant
        # once with `copy` to get it (every method writes the same tokenizer).
        ext = work / "extended-tokenizer"
        transplant(base, work / "out-tokenizer", tok_dir, "copy", mode="extend", force=True)
        shutil.rmtree(ext, ignore_errors=True)
        shutil.copytree(work / "out-tokenizer", ext, ignore=shutil.ignore_patterns("*.safetensors"))
        shutil.rmtree(work / "out-tokenizer")
        new_tok = AutoTokenizer.from_pretrained(str(ext))
    n_new = len(new_tok(eval_text, add_special_tokens=False)["input_ids"])
    n_old = len(old_tok(eval_text, add_special_tokens=False)["input_ids"])
    print(f"mode {args.mode}: {len(new_tok)} tokens; held-out tokens: {n_old} with SmolLM2's tokenizer, "
          f"{n_new} with the new one")

    stream = train_stream(new_tok, train_files, 2_000_000)
    results = []
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    floor = bits_per_byte(model, old_tok, eval_text, args.eval_seq)
    seg, seg_n = segmentation_floor(model, old_tok, new_tok, eval_text, args.eval_seq)
    del model
    print(f"untouched SmolLM2, own tokenizer: {floor:.4f} bits/byte")
    print(f"untouched SmolLM2 on the new segmentation ({seg_n} old tokens): {seg:.4f} bits/byte ({seg / floor:.2f}x)")
    trainees = set(args.train_methods or args.methods)

    for method in args.methods:
        out = work / f"out-{method}"
        kw = {}
        if method in ("focus", "omp"):
            kw["corpus"] = train_files
        if method == "wechsel":
            kw["aligned"] = (vec, vec)
        t = time.perf_counter()
        report = transplant(base, out, tok_dir, method, mode=args.mode, force=True, seed=args.seed, **kw)
        secs = time.perf_counter() - t
        model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
        zero = bits_per_byte(model, new_tok, eval_text, args.eval_seq)
        train_here = bool(args.steps) and method in trainees
        if train_here:
            print(f"{method:13s} zero-shot {zero:.4f} bits/byte; training ...", flush=True)
        trained = None
        train_s = 0.0
        if train_here:
            train_s = continue_training(model, stream, args.steps, args.batch, args.seq, args.lr, args.seed)
            trained = bits_per_byte(model, new_tok, eval_text, args.eval_seq)
        del model
        shutil.rmtree(out, ignore_errors=True)
        results.append((method, zero, trained, report, secs, train_s))
        print(f"{method:13s} zero-shot {zero:.4f} bits/byte ({zero / floor:.2f}x floor)"
              + (f", after {args.steps} steps {trained:.4f}" if trained is not None else "")
              + f"  [{report.copied} copied, {report.combined} combined, {report.filled} filled; "
                f"transplant {secs:.1f}s, training {train_s:.0f}s]", flush=True)

    print()
    print(f"| method | zero-shot bits/byte | x untouched | after {args.steps} steps |")
    print("|---|---|---|---|")
    print(f"| untouched SmolLM2 (own tokenizer) | {floor:.3f} | 1.00 | - |")
    print(f"| untouched SmolLM2, new segmentation in old pieces | {seg:.3f} | {seg / floor:.2f} | - |")
    for method, zero, trained, *_ in sorted(results, key=lambda r: r[1]):
        tr = f"{trained:.3f}" if trained is not None else "-"
        print(f"| {method} | {zero:.3f} | {zero / floor:.2f} | {tr} |")
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({
            "mode": args.mode, "vocab_size": args.vocab_size, "eval_bytes": len(eval_text.encode()),
            "steps": args.steps, "batch": args.batch, "seq": args.seq, "lr": args.lr,
            "untouched": floor, "segmentation_floor": seg,
            "methods": {m: {"zero_shot": z, "trained": tr, "transplant_s": secs, "train_s": ts}
                        for m, z, tr, _, secs, ts in results}}, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
