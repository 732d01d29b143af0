"""Diagonal Fisher information of a causal language model, estimated once and stored beside it.

"Merging Models with Fisher-Weighted Averaging" (Matena and Raffel, 2022)
weighs each parameter of each model by its diagonal Fisher,
``F = E_x E_(y ~ p_theta(.|x)) [ (d/d theta log p_theta(y|x))^2 ]``.

Labels are **sampled from the model** (the true Fisher, as in the paper),
not taken from the data's next tokens (that would be the "empirical
Fisher"). Contexts are the data's tokens (teacher forcing). For a batch of B
sequences of L tokens, one backward pass of ``sum_t log p(y_t | x_<t)`` with
every ``y_t`` sampled gives an unbiased estimate of ``sum_t F_t``: the score
of a sampled label has mean zero given its context, so the cross terms of the
squared sum vanish in expectation. The stored Fisher is the average over
batches of that squared gradient divided by B * L: the per-token Fisher.

Storage: ``fisher.safetensors`` in the model directory when it is writable,
else in the cache (``<cache>/fisher/<hash of the model path>/``), under the
checkpoint's own tensor names (a tied head gets its embedding's Fisher). The
header records what it was estimated from (the data's SHA-256, batches,
batch size, sequence length, seed and the weights files' sizes and mtimes);
a stored Fisher is reused while those match, or whenever no data is given.

Estimation loads the whole model (parameters, gradients and the Fisher sum:
three copies in fp32); the merge that uses the result streams as usual.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from warmstart.assets import cache_dir
from warmstart.checkpoint.atomic import replacing
from warmstart.checkpoint.reader import Checkpoint
from warmstart.checkpoint.safetensors_format import read_header
from warmstart.checkpoint.tensor_file import TensorFile
from warmstart.merge.methods import MergeError

FISHER_FILE = "fisher.safetensors"
DEFAULT_BATCH_SIZE = 4
DEFAULT_SEQ_LEN = 128
DEFAULT_SEED = 0


# --- estimation on an in-memory model ----------------------------------------------


def estimate_fisher(model, batches: Iterable, *, seed: int = DEFAULT_SEED, progress: bool = False,
                    total: int | None = None) -> dict:
    """Per-token diagonal Fisher of `model` (a causal LM) on token batches [B, L], labels sampled.

    Returns ``{parameter name: fp32 tensor}`` for every trainable parameter,
    tied parameters under each of their names.
    """
    import torch

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise MergeError("model has no trainable parameters to estimate a Fisher for")
    sums = {id(p): torch.zeros_like(p, dtype=torch.float32, device="cpu") for _, p in params}
    gen = torch.Generator().manual_seed(seed)
    tokens = 0
    count = 0
    was_training = model.training
    model.eval()  # the Fisher of the deterministic model: no dropout
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="estimating Fisher", unit="batch", leave=False)
    try:
        for batch in batches:
            batch = torch.as_tensor(batch, dtype=torch.long)
            if batch.dim() != 2:
                raise ValueError(f"token batches must be [batch, seq], got shape {list(batch.shape)}")
            device = next(model.parameters()).device
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=batch.to(device)).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            with torch.no_grad():
                probs = logp.detach().exp().reshape(-1, logp.shape[-1]).cpu()
                labels = torch.multinomial(probs, 1, generator=gen).to(device)
            picked = logp.reshape(-1, logp.shape[-1]).gather(1, labels).sum()
            picked.backward()
            for _, p in params:
                if p.grad is not None:
                    sums[id(p)].add_(p.grad.detach().float().cpu().square())
            tokens_in_batch = batch.numel()
            tokens += tokens_in_batch
            count += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if count == 0:
        raise MergeError("no batches to estimate the Fisher on")
    per_batch_tokens = tokens / count
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in sums:
            out[name] = sums[id(p)] / (count * per_batch_tokens)
    return out


# --- data ---------------------------------------------------------------------------


def load_tokenizer(model_dir: Path):
    """The checkpoint's own tokenizer: tokenizer.json through `tokenizers`, else transformers (local files only)."""
    if (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        return lambda text: tok.encode(text, add_special_tokens=False).ids
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=False)
    except Exception as err:
        raise MergeError(f"no tokenizer to read the Fisher data with ({type(err).__name__})", model_dir) from None
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


def token_batches(data_file: Path, encode, batches: int, batch_size: int, seq_len: int):
    """The first `batches` batches of consecutive [batch_size, seq_len] chunks of the file's tokens."""
    import torch

    try:
        text = Path(data_file).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise MergeError("Fisher data file not found", data_file) from None
    except OSError as err:
        raise MergeError(f"cannot read Fisher data: {err.strerror}", data_file) from None
    ids = encode(text)
    need = batches * batch_size * seq_len
    if len(ids) < need:
        have = len(ids) // (batch_size * seq_len)
        raise MergeError(f"Fisher data holds {len(ids)} tokens, enough for {have} of the {batches} batches of "
                         f"{batch_size} x {seq_len} asked for (lower --fisher-batches)", data_file)
    t = torch.tensor(ids[:need], dtype=torch.long)
    return list(t.reshape(batches, batch_size, seq_len))


# --- storage ------------------------------------------------------------------------


def _cache_location(model_dir: Path) -> Path:
    key = hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:20]
    return cache_dir() / "fisher" / key / FISHER_FILE


def fisher_locations(model_dir: Path) -> list[Path]:
    """Where a model's Fisher may be stored: beside the weights, then the cache."""
    return [Path(model_dir) / FISHER_FILE, _cache_location(Path(model_dir))]


def weights_fingerprint(model_dir: Path) -> str:
    ckpt = Checkpoint(model_dir)
    parts = []
    for file in sorted({i.file for i in ckpt.tensors.values()}):
        st = file.stat()
        parts.append(f"{file.name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stored_metadata(path: Path) -> dict | None:
    try:
        _, meta = read_header(path)
    except Exception:
        return None
    return meta


def find_fisher(model_dir: Path, want: dict | None = None) -> Path | None:
    """A stored Fisher for the model (matching `want`'s metadata when given)."""
    fp = weights_fingerprint(model_dir)
    for path in fisher_locations(model_dir):
        if not path.is_file():
            continue
        meta = _stored_metadata(path)
        if meta is None or meta.get("weights") != fp:
            continue  # written for other weights
        if want is None or all(meta.get(k) == v for k, v in want.items()):
            return path
    return None


def _writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK)


def _save_atomic(tensors: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    with replacing(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def ensure_fisher(model_dir, data_file=None, batches: int | None = None, *, batch_size: int = DEFAULT_BATCH_SIZE,
                  seq_len: int = DEFAULT_SEQ_LEN, seed: int = DEFAULT_SEED, progress: bool = False) -> Path:
    """The path of the model's Fisher, estimated on `data_file` and stored now if not stored before."""
    import torch

    model_dir = Path(model_dir)
    if data_file is None:
        found = find_fisher(model_dir)
        if found is None:
            raise MergeError("method 'fisher' needs --fisher-data FILE: no Fisher is stored for this checkpoint",
                             model_dir)
        return found
    data_file = Path(data_file)
    if not data_file.is_file():
        raise MergeError("Fisher data file not found", data_file)
    batches = 8 if batches is None else int(batches)
    for what, v in (("--fisher-batches", batches), ("batch size", batch_size), ("sequence length", seq_len)):
        if v < 1:
            raise MergeError(f"{what} must be at least 1, got {v}")
    want = {"data_sha256": _sha256(data_file), "batches": str(batches), "batch_size": str(batch_size),
            "seq_len": str(seq_len), "seed": str(seed), "labels": "sampled from the model"}
    found = find_fisher(model_dir, want)
    if found is not None:
        return found

    ckpt = Checkpoint(model_dir)
    encode = load_tokenizer(model_dir)
    data = token_batches(data_file, encode, batches, batch_size, seq_len)
    vocab = ckpt.config.get("vocab_size")
    if vocab is not None and max(int(b.max()) for b in data) >= int(vocab):
        raise MergeError(f"the tokenizer gives ids beyond the model's vocab_size {vocab}", model_dir)
    import transformers

    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.float32, local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError) as err:
        raise MergeError(f"cannot load as a causal language model for the Fisher: {str(err).splitlines()[0]}",
                         model_dir) from None
    fisher = estimate_fisher(model, data, seed=seed, progress=progress, total=len(data))
    del model
    names = set(ckpt.names())
    stored = {n: t for n, t in fisher.items() if n in names}
    # Tied tensors share storage; safetensors wants them apart.
    seen: set[int] = set()
    for n, t in list(stored.items()):
        if t.data_ptr() in seen:
            stored[n] = t.clone()
        seen.add(stored[n].data_ptr())
    if not stored:
        raise MergeError("none of the model's parameters match the checkpoint's tensor names", model_dir)
    meta = {**want, "weights": weights_fingerprint(model_dir), "data_file": data_file.name,
            "per": "token", "format": "pt"}
    for path in fisher_locations(model_dir):
        if path.parent == model_dir and not _writable(model_dir):
            continue
        try:
            _save_atomic(stored, path, meta)
            return path
        except OSError:
            continue
    raise MergeError("cannot store the Fisher beside the model nor in the cache", model_dir)


class FisherFile:
    """A stored Fisher, read tensor by tensor like a checkpoint."""

    def __init__(self, path: Path):

        self.path = Path(path)
        try:
            infos, self.metadata = read_header(self.path)
        except Exception as err:
            raise MergeError(f"cannot read the stored Fisher: {err}", self.path) from None
        self.infos = infos
        self.tensors = TensorFile(infos)

    def check_against(self, ckpt) -> None:
        for name, info in self.infos.items():
            if name not in ckpt:
                raise MergeError(f"stored Fisher has tensor {name!r}, which the checkpoint {ckpt.path} lacks",
                                 self.path)
            if tuple(ckpt.info(name).shape) != tuple(info.shape):
                raise MergeError(f"stored Fisher of {name!r} has shape {list(info.shape)}, the checkpoint "
                                 f"{list(ckpt.info(name).shape)}", self.path)

    def describe(self) -> str:
        return json.dumps(self.metadata, sort_keys=True)
