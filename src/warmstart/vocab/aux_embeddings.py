"""Auxiliary static embeddings, trained on the target corpus with gensim's FastText.

FOCUS and OMP need to know which new tokens are alike before the model has
seen any of them. They learn it from the target corpus: the corpus is
tokenized with the *new* tokenizer, and a FastText skip-gram model is trained
on those token sequences, so every new token gets a static vector (tokens
absent from the corpus still get one from their character n-grams).

Training is the slow part of a transplant, so the vectors are cached under
the warmstart cache directory, keyed by a hash of the corpus bytes, the
tokenizer and the training settings: a second run on the same corpus reads
them back in milliseconds.

Also here: reading and writing word vectors in the plain-text ``.vec``
format that WECHSEL's aligned embeddings come in, and training such vectors
on a corpus (for a same-language transfer, one set serves as both sides).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from warmstart.assets import cache_dir
from warmstart.checkpoint.atomic import replacing
from warmstart.errors import WarmstartError
from warmstart.inputs import check_text_file, open_regular, require_regular_file

AUX_FORMAT = 1  # bump when the training recipe changes, so old caches are not reused
CHUNK_CHARS = 2000


class CorpusError(WarmstartError):
    """A corpus file that is missing, unreadable or empty."""


def check_corpus(files: Sequence[str | Path]) -> list[Path]:
    """The corpus files: each a readable regular file of UTF-8 text, holding some text in all."""
    paths = [Path(f) for f in files]
    if not paths:
        raise CorpusError("no corpus files given (--corpus FILE ...)")
    for p in paths:
        if not p.exists() and not p.is_symlink():
            raise CorpusError("no such corpus file", p)
        if p.is_dir():
            raise CorpusError("corpus file is a directory; give the text files inside it", p)
        require_regular_file(p, "corpus file", CorpusError)
        check_text_file(p, "corpus file", CorpusError)
    if not any(_read(p).strip() for p in paths):
        raise CorpusError("corpus is empty (no text in any file)", paths[0])
    return paths


def _read(path: Path) -> str:
    try:
        with open_regular(path, "corpus file", CorpusError) as f:
            return f.read().decode("utf-8", errors="replace")
    except OSError as err:
        raise CorpusError(f"cannot read corpus file: {err.strerror}", path) from err


def text_chunks(files: Sequence[Path], chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """The corpus as pieces of about `chunk_chars` characters, cut at line ends."""
    for path in files:
        buf: list[str] = []
        size = 0
        for line in _read(path).splitlines(keepends=True):
            buf.append(line)
            size += len(line)
            if size >= chunk_chars:
                yield "".join(buf)
                buf, size = [], 0
        if buf:
            yield "".join(buf)


def corpus_hash(files: Sequence[Path], *extra: str) -> str:
    h = hashlib.sha256()
    for s in extra:
        h.update(s.encode("utf-8"))
        h.update(b"\0")
    for p in files:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0file\0")
    return h.hexdigest()[:32]


@dataclass
class AuxVectors:
    """One static vector per token id of a tokenizer (zeros where none could be made)."""

    vectors: np.ndarray  # float32 [n_tokens, dim]
    known: np.ndarray  # bool [n_tokens]: the token has a vector
    seconds: float  # training time (0 when read from the cache)
    cached: bool
    path: Path | None = None


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with replacing(path) as tmp:
        np.savez(tmp, **arrays)


def token_vectors(vocab, files: Sequence[str | Path], *, dim: int = 100, epochs: int = 5, window: int = 5,
                  seed: int = 0, cache: bool = True, progress: bool = False) -> AuxVectors:
    """FastText vectors for every token of `vocab` (a :class:`~warmstart.vocab.match.Vocab`).

    The corpus is tokenized with that vocabulary's tokenizer, token strings
    are the "words", and special tokens get no vector.
    """
    import gensim
    from gensim.models import FastText

    paths = check_corpus(files)
    settings = f"fasttext-tokens v{AUX_FORMAT} dim={dim} epochs={epochs} window={window} seed={seed} gensim={gensim.__version__.split('.')[0]}"
    key = corpus_hash(paths, settings, vocab.backend.to_str())
    target = cache_dir() / "aux-embeddings" / f"{key}.npz"
    if cache and target.is_file():
        with np.load(target) as z:
            return AuxVectors(z["vectors"], z["known"], 0.0, True, target)

    backend = vocab.backend
    sentences: list[list[str]] = []
    batch: list[str] = []

    def flush():
        for enc in backend.encode_batch(batch, add_special_tokens=False):
            if enc.tokens:
                sentences.append(list(enc.tokens))
        batch.clear()

    for chunk in text_chunks(paths):
        batch.append(chunk)
        if len(batch) >= 256:
            flush()
    flush()
    if not sentences:
        raise CorpusError("corpus is empty after tokenization", paths[0])

    start = time.perf_counter()
    model = FastText(vector_size=dim, window=window, min_count=1, sg=1, min_n=2, max_n=5, bucket=200_000,
                     epochs=epochs, workers=_workers(), seed=seed)
    model.build_vocab(corpus_iterable=sentences)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="aux embeddings (FastText)", leave=False)
        for _ in range(epochs):
            model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=1)
            bar.update(1)
        bar.close()
    else:
        model.train(corpus_iterable=sentences, total_examples=len(sentences), epochs=epochs)
    seconds = time.perf_counter() - start

    wv = model.wv
    vectors = np.zeros((len(vocab), dim), dtype=np.float32)
    known = np.zeros(len(vocab), dtype=bool)
    for i, t in enumerate(vocab.tokens):
        if t is None or i in vocab.special:
            continue
        v = wv[t]  # in-vocabulary, or built from character n-grams
        if np.any(v):
            vectors[i] = v
            known[i] = True
    if cache:
        _save_atomic(target, {"vectors": vectors, "known": known})
    return AuxVectors(vectors, known, seconds, False, target if cache else None)


# -- word vectors (.vec) -------------------------------------------------------------
WORD_RE = re.compile(r"\w+|[^\w\s]+")


def read_vec(path: str | Path, limit: int | None = None) -> tuple[list[str], np.ndarray]:
    """Words and vectors of a text ``.vec`` file (optional "COUNT DIM" header line)."""
    p = Path(path)
    if not p.exists():
        raise WarmstartError("no such word-vector file", p)
    require_regular_file(p, "word-vector file")
    words: list[str] = []
    rows: list[np.ndarray] = []
    dim = None
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.rstrip("\n").rstrip(" ").split(" ")
                if lineno == 1 and len(parts) == 2 and all(x.isdigit() for x in parts):
                    dim = int(parts[1])
                    continue
                if len(parts) < 2:
                    continue
                try:
                    vec = np.asarray(parts[1:], dtype=np.float32)
                except ValueError:
                    raise WarmstartError(f"line {lineno} is not 'WORD v1 v2 ...'", p) from None
                if dim is None:
                    dim = len(vec)
                if len(vec) != dim:
                    raise WarmstartError(f"line {lineno} has {len(vec)} numbers, the file's dimension is {dim}", p)
                words.append(parts[0])
                rows.append(vec)
                if limit is not None and len(words) >= limit:
                    break
    except OSError as err:
        raise WarmstartError(f"cannot read word vectors: {err.strerror}", p) from err
    if not words:
        raise WarmstartError("no word vectors in file", p)
    return words, np.stack(rows)


def write_vec(path: str | Path, words: Sequence[str], vectors: np.ndarray) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{len(words)} {vectors.shape[1]}\n")
        for w, v in zip(words, vectors):
            f.write(w + " " + " ".join(f"{x:.5f}" for x in v) + "\n")


def train_word_vectors(files: Sequence[str | Path], out: str | Path, *, dim: int = 100, epochs: int = 5,
                       min_count: int = 3, seed: int = 0) -> float:
    """Train word-level FastText vectors on a corpus and write them as ``.vec``; returns seconds."""
    from gensim.models import FastText

    paths = check_corpus(files)
    sentences = [WORD_RE.findall(c) for c in text_chunks(paths)]
    sentences = [s for s in sentences if s]
    start = time.perf_counter()
    model = FastText(sentences=sentences, vector_size=dim, window=5, min_count=min_count, sg=1, epochs=epochs,
                     workers=_workers(), seed=seed, bucket=200_000)
    seconds = time.perf_counter() - start
    words = list(model.wv.index_to_key)
    write_vec(out, words, model.wv.vectors[: len(words)])
    return seconds
