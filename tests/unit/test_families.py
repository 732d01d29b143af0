"""Every decoder family on tiny random models: spec coverage, exactness measured with transformers, per-layer lists.

Each family's model is built with transformers' own config class and has every
quirk switched on (random norms around the family's offset, a sliding window
shorter than the test tokens in a mixed local/global pattern, soft-caps, fused
projections); exactness is measured by running transformers on the source and
on the output.
"""

from __future__ import annotations

import json

import pytest
import torch

from warmstart import tiny_families as T
from warmstart.arch import open_model
from warmstart.arch.spec import families, supported_model_types
from warmstart.cli import main
from warmstart.ops import registry
from warmstart.plan import execute
from warmstart.verify import TOLERANCE, compare_models

FAMILIES = [f for f in T.FAMILY_CONFIGS if f != "gpt2"]  # GPT-2 has its own tests (test_width, test_depth)
NEW = ("qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: T.build(f, root / f) for f in FAMILIES}


def _apply(src, out, steps):
    model = open_model(src)
    t = registry.chain(model, steps)
    execute(t.plan, out, config=t.config, copy_files=model.checkpoint.extra_files())
    return t


class _Ids:
    """A stand-in tokenizer for verify: the test's token ids, whatever the text."""

    def __init__(self, ids):
        self.ids = ids

    def __call__(self, text, **kw):
        return {"input_ids": self.ids[:1]}


def _load(path):
    import transformers as tf

    return tf.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True).eval()


def _verify(src, out):
    """The project's verify (compare_models) on the tiny models, fed the test's token ids."""
    ids = T.token_ids()
    return compare_models(_load(src), _load(out), _Ids(ids), "unused", causal=True, max_tokens=64)


# -- specs -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_every_tensor_has_a_role(sources, family):
    model = open_model(sources[family])
    # Only a multimodal checkpoint's vision side has no role (it rides along).
    assert [n for n in model.layout.unknown if not n.startswith(("vision_tower.", "multi_modal_projector."))] == []
    assert model.dims.layers == 4 and model.dims.hidden == 32


def test_new_model_types_are_supported():
    for t in NEW:
        assert t in supported_model_types()
    spec = families()
    assert spec["gemma"].norm_offset == 1.0 and spec["gemma"].embed_scale == "sqrt_hidden"
    assert spec["olmo2"].qk_norm == "projection" and spec["qwen3"].qk_norm == "head"
    assert spec["phi3"].fused_qkv and spec["phi3"].fused_gate_up
    assert not spec["olmo2"].normalizes_residual and spec["bert"].normalizes_residual


# -- exactness ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_expand_is_bit_exact(sources, tmp_path, family):
    out = tmp_path / "out"
    t = _apply(sources[family], out, [("expand", {"layers": 6})])
    assert t.exact is True
    r = T.compare(sources[family], out)
    assert r["max_abs"] == 0.0, r
    report = _verify(sources[family], out)
    assert report.max_abs == 0.0 and report.top1_agreement == 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_hyperclone_x2_is_exact(sources, tmp_path, family):
    out = tmp_path / "out"
    t = _apply(sources[family], out, [("hyperclone", {"mult": 2})])
    assert t.exact is True
    r = T.compare(sources[family], out)
    assert r["max_rel"] <= 1e-4 and r["top1"] == 1.0, r
    report = _verify(sources[family], out)
    assert report.passed(TOLERANCE), report.lines()
    dims = open_model(out).dims
    assert dims.hidden == 64 and dims.heads == 8


@pytest.mark.parametrize("order", ["hyperclone-expand", "expand-hyperclone"])
@pytest.mark.parametrize("family", FAMILIES)
def test_chains_of_hyperclone_and_expand_are_exact(sources, tmp_path, family, order):
    out = tmp_path / "out"
    steps = [("hyperclone", {"mult": 2}), ("expand", {"layers": 8})]
    t = _apply(sources[family], out, steps if order == "hyperclone-expand" else steps[::-1])
    assert t.exact is True
    r = T.compare(sources[family], out)
    assert r["max_rel"] <= 1e-4 and r["top1"] == 1.0, r


@pytest.mark.parametrize("family", FAMILIES)
def test_outputs_load_in_their_own_class_and_generate(sources, tmp_path, family):
    import transformers as tf

    src = sources[family]
    out = tmp_path / "out"
    _apply(src, out, [("hyperclone", {"mult": 2}), ("interleave", {"layers": 6})])
    cls = getattr(tf, T.FAMILY_CONFIGS[family][1])
    model = cls.from_pretrained(str(out), local_files_only=True).eval()
    assert type(model) is cls
    assert model.config.get_text_config().num_hidden_layers == 6
    ids = T.token_ids(n=5, batch=1)
    gen = model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 8)


def test_gemma_embedding_compensates_the_sqrt_hidden_scale(sources, tmp_path):
    """The model multiplies the embedding by sqrt(hidden): x2 hidden stores the tiled table / sqrt(2)."""
    from safetensors.torch import load_file

    src = sources["gemma"]
    out = tmp_path / "out"
    t = _apply(src, out, [("hyperclone", {"mult": 2})])
    a = load_file(str(src / "model.safetensors"))["model.embed_tokens.weight"]
    b = load_file(str(out / "model.safetensors"))["model.embed_tokens.weight"]
    assert torch.allclose(b, torch.cat([a, a], 1) * (32 ** 0.5 / 64 ** 0.5), atol=1e-7)
    assert any("sqrt(hidden_size)" in n for n in t.notes)
    # The offset norms are copied as stored: (1 + w) tiled is 1 + (w tiled).
    na = load_file(str(src / "model.safetensors"))["model.norm.weight"]
    nb = load_file(str(out / "model.safetensors"))["model.norm.weight"]
    assert torch.equal(nb, torch.cat([na, na]))


def test_whole_projection_qk_norm_is_tiled_with_the_heads(sources, tmp_path):
    from safetensors.torch import load_file

    src = sources["olmo2"]
    out = tmp_path / "out"
    _apply(src, out, [("hyperclone", {"mult": 2})])
    a = load_file(str(src / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    assert a["model.layers.0.self_attn.q_norm.weight"].shape == (32,)
    assert b["model.layers.0.self_attn.q_norm.weight"].shape == (64,)
    assert b["model.layers.0.self_attn.k_norm.weight"].shape == (32,)
    # Per-head norms (Qwen 3) keep their head_dim shape.
    out3 = tmp_path / "q3"
    _apply(sources["qwen3"], out3, [("hyperclone", {"mult": 2})])
    assert load_file(str(out3 / "model.safetensors"))["model.layers.0.self_attn.q_norm.weight"].shape == (8,)


def test_net2net_on_whole_projection_qk_norm_says_why_it_is_approximate(sources, tmp_path):
    wide = T.build("olmo2", tmp_path / "wide", hidden_size=48, head_dim=8)  # 4 heads of 8 in a 48-wide stream
    t = registry.apply(open_model(wide), "net2net", heads=6, kv_heads=3)  # hidden kept, heads copied unevenly
    assert t.exact is False
    assert any("whole projection" in n for n in t.notes)
    execute(t.plan, tmp_path / "uneven", config=t.config)
    assert T.compare(wide, tmp_path / "uneven")["max_rel"] > 1e-4  # and it is, measurably
    # Growing only the MLP stays exact, and is measured so.
    out = tmp_path / "out"
    t = _apply(sources["olmo2"], out, [("net2net", {"intermediate": 96})])
    assert t.exact is True
    r = T.compare(sources["olmo2"], out)
    assert r["max_rel"] <= 1e-4 and r["top1"] == 1.0


# -- per-layer lists follow the layer map --------------------------------------------------------------
# Explicit lists (gemma3_text), lists implied by max_window_layers (qwen3), nested in text_config (gemma3).
@pytest.mark.parametrize("family", ["gemma3_text", "qwen3", "gemma3"])
@pytest.mark.parametrize("op,params", [("stack", {"layers": 8}), ("interleave", {"layers": 6}),
                                       ("dus", {"layers": 6}), ("expand", {"layers": 6}),
                                       ("drop", {"layers": 2}), ("layer_map", {"spec": "3,0,1"})])
def test_layer_types_follow_their_layers(sources, tmp_path, family, op, params):
    import transformers as tf

    src = sources[family]
    model = open_model(src)
    # What transformers itself says each source layer is (explicit or implied by max_window_layers).
    src_types = tf.AutoConfig.from_pretrained(str(src), local_files_only=True).get_text_config().layer_types
    assert len(set(src_types)) == 2  # the tiny models mix sliding and global layers
    t = registry.apply(model, op, **params)
    layer_map = t.maps["layers"]
    expected = [src_types[s] for s in layer_map]
    out = tmp_path / "out"
    execute(t.plan, out, config=t.config, copy_files=model.checkpoint.extra_files())
    assert tf.AutoConfig.from_pretrained(str(out), local_files_only=True).get_text_config().layer_types == expected


# -- refusals and bad input ----------------------------------------------------------------------------
def test_unsupported_family_names_the_type_and_lists_the_new_ones(sources, tmp_path, capsys):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(sources["gemma"], model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["model_type"] = "gemma3n_text"
    (model / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    code = main(["grow", str(model), str(out), "--depth-method", "expand", "--layers", "6", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "gemma3n_text" in err[0] and "qwen3" in err[0] and "olmo2" in err[0] and "phi3" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("family,field", [("gemma2", "hidden_size"), ("phi3", "num_attention_heads"),
                                          ("olmo2", "num_hidden_layers")])
def test_config_missing_a_needed_field_names_it_and_the_file(sources, tmp_path, capsys, family, field):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(sources[family], model)
    cfg = json.loads((model / "config.json").read_text())
    del cfg[field]
    (model / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    code = main(["grow", str(model), str(out), "--width-method", "hyperclone", "--width-mult", "2", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert field in err[0] and "config.json" in err[0]
    assert not out.exists()


def test_inspect_prints_family_facts(sources, capsys):
    assert main(["inspect", str(sources["gemma2"])]) == 0
    text = capsys.readouterr().out
    assert "(1 + w)" in text and "sqrt(hidden_size)" in text and "soft-cap" in text
    assert "LGLL" in text  # the sliding/global pattern of the tiny model
    assert main(["inspect", str(sources["phi3"]), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)["family_facts"]
    assert facts["fused projections"] == "qkv, gate_up"
    assert main(["inspect", str(sources["olmo2"])]) == 0
    assert "whole projection" in capsys.readouterr().out
    assert main(["inspect", str(sources["qwen3"])]) == 0
    assert "GGGL" in capsys.readouterr().out  # implied by max_window_layers=3, made explicit


# -- merge: offset norms ------------------------------------------------------------------------------------
def test_merge_with_raw_coefficients_combines_effective_offset_norm_weights(tmp_path, capsys):
    """Gemma stores w of x_hat * (1 + w): 0.6 and 0.6 of two models is 0.6(1+a) + 0.6(1+b) = 1 + (0.6a + 0.6b + 0.2)."""
    from safetensors.torch import load_file

    a_dir, b_dir = T.build("gemma", tmp_path / "a", seed=1), T.build("gemma", tmp_path / "b", seed=2)
    out = tmp_path / "out"
    assert main(["merge", str(a_dir), str(b_dir), str(out), "--method", "weighted", "--weights", "0.6,0.6",
                 "--no-normalize", "--quiet"]) == 0
    a, b, m = (load_file(str(d / "model.safetensors")) for d in (a_dir, b_dir, out))
    for name in ("model.norm.weight", "model.layers.1.post_attention_layernorm.weight"):
        assert torch.allclose(m[name], 0.6 * a[name] + 0.6 * b[name] + 0.2, atol=1e-6)
    name = "model.layers.0.mlp.down_proj.weight"  # not a norm: the plain combination
    assert torch.allclose(m[name], 0.6 * a[name] + 0.6 * b[name], atol=1e-6)
    # A plain average needs no shift.
    out2 = tmp_path / "mean"
    assert main(["merge", str(a_dir), str(b_dir), str(out2), "--quiet"]) == 0
    m2 = load_file(str(out2 / "model.safetensors"))
    assert torch.allclose(m2["model.norm.weight"], 0.5 * a["model.norm.weight"] + 0.5 * b["model.norm.weight"],
                          atol=1e-6)


def test_gemma3_multimodal_hyperclone_keeps_the_image_path(sources, tmp_path):
    """The projector writes image features into the text hidden space: tiled with it, the image path stays exact."""
    src = sources["gemma3"]
    out = tmp_path / "out"
    t = _apply(src, out, [("hyperclone", {"mult": 2}), ("expand", {"layers": 6})])
    assert t.exact is True
    ids = torch.tensor([[5, 6, 125, 127, 127, 127, 127, 126, 8, 9]])  # text, <boi>, 4 image tokens, <eoi>, text
    kw = dict(input_ids=ids, token_type_ids=(ids == 127).long(),
              pixel_values=torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        a, b = _load(src)(**kw).logits, _load(out)(**kw).logits
        text_only = _load(src)(input_ids=ids, token_type_ids=kw["token_type_ids"]).logits
    assert float((a - text_only).abs().max()) > 1e-2  # the image matters
    assert float((a - b).abs().max() / a.abs().max()) <= 1e-4
    assert torch.equal(a.argmax(-1), b.argmax(-1))
