"""GGUF import for every family transformers' GGUF loader reads, against that loader.

The GGUF files are written with the gguf package's writer (``tiny_families.write_gguf``) from tiny
random Hugging Face models, doing what llama.cpp's converter does (its tensor
names, the Llama q/k row permutation, Gemma's norms stored as 1 + w), with
F32/F16 and Q8_0 tensors. Our import must give the same weights, and the same
logits, as ``from_pretrained(..., gguf_file=...)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from warmstart import tiny_families as T
from warmstart.cli import main
from warmstart.tiny_families import write_gguf

# HF family of the tiny model -> GGUF architecture name
ARCHS = {f: T.GGUF_ARCH_OF[f] for f in ("llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text")}


@pytest.mark.parametrize("quant", ["F16", "Q8_0"])
@pytest.mark.parametrize("family", list(ARCHS))
def test_import_matches_transformers_gguf_loader(tmp_path, family, quant):
    import transformers as tf
    from safetensors.torch import load_file

    # transformers' GGUF config for qwen3 does not read the head size (it takes Qwen3's default, 128)
    src = T.build(family, tmp_path / "src", **({"head_dim": 128} if family == "qwen3" else {}))
    gg = tmp_path / "gg" / f"tiny-{quant}.gguf"
    gg.parent.mkdir()
    write_gguf(src, gg, ARCHS[family], quant)
    out = tmp_path / "imported"
    assert main(["import", str(gg), str(out), "--quiet"]) == 0
    ref = tf.AutoModelForCausalLM.from_pretrained(str(gg.parent), gguf_file=gg.name, dtype=torch.float32).eval()
    ours = tf.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, local_files_only=True).eval()
    assert type(ours) is type(ref)
    mine = load_file(str(out / "model.safetensors"))
    theirs = ref.state_dict()
    for name, value in mine.items():
        assert torch.equal(value, theirs[name]), name
    ids = T.token_ids()
    with torch.no_grad():
        a, b = ref(ids).logits, ours(ids).logits
    assert torch.equal(a, b)
    # And the import is the source up to the quantization.
    with torch.no_grad():
        src_model = tf.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    for name, value in mine.items():
        if value.dim() == 2:
            s = src_model.state_dict()[name]
            assert float((value - s).abs().max() / s.abs().max()) < (1e-3 if quant == "F16" else 2e-2), name
        else:
            assert torch.allclose(value, src_model.state_dict()[name], atol=1e-6), name
    # The tokenizer came along.
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file()


def test_unsupported_gguf_architecture_is_named(tmp_path, capsys):
    import gguf

    path = tmp_path / "olmo.gguf"
    w = gguf.GGUFWriter(str(path), "olmo2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "out"
    assert main(["import", str(path), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'olmo2'" in err[0] and "gemma3" in err[0] and "qwen3" in err[0]
    assert not out.exists()
