"""Architecture specs: every tensor of each family gets a role; dims come from the config."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from warmstart.arch import open_model
from warmstart.arch.spec import families
from warmstart.arch.summary import summarize
from warmstart.errors import UnsupportedArchitecture


def _params(path, cls):
    return sum(p.numel() for p in cls.from_pretrained(str(path)).parameters())


def test_every_tensor_classified(tiny_model):
    model = open_model(tiny_model)
    assert model.layout.unknown == []
    # every block has the same roles, and the count matches the config
    layers = model.layout.layer_indices()
    assert layers == list(range(model.dims.layers))
    roles0 = set(model.layout.block_roles_of(0))
    assert all(set(model.layout.block_roles_of(i)) == roles0 for i in layers)
    assert {"norm_attn.weight", "norm_mlp.weight", "attn.o.weight", "mlp.down.weight"} <= roles0


@pytest.mark.parametrize("family,cls", [
    ("llama", transformers.LlamaForCausalLM),
    ("gpt2", transformers.GPT2LMHeadModel),
    ("bert", transformers.BertModel),
])
def test_inspect_matches_transformers(family, cls, tmp_path):
    from tests.conftest import build_tiny

    path = build_tiny(family, tmp_path / family)
    s = summarize(path)
    cfg = json.loads((path / "config.json").read_text())
    assert s["family"] == family
    assert s["parameters"] == _params(path, cls)  # counted from headers, checked against the real model
    assert s["dtype"] == "F32"
    assert s["layers"] == 2 and s["hidden"] == 32 and s["heads"] == 4
    if family == "llama":
        assert s["kv_heads"] == 2 and s["head_dim"] == 8 and s["tied"] is True and s["intermediate"] == 64
    if family == "gpt2":
        assert s["intermediate"] == 4 * 32 and s["tied"] is True  # n_inner None means 4 x hidden
    if family == "bert":
        assert s["tied"] is False and s["norm"] == "post-LayerNorm"
    assert s["vocab"] == cfg["vocab_size"]


def test_untied_llama(tmp_path):
    from tests.conftest import build_tiny

    path = build_tiny("llama", tmp_path / "untied", tie_word_embeddings=False)
    model = open_model(path)
    assert model.dims.tied is False
    assert model.layout.name("head.weight") == "lm_head.weight"


def test_qwen2_and_mistral_share_the_llama_spec(tmp_path):
    torch.manual_seed(0)
    qwen = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False))
    qwen.save_pretrained(str(tmp_path / "qwen"))
    model = open_model(tmp_path / "qwen")
    assert model.family.name == "llama" and model.layout.unknown == []
    assert model.layout.has("attn.q.bias", 0)  # qwen2 has qkv biases


def test_unknown_model_type(tiny_llama):
    cfg = json.loads((tiny_llama / "config.json").read_text())
    cfg["model_type"] = "t5"
    (tiny_llama / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitecture, match="'t5'"):
        open_model(tiny_llama)


def test_families_are_declared_once():
    names = [t for f in families().values() for t in f.model_types]
    assert len(names) == len(set(names))
