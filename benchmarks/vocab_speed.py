"""Transplant time for a 50k-token vocabulary on SmolLM2-135M, per method, aux-embedding training reported apart.

A 50,000-token byte-level BPE (SmolLM2's kind) is trained on the Python
standard library's source (tests included); SmolLM2 (49,152 tokens) is moved onto it with each method.
Printed per method: the time to compute the rows (matching, method, the
sparse products), the time to write the 540 MB model, and their sum; the
FastText training that FOCUS and OMP need (on the top-level modules,
cached afterwards) and the word vectors that WECHSEL reads are timed on
their own lines.

    python benchmarks/vocab_speed.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab-size", type=int, default=50000)
    ap.add_argument("--methods", nargs="+", default=["copy", "multivariate", "fvt", "focus", "omp", "wechsel"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokenizer-mb", type=float, default=25.0, help="stdlib source to train the tokenizer on")
    ap.add_argument("--workdir", help="keep the tokenizer and word vectors here (default: a temporary directory)")
    args = ap.parse_args(argv)

    import torch

    from warmstart import assets
    from warmstart.vocab import transplant
    from warmstart.vocab.aux_embeddings import token_vectors, train_word_vectors
    from warmstart.vocab.match import load_tokenizer, vocab_of
    from warmstart.vocab.tokenizer_train import train_tokenizer

    torch.set_num_threads(args.threads)
    base = assets.smollm2()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vocab-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.stat().st_size > 0)  # aux vectors: top-level modules
    big, size = [], 0  # the tokenizer needs more text than that to find 50k merges: the whole library
    for p in sorted(root.rglob("*.py")):
        if "site-packages" in p.parts or not p.is_file():
            continue
        big.append(p)
        size += p.stat().st_size
        if size > args.tokenizer_mb * 1e6:
            break
    tok_dir = work / f"tok{args.vocab_size}"
    t = time.perf_counter()
    if not tok_dir.exists():
        train_tokenizer(big, tok_dir, args.vocab_size, like=base)
    n = len(load_tokenizer(tok_dir))
    print(f"tokenizer: {n} tokens ({time.perf_counter() - t:.1f}s to train or load)")
    if {"focus", "omp"} & set(args.methods):
        aux = token_vectors(vocab_of(load_tokenizer(tok_dir)), files)
        print(f"aux embeddings (FastText, cached afterwards): {aux.seconds:.1f}s" + (" (cache hit)" if aux.cached else ""))
    vec = work / "words.vec"
    if "wechsel" in args.methods and not vec.exists():
        print(f"word vectors for wechsel (FastText): {train_word_vectors(files, vec):.1f}s")

    print("| method | rows computed (s) | written (s) | total (s) | copied | combined | filled |")
    print("|---|---|---|---|---|---|---|")
    for method in args.methods:
        out = work / f"out-{method}"
        kw = {"corpus": files} if method in ("focus", "omp") else {}
        if method == "wechsel":
            kw["aligned"] = (vec, vec)
        t = time.perf_counter()
        r = transplant(base, out, tok_dir, method, force=True, **kw)
        total = time.perf_counter() - t - float(r.timings.get("aux_training_s", 0.0))
        shutil.rmtree(out, ignore_errors=True)
        print(f"| {method} | {r.timings['method_s']:.1f} | {r.timings['write_s']:.1f} | {total:.1f} | {r.copied} | "
              f"{r.combined} | {r.filled} |", flush=True)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
