"""The foundation on the real models: GGUF import, inspect, round trip, from_pretrained, generation."""

from __future__ import annotations

import pytest
import torch

from warmstart.arch.summary import summarize
from warmstart.checkpoint.reader import Checkpoint
from warmstart.cli import main
from warmstart.plan import copy_model

pytestmark = pytest.mark.integration


def test_smollm2_summary(smollm2_dir):
    s = summarize(smollm2_dir)
    assert (s["family"], s["layers"], s["hidden"], s["heads"], s["kv_heads"], s["head_dim"]) == ("llama", 30, 576, 9, 3, 64)
    assert s["intermediate"] == 1536 and s["vocab"] == 49152 and s["tied"] is True
    assert s["parameters"] == 134_515_008  # 30 x (4*576*576*... ) checked below from the shapes
    d, f, v, kv = 576, 1536, 49152, 3 * 64
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * f + 2 * d
    assert s["parameters"] == v * d + 30 * per_layer + d


def test_minilm_summary(minilm_dir):
    s = summarize(minilm_dir)
    assert (s["family"], s["layers"], s["hidden"], s["heads"], s["norm"]) == ("bert", 6, 384, 12, "post-LayerNorm")


def test_gguf_import_equals_transformers_loader(smollm2_dir):
    """Our streaming import (dequantize + un-permute q/k) against transformers' own GGUF loader."""
    from transformers import AutoModelForCausalLM

    from warmstart.assets import smollm2_gguf

    gguf = smollm2_gguf()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ours = Checkpoint(smollm2_dir)
    state = ref.state_dict()
    for name in ours.names():
        assert torch.equal(ours.get(name), state[name]), name
    assert set(ours.names()) | {"lm_head.weight"} == set(state)


def test_round_trip_bit_identical_loads_and_generates(smollm2_dir, tmp_path, capsys):
    out = tmp_path / "smol-copy"
    assert main(["convert", str(smollm2_dir), str(out), "--max-shard-size", "200MB", "--quiet"]) == 0
    src, dst = Checkpoint(smollm2_dir), Checkpoint(out)
    assert src.names() == dst.names()
    for name in src.names():
        assert torch.equal(src.get(name), dst.get(name)), name
    assert len({i.file for i in dst.tensors.values()}) == 3  # 538 MB in 200 MB shards

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    gen = model.generate(ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text


def test_bf16_conversion_of_real_model(smollm2_dir, tmp_path):
    out = tmp_path / "bf16"
    copy_model(smollm2_dir, out, dtype="bf16")
    src, dst = Checkpoint(smollm2_dir), Checkpoint(out)
    name = "model.layers.3.mlp.up_proj.weight"
    assert dst.info(name).dtype == "BF16"
    assert torch.equal(dst.get(name), src.get(name).to(torch.bfloat16))
    assert (out / "model.safetensors").stat().st_size < (smollm2_dir / "model.safetensors").stat().st_size * 0.51
