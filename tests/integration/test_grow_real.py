"""Depth operators, chains and verification on the real SmolLM2-135M and all-MiniLM-L6-v2."""

from __future__ import annotations

import pytest
import torch
import transformers
from safetensors import safe_open

from warmstart.cli import main
from warmstart.ops import registry
from warmstart.verify import compare, compare_models, load

pytestmark = pytest.mark.integration

PROMPT = "The capital of France is"


def grow(*argv) -> None:
    assert main([str(a) for a in argv] + ["--quiet"]) == 0


def block_tensor(path, name):
    files = sorted(path.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), "pt") as h:
            if name in h.keys():
                return h.get_tensor(name)
    raise KeyError(name)


@pytest.fixture(scope="module")
def smol_greedy(smollm2_dir):
    """The source model, its tokenizer, prompt ids and greedy continuation (loaded once)."""
    tok = transformers.AutoTokenizer.from_pretrained(str(smollm2_dir))
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    model = load(smollm2_dir)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
    return tok, ids, out, model


def test_expand_30_to_40_is_exact(smollm2_dir, real_text, smol_greedy, tmp_path):
    out = tmp_path / "expand40"
    grow("grow", smollm2_dir, out, "--layers", 40, "--depth-method", "expand")
    tok, ids, expected, source = smol_greedy
    grown = load(out)
    assert grown.config.num_hidden_layers == 40
    r = compare_models(source, grown, tok, real_text, causal=True, max_tokens=96)
    assert r.tokens == 96
    assert r.max_rel < 1e-4 and r.top1_agreement == 1.0
    assert abs(r.loss_source - r.loss_grown) < 1e-4
    assert 1.0 < r.loss_source < 6.0  # a trained model on real English, not noise
    with torch.no_grad():
        got = grown.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(got, expected)  # the grown model generates what the source does


@pytest.mark.skipif("hyperclone" not in registry.load_all(), reason="hyperclone not registered")
def test_hyperclone_x2_then_expand_is_exact(smollm2_dir, real_text, smol_greedy, tmp_path):
    out = tmp_path / "wide-deep"
    grow("grow", smollm2_dir, out, "--width-method", "hyperclone", "--width-mult", 2, "--layers", 40,
         "--depth-method", "expand")
    tok, _, _, source = smol_greedy
    grown = load(out)
    r = compare_models(source, grown, tok, real_text, causal=True, max_tokens=64)
    assert r.tokens == 64 and r.max_rel < 1e-4 and r.top1_agreement == 1.0
    cfg = grown.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (40, 1152,
                                                                                                           18, 6)


SMOL_OPS = [
    (["--layers", 60, "--depth-method", "stack"], list(range(30)) * 2),
    (["--layers", 40, "--depth-method", "interleave"], [(2 * i * 30 + 40) // 80 for i in range(40)]),
    (["--depth-method", "dus", "--dus-overlap", 6], list(range(24)) + list(range(6, 30))),
    (["--layer-map", "0-9,20-29"], list(range(10)) + list(range(20, 30))),
]


@pytest.mark.parametrize("flags,layer_map", SMOL_OPS, ids=["stack", "interleave", "dus", "layer_map"])
def test_depth_ops_load_and_generate(smollm2_dir, smol_greedy, tmp_path, flags, layer_map):
    out = tmp_path / "grown"
    grow("grow", smollm2_dir, out, *flags)
    check_blocks(smollm2_dir, out, layer_map)
    generate(out, smol_greedy, len(layer_map))


def test_drop_loads_and_generates(smollm2_dir, smol_greedy, tmp_path):
    out = tmp_path / "shrunk"
    assert main(["shrink", str(smollm2_dir), str(out), "--layers", "15", "--quiet"]) == 0
    # evenly spaced, first and last kept: round(i * 29 / 14)
    check_blocks(smollm2_dir, out, [(2 * i * 29 + 14) // 28 for i in range(15)])
    generate(out, smol_greedy, 15)


def check_blocks(src, out, layer_map):
    for j in (0, len(layer_map) // 2, len(layer_map) - 1):
        name = "model.layers.{}.self_attn.q_proj.weight"
        assert torch.equal(block_tensor(out, name.format(j)), block_tensor(src, name.format(layer_map[j])))


def generate(out, smol_greedy, layers):
    tok, ids, _, _ = smol_greedy
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert model.config.num_hidden_layers == layers
    with torch.no_grad():
        got = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert got.shape == (1, ids.shape[1] + 3) and torch.equal(got[:, :ids.shape[1]], ids)
    assert isinstance(tok.decode(got[0, ids.shape[1]:]), str)


MINILM_OPS = [
    (["grow", "--layers", 12, "--depth-method", "stack"], 12),
    (["grow", "--layers", 8, "--depth-method", "interleave"], 8),
    (["grow", "--depth-method", "dus", "--dus-overlap", 2], 8),
    (["grow", "--layer-map", "0-5,3-5"], 9),
    (["shrink", "--layers", 3, "--layer-method", "drop"], 3),
]


def test_minilm_depth_ops_load_and_run(minilm_dir, tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    enc = tok(["A man is playing a guitar.", "The stock market fell."], return_tensors="pt", padding=True)
    for i, (flags, layers) in enumerate(MINILM_OPS):
        out = tmp_path / f"m{i}"
        assert main([flags[0], str(minilm_dir), str(out)] + [str(f) for f in flags[1:]] + ["--quiet"]) == 0
        model = transformers.AutoModel.from_pretrained(str(out)).eval()
        assert model.config.num_hidden_layers == layers
        with torch.no_grad():
            h = model(**enc).last_hidden_state
        assert h.shape == (2, enc["input_ids"].shape[1], 384) and torch.isfinite(h).all()
    # expand is refused on this post-norm model, with the reason, and leaves nothing behind
    assert main(["grow", str(minilm_dir), str(tmp_path / "x"), "--layers", "9", "--depth-method", "expand"]) == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif("hyperclone" not in registry.load_all(), reason="hyperclone not registered")
def test_verify_minilm_hyperclone(minilm_dir, real_text, tmp_path):
    out = tmp_path / "wide"
    grow("grow", minilm_dir, out, "--width-method", "hyperclone", "--width-mult", 2)
    r = compare(minilm_dir, out, text=real_text, max_tokens=128)
    assert r.hidden_layout == "tiled x2" and r.max_rel < 1e-4
    assert r.sentences >= 3 and r.similarity_max_diff < 1e-4 and r.passed()
