"""Bench data: held-out split, BPE round trip, packing, caching, corpus errors."""

from __future__ import annotations

import numpy as np
import pytest

from warmstart.bench import data as D

WORDS = "the king queen shall speak of love and war upon a summer day when night falls dark".split()


def write_corpus(folder, docs: int = 3, lines: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in range(docs):
        text = "".join(" ".join(rng.choice(WORDS, size=8)) + ".\n" for _ in range(lines))
        p = folder / f"doc{d}.txt"
        p.write_text(text)
        paths.append(p)
    return paths


def test_split_document_at_a_line_boundary():
    text = "".join(f"line {i}\n" for i in range(100))
    train, held = D.split_document(text, 0.1)
    assert train + held == text
    assert held.startswith("line ") and train.endswith("\n")
    assert abs(len(held) - 0.1 * len(text)) <= len("line 99\n")


def test_prepare_round_trip_and_split(tmp_path):
    from tokenizers import Tokenizer

    files = write_corpus(tmp_path / "corpus")
    out = D.prepare({"main": files}, vocab_size=300, heldout=0.1, cache=tmp_path / "cache")["main"]
    assert out.train.dtype == np.uint16 and out.val.dtype == np.uint16
    assert out.vocab_size == 300 and out.documents == 3
    tok = Tokenizer.from_file(str(out.tokenizer_dir / "tokenizer.json"))
    eot = tok.token_to_id(D.EOT)
    # Decoding each packed document gives back exactly the split text, independently recomputed here.
    expect_train, expect_val = zip(*(D.split_document(p.read_text(), 0.1) for p in files))

    def docs(arr):
        ids = arr.tolist()
        cuts = [i for i, t in enumerate(ids) if t == eot]
        starts = [0] + [c + 1 for c in cuts[:-1]]
        return [tok.decode(ids[s:c]) for s, c in zip(starts, cuts)]

    assert docs(out.train) == list(expect_train)
    assert docs(out.val) == list(expect_val)
    assert int(out.train.max()) < 300


def test_prepare_is_cached_by_content(tmp_path):
    files = write_corpus(tmp_path / "corpus")
    a = D.prepare({"main": files}, vocab_size=300, cache=tmp_path / "cache")["main"]
    stamp = (a.tokenizer_dir / "tokenizer.json").stat().st_mtime_ns
    b = D.prepare({"main": files}, vocab_size=300, cache=tmp_path / "cache")["main"]
    assert b.tokenizer_dir == a.tokenizer_dir
    assert (b.tokenizer_dir / "tokenizer.json").stat().st_mtime_ns == stamp  # not rebuilt
    files[0].write_text(files[0].read_text() + "a new line.\n")
    c = D.prepare({"main": files}, vocab_size=300, cache=tmp_path / "cache")["main"]
    assert c.tokenizer_dir != a.tokenizer_dir
    assert not list((tmp_path / "cache" / "bench").glob(".*partial*"))


def test_two_corpora_share_one_tokenizer(tmp_path):
    a = write_corpus(tmp_path / "a", seed=1)
    b = write_corpus(tmp_path / "b", seed=2)
    out = D.prepare({"main": a, "other": b}, vocab_size=300, cache=tmp_path / "cache")
    assert out["main"].tokenizer_dir == out["other"].tokenizer_dir
    assert not np.array_equal(out["main"].train[:50], out["other"].train[:50])


def test_corpus_errors(tmp_path):
    with pytest.raises(D.CorpusError, match="does not exist"):
        D.corpus_files([tmp_path / "nope.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.CorpusError, match="holds no files"):
        D.corpus_files([tmp_path / "empty"])
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n")
    with pytest.raises(D.CorpusError, match="is empty"):
        D.prepare({"main": [blank]}, cache=tmp_path / "cache")


def test_stdlib_corpus_leaves_out_tests():
    files = D.stdlib_files()
    assert len(files) > 100
    assert all(f.suffix == ".py" for f in files)
    assert not any("test" in f.parts[:-1] or "tests" in f.parts[:-1] for f in files)
    assert any(f.name == "json" or f.parent.name == "json" for f in files)
