"""Width operators on the real SmolLM2-135M (Llama, GQA, tied) and all-MiniLM-L6-v2 (post-LN BERT)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from warmstart.arch import open_model
from warmstart.ops import registry
from warmstart.plan import execute

pytestmark = pytest.mark.integration

TOKENS = 64
SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "A kitten was resting by the sunny window.",
    "Interest rates rose again this quarter.",
    "The central bank raised borrowing costs.",
]


def _grow(src, out, op, **params):
    model = open_model(src)
    t = registry.apply(model, op, **params)
    execute(t.plan, out, config=t.config, copy_files=model.checkpoint.extra_files())
    return t


def _causal(path):
    import transformers as tf

    tf.logging.set_verbosity_error()
    return tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def smol(smollm2_dir, real_text):
    """Source model, token ids of real text, its logits and its greedy continuation."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(smollm2_dir)(real_text, return_tensors="pt").input_ids[:, :TOKENS]
    model = _causal(smollm2_dir)
    with torch.no_grad():
        logits = model(ids).logits
        gen = model.generate(ids[:, :16], max_new_tokens=8, do_sample=False)
    return {"ids": ids, "logits": logits, "gen": gen}


def _figures(src_logits, logits, ids):
    import torch.nn.functional as F

    a, b = src_logits[0].double(), logits[0].double()
    loss = lambda x: float(F.cross_entropy(x[:-1], ids[0, 1:]))  # noqa: E731
    return {"rel": float((a - b).abs().max() / a.abs().max()),
            "top1": float((a.argmax(-1) == b.argmax(-1)).double().mean()),
            "loss_src": loss(a), "loss_dst": loss(b)}


@pytest.mark.parametrize("noise", [None, 10.0])
def test_smollm2_hyperclone_x2_is_exact(smollm2_dir, smol, tmp_path, noise):
    out = tmp_path / "x2"
    t = _grow(smollm2_dir, out, "hyperclone", mult=2, noise_snr_db=noise)
    assert t.exact is True
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"],
            cfg["head_dim"], cfg["tie_word_embeddings"]) == (1152, 18, 6, 3072, 64, False)
    model = _causal(out)
    with torch.no_grad():
        f = _figures(smol["logits"], model(smol["ids"]).logits, smol["ids"])
        gen = model.generate(smol["ids"][:, :16], max_new_tokens=8, do_sample=False)
    assert f["rel"] < 1e-4 and f["top1"] == 1.0
    assert torch.equal(gen, smol["gen"])
    if noise is not None:  # the copies really differ
        from safetensors import safe_open

        files = sorted(out.glob("*.safetensors"))
        name = "model.layers.3.mlp.up_proj.weight"
        for f_ in files:
            with safe_open(str(f_), "pt") as h:
                if name in h.keys():
                    w = h.get_tensor(name)
        assert not torch.allclose(w[:, :576], w[:, 576:])
    del model
    shutil.rmtree(out)


def test_smollm2_net2net_576_to_768_loads_runs_and_stays_close(smollm2_dir, smol, tmp_path):
    out = tmp_path / "n2n"
    t = _grow(smollm2_dir, out, "net2net", hidden=768, seed=0)
    assert t.exact is False
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["intermediate_size"]) == (768, 12, 4, 2048)
    model = _causal(out)
    with torch.no_grad():
        f = _figures(smol["logits"], model(smol["ids"]).logits, smol["ids"])
        gen = model.generate(smol["ids"][:, :16], max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 20)
    # Approximate only, but far from random (uniform over 49152 tokens would give a loss of 10.8).
    assert f["top1"] > 0.4 and f["loss_dst"] < f["loss_src"] + 1.0
    shutil.rmtree(out)


def test_smollm2_select_loads_and_generates(smollm2_dir, smol, tmp_path):
    out = tmp_path / "sel"
    t = _grow(smollm2_dir, out, "select", hidden=384, intermediate=1024)
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["tie_word_embeddings"]) == (384, 6, 2, True)
    assert t.exact is False
    model = _causal(out)
    with torch.no_grad():
        logits = model(smol["ids"]).logits
        gen = model.generate(smol["ids"][:, :16], max_new_tokens=4, do_sample=False)
    assert torch.isfinite(logits).all() and gen.shape == (1, 20)


def _minilm_embed(path, batch):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].to(h.dtype)
    pooled = torch.nn.functional.normalize(((h * mask).sum(1) / mask.sum(1)).double(), dim=-1)
    return h, pooled @ pooled.T


@pytest.mark.parametrize("noise", [None, 10.0])
def test_minilm_hyperclone_x2_is_exact(minilm_dir, tmp_path, noise):
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(minilm_dir)(SENTENCES, return_tensors="pt", padding=True)
    h, cos = _minilm_embed(minilm_dir, batch)
    t = _grow(minilm_dir, tmp_path / "x2", "hyperclone", mult=2, noise_snr_db=noise)
    assert t.exact is True
    h2, cos2 = _minilm_embed(tmp_path / "x2", batch)
    # Hidden states are the source's repeated; cosine similarities of mean-pooled sentences unchanged.
    assert h2.shape[-1] == 768
    assert float((h2 - h.repeat(1, 1, 2)).abs().max() / h.abs().max()) < 1e-4
    assert float((cos2 - cos).abs().max()) < 1e-4
    assert cos[0, 1] > cos[0, 2]  # the paraphrase is closer than the unrelated sentence (sanity of the setup)


def test_minilm_select_and_net2net_load_and_run(minilm_dir, tmp_path):
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(minilm_dir)(SENTENCES, return_tensors="pt", padding=True)
    _grow(minilm_dir, tmp_path / "sel", "select", hidden=192)
    h, _ = _minilm_embed(tmp_path / "sel", batch)
    assert h.shape[-1] == 192 and torch.isfinite(h).all()
    t = _grow(minilm_dir, tmp_path / "n2n", "net2net", hidden=512)
    assert t.exact is False
    h, _ = _minilm_embed(tmp_path / "n2n", batch)
    assert h.shape[-1] == 512 and torch.isfinite(h).all()
