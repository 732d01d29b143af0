"""Corpus -> BPE tokenizer -> packed, memory-mapped token arrays, cached.

A corpus is a list of text documents: Shakespeare's works (the default,
:func:`warmstart.assets.shakespeare_files`), the Python standard library's
own ``*.py`` sources as a code corpus (test suites left out), or files and
folders the user names.

Split: the last ``heldout`` fraction of every document (cut at a line
boundary) is held out for evaluation, so the held-out text is unseen but
from the same mix of documents. The tokenizer is a byte-level BPE trained
with the ``tokenizers`` library on the training split only. Documents are
joined with an end-of-text token and packed into one 1-D ``uint16`` array
per split (``uint32`` for vocabularies over 65,535), saved as ``.npy`` and
opened with ``numpy.load(mmap_mode="r")``.

Everything is cached under ``<cache>/bench/data-<hash>``, the hash covering
the documents' bytes, the split, the vocabulary size and this format's
version, and is built in a temporary sibling renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from warmstart import assets
from warmstart.checkpoint.atomic import replacing_directory
from warmstart.corpus import CorpusError, corpus_files, stdlib_files  # noqa: F401  (re-exported)
from warmstart.errors import WarmstartError

FORMAT_VERSION = 1
EOT = "<|endoftext|>"

@dataclass
class TokenData:
    """The packed splits of one corpus under a shared tokenizer."""

    name: str
    train: np.ndarray
    val: np.ndarray
    tokenizer_dir: Path
    vocab_size: int
    documents: int

    def tokenizer_files(self) -> list[Path]:
        return sorted(p for p in self.tokenizer_dir.iterdir() if p.is_file())


def read_documents(files: Sequence[Path], max_bytes: int | None = None) -> list[str]:
    docs: list[str] = []
    total = 0
    for f in files:
        try:
            text = Path(f).read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            raise CorpusError(f"cannot read corpus file: {err.strerror}", f) from None
        if max_bytes is not None and total + len(text) > max_bytes:
            text = text[: max(0, max_bytes - total)]
        if text.strip():
            docs.append(text)
            total += len(text)
        if max_bytes is not None and total >= max_bytes:
            break
    return docs


def split_document(text: str, heldout: float) -> tuple[str, str]:
    """(train, held-out): the held-out part is the document's tail, cut at a line start."""
    if heldout <= 0:
        return text, ""
    cut = int(len(text) * (1.0 - heldout))
    nl = text.rfind("\n", 0, cut)
    if nl > 0:
        cut = nl + 1
    return text[:cut], text[cut:]


def _hash_docs(h, docs: Sequence[str]) -> None:
    for d in docs:
        b = d.encode("utf-8", errors="replace")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE trained on `texts` (the training split only)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def _encode(tok, docs: Sequence[str], dtype) -> np.ndarray:
    eot = tok.token_to_id(EOT)  # None for a foreign tokenizer without it: documents simply follow each other
    parts = []
    batch = 64
    for i in range(0, len(docs), batch):
        chunk = [d for d in docs[i:i + batch] if d]
        for enc in tok.encode_batch(chunk, add_special_tokens=False):
            parts.append(np.asarray(enc.ids, dtype=dtype))
            if eot is not None:
                parts.append(np.asarray([eot], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def prepare(corpora: dict[str, Sequence[Path]], *, vocab_size: int = 2048, heldout: float = 0.05,
            max_bytes: int | None = None, tokenizer: Path | None = None, cache: Path | None = None,
            progress: bool = False) -> dict[str, TokenData]:
    """Tokenize and pack one or more corpora under one BPE trained on all their training splits.

    ``corpora`` maps a name to its document files. ``tokenizer``: an existing
    ``tokenizer.json`` (or a folder holding one) to use instead of training one,
    e.g. an existing checkpoint's. Returns name -> TokenData.
    """
    if not 0.0 < heldout < 0.5:
        raise WarmstartError(f"heldout must be between 0 and 0.5, got {heldout}")
    if vocab_size < 260 or vocab_size > 2**31:
        raise WarmstartError(f"vocab_size must be at least 260 (256 bytes and a few merges), got {vocab_size}")
    split: dict[str, tuple[list[str], list[str]]] = {}
    h = hashlib.sha256(f"v{FORMAT_VERSION}:{vocab_size}:{heldout}:{max_bytes}".encode())
    tok_file = None
    if tokenizer is not None:
        tok_file = Path(tokenizer)
        if tok_file.is_dir():
            tok_file = tok_file / "tokenizer.json"
        if not tok_file.is_file():
            raise WarmstartError("no tokenizer.json there", tokenizer)
        h.update(b"tokenizer:" + tok_file.read_bytes())
    for name in sorted(corpora):
        files = list(corpora[name])
        if not files:
            raise CorpusError(f"corpus {name!r} names no files")
        docs = read_documents(files, max_bytes)
        if not docs:
            raise CorpusError(f"corpus {name!r} is empty (no text in {len(files)} file(s))", files[0])
        pairs = [split_document(d, heldout) for d in docs]
        train_docs = [a for a, _ in pairs if a]
        val_docs = [b for _, b in pairs if b]
        if not val_docs:
            raise CorpusError(f"corpus {name!r} is too small to hold out {heldout:.0%} for evaluation", files[0])
        split[name] = (train_docs, val_docs)
        h.update(name.encode() + b"\0")
        _hash_docs(h, docs)
    key = h.hexdigest()[:16]
    root = (cache or assets.cache_dir()) / "bench" / f"data-{key}"
    if not (root / "meta.json").exists():
        _build(root, split, vocab_size, progress, tok_file)
    meta = json.loads((root / "meta.json").read_text())
    out = {}
    for name in corpora:
        out[name] = TokenData(
            name=name,
            train=np.load(root / f"{name}.train.npy", mmap_mode="r"),
            val=np.load(root / f"{name}.val.npy", mmap_mode="r"),
            tokenizer_dir=root / "tokenizer",
            vocab_size=meta["vocab_size"],
            documents=meta["corpora"][name]["documents"],
        )
    return out


def _build(root: Path, split, vocab_size: int, progress: bool, tok_file: Path | None = None) -> None:
    from tokenizers import Tokenizer

    with replacing_directory(root, keep_existing=True) as tmp:
        (tmp / "tokenizer").mkdir()
        if tok_file is not None:
            try:
                tok = Tokenizer.from_file(str(tok_file))
            except Exception as err:  # the tokenizers library's own parse errors
                raise WarmstartError(f"cannot read tokenizer: {err}", tok_file) from None
            for f in tok_file.parent.iterdir():
                if f.name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                    shutil.copy2(f, tmp / "tokenizer" / f.name)
        else:
            if progress:
                print(f"training a {vocab_size}-token BPE on the training split of {', '.join(split)} ...",
                      flush=True)
            all_train = [d for name in sorted(split) for d in split[name][0]]
            tok = train_tokenizer(all_train, vocab_size)
            _save_tokenizer(tok, tmp / "tokenizer")
        real_vocab = tok.get_vocab_size()
        dtype = np.uint16 if real_vocab <= 65535 else np.uint32
        meta = {"format": FORMAT_VERSION, "vocab_size": real_vocab, "eot_id": tok.token_to_id(EOT),
                "dtype": np.dtype(dtype).name, "corpora": {}}
        for name, (train_docs, val_docs) in split.items():
            tr = _encode(tok, train_docs, dtype)
            va = _encode(tok, val_docs, dtype)
            np.save(tmp / f"{name}.train.npy", tr)
            np.save(tmp / f"{name}.val.npy", va)
            meta["corpora"][name] = {"documents": len(train_docs), "train_tokens": int(tr.size),
                                     "val_tokens": int(va.size)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))


def _save_tokenizer(tok, folder: Path) -> None:
    """tokenizer.json plus the config transformers' AutoTokenizer needs."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=None)
    fast.save_pretrained(str(folder))


def windows(tokens: np.ndarray, offsets: Sequence[int], seq_len: int):
    """(inputs, next-token targets) for the windows of `seq_len` + 1 tokens starting at `offsets`."""
    import torch

    rows = np.stack([np.asarray(tokens[o:o + seq_len + 1], dtype=np.int64) for o in offsets])
    t = torch.from_numpy(rows)
    return t[:, :-1], t[:, 1:]
