"""The support matrix: every decoder family x every operation, run on tiny random models.

Each family's model is built from transformers' own config class with every
quirk on (``warmstart.tiny_families``: random norms, a sliding window shorter
than the test tokens in a mixed local/global pattern, soft-caps, fused
projections). Every cell runs the operation, loads the output in the family's
own transformers class, generates two tokens, and classifies:

- ``exact (...)``: the operation claims to preserve the function and the
  logits of source and output, run by transformers on the same 2 x 16 random
  tokens, differ by the measured amount (max |a - b| / max |a|, bucketed to a
  power of ten so the table is stable; ``0.0`` means bit-identical) with
  top-1 agreement 100%;
- ``warm start``: the operation does not claim exactness (its note says why);
- ``refused: ...``: the operation refuses this family, with its reason;
- ``n/a: ...``: the operation does not apply to this family, and why.

A cell that claims exactness and measures otherwise is ``FAILED`` (the test
of the table fails too).

    python benchmarks/support_matrix.py             # print the table
    python benchmarks/support_matrix.py --write     # and write it into docs/families.md
    python benchmarks/support_matrix.py --check     # exit 1 if docs/families.md's table is not this run's
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DOC = Path(__file__).resolve().parent.parent / "docs" / "families.md"
START, END = "<!-- support-matrix:start -->", "<!-- support-matrix:end -->"
WORDS = ("the king and queen of england spoke to their people about war and peace in the morning while the "
         "soldiers waited near the castle gate for news from the north").split()
CODE = ("def return import class self value index list dict print range lambda yield while for in if else "
        "elif try except finally with as").split()


def _text(words, n: int, seed: int) -> str:
    import random

    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(n)) + "\n"


def _bpe(path: Path, text: str, size: int) -> Path:
    """A byte-level BPE tokenizer of at most `size` tokens trained on `text`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=["<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(str(path))
    return path


def _bucket(rel: float) -> str:
    if rel == 0.0:
        return "0.0"
    return f"< 1e{math.ceil(math.log10(rel)):d}" if rel > 0 else "0.0"


def _loads_and_generates(family: str, out: Path) -> None:
    import torch
    import transformers as tf

    from warmstart import tiny_families as T

    cls = getattr(tf, T.FAMILY_CONFIGS[family][1])
    model = cls.from_pretrained(str(out), local_files_only=True).eval()
    if type(model) is not cls:
        raise AssertionError(f"loaded as {type(model).__name__}")
    ids = T.token_ids(n=4, batch=1, vocab=min(120, model.config.get_text_config().vocab_size))
    with torch.no_grad():
        gen = model.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=0)
    if gen.shape[1] != 6:
        raise AssertionError("did not generate")


def _ops(steps):
    """A cell running a chain of operations; `steps` may be a function of the source's dims."""
    def run(family, src, out, work):
        from warmstart.arch import open_model
        from warmstart.ops import registry
        from warmstart.plan import execute

        model = open_model(src)
        t = registry.chain(model, steps(model.dims) if callable(steps) else steps)
        execute(t.plan, out, config=t.config, copy_files=model.checkpoint.extra_files())
        reason = next((n.split(": ", 1)[-1] for n in t.notes if "approximate" in n or "not function" in n), "")
        return bool(t.exact), reason, None

    return run


def _merge(methods):
    def run(family, src, out, work):
        return _merge_run(family, src, out, work, methods)

    return run


def _merge_run(family, src, out, work, methods):
    from warmstart import tiny_families as T
    from warmstart.merge.stream import merge_checkpoints

    other = T.build(family, work / "other", seed=1)
    third = T.build(family, work / "third", seed=2)
    for model in (other, third):  # the same tokenizer (Fisher reads text with it; merges check it)
        for f in src.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens")):
                shutil.copy(f, model / f.name)
    data = work / "fisher.txt"
    data.write_text(_text(WORDS, 50, 3))
    for method, kw in (("mean", {}), ("weighted", {"weights": [0.7, 0.4, -0.1], "normalize": False}),
                       ("ema", {"ema_decay": 0.5}),
                       ("fisher", {"fisher_data": data, "fisher_batches": 1,
                                   "fisher_options": {"batch_size": 2, "seq_len": 16}}),
                       ("wsm", {})):
        if method not in methods:
            continue
        target = out if method == methods[-1] else work / f"merge-{method}"
        merge_checkpoints(target, [src, other, third], method, **kw)
        if target != out:
            _loads_and_generates(family, target)
    return False, "an average of different models", None


def _vocab(mode):
    def run(family, src, out, work):
        from warmstart.vocab import transplant

        new_tok = _bpe(work / "new-tok", _text(CODE + WORDS[:8], 200, 2), 100)
        transplant(src, out, new_tok, "fvt", mode=mode)
        if mode == "extend":  # the old tokens' logits are the source's: compare them
            return True, "", 128  # the old rows: the source's vocabulary
        return False, "new token rows are built from old ones (FVT)", None

    return run


def _gguf(family, src, out, work):
    """Write the model as GGUF (F16 and Q8_0) and import it; the output is compared with transformers' loader."""
    import gguf
    import numpy as np

    from warmstart import tiny_families as T
    from warmstart.checkpoint.gguf import GGUF_ARCHS, import_gguf

    arch = T.GGUF_ARCH_OF.get(family)
    if arch is None:
        return None, "a GGUF holds the text model only (a gemma3 GGUF is imported as gemma3_text)", None
    if arch not in GGUF_ARCHS:  # a file of that architecture, to show the refusal
        path = work / "model.gguf"
        w = gguf.GGUFWriter(str(path), arch)
        w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        import_gguf(path, out)
    # transformers' GGUF config for qwen3 ignores the head size and takes 128: give the model that head size
    model = T.build(family, work / "g", **({"head_dim": 128} if family == "qwen3" else {}))
    for quant in ("F16", "Q8_0"):
        (work / quant).mkdir()
        path = work / quant / "model.gguf"
        T.write_gguf(model, path, arch, quant)
        target = work / f"imported-{quant}"
        import_gguf(path, target)
        _loads_and_generates(family, target)
    return True, "", ("gguf", work / "Q8_0" / "model.gguf", work / "imported-Q8_0")


def _bench_arm(family, src, out, work):
    """What a bench `checkpoint:` arm does with a grown checkpoint: load it and train on (here: random) tokens."""
    import math

    import numpy as np

    from warmstart.bench.train import train

    _ops([("hyperclone", {"mult": 2}), ("expand", {"layers": 6})])(family, src, out, work)
    tokens = np.random.default_rng(0).integers(0, 120, size=4096).astype(np.int32)
    result = train(str(out), tokens, tokens[:512], out_dir=work / "run", steps=3, batch_size=2, seq_len=16,
                   eval_every=3, eval_batches=1, cpu=True, progress=False, save_final=False)
    rows = [json.loads(line) for line in result.log_path.read_text().splitlines() if line.strip()]
    losses = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
    if len(losses) != 3 or not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"training diverged: {losses}")
    return "trains (hyperclone x2 + expand, 3 steps)"


def _vocab_fills(family, src, out, work):
    """The other vocabulary methods that need no corpus or word vectors; omp in the source's own space (donor)."""
    from warmstart.vocab import transplant

    new_tok = _bpe(work / "new-tok", _text(CODE + WORDS[:8], 200, 2), 100)
    for method, kw in (("copy", {}), ("random", {}), ("multivariate", {}), ("omp", {"donor": src})):
        target = out if method == "omp" else work / f"vocab-{method}"
        transplant(src, target, new_tok, method, **kw)
        if target != out:
            _loads_and_generates(family, target)
    return False, "new rows are sampled or combined", None


# label -> runner(family, src, out, work) -> (claims exact, reason, compared logit columns or None)
COLUMNS = {
    "expand": _ops([("expand", {"layers": 6})]),
    "hyperclone x2": _ops([("hyperclone", {"mult": 2})]),
    "hyperclone x2 + expand": _ops([("hyperclone", {"mult": 2}), ("expand", {"layers": 8})]),
    "net2net (MLP only)": _ops(lambda d: [("net2net", {"intermediate": d.intermediate * 3 // 2})]),
    "net2net x1.5": _ops([("net2net", {"mult": 1.5})]),
    "aki x1.5": _ops([("aki", {"mult": 1.5})]),
    "stack": _ops([("stack", {"layers": 8})]),
    "interleave": _ops([("interleave", {"layers": 6})]),
    "dus": _ops([("dus", {"layers": 6})]),
    "drop": _ops([("drop", {"layers": 2})]),
    "select /2": _ops(lambda d: [("select", {"hidden": d.hidden // 2, "intermediate": d.intermediate // 2,
                                             "heads": d.heads // 2})]),
    "merge (mean, weighted, ema, wsm)": _merge(("mean", "weighted", "ema", "wsm")),
    "merge fisher": _merge(("fisher",)),
    "vocab fvt (extend)": _vocab("extend"),
    "vocab fvt (replace)": _vocab("replace"),
    "vocab copy, random, multivariate, omp (replace)": _vocab_fills,
    "GGUF import (vs transformers' loader)": _gguf,
    "bench checkpoint arm": _bench_arm,
}


def cell(family: str, column: str, src: Path, work: Path) -> str:
    from warmstart import tiny_families as T
    from warmstart.errors import WarmstartError

    out = work / "out"
    try:
        result = COLUMNS[column](family, src, out, work)
    except WarmstartError as err:
        return "refused: " + err.message.split("; ")[0].split(" (")[0]
    if isinstance(result, str):  # the runner checked what it runs and says so
        return result
    exact, reason, columns = result
    if exact is None:
        return "n/a: " + reason
    if isinstance(columns, tuple):  # GGUF: our import against transformers' GGUF loader
        import torch
        import transformers as tf

        _, gguf_path, out = columns
        ref = tf.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                      dtype=torch.float32).eval()
        ids = T.token_ids()
        with torch.no_grad():
            a = ref(input_ids=ids).logits.float()
        b = T.logits(out, ids)
    else:
        _loads_and_generates(family, out)
        if not exact:
            return "warm start"
        ids = T.token_ids()
        a, b = T.logits(src, ids), T.logits(out, ids)
        if columns is not None:
            b = b[..., :columns]
    diff = float((a - b).abs().max())
    rel = diff / float(a.abs().max())
    top1 = bool((a.argmax(-1) == b.argmax(-1)).all())
    if rel > 1e-4 or not top1:
        return f"FAILED (claimed exact, relative difference {rel:.2e})"
    return f"exact ({_bucket(rel)})"


def compute(families: list[str] | None = None, columns: list[str] | None = None) -> dict[str, dict[str, str]]:
    """{family: {column: cell}} on fresh tiny models."""
    import torch

    from warmstart import tiny_families as T

    torch.set_num_threads(1)
    families = families or list(T.FAMILY_CONFIGS)
    columns = columns or list(COLUMNS)
    out: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for family in families:
            src = T.build(family, root / family / "src")
            tok = _bpe(root / family / "tok", _text(WORDS + CODE[:5], 200, 1), 120)  # room for a class's extra specials
            for f in tok.iterdir():
                shutil.copy(f, src / f.name)
            out[family] = {}
            for column in columns:
                work = root / family / re.sub(r"\W+", "_", column)
                work.mkdir(parents=True)
                out[family][column] = cell(family, column, src, work)
                shutil.rmtree(work)
    return out


def render(matrix: dict[str, dict[str, str]]) -> str:
    """Markdown: one row per operation, one column per family (the table is wider than long otherwise)."""
    families = list(matrix)
    columns = list(next(iter(matrix.values())))
    lines = ["| operation | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
    for column in columns:
        lines.append(f"| {column} | " + " | ".join(matrix[f][column] for f in families) + " |")
    return "\n".join(lines)


def doc_table(text: str) -> str:
    start, end = text.index(START) + len(START), text.index(END)
    return text[start:end].strip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help=f"write the table into {DOC.name}")
    p.add_argument("--check", action="store_true", help=f"exit 1 if {DOC.name}'s table differs from this run's")
    args = p.parse_args(argv)
    table = render(compute())
    print(table)
    if args.check and doc_table(DOC.read_text(encoding="utf-8")) != table:
        print(f"{DOC} is out of date: run benchmarks/support_matrix.py --write", file=sys.stderr)
        return 1
    if args.write:
        text = DOC.read_text(encoding="utf-8")
        start, end = text.index(START) + len(START), text.index(END)
        DOC.write_text(text[:start] + "\n" + table + "\n" + text[end:], encoding="utf-8")
    return 1 if "FAILED" in table else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    raise SystemExit(main())
