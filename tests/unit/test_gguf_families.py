"""GGUF import for every family transformers' GGUF loader reads, against that loader.

The GGUF files are written here with the gguf package's writer from tiny
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

# HF family of the tiny model -> GGUF architecture name
ARCHS = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3", "gemma2": "gemma2",
         "gemma3_text": "gemma3"}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (as in its paper's code), for a byte-level vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter: per head, rows (2, d/2) stored as (d/2, 2)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(src, path, arch: str, quant: str) -> None:
    """Write the HF model at `src` as a GGUF file of architecture `arch`, big matrices in `quant`."""
    import json

    import gguf
    from gguf import MODEL_ARCH_NAMES, GGMLQuantizationType, get_tensor_name_map
    from safetensors.numpy import load_file

    cfg = json.loads((src / "config.json").read_text())
    tensors = load_file(str(src / "model.safetensors"))
    layers = cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 1e4)))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_vocab_size(cfg["vocab_size"])
    if cfg.get("sliding_window"):
        w.add_sliding_window(cfg["sliding_window"])
    table = _bytes_to_unicode()
    w.add_tokenizer_model("gpt2")
    w.add_token_list([table[b] for b in range(cfg["vocab_size"])])
    w.add_token_types([1] * cfg["vocab_size"])
    w.add_token_scores([0.0] * cfg["vocab_size"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)  # Phi-3's config would default to 32000
    key = next(k for k, v in MODEL_ARCH_NAMES.items() if v == arch)
    tmap = get_tensor_name_map(key, layers)
    qtype = {"F16": GGMLQuantizationType.F16, "Q8_0": GGMLQuantizationType.Q8_0}[quant]
    for name, value in tensors.items():
        base, suffix = name.rsplit(".", 1)
        gname = tmap.get_name(base)
        assert gname is not None, name
        value = value.astype(np.float32)
        if arch in ("llama", "mistral") and name.endswith("q_proj.weight"):
            value = _permute(value, heads)
        if arch in ("llama", "mistral") and name.endswith("k_proj.weight"):
            value = _permute(value, kv)
        if arch in ("gemma2", "gemma3") and "norm" in name:
            value = value + 1.0  # llama.cpp stores Gemma's effective norm weight
        if value.ndim == 2:
            data = gguf.quants.quantize(value, qtype)
            w.add_tensor(f"{gname}.{suffix}", data, raw_shape=data.shape, raw_dtype=qtype)
        else:
            w.add_tensor(f"{gname}.{suffix}", value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


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
