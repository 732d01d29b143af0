"""Vocabulary transplant on tiny models with tiny tokenizers built here.

Expected values come from outside the code under test: hand computations
(sparsemax of a 3-vector, the GPT-2 byte alphabet), a second implementation
(sparsemax by bisection, means of pieces from the tokenizer's own encode),
or mathematical identities (exact OMP recovery of a 2-sparse signal,
convex-hull bounds, bit equality of copied rows).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny, make_bpe

from warmstart.cli import main
from warmstart.vocab.match import Scheme, byte_to_char, canonical, load_tokenizer, match_vocabs, retokenize, vocab_of
from warmstart.vocab.methods import Context, get_method, omp, omp_pooled, sparsemax

WORDS_A = ("the king and queen of england spoke to their people about war and peace in the morning "
           "while the soldiers waited near the castle gate for news from the north").split()
WORDS_B = ("def return import class self value index list dict print range lambda yield while for "
           "in if else elif try except finally with as").split()


def text_from(words, n: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))))
    return "\n".join(lines) + "\n"


OLD_SPECIALS = {"bos": "<s>", "eos": "</s>", "unk": "<unk>"}
NEW_SPECIALS = {"pad": "<pad>", "eos": "<|end|>", "bos": "<|begin|>", "unk": "<|unk|>"}


@pytest.fixture
def pair(tmp_path):
    """(model dir with its own byte-level BPE, new tokenizer dir, corpus file of the new domain)."""
    old_text = text_from(WORDS_A + WORDS_B[:5], 300, 1)
    new_text = text_from(WORDS_B + WORDS_A[:8], 300, 2)
    old_tok = tmp_path / "old-tok"
    make_bpe(old_tok, old_text, 400, OLD_SPECIALS)
    new_tok = make_bpe(tmp_path / "new-tok", new_text, 330, NEW_SPECIALS)
    n_old = len(load_tokenizer(old_tok))
    model = build_tiny("llama", tmp_path / "model", vocab_size=n_old, tie_word_embeddings=False,
                       bos_token_id=0, eos_token_id=1, pad_token_id=None)
    for f in old_tok.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(new_text * 3, encoding="utf-8")
    return model, new_tok, corpus


def load_tensors(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(d / "model.safetensors"))


def shared_ids(model: Path, new_tok: Path) -> list[tuple[int, int]]:
    """(new id, old id) of tokens spelled the same: both tokenizers are byte-level, so surfaces compare."""
    old = json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]
    new = json.loads((new_tok / "tokenizer.json").read_text())["model"]["vocab"]
    return [(i, old[t]) for t, i in new.items() if t in old]


# -- normalization of markers ---------------------------------------------------------
def test_byte_alphabet_matches_gpt2_by_hand():
    table = byte_to_char()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "\u0120"  # Ġ
    assert table[ord("\n")] == "\u010a"  # Ċ
    assert table[ord("\t")] == "\u0109"  # ĉ
    assert table[ord("a")] == "a"


@pytest.mark.parametrize("token, scheme, expected", [
    ("Ġhello", Scheme("byte_level"), b" hello"),
    ("ĊĠĠĠ", Scheme("byte_level"), b"\n   "),
    ("Ã©", Scheme("byte_level"), "é".encode()),  # é is bytes C3 A9, written as Ã ©
    ("\u2581hello", Scheme("metaspace"), b" hello"),
    ("<0x0A>", Scheme("metaspace", byte_fallback=True), b"\n"),
    ("##ing", Scheme("wordpiece"), b"ing"),
    ("walk", Scheme("wordpiece"), b" walk"),
    ("plain", Scheme("plain"), b"plain"),
])
def test_canonical_forms(token, scheme, expected):
    assert canonical(token, scheme) == expected


def test_markers_match_across_schemes(tmp_path):
    """A byte-level Ġcat, a SentencePiece ▁cat and a WordPiece cat are one token; ##s and s are one too."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bl = Tokenizer(models.BPE(vocab={"Ġ": 0, "c": 1, "a": 2, "t": 3, "s": 4, "Ġc": 5, "Ġca": 6, "Ġcat": 7},
                              merges=[("Ġ", "c"), ("Ġc", "a"), ("Ġca", "t")]))
    bl.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bl.decoder = decoders.ByteLevel()
    wp = Tokenizer(models.WordPiece(vocab={"[UNK]": 0, "cat": 1, "##s": 2, "dog": 3}, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    sp = Tokenizer(models.Unigram([("<unk>", 0.0), ("\u2581cat", -1.0), ("s", -2.0), ("\u2581", -3.0)], 0))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    sp.decoder = decoders.Metaspace()
    old = vocab_of(PreTrainedTokenizerFast(tokenizer_object=bl))
    for tok, unk in ((wp, "[UNK]"), (sp, "<unk>")):
        new = vocab_of(PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk))
        m = match_vocabs(old, new, len(old))
        cat = [i for i, t in enumerate(new.tokens) if t.endswith("cat")][0]
        s = [i for i, t in enumerate(new.tokens) if t.endswith("s") and "cat" not in t][0]
        assert m.source[cat] == 7
        assert m.source[s] == 4
        # re-tokenizing " cat" with the new model gives the one token
        assert retokenize(b" cat", new) == [cat]


# -- numeric building blocks ------------------------------------------------------------
def sparsemax_bisect(z: np.ndarray) -> np.ndarray:
    """Projection onto the simplex by bisection on the threshold (a second implementation)."""
    lo, hi = z.min() - 1.0, z.max()
    for _ in range(200):
        tau = (lo + hi) / 2
        if np.maximum(z - tau, 0).sum() > 1:
            lo = tau
        else:
            hi = tau
    return np.maximum(z - (lo + hi) / 2, 0)


def test_sparsemax_by_hand():
    idx, w = sparsemax(torch.tensor([[1.0, 0.5, -1.0]]))
    dense = torch.zeros(3).index_add_(0, idx[0], w[0])
    assert torch.allclose(dense, torch.tensor([0.75, 0.25, 0.0]))


@pytest.mark.parametrize("k", [2, 32])
def test_sparsemax_matches_bisection(k):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(20, 300, generator=gen, dtype=torch.float64) * 0.05  # flat rows: wide supports
    z[:10] *= 40  # peaked rows: small supports
    idx, w = sparsemax(z, k=k)
    for r in range(20):
        dense = torch.zeros(300, dtype=torch.float64).index_add_(0, idx[r], w[r]).numpy()
        assert np.allclose(dense, sparsemax_bisect(z[r].numpy()), atol=1e-9)
        assert (dense >= 0).all() and abs(dense.sum() - 1) < 1e-9


def test_omp_recovers_sparse_combination():
    gen = torch.Generator().manual_seed(1)
    d = torch.randn(60, 16, generator=gen, dtype=torch.float64)
    x = torch.stack([0.7 * d[3] - 0.2 * d[17], 1.5 * d[40] + 0.9 * d[2]])
    idx, coef = omp(x, d, 2)
    assert set(idx[0].tolist()) == {3, 17} and set(idx[1].tolist()) == {40, 2}
    got = {(r, int(i)): float(c) for r in range(2) for i, c in zip(idx[r], coef[r])}
    assert got[(0, 3)] == pytest.approx(0.7) and got[(0, 17)] == pytest.approx(-0.2)
    assert got[(1, 40)] == pytest.approx(1.5) and got[(1, 2)] == pytest.approx(0.9)
    # the pooled pursuit (each row over its own candidates) finds the same atoms and coefficients
    cand = torch.stack([torch.tensor([5, 17, 9, 3, 30]), torch.tensor([2, 11, 40, 7, 1])])
    local, pcoef = omp_pooled(x, d, cand, 2)
    chosen = cand.gather(1, local)
    for r in range(2):
        assert {int(i): float(c) for i, c in zip(chosen[r], pcoef[r])} == pytest.approx(
            {int(i): got[(r, int(i))] for i in idx[r]}, rel=1e-4)  # a tiny ridge in the pooled solve


def test_multivariate_fill_has_the_old_mean_and_covariance():
    from warmstart.vocab.methods import Init

    gen = torch.Generator().manual_seed(2)
    mix = torch.tensor([[1.0, 0, 0], [0.5, 2.0, 0], [0.0, -1.0, 0.3]])
    old = torch.randn(4000, 3, generator=gen) @ mix.T + torch.tensor([1.0, -2.0, 0.5])
    init = Init(np.full(30000, -1, np.int64), fill="multivariate", seed=3)
    new = init.apply(old).double().numpy()
    ref = old.double().numpy()
    assert np.allclose(new.mean(0), ref.mean(0), atol=0.05)
    assert np.allclose(np.cov(new.T), np.cov(ref.T), atol=0.08)


# -- transplant end to end ---------------------------------------------------------------
def run_vocab(model, out, new_tok, method, *extra) -> int:
    return main(["vocab", str(model), str(out), "--tokenizer", str(new_tok), "--method", method, "--quiet", *extra])


def test_copied_rows_are_bit_identical_and_fvt_is_the_mean_of_pieces(pair, tmp_path):
    from transformers import AutoTokenizer

    model, new_tok, _ = pair
    out = tmp_path / "out"
    assert run_vocab(model, out, new_tok, "fvt") == 0
    old_t, new_t = load_tensors(model), load_tensors(out)
    shared = shared_ids(model, new_tok)
    assert len(shared) > 50
    for name in ("model.embed_tokens.weight", "lm_head.weight"):  # untied: both get the treatment
        for nid, oid in shared:
            assert torch.equal(new_t[name][nid], old_t[name][oid])
    # A new token the old vocabulary lacks: the mean of the rows the old tokenizer splits its text into.
    old_tok = AutoTokenizer.from_pretrained(str(model))
    new_vocab = json.loads((new_tok / "tokenizer.json").read_text())["model"]["vocab"]
    checked = 0
    new_fast = AutoTokenizer.from_pretrained(str(new_tok))
    for token, nid in new_vocab.items():
        if nid in dict(shared) or token in NEW_SPECIALS.values():
            continue
        text = new_fast.convert_tokens_to_string([token])
        pieces = old_tok(text, add_special_tokens=False)["input_ids"]
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            expect = old_t[name][pieces].mean(0)
            assert torch.allclose(new_t[name][nid], expect, atol=1e-6)
        checked += 1
    assert checked > 20


def test_special_tokens_land_on_their_roles(pair, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, new_tok, _ = pair
    out = tmp_path / "out"
    assert run_vocab(model, out, new_tok, "copy") == 0
    nt = AutoTokenizer.from_pretrained(str(out))
    ot = AutoTokenizer.from_pretrained(str(model))
    old_t, new_t = load_tensors(model), load_tensors(out)
    emb = "model.embed_tokens.weight"
    for role in ("bos", "eos", "unk"):
        nid, oid = getattr(nt, f"{role}_token_id"), getattr(ot, f"{role}_token_id")
        assert nt.convert_ids_to_tokens(nid) == NEW_SPECIALS[role]
        assert torch.equal(new_t[emb][nid], old_t[emb][oid])
    # pad has no old counterpart: it gets the mean of the old rows
    pad = nt.pad_token_id
    assert torch.allclose(new_t[emb][pad], old_t[emb][: len(ot)].mean(0), atol=1e-6)
    cfg = json.loads((out / "config.json").read_text())
    gen = json.loads((out / "generation_config.json").read_text())
    assert cfg["vocab_size"] == len(nt)
    assert cfg["bos_token_id"] == gen["bos_token_id"] == nt.convert_tokens_to_ids("<|begin|>")
    assert cfg["eos_token_id"] == gen["eos_token_id"] == nt.convert_tokens_to_ids("<|end|>")
    lm = AutoModelForCausalLM.from_pretrained(str(out))
    ids = nt("def value return self", return_tensors="pt")["input_ids"]
    assert lm(ids).logits.shape[-1] == len(nt)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_tied_stays_tied(tmp_path, family):
    from transformers import AutoModelForCausalLM

    old_tok = make_bpe(tmp_path / "old-tok", text_from(WORDS_A, 200, 3), 300, OLD_SPECIALS)
    new_tok = make_bpe(tmp_path / "new-tok", text_from(WORDS_B, 200, 4), 280, NEW_SPECIALS)
    model = build_tiny(family, tmp_path / "model", vocab_size=len(load_tokenizer(old_tok)))
    for f in old_tok.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    assert run_vocab(model, out, new_tok, "fvt") == 0
    names = set(load_tensors(out))
    assert "lm_head.weight" not in names
    cfg = json.loads((out / "config.json").read_text())
    assert cfg.get("tie_word_embeddings", True) is True
    lm = AutoModelForCausalLM.from_pretrained(str(out))
    assert lm.get_output_embeddings().weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
    assert lm.get_input_embeddings().weight.shape[0] == len(load_tokenizer(new_tok))


def test_extend_leaves_old_rows_untouched(pair, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, new_tok, _ = pair
    out = tmp_path / "out"
    assert run_vocab(model, out, new_tok, "fvt", "--mode", "extend") == 0
    old_t, new_t = load_tensors(model), load_tensors(out)
    rows = old_t["model.embed_tokens.weight"].shape[0]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(new_t[name][:rows], old_t[name])
    ot = AutoTokenizer.from_pretrained(str(model))
    xt = AutoTokenizer.from_pretrained(str(out))
    new_vocab = json.loads((new_tok / "tokenizer.json").read_text())["model"]["vocab"]
    old_vocab = ot.get_vocab()
    # specials whose role the old tokenizer has (bos, eos, unk) keep the old token; pad is new
    kept_roles = {NEW_SPECIALS[r] for r in ("bos", "eos", "unk")}
    missing = [t for t in new_vocab if t not in old_vocab and t not in kept_roles]
    assert "<pad>" in missing
    assert len(xt) == rows + len(missing) == new_t["model.embed_tokens.weight"].shape[0]
    ext_vocab = xt.get_vocab()
    assert all(ext_vocab[t] == i for t, i in old_vocab.items())  # old ids unchanged
    assert all(ext_vocab[t] >= rows for t in missing)  # new tokens appended
    text = "def value return self lambda yield"
    assert xt.decode(xt(text, add_special_tokens=False)["input_ids"]) == text
    lm = AutoModelForCausalLM.from_pretrained(str(out))
    assert lm.config.vocab_size == len(xt)


def method_init(model: Path, new_tok: Path, method: str, **kw):
    old = vocab_of(load_tokenizer(model))
    new = vocab_of(load_tokenizer(new_tok))
    rows = load_tensors(model)["model.embed_tokens.weight"].shape[0]
    ctx = Context(old, new, match_vocabs(old, new, rows), rows, **kw)
    return ctx, get_method(method).fn(ctx)


def test_focus_rows_are_convex_combinations(pair, tmp_path, monkeypatch):
    monkeypatch.setenv("WARMSTART_CACHE", str(tmp_path / "cache"))
    model, new_tok, corpus = pair
    ctx, init = method_init(model, new_tok, "focus", corpus=[corpus], options={"aux_dim": 16, "aux_epochs": 2})
    focus_rows = np.setdiff1d(ctx.targets(), [])  # every target is combined (FOCUS or its FVT fallback)
    assert init.combined()[focus_rows].all()
    rows, vals = init.rows, init.vals
    assert (vals >= 0).all()
    sums = np.bincount(rows, weights=vals, minlength=len(init))
    assert np.allclose(sums[focus_rows], 1.0, atol=1e-5)
    # FOCUS weights only shared tokens, whose old ids the match gives
    shared_old = set(ctx.match.source[ctx.match.source >= 0].tolist())
    fallback = init.stats.get("fvt_fallback", 0)
    assert fallback < len(focus_rows) / 2
    emb = load_tensors(model)["model.embed_tokens.weight"]
    out = init.apply(emb, len(ctx.old))
    for r in focus_rows:
        cols = init.cols[rows == r]
        if fallback == 0:
            assert set(cols.tolist()) <= shared_old
        lo, hi = emb[cols].min(0).values, emb[cols].max(0).values
        assert bool(((out[r] >= lo - 1e-6) & (out[r] <= hi + 1e-6)).all())  # inside the hull's bounding box
        w = torch.from_numpy(vals[rows == r])
        assert torch.allclose(out[r], w @ emb[cols], atol=1e-6)


def test_omp_in_aux_space_gives_convex_rows(pair, tmp_path, monkeypatch):
    monkeypatch.setenv("WARMSTART_CACHE", str(tmp_path / "cache"))
    model, new_tok, corpus = pair
    ctx, init = method_init(model, new_tok, "omp", corpus=[corpus],
                            options={"aux_dim": 16, "aux_epochs": 2, "k": 4})
    targets = ctx.targets()
    assert init.combined()[targets].all()
    assert (init.vals >= 0).all()
    sums = np.bincount(init.rows, weights=init.vals, minlength=len(init))
    assert np.allclose(sums[targets], 1.0, atol=1e-5)
    per_row = np.bincount(init.rows, minlength=len(init))
    assert per_row[targets].max() <= 4 or init.stats.get("fvt_fallback", 0) > 0


def test_aux_embeddings_are_cached(pair, tmp_path, monkeypatch):
    from warmstart.vocab.aux_embeddings import token_vectors

    monkeypatch.setenv("WARMSTART_CACHE", str(tmp_path / "cache"))
    _, new_tok, corpus = pair
    vocab = vocab_of(load_tokenizer(new_tok))
    first = token_vectors(vocab, [corpus], dim=8, epochs=1)
    second = token_vectors(vocab, [corpus], dim=8, epochs=1)
    assert not first.cached and second.cached
    assert np.array_equal(first.vectors, second.vectors)
    assert list((tmp_path / "cache" / "aux-embeddings").glob("*.npz"))
    assert not first.known[list(vocab.special)].any()


def test_omp_and_multivariate_and_random_run(pair, tmp_path, monkeypatch):
    monkeypatch.setenv("WARMSTART_CACHE", str(tmp_path / "cache"))
    model, new_tok, corpus = pair
    old_t = load_tensors(model)
    shared = shared_ids(model, new_tok)
    for method in ("omp", "multivariate", "random"):
        out = tmp_path / f"out-{method}"
        extra = ["--corpus", str(corpus), "--aux-dim", "16", "--aux-epochs", "2", "--k", "4"] if method == "omp" else []
        assert run_vocab(model, out, new_tok, method, *extra) == 0
        new_t = load_tensors(out)["model.embed_tokens.weight"]
        same = sum(torch.equal(new_t[n], old_t["model.embed_tokens.weight"][o]) for n, o in shared)
        assert same == (0 if method == "random" else len(shared))
        assert torch.isfinite(new_t).all()


def write_vec(path: Path, words, vecs):
    path.write_text(f"{len(words)} {vecs.shape[1]}\n" + "".join(
        w + " " + " ".join(f"{x:.6f}" for x in v) + "\n" for w, v in zip(words, vecs)), encoding="utf-8")


def test_wechsel_with_aligned_vectors(pair, tmp_path):
    model, new_tok, _ = pair
    words = sorted(set(WORDS_A + WORDS_B))
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(len(words), 12)).astype(np.float32)
    src, tgt = tmp_path / "src.vec", tmp_path / "tgt.vec"
    write_vec(src, words, vecs)
    write_vec(tgt, words, vecs + rng.normal(scale=0.05, size=vecs.shape).astype(np.float32))
    ctx, init = method_init(model, new_tok, "wechsel", aligned=(src, tgt))
    sums = np.bincount(init.rows, weights=init.vals, minlength=len(init))
    assert np.allclose(sums[ctx.targets()], 1.0, atol=1e-5)  # softmax weights (or FVT means)
    assert (init.vals > 0).all()
    out = tmp_path / "out"
    assert run_vocab(model, out, new_tok, "wechsel", "--aligned-embeddings", str(src), str(tgt)) == 0


# -- bad input: exit code 2 and no output ---------------------------------------------------
def assert_refused(argv, out: Path, capsys, words: str):
    capsys.readouterr()
    assert main(argv) == 2
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    err = capsys.readouterr().err
    assert err.startswith("warmstart: error:") and len(err.strip().splitlines()) == 1
    assert words in err


def test_bad_tokenizers(pair, tmp_path, capsys):
    model, _, _ = pair
    out = tmp_path / "out"
    assert_refused(["vocab", str(model), str(out), "--tokenizer", str(tmp_path / "nope")], out, capsys, "no such tokenizer")
    garbage = tmp_path / "tokenizer.json"
    garbage.write_text("{ not json", encoding="utf-8")
    assert_refused(["vocab", str(model), str(out), "--tokenizer", str(garbage)], out, capsys, "not valid JSON")
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"model": {"type": "Nonsense"}}', encoding="utf-8")
    assert_refused(["vocab", str(model), str(out), "--tokenizer", str(wrong)], out, capsys, "cannot read tokenizer")
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    assert_refused(["vocab", str(model), str(out), "--tokenizer", str(empty_dir)], out, capsys, "no tokenizer.json")


def test_bad_corpus_and_existing_output(pair, tmp_path, capsys):
    model, new_tok, _ = pair
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    base = ["vocab", str(model), str(out), "--tokenizer", str(new_tok), "--quiet"]
    assert_refused(base + ["--method", "focus", "--corpus", str(empty)], out, capsys, "corpus is empty")
    assert_refused(base + ["--method", "focus"], out, capsys, "no corpus files")
    assert_refused(base + ["--method", "omp", "--corpus", str(tmp_path / "missing.txt")], out, capsys,
                   "no such corpus file")
    out.mkdir()
    assert main(base + ["--method", "copy"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_bad_aligned_embeddings(pair, tmp_path, capsys):
    model, new_tok, _ = pair
    out = tmp_path / "out"
    words = sorted(set(WORDS_A + WORDS_B))
    rng = np.random.default_rng(1)
    src, tgt, other = tmp_path / "src.vec", tmp_path / "tgt.vec", tmp_path / "other.vec"
    write_vec(src, words, rng.normal(size=(len(words), 12)))
    write_vec(tgt, words, rng.normal(size=(len(words), 10)))
    write_vec(other, words, rng.normal(size=(len(words), 12)))  # same dimension, unrelated space
    base = ["vocab", str(model), str(out), "--tokenizer", str(new_tok), "--method", "wechsel", "--quiet"]
    assert_refused(base + ["--aligned-embeddings", str(src), str(tgt)], out, capsys, "differ in dimension")
    assert_refused(base + ["--aligned-embeddings", str(src), str(other)], out, capsys, "do not look aligned")
    assert_refused(base, out, capsys, "--aligned-embeddings")


def test_donor(pair, tmp_path, capsys):
    model, new_tok, _ = pair
    n_new = len(load_tokenizer(new_tok))
    donor = build_tiny("llama", tmp_path / "donor", seed=5, vocab_size=n_new, hidden_size=48, num_attention_heads=4,
                       num_key_value_heads=2)
    for f in new_tok.iterdir():
        (donor / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    assert run_vocab(model, out, new_tok, "omp", "--donor", str(donor), "--k", "3") == 0
    # a donor whose embedding has fewer rows than its tokenizer has tokens
    small = build_tiny("llama", tmp_path / "small", seed=6, vocab_size=n_new - 40)
    for f in new_tok.iterdir():
        (small / f.name).write_bytes(f.read_bytes())
    out2 = tmp_path / "out2"
    assert_refused(["vocab", str(model), str(out2), "--tokenizer", str(new_tok), "--method", "omp", "--donor",
                    str(small), "--quiet"], out2, capsys, "does not match its tokenizer")


# -- tokenizer training --------------------------------------------------------------------
def test_tokenizer_train_like_keeps_the_kind(pair, tmp_path, capsys):
    from transformers import AutoTokenizer

    model, _, corpus = pair
    out = tmp_path / "trained"
    assert main(["tokenizer", "train", str(corpus), str(out), "--vocab-size", "500", "--like", str(model),
                 "--quiet"]) == 0
    tok = AutoTokenizer.from_pretrained(str(out))
    base = AutoTokenizer.from_pretrained(str(model))
    assert len(tok) <= 500
    a = json.loads((out / "tokenizer.json").read_text())
    b = json.loads((model / "tokenizer.json").read_text())
    for key in ("normalizer", "pre_tokenizer", "decoder", "post_processor"):
        assert a[key] == b[key]
    for role in ("bos", "eos", "unk"):
        assert getattr(tok, f"{role}_token") == getattr(base, f"{role}_token")
    text = "def value(self):\n    return self.index\n"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # trained on the corpus: its merges compress it well below one token per byte
    data = corpus.read_text(encoding="utf-8")
    assert len(tok(data, add_special_tokens=False)["input_ids"]) < len(data.encode()) / 2

    plain = tmp_path / "plain"
    assert main(["tokenizer", "train", str(corpus), str(plain), "--vocab-size", "280", "--quiet"]) == 0
    assert json.loads((plain / "tokenizer.json").read_text())["pre_tokenizer"]["type"] == "ByteLevel"

    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    out3 = tmp_path / "t3"
    assert_refused(["tokenizer", "train", str(empty), str(out3), "--vocab-size", "100"], out3, capsys,
                   "corpus is empty")


# -- --fill: the registered choice for rows that no copy or combination makes ------------------------------------------
@pytest.mark.parametrize("fill", ["mean", "random", "zero", "multivariate"])
def test_fill_overrides_the_method_for_rows_made_from_nothing(pair, tmp_path, fill):
    model, new_tok, _ = pair
    out = tmp_path / fill
    assert run_vocab(model, out, new_tok, "copy", "--fill", fill, "--seed", "5") == 0
    old_t, new_t = load_tensors(model), load_tensors(out)
    shared = dict(shared_ids(model, new_tok))
    vocab = json.loads((new_tok / "tokenizer.json").read_text())["model"]["vocab"]
    specials = {vocab[t] for t in NEW_SPECIALS.values() if t in vocab}  # copied onto their roles' old rows
    n_new = new_t["model.embed_tokens.weight"].shape[0]
    fresh = [i for i in range(n_new) if i not in shared and i not in specials]
    assert len(fresh) > 20
    record = json.loads((out / "warmstart.json").read_text())
    assert record["fill"] == fill
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        old = old_t[name].double()
        rows = new_t[name][fresh].double()
        for nid, oid in shared.items():  # copies are untouched by the fill
            assert torch.equal(new_t[name][nid], old_t[name][oid])
        if fill == "zero":
            assert float(rows.abs().max()) == 0.0
        elif fill == "mean":
            assert torch.allclose(rows, old.mean(0).expand_as(rows), atol=1e-6)
        else:  # drawn: distinct rows, at the old rows' scale
            assert len({tuple(r.tolist()) for r in rows}) == len(fresh)
            ratio = float(rows.std() / old.std())
            assert 0.5 < ratio < 2.0, ratio
            if fill == "random":  # centred on zero, not on the old mean
                assert float(rows.mean(0).abs().mean()) < float(old.std()) * 0.5


def test_fill_is_seeded_and_unknown_fills_refused(pair, tmp_path, capsys):
    model, new_tok, _ = pair
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_vocab(model, a, new_tok, "fvt", "--fill", "random", "--seed", "1") == 0
    assert run_vocab(model, b, new_tok, "fvt", "--fill", "random", "--seed", "1") == 0
    assert torch.equal(load_tensors(a)["lm_head.weight"], load_tensors(b)["lm_head.weight"])
    with pytest.raises(SystemExit):  # argparse's choices
        run_vocab(model, tmp_path / "c", new_tok, "fvt", "--fill", "gaussian")
    from warmstart import api
    from warmstart.errors import WarmstartError

    with pytest.raises(WarmstartError, match="unknown fill of new vocabulary rows 'gaussian'"):
        api.vocab(model, tmp_path / "d", new_tok, fill="gaussian")
    assert not (tmp_path / "d").exists()
