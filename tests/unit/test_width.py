"""Width operators on tiny random models: exactness against transformers, maps, shapes, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import build_tiny
from hypothesis import given, settings
from hypothesis import strategies as st

from warmstart.arch import open_model
from warmstart.errors import WarmstartError
from warmstart.ops import registry
from warmstart.ops import width as W
from warmstart.plan import execute

FAMILIES = ("llama", "gpt2", "bert")


def _auto(family):
    import transformers as tf

    tf.logging.set_verbosity_error()
    return tf.AutoModel if family == "bert" else tf.AutoModelForCausalLM


def _grow(src, out, op, **params):
    model = open_model(src)
    t = registry.apply(model, op, **params)
    execute(t.plan, out, config=t.config, copy_files=model.checkpoint.extra_files())
    return t


def _outputs(path, family, ids):
    model = _auto(family).from_pretrained(path).eval()
    with torch.no_grad():
        out = model(ids)
    return out.last_hidden_state if family == "bert" else out.logits


def _rel(a, b) -> float:
    return float((a - b).abs().max() / a.abs().max())


def _ids(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (2, 12), generator=g)


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# -- exactness against transformers -------------------------------------------------------------
@pytest.mark.parametrize("mult,noise", [(2, None), (3, 0.0)])
def test_hyperclone_is_exact(tiny_model, tmp_path, mult, noise):
    family = open_model(tiny_model).family.name
    t = _grow(tiny_model, tmp_path / "out", "hyperclone", mult=mult, noise_snr_db=noise)
    assert t.exact is True
    ids = _ids()
    a, b = _outputs(tiny_model, family, ids), _outputs(tmp_path / "out", family, ids)
    if family == "bert":
        # The grown encoder's hidden states are the source's repeated `mult` times.
        assert b.shape[-1] == mult * a.shape[-1]
        assert _rel(a.repeat(1, 1, mult), b) < 1e-5
    else:
        assert _rel(a, b) < 1e-5
        assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_hyperclone_config_and_untied_head(tiny_llama, tmp_path):
    t = _grow(tiny_llama, tmp_path / "out", "hyperclone", mult=2)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["head_dim"]) == (64, 128, 8, 4, 8)
    assert cfg["tie_word_embeddings"] is False
    assert any("untied" in n for n in t.notes)
    src, dst = _tensors(tiny_llama), _tensors(tmp_path / "out")
    emb = src["model.embed_tokens.weight"]
    assert torch.equal(dst["model.embed_tokens.weight"], torch.cat([emb, emb], 1))
    assert torch.allclose(dst["lm_head.weight"], torch.cat([emb, emb], 1) / 2)


@pytest.mark.parametrize("kw", [dict(heads=8, kv_heads=2), dict(kv_heads=4), dict(heads=8),
                                dict(hidden=64, heads=4, kv_heads=2, intermediate=64), dict(intermediate=192)])
def test_hyperclone_single_spaces_exact(tiny_llama, tmp_path, kw):
    """Each space alone (heads without KV heads, KV heads without heads, hidden without heads...) stays exact."""
    t = _grow(tiny_llama, tmp_path / "out", "hyperclone", **kw)
    assert t.exact
    ids = _ids(1)
    a, b = _outputs(tiny_llama, "llama", ids), _outputs(tmp_path / "out", "llama", ids)
    assert _rel(a, b) < 1e-5


def test_hyperclone_bf16_keeps_dtype_and_halves_exactly(tmp_path):
    import transformers as tf

    src = build_tiny("llama", tmp_path / "src")
    tf.AutoModelForCausalLM.from_pretrained(src).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    _grow(tmp_path / "bf16", tmp_path / "out", "hyperclone", mult=2)
    s, d = _tensors(tmp_path / "bf16"), _tensors(tmp_path / "out")
    w, w2 = s["model.layers.0.mlp.down_proj.weight"], d["model.layers.0.mlp.down_proj.weight"]
    assert w2.dtype == torch.bfloat16
    # Input axis (intermediate) tiled and halved, output axis (hidden) tiled: halving is exact in bf16.
    assert torch.equal(w2, torch.cat([torch.cat([w, w], 1)] * 2, 0) / 2)


def test_noise_breaks_symmetry_cancels_and_has_the_requested_snr(tiny_llama, tmp_path):
    _grow(tiny_llama, tmp_path / "plain", "hyperclone", mult=2)
    _grow(tiny_llama, tmp_path / "noisy", "hyperclone", mult=2, noise_snr_db=10, seed=3)
    _grow(tiny_llama, tmp_path / "again", "hyperclone", mult=2, noise_snr_db=10, seed=3)
    _grow(tiny_llama, tmp_path / "other", "hyperclone", mult=2, noise_snr_db=10, seed=4)
    plain, noisy = _tensors(tmp_path / "plain"), _tensors(tmp_path / "noisy")
    name = "model.layers.1.mlp.up_proj.weight"  # [2*64, 2*32]: input axis = hidden, tiled twice
    w, n = plain[name], noisy[name] - plain[name]
    half = w.shape[1] // 2
    # The two copies of each input column now differ, by noise that is +E on one and -E on the other.
    assert not torch.allclose(noisy[name][:, :half], noisy[name][:, half:])
    assert torch.allclose(n[:, :half], -n[:, half:], atol=1e-7)
    snr = 10 * math.log10(float(w.pow(2).mean() / n.pow(2).mean()))
    assert abs(snr - 10.0) < 0.75
    # Deterministic by seed.
    assert torch.equal(noisy[name], _tensors(tmp_path / "again")[name])
    assert not torch.equal(noisy[name], _tensors(tmp_path / "other")[name])
    # Tensors without a copied input axis get no noise (embeddings, norms).
    for key in ("model.embed_tokens.weight", "model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(plain[key], noisy[key])


@pytest.mark.parametrize("family", FAMILIES)
def test_net2net_inner_growth_is_exact(tmp_path, family):
    """Copying MLP units (gated or not) with the down projection divided by the copy count is exact."""
    src = build_tiny(family, tmp_path / "src")
    inter = open_model(src).dims.intermediate
    t = _grow(src, tmp_path / "out", "net2net", intermediate=inter + 37, seed=5)
    assert t.exact is True
    ids = _ids(2)
    assert _rel(_outputs(src, family, ids), _outputs(tmp_path / "out", family, ids)) < 1e-5


def test_net2net_heads_growth_is_exact_under_gqa(tiny_llama, tmp_path):
    t = _grow(tiny_llama, tmp_path / "out", "net2net", heads=8, kv_heads=4, seed=1)  # hidden kept at 32
    assert t.exact is True
    ids = _ids(3)
    assert _rel(_outputs(tiny_llama, "llama", ids), _outputs(tmp_path / "out", "llama", ids)) < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_net2net_hidden_growth_follows_the_rule(tmp_path, family):
    """Approximate under norms, but every tensor follows Net2Net's copy/divide rule (checked by loops)."""
    src = build_tiny(family, tmp_path / "src")
    t = _grow(src, tmp_path / "out", "net2net", hidden=48, seed=7)
    assert t.exact is False and any("approximate" in n for n in t.notes)
    g = t.maps["hidden"]["index"]
    assert g[:32] == list(range(32)) and len(g) == 48 and all(0 <= i < 32 for i in g)
    counts = [g.count(i) for i in range(32)]
    s, d = _tensors(src), _tensors(tmp_path / "out")
    model = open_model(src)
    emb = model.layout.name("embed.weight")
    for j in range(48):
        assert torch.equal(d[emb][:, j], s[emb][:, g[j]])
    norm = model.layout.name("norm_attn.weight", 0)
    assert torch.equal(d[norm], s[norm][g])
    up = model.layout.name("mlp.up.weight", 1)
    w, w2 = s[up], d[up]
    if model.family.conv1d:
        w, w2 = w.t(), w2.t()
    inter_map = t.maps["intermediate"]["index"]
    for j in (0, 5, 31, 40, 47):
        col = w[:, g[j]] / counts[g[j]]
        expected = torch.stack([col[inter_map[r]] for r in range(w2.shape[0])])
        assert torch.allclose(w2[:, j], expected)
    ids = _ids(4)
    out = _outputs(tmp_path / "out", family, ids)
    assert torch.isfinite(out).all()


def test_aki_takes_new_units_from_the_next_layer(tiny_llama, tmp_path):
    t = _grow(tiny_llama, tmp_path / "out", "aki", hidden=48, seed=2)
    assert t.exact is False
    s, d = _tensors(tiny_llama), _tensors(tmp_path / "out")
    g_h, g_i = t.maps["hidden"]["index"], t.maps["intermediate"]["index"]
    c_h = [g_h.count(i) for i in range(32)]

    def expand_in(w):  # copy hidden input columns, divide by their count; copy intermediate output rows
        cols = torch.stack([w[:, g_h[j]] / c_h[g_h[j]] for j in range(len(g_h))], 1)
        return cols[list(g_i)]

    up0, up1 = (s[f"model.layers.{i}.mlp.up_proj.weight"] for i in (0, 1))
    new0 = d["model.layers.0.mlp.up_proj.weight"]
    fresh = [j >= 64 for j in range(len(g_i))]
    assert any(fresh)
    for r in range(len(g_i)):
        want = expand_in(up1 if fresh[r] else up0)[r]
        assert torch.allclose(new0[r], want), r
    # The last layer uses its own weights: plain FPI.
    assert torch.allclose(d["model.layers.1.mlp.up_proj.weight"], expand_in(up1))
    # Norms: new hidden units from the next layer's norm.
    n0, n1 = s["model.layers.0.input_layernorm.weight"], s["model.layers.1.input_layernorm.weight"]
    want = torch.stack([(n1 if j >= 32 else n0)[g_h[j]] for j in range(48)])
    assert torch.equal(d["model.layers.0.input_layernorm.weight"], want)
    assert torch.isfinite(_outputs(tmp_path / "out", "llama", _ids())).all()


def test_aki_and_net2net_load_on_every_family(tiny_model, tmp_path):
    family = open_model(tiny_model).family.name
    for op in ("aki", "net2net"):
        t = _grow(tiny_model, tmp_path / op, op, hidden=48)
        out = _outputs(tmp_path / op, family, _ids())
        assert torch.isfinite(out).all() and out.shape[-1] == (48 if family == "bert" else 128)
        assert t.config[open_model(tiny_model).family.fields["heads"]] == 6


# -- select -----------------------------------------------------------------------------------
def test_select_slices_whole_heads_the_same_in_every_layer(tmp_path):
    src = build_tiny("llama", tmp_path / "src", num_attention_heads=8, num_key_value_heads=4, hidden_size=64,
                     intermediate_size=96)
    t = _grow(src, tmp_path / "out", "select", hidden=32, heads=4, kv_heads=2, intermediate=40)
    assert t.exact is False
    s, d = _tensors(src), _tensors(tmp_path / "out")
    hid = [i * 64 // 32 for i in range(32)]  # floor(i * n / m): 0, 2, 4, ...
    inter = [i * 96 // 40 for i in range(40)]
    kv = [0, 2]  # evenly spaced of 4 KV heads
    q = [0, 1, 4, 5]  # KV head 0 serves q heads 0,1; KV head 2 serves q heads 4,5 (groups of 2 kept whole)
    rows = lambda heads: [h * 8 + e for h in heads for e in range(8)]  # noqa: E731
    for layer in (0, 1):
        p = f"model.layers.{layer}."
        assert torch.equal(d[p + "self_attn.q_proj.weight"], s[p + "self_attn.q_proj.weight"][rows(q)][:, hid])
        assert torch.equal(d[p + "self_attn.k_proj.weight"], s[p + "self_attn.k_proj.weight"][rows(kv)][:, hid])
        assert torch.equal(d[p + "self_attn.o_proj.weight"], s[p + "self_attn.o_proj.weight"][hid][:, rows(q)])
        assert torch.equal(d[p + "mlp.down_proj.weight"], s[p + "mlp.down_proj.weight"][hid][:, inter])
        assert torch.equal(d[p + "input_layernorm.weight"], s[p + "input_layernorm.weight"][hid])
    assert torch.equal(d["model.embed_tokens.weight"], s["model.embed_tokens.weight"][:, hid])
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and "lm_head.weight" not in d
    assert torch.isfinite(_outputs(tmp_path / "out", "llama", _ids())).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_select_loads_and_runs(tmp_path, family):
    src = build_tiny(family, tmp_path / "src")
    t = _grow(src, tmp_path / "out", "select", hidden=16)
    assert t.config[open_model(src).family.fields["hidden"]] == 16
    out = _outputs(tmp_path / "out", family, _ids())
    assert torch.isfinite(out).all()


def test_gpt2_fused_qkv_split_per_part(tiny_gpt2, tmp_path):
    _grow(tiny_gpt2, tmp_path / "out", "select", hidden=16)  # 4 heads of 8 -> 2 heads: heads 0 and 2
    s, d = _tensors(tiny_gpt2), _tensors(tmp_path / "out")
    w, w2 = s["transformer.h.0.attn.c_attn.weight"], d["transformer.h.0.attn.c_attn.weight"]  # [in, 3*out]
    hid = list(range(0, 32, 2))
    heads = [h * 8 + e for h in (0, 2) for e in range(8)]
    want = torch.cat([w[hid][:, part * 32:(part + 1) * 32][:, heads] for part in range(3)], 1)
    assert torch.equal(w2, want)


# -- map invariants ----------------------------------------------------------------------------
@given(st.integers(1, 400), st.integers(1, 400))
def test_evenly_spaced(n, m):
    if m > n:
        n, m = m, n
    idx = W.evenly_spaced(n, m)
    assert len(idx) == m and idx[0] == 0 and idx[-1] < n
    gaps = {b - a for a, b in zip(idx, idx[1:])}
    assert gaps <= {n // m, -(-n // m)}  # evenly: every gap is floor or ceil of n/m
    if n % m == 0:
        assert idx == list(range(0, n, n // m))


def _check_gqa(heads: W.UnitMap, kv: W.UnitMap, h_src: int, kv_src: int):
    """Every new query head attends with a copy of its source head's own KV head; heads are whole."""
    g_src, g_new = h_src // kv_src, heads.size // kv.size
    for j, s in enumerate(heads.index):
        assert kv.index[j // g_new] == s // g_src
    idx = heads.element_index().tolist()
    for j in range(heads.size):
        block = idx[j * heads.unit:(j + 1) * heads.unit]
        assert block == list(range(block[0], block[0] + heads.unit)) and block[0] % heads.unit == 0


def _fake(heads, kv, hidden=None, inter=8, head_dim=4):
    from types import SimpleNamespace

    from warmstart.arch.spec import Dims

    hidden = hidden or heads * head_dim
    dims = Dims(layers=2, hidden=hidden, heads=heads, kv_heads=kv, head_dim=head_dim, intermediate=inter, vocab=10,
                tied=False)
    return SimpleNamespace(dims=dims, checkpoint=SimpleNamespace(path="fake"))


@settings(max_examples=60, deadline=None)
@given(kv=st.integers(1, 4), group=st.integers(1, 4), nh=st.integers(1, 3), nkv=st.integers(1, 3))
def test_hyperclone_head_maps_consistent(kv, group, nh, nkv):
    from warmstart.ops.hyperclone import hyperclone_maps

    heads = kv * group
    if (group * nh) % nkv:  # heads per KV head of the target must be whole
        return
    maps = hyperclone_maps(_fake(heads, kv), W.Targets(heads * 4, 8, heads * nh, kv * nkv))
    _check_gqa(maps[W.HEADS], maps[W.KV], heads, kv)
    # Every source head is copied equally often: o_proj's columns divided by nh add up exactly.
    assert set(maps[W.HEADS].counts().values()) == {nh} and len(maps[W.HEADS].counts()) == heads


@settings(max_examples=60, deadline=None)
@given(kv=st.integers(1, 4), group=st.integers(1, 4), extra_kv=st.integers(0, 3), extra_group=st.integers(0, 2),
       seed=st.integers(0, 5))
def test_net2net_head_maps_consistent(kv, group, extra_kv, extra_group, seed):
    from warmstart.ops.net2net import net2net_maps

    heads, kv_new, group_new = kv * group, kv + extra_kv, group + extra_group
    maps = net2net_maps(_fake(heads, kv), W.Targets(heads * 4, 8, kv_new * group_new, kv_new), seed)
    h, k = maps[W.HEADS], maps[W.KV]
    _check_gqa(h, k, heads, kv)
    assert k.index[:kv] == tuple(range(kv))
    assert set(h.index) == set(range(heads))  # every source head kept: o_proj's sum is preserved
    if extra_group == 0:
        assert h.index[:heads] == tuple(range(heads))  # identity on the first units


@settings(max_examples=60, deadline=None)
@given(kv=st.integers(1, 4), group=st.integers(1, 4), data=st.data())
def test_select_head_maps_consistent(kv, group, data):
    from warmstart.ops.select import select_maps

    kv_new = data.draw(st.integers(1, kv))
    group_new = data.draw(st.integers(1, group))
    maps = select_maps(_fake(kv * group, kv), W.Targets(4, 8, kv_new * group_new, kv_new))
    h, k = maps[W.HEADS], maps[W.KV]
    _check_gqa(h, k, kv * group, kv)
    assert len(set(h.index)) == h.size and list(k.index) == W.evenly_spaced(kv, kv_new)


def test_planning_reads_no_tensor_and_steps_read_only_their_inputs(tiny_model, monkeypatch):
    model = open_model(tiny_model)

    def refuse(name):
        raise AssertionError(f"planning read {name}")

    monkeypatch.setattr(model.checkpoint, "get", refuse)
    for op, kw in (("hyperclone", {"mult": 2}), ("net2net", {"hidden": 48}), ("aki", {"hidden": 48}),
                   ("select", {"hidden": 16})):
        t = registry.apply(model, op, **kw)
        layout = model.layout
        for step in t.plan.steps:
            names = [r.name for r in step.inputs]
            assert 1 <= len(names) <= 2
            if len(names) == 2:  # AKI: the same role one layer up
                a, b = (layout.roles[n] for n in names)
                assert op == "aki" and a.role == b.role and b.layer == a.layer + 1
            elif step.name not in layout.roles:  # the untied output head, read from the embedding
                assert names == [layout.name("embed.weight")]


def test_chain_of_two_hyperclones_is_exact(tiny_gpt2, tmp_path):
    model = open_model(tiny_gpt2)
    t = registry.chain(model, [("hyperclone", {"mult": 2}), ("hyperclone", {"mult": 2, "noise_snr_db": 5})])
    assert t.exact is True
    execute(t.plan, tmp_path / "out", config=t.config)
    ids = _ids(5)
    assert _rel(_outputs(tiny_gpt2, "gpt2", ids), _outputs(tmp_path / "out", "gpt2", ids)) < 1e-5
    assert json.loads((tmp_path / "out" / "config.json").read_text())["n_embd"] == 128


def test_unknown_tensors_copied_or_refused(tiny_llama, tmp_path):
    from safetensors.torch import load_file, save_file

    st_path = tiny_llama / "model.safetensors"
    tensors = load_file(str(st_path))
    tensors["extra.scalar_table"] = torch.ones(5, 3)
    save_file(tensors, str(st_path), metadata={"format": "pt"})
    t = _grow(tiny_llama, tmp_path / "ok", "hyperclone", mult=2)
    assert torch.equal(_tensors(tmp_path / "ok")["extra.scalar_table"], torch.ones(5, 3))
    assert t.exact
    tensors["extra.hidden_proj"] = torch.ones(7, 32)  # involves the hidden size
    save_file(tensors, str(st_path), metadata={"format": "pt"})
    with pytest.raises(WarmstartError, match="extra.hidden_proj.*no known role"):
        registry.apply(open_model(tiny_llama), "hyperclone", mult=2)


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("op,kw,message", [
    ("hyperclone", {"mult": 1.5}, "integer multiplier"),
    ("hyperclone", {"hidden": 48}, "not a multiple of 32"),
    ("hyperclone", {"heads": 6, "hidden": 96}, "heads 6 is not a multiple of 4"),
    ("hyperclone", {"mult": 2, "kv_heads": 3}, "8 heads do not divide into 3 KV heads"),
    ("hyperclone", {}, "give target sizes"),
    ("hyperclone", {"mult": 2, "noise_snr_db": "loud"}, "noise_snr_db must be a number"),
    ("hyperclone", {"hidden": 16}, "only grows"),
    ("net2net", {"hidden": 16}, "only grows"),
    ("net2net", {"hidden": 36}, "not a whole number of heads"),
    ("net2net", {"hidden": 32}, "nothing to do"),
    ("aki", {"mult": 0}, "positive"),
    ("select", {"hidden": 64}, "only shrinks"),
    ("select", {"heads": 4, "kv_heads": 1}, "query heads per KV head"),
])
def test_bad_targets_raise_one_line_errors(tiny_llama, op, kw, message):
    with pytest.raises(WarmstartError, match=message) as err:
        registry.apply(open_model(tiny_llama), op, **kw)
    assert "\n" not in str(err.value) and str(tiny_llama) in str(err.value)


def test_gpt2_needs_hidden_equal_heads_times_head_dim(tiny_gpt2):
    with pytest.raises(WarmstartError, match="hidden = heads x head_dim"):
        registry.apply(open_model(tiny_gpt2), "net2net", hidden=64, heads=4)
    with pytest.raises(WarmstartError, match="no separate KV heads"):
        registry.apply(open_model(tiny_gpt2), "net2net", hidden=64, heads=8, kv_heads=4)


def _cli_has(command: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"warmstart.commands.{command}") is not None


@pytest.mark.parametrize("argv", [
    ["grow", "{src}", "{out}", "--width-method", "hyperclone", "--width-mult", "1.5"],
    ["grow", "{src}", "{out}", "--width-method", "hyperclone", "--heads", "6", "--hidden", "64"],
    ["grow", "{src}", "{out}", "--width-method", "net2net", "--hidden", "48", "--kv-heads", "5"],
    ["shrink", "{src}", "{out}", "--hidden", "16", "--heads", "4", "--kv-heads", "1"],
])
def test_cli_bad_width_exit_2_and_no_output(tiny_llama, tmp_path, capsys, argv):
    from warmstart.cli import main

    if not _cli_has(argv[0]):
        pytest.skip(f"`warmstart {argv[0]}` not available")
    out = tmp_path / "out"
    code = main([a.format(src=tiny_llama, out=out) for a in argv] + ["--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.startswith("warmstart: error: ") and err.count("\n") == 1


# -- fresh-units: extra units drawn where written, zero where read ------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_fresh_units_are_exact_and_not_copies(tmp_path, family):
    src = build_tiny(family, tmp_path / "src")
    d = open_model(src).dims
    # GPT-2 and BERT tie the head size to hidden / heads, so more heads would mean a wider residual stream
    heads = dict(heads=d.heads * 2, kv_heads=d.kv_heads * 2) if family == "llama" else {}
    t = _grow(src, tmp_path / "out", "fresh-units", intermediate=d.intermediate + 24, seed=3, **heads)
    assert t.exact is True
    ids = _ids(4)
    assert _rel(_outputs(src, family, ids), _outputs(tmp_path / "out", family, ids)) < 1e-5
    model, s, o = open_model(src), _tensors(src), _tensors(tmp_path / "out")
    conv = model.family.conv1d

    def linear(name, tensors):  # [out, in]
        w = tensors[name]
        return w.t() if conv else w

    layout = model.layout
    fused = layout.has("attn.qkv.weight", 0)
    up_role = "mlp.up.weight" if layout.has("mlp.up.weight", 0) else "mlp.gate_up.weight"
    up, down = layout.name(up_role, 1), layout.name("mlp.down.weight", 1)
    new_up, old_up = linear(up, o)[d.intermediate:], linear(up, s)
    # the old units are untouched, the new ones drawn at the source's scale and unlike any old unit
    assert torch.equal(linear(up, o)[:d.intermediate], old_up[:d.intermediate])
    assert 0.5 < float(new_up.std() / old_up.std()) < 2.0
    assert float(torch.cdist(new_up.float(), old_up.float()).min()) > 1e-3
    assert float(linear(down, o)[:, d.intermediate:].abs().max()) == 0.0
    assert torch.equal(linear(down, o)[:, :d.intermediate], linear(down, s))
    if not heads:
        return
    o_name = layout.name("attn.o.weight", 0)
    width = d.heads * d.head_dim
    assert float(linear(o_name, o)[:, width:].abs().max()) == 0.0
    if not fused:
        q = layout.name("attn.q.weight", 0)
        assert torch.equal(linear(q, o)[:width], linear(q, s))
        assert float(linear(q, o)[width:].abs().max()) > 0


def test_fresh_units_refusals(tiny_llama, tmp_path):
    model = open_model(tiny_llama)
    with pytest.raises(WarmstartError, match="keeps the hidden size"):
        registry.apply(model, "fresh-units", hidden=48)
    with pytest.raises(WarmstartError, match="group size"):
        registry.apply(model, "fresh-units", heads=8, kv_heads=2)  # 4 over 2 -> 8 over 2
    from warmstart import tiny_families

    olmo = open_model(tiny_families.build("olmo2", tmp_path / "olmo2"))
    with pytest.raises(WarmstartError, match="query/key norm runs over all heads"):
        registry.apply(olmo, "fresh-units", heads=olmo.dims.heads * 2, kv_heads=olmo.dims.kv_heads * 2)
    t = registry.apply(olmo, "fresh-units", intermediate=olmo.dims.intermediate * 2)  # the MLP alone is fine
    assert t.exact is True
