"""Knowledge distillation: a student trained on next-token CE mixed with a teacher's soft targets.

The loss of "Distilling the Knowledge in a Neural Network" as Minitron
uses it after pruning ("Compact Language Models via Pruning and Knowledge
Distillation")::

    loss = alpha * CE(student, next token)
         + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

averaged over tokens. ``T^2`` keeps the soft term's gradient scale
independent of the temperature.

Teacher targets come either from a live teacher (full logits, the exact KL)
or from a cache of the teacher's top-k logits per position, computed once
per (teacher, token array, sequence length, k) and reused by every arm and
seed. With top-k targets the teacher's distribution is its softmax over its
k largest logits (the rest of the vocabulary gets zero mass, renormalized);
the student's log-probabilities are its full softmax read at those k ids.
That is an approximation ("sparse" distillation) and says so; k = vocabulary
size gives the exact KL.

The cache holds fixed, aligned windows: window ``c`` is tokens
``[c * seq_len, c * seq_len + seq_len + 1)``, the teacher having seen exactly
the student's context. A cache is a directory written to a temporary sibling
and renamed when complete (:func:`warmstart.checkpoint.writer.atomic_directory`),
so a reader finds it whole or not at all.

PERP ("Rethinking the Prune-Retrain Paradigm in the Era of LLMs"): after
pruning, retraining only the norm weights and biases recovers much of the
loss; :func:`only_norms_and_biases` freezes everything else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from warmstart.errors import OutputExists, WarmstartError

CACHE_VERSION = 1
MANIFEST = "manifest.json"


@dataclass
class TopK:
    """A teacher's k largest logits per position and their token ids."""

    values: Any  # [..., k] float
    indices: Any  # [..., k] long


def distill_loss(student_logits, targets, teacher, *, alpha: float = 0.5, temperature: float = 1.0):
    """``alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T)``, mean over positions.

    `student_logits` [..., V]; `targets` [...] next-token ids; `teacher` either
    full logits [..., V] or a :class:`TopK`. Returns (loss, ce, kl) with the
    last two detached, for logging.
    """
    import torch.nn.functional as F

    if not 0.0 <= float(alpha) <= 1.0:
        raise WarmstartError(f"distillation alpha must be in [0, 1], got {alpha}")
    if not float(temperature) > 0.0:
        raise WarmstartError(f"distillation temperature must be positive, got {temperature}")
    t = float(temperature)
    s = student_logits.float().reshape(-1, student_logits.shape[-1])
    ce = F.cross_entropy(s, targets.reshape(-1))
    log_q = F.log_softmax(s / t, dim=-1)
    if isinstance(teacher, TopK):
        k = teacher.values.shape[-1]
        tv = teacher.values.float().reshape(-1, k)
        ti = teacher.indices.long().reshape(-1, k)
        log_p = F.log_softmax(tv / t, dim=-1)
        log_q = log_q.gather(1, ti)
    else:
        log_p = F.log_softmax(teacher.float().reshape(-1, teacher.shape[-1]) / t, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    loss = float(alpha) * ce + (1.0 - float(alpha)) * t * t * kl
    return loss, ce.detach(), kl.detach()


def top_k(logits, k: int) -> TopK:
    v, i = logits.float().topk(k, dim=-1)
    return TopK(v, i)


# -- tokenizers ----------------------------------------------------------------------
def check_same_tokenizer(teacher_dir, student_dir) -> None:
    """Refuse a teacher whose tokenizer differs from the student's (distillation compares token ids)."""
    def vocab(folder):
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab(with_added_tokens=True)
        from warmstart.ops.importance import load_tokenizer

        return load_tokenizer(folder).get_vocab()

    if vocab(teacher_dir) != vocab(student_dir):
        raise WarmstartError("the teacher's tokenizer differs from the student's (different vocabularies): "
                             "distillation needs the same token ids", teacher_dir)


def check_vocab(teacher_vocab: int, student_vocab: int, where=None) -> None:
    if teacher_vocab != student_vocab:
        raise WarmstartError(f"teacher vocabulary {teacher_vocab} differs from the student's {student_vocab}", where)


# -- the top-k cache ---------------------------------------------------------------------
def _teacher_fingerprint(teacher_dir: Path) -> str:
    """Hash of the teacher's config and weight files (names, sizes and first/last MiB)."""
    h = hashlib.sha256()
    for p in sorted(teacher_dir.iterdir()):
        if p.name == "config.json" or p.suffix == ".safetensors" or p.name.endswith(".index.json"):
            size = p.stat().st_size
            h.update(f"{p.name}:{size}:".encode())
            with open(p, "rb") as f:
                h.update(f.read(1 << 20))
                if size > 2 << 20:
                    f.seek(size - (1 << 20))
                    h.update(f.read())
    return h.hexdigest()


def tokens_digest(tokens, n: int) -> str:
    arr = np.ascontiguousarray(np.asarray(tokens[:n]).astype(np.int64))
    return hashlib.sha256(arr.tobytes()).hexdigest()


def cache_key(teacher_dir, tokens, seq_len: int, k: int, windows: int) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:{seq_len}:{k}:{windows}:".encode())
    h.update(_teacher_fingerprint(Path(teacher_dir)).encode())
    arr = np.ascontiguousarray(np.asarray(tokens[: windows * seq_len + 1]))
    h.update(str(arr.dtype).encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:20]


@dataclass
class TeacherCache:
    """Top-k teacher logits for aligned windows of a token array (memory-mapped)."""

    path: Path
    seq_len: int
    k: int
    windows: int
    values: np.ndarray  # [windows, seq_len, k] float16
    indices: np.ndarray  # [windows, seq_len, k] int32
    tokens_sha256: str | None = None
    vocab: int = 0

    def check_tokens(self, tokens) -> None:
        """Refuse a token array other than the one the cache was computed on."""
        if len(tokens) < self.windows * self.seq_len + 1 or (
                self.tokens_sha256 and tokens_digest(tokens, self.windows * self.seq_len + 1) != self.tokens_sha256):
            raise WarmstartError("the teacher cache was computed on other tokens than the training tokens given",
                                 self.path)

    def window_batch(self, tokens, ids):
        """(x, y, TopK) of aligned windows `ids` (student input, next tokens, teacher targets)."""
        import torch

        rows = np.stack([np.asarray(tokens[c * self.seq_len: c * self.seq_len + self.seq_len + 1], dtype=np.int64)
                         for c in ids])
        t = torch.from_numpy(rows)
        v = torch.from_numpy(np.stack([self.values[c] for c in ids]).astype(np.float32))
        i = torch.from_numpy(np.stack([self.indices[c] for c in ids]).astype(np.int64))
        return t[:, :-1], t[:, 1:], TopK(v, i)


def open_cache(path) -> TeacherCache:
    path = Path(path)
    try:
        meta = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise WarmstartError(f"not a teacher cache (no readable {MANIFEST}): {err}", path) from None
    values = np.load(path / "values.npy", mmap_mode="r")
    indices = np.load(path / "indices.npy", mmap_mode="r")
    shape = (meta["windows"], meta["seq_len"], meta["k"])
    if values.shape != shape or indices.shape != shape:
        raise WarmstartError(f"teacher cache arrays have shapes {values.shape}, {indices.shape}, not {shape}", path)
    return TeacherCache(path, meta["seq_len"], meta["k"], meta["windows"], values, indices,
                        meta.get("tokens_sha256"), int(meta.get("vocab", 0)))


def teacher_cache(teacher_dir, tokens, *, seq_len: int, k: int = 64, windows: int | None = None,
                  root=None, batch_size: int = 8, lm=None, progress: bool = False) -> TeacherCache:
    """The cache of `teacher_dir`'s top-k logits on the first `windows` aligned windows of `tokens`.

    Built once (one teacher forward per window) and reused by every later call
    with the same teacher, tokens, seq_len, k and windows; written atomically.
    """
    import torch

    from warmstart.checkpoint.writer import atomic_directory

    teacher_dir = Path(teacher_dir)
    most = (len(tokens) - 1) // seq_len
    windows = most if windows is None else int(windows)
    if windows < 1 or windows > most:
        raise WarmstartError(f"teacher cache: {windows} windows of {seq_len} asked, the tokens hold {most}")
    if root is None:
        from warmstart.assets import cache_dir

        root = cache_dir() / "distill"
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"topk-{cache_key(teacher_dir, tokens, seq_len, k, windows)}"
    if (target / MANIFEST).exists():
        return open_cache(target)
    if lm is None:
        import transformers

        lm = transformers.AutoModelForCausalLM.from_pretrained(str(teacher_dir), dtype=torch.float32).eval()
    vocab = lm.config.vocab_size
    if k > vocab:
        raise WarmstartError(f"teacher cache: k {k} exceeds the teacher's vocabulary {vocab}", teacher_dir)
    try:
        with atomic_directory(target) as tmp:
            values = np.lib.format.open_memmap(tmp / "values.npy", mode="w+", dtype=np.float16,
                                               shape=(windows, seq_len, k))
            indices = np.lib.format.open_memmap(tmp / "indices.npy", mode="w+", dtype=np.int32,
                                                shape=(windows, seq_len, k))
            with torch.inference_mode():
                for start in range(0, windows, batch_size):
                    ids = range(start, min(windows, start + batch_size))
                    x = torch.from_numpy(np.stack([np.asarray(tokens[c * seq_len: c * seq_len + seq_len],
                                                              dtype=np.int64) for c in ids]))
                    tk = top_k(lm(input_ids=x, use_cache=False).logits, k)
                    values[start:start + len(ids)] = tk.values.numpy().astype(np.float16)
                    indices[start:start + len(ids)] = tk.indices.numpy().astype(np.int32)
                    if progress:
                        print(f"teacher cache: {start + len(ids)}/{windows} windows", flush=True)
            values.flush()
            indices.flush()
            del values, indices
            (tmp / MANIFEST).write_text(json.dumps({
                "version": CACHE_VERSION, "teacher": str(teacher_dir), "seq_len": seq_len, "k": k,
                "windows": windows, "vocab": vocab, "tokens": windows * seq_len + 1,
                "tokens_sha256": tokens_digest(tokens, windows * seq_len + 1)}))
    except OutputExists:
        pass  # built meanwhile by another process: theirs is complete (renamed into place)
    return open_cache(target)


# -- the training mode ---------------------------------------------------------------------
class Distiller:
    """What :func:`warmstart.bench.train.train` needs to distill: batches, loss and the teacher's FLOPs.

    With a `cache`, each step's windows are aligned cached windows drawn from
    ``numpy.random.default_rng([data_seed, step])`` (deterministic, so resuming
    keeps the data order); with a live `teacher` module, the usual random
    windows and a teacher forward per batch. Either way the teacher's forward
    FLOPs, 2 x teacher parameters x tokens, are counted.
    """

    def __init__(self, *, alpha: float = 0.5, temperature: float = 1.0, cache: TeacherCache | None = None,
                 teacher=None, teacher_params: int | None = None, norms_only: bool = False):
        if (cache is None) == (teacher is None):
            raise WarmstartError("distillation needs either a teacher cache or a live teacher, not both")
        distill_loss(_zeros(), _zeros_long(), _zeros(), alpha=alpha,
                     temperature=temperature)  # validates alpha and temperature
        self.alpha, self.temperature, self.cache, self.teacher = float(alpha), float(temperature), cache, teacher
        if teacher_params is None:
            if teacher is None:
                raise WarmstartError("give teacher_params with a teacher cache (its FLOPs are counted)")
            teacher_params = sum(p.numel() for p in teacher.parameters())
        self.teacher_params = int(teacher_params)
        self.norms_only = bool(norms_only)
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    def prepare(self, net) -> None:
        """Before training (fresh or resumed): PERP freezes all but norms and biases."""
        if self.norms_only:
            only_norms_and_biases(net)

    def check(self, train_tokens, seq_len: int, vocab_size: int | None = None) -> None:
        if self.cache is not None:
            if self.cache.seq_len != seq_len:
                raise WarmstartError(f"the teacher cache holds windows of {self.cache.seq_len} tokens, training "
                                     f"uses {seq_len}", self.cache.path)
            self.cache.check_tokens(train_tokens)
            if vocab_size is not None and self.cache.vocab:
                check_vocab(self.cache.vocab, vocab_size, self.cache.path)
        elif vocab_size is not None:
            check_vocab(int(self.teacher.config.vocab_size), vocab_size)

    def offsets(self, n_tokens: int, seq_len: int, batch_size: int, data_seed: int, step: int):
        if self.cache is None:
            from warmstart.bench.train import batch_offsets

            return batch_offsets(n_tokens, seq_len, batch_size, data_seed, step)
        rng = np.random.default_rng([int(data_seed), int(step)])
        return rng.integers(0, self.cache.windows, size=batch_size) * seq_len

    def loss(self, net, x, y, offsets):
        import torch

        logits = net(input_ids=x).logits
        if self.cache is not None:
            ids = [int(o) // self.cache.seq_len for o in offsets]
            v = torch.from_numpy(np.stack([self.cache.values[c] for c in ids]).astype(np.float32))
            i = torch.from_numpy(np.stack([self.cache.indices[c] for c in ids]).astype(np.int64))
            teacher = TopK(v.to(logits.device), i.to(logits.device))
        else:
            with torch.no_grad():
                teacher = self.teacher(input_ids=x).logits
        return distill_loss(logits, y, teacher, alpha=self.alpha, temperature=self.temperature)[0]

    def flops(self, tokens: int) -> float:
        return teacher_flops(self.teacher_params, tokens)


def _zeros():
    import torch

    return torch.zeros(1, 2)


def _zeros_long():
    import torch

    return torch.zeros(1, dtype=torch.long)


# -- PERP -----------------------------------------------------------------------------
def only_norms_and_biases(model) -> int:
    """Freeze every parameter but norm weights and biases (PERP); returns how many stay trainable."""
    import torch

    keep = set()
    for mod in model.modules():
        is_norm = "norm" in type(mod).__name__.lower() or isinstance(mod, torch.nn.LayerNorm)
        for name, p in mod.named_parameters(recurse=False):
            if is_norm or name == "bias":
                keep.add(id(p))
    n = 0
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
        n += p.numel() if id(p) in keep else 0
    if n == 0:
        raise WarmstartError("the model has no norm weights or biases to train")
    return n


def teacher_flops(teacher_params: int, tokens: int) -> float:
    """Forward FLOPs of the teacher on `tokens` tokens: 2 x parameters x tokens (cached or live)."""
    return 2.0 * float(teacher_params) * float(tokens)
