"""PiSSA and OLoRA on the real SmolLM2-135M: residual base + adapter is the source, on real text."""

from __future__ import annotations

import hashlib

import pytest
import torch
import transformers

from warmstart.cli import main

pytestmark = pytest.mark.integration


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("method", ["pissa", "olora"])
def test_residual_plus_adapter_gives_the_source_logits(smollm2_dir, real_text, tmp_path, method):
    from peft import PeftModel

    before = _digest(smollm2_dir)
    out = tmp_path / method
    assert main(["adapter", str(smollm2_dir), str(out), "--method", method, "--rank", "16",
                 "--target-modules", "q_proj", "v_proj", "down_proj", "--quiet"]) == 0
    assert _digest(smollm2_dir) == before
    tok = transformers.AutoTokenizer.from_pretrained(str(smollm2_dir))
    ids = tok(real_text, return_tensors="pt")["input_ids"][:, :256]
    with torch.no_grad():
        source = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32)
        reference = source(input_ids=ids).logits.double()
        del source
        base = transformers.AutoModelForCausalLM.from_pretrained(str(out / "base"), dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(out / "adapter"))
        got = model(input_ids=ids).logits.double()
    err = float((got - reference).abs().max() / reference.abs().max())
    assert err < 1e-4, err
    # the adapter holds a real share of the weights: without it, the residual base is a different model
    with torch.no_grad(), model.disable_adapter():
        residual_only = model(input_ids=ids).logits.double()
    assert float((residual_only - reference).abs().max() / reference.abs().max()) > 1e-2


@pytest.mark.parametrize("method", ["pissa", "eva"])
def test_encoder_adapter_on_all_minilm(minilm_dir, real_text, tmp_path, method):
    """all-MiniLM-L6-v2 is a BertModel checkpoint without an LM head: the adapter is made and loaded on AutoModel,
    and residual + adapter (or the zero-product adapter on the source) gives the source's hidden states."""
    from peft import PeftModel

    out = tmp_path / method
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(real_text)
    argv = ["adapter", str(minilm_dir), str(out), "--method", method, "--rank", "8", "--quiet"]
    if method == "eva":
        argv += ["--corpus", str(corpus), "--batches", "2", "--batch-size", "2", "--seq-len", "64"]
    assert main(argv) == 0
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    batch = tok([real_text[:400], real_text[400:800]], return_tensors="pt", padding=True)
    base_dir = out / "base" if method == "pissa" else minilm_dir
    with torch.no_grad():
        reference = transformers.AutoModel.from_pretrained(str(minilm_dir)).eval()(**batch).last_hidden_state
        model = PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(str(base_dir)),
                                          str(out / "adapter")).eval()
        got = model(**batch).last_hidden_state
    err = float((got.double() - reference.double()).abs().max() / reference.double().abs().max())
    assert err < 1e-4, err
    assert len([k for k in model.state_dict() if "lora_A" in k]) == 12  # query and value of 6 layers
