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
