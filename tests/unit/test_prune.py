"""Importance pruning on a tiny random Llama with GQA (6 query heads over 3 KV heads, 4 blocks).

The importance scores are checked against a hand-written forward pass
(RMSNorm, RoPE, causal GQA attention, SwiGLU) from the weights; the pruned
checkpoint against a model built by slicing the source's state dict
directly with torch indexing.
"""

from __future__ import annotations

import math

import pytest
import torch

from warmstart.cli import main

SEQ, BATCH, BATCHES = 24, 2, 3
SHAPE = dict(hidden=24, heads=4, kv_heads=2, intermediate=32)


TEXT = " ".join(f"the {w} of line {i} is {w[::-1]} and {i * 7 % 13}." for i in range(400)
                for w in ("king", "queen", "ghost", "sword"))[:60000]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.conftest import build_tiny, make_bpe

    root = tmp_path_factory.mktemp("prune")
    model = build_tiny("llama", root / "src", vocab_size=320, hidden_size=48, num_attention_heads=6,
                       num_key_value_heads=3, head_dim=8, num_hidden_layers=4, intermediate_size=64)
    make_bpe(model, TEXT[:20000], 300, {"eos": "<eos>"})
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT[20000:])
    return model, corpus


def _tokens(model):
    from warmstart.ops.importance import calibration_tokens

    return calibration_tokens(model[0], [model[1]], batches=BATCHES, batch_size=BATCH, seq_len=SEQ)


def _lm(path):
    import transformers as tf

    return tf.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


# -- an independent forward pass ---------------------------------------------------
def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, theta):  # x: [b, h, s, d]
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(x.shape[2], dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang, ang], -1).cos().float(), torch.cat([ang, ang], -1).sin().float()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _agg(t):  # [b, s, units] -> per-sequence token mean, squared, summed over sequences
    m = t.double().mean(1)
    return (m * m).sum(0)


def _reference(lm, tokens):
    """Head output norms, neuron activations, norm outputs and block influence, from the weights."""
    cfg = lm.config
    L, H, KV, D = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    eps = cfg.rms_norm_eps
    heads = torch.zeros(L, H, dtype=torch.float64)
    inter = torch.zeros(L, cfg.intermediate_size, dtype=torch.float64)
    hidden = torch.zeros(cfg.hidden_size, dtype=torch.float64)
    bi = torch.zeros(L, dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for batch in tokens:
            hs = lm(input_ids=batch, output_hidden_states=True, use_cache=False).hidden_states
            b, s = batch.shape
            x = hs[0]
            for i, layer in enumerate(lm.model.layers):
                a = layer.self_attn
                n1 = _rms(x, layer.input_layernorm.weight, eps)
                q = (n1 @ a.q_proj.weight.T).reshape(b, s, H, D).transpose(1, 2)
                k = (n1 @ a.k_proj.weight.T).reshape(b, s, KV, D).transpose(1, 2)
                v = (n1 @ a.v_proj.weight.T).reshape(b, s, KV, D).transpose(1, 2)
                q, k = _rope(q, theta), _rope(k, theta)
                k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
                scores = q @ k.transpose(-1, -2) / math.sqrt(D)
                scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
                o = scores.softmax(-1) @ v  # [b, H, s, D]
                heads[i] += _agg(o.norm(dim=-1).transpose(1, 2))
                h = x + o.transpose(1, 2).reshape(b, s, H * D) @ a.o_proj.weight.T
                n2 = _rms(h, layer.post_attention_layernorm.weight, eps)
                m = layer.mlp
                act = torch.nn.functional.silu(n2 @ m.gate_proj.weight.T) * (n2 @ m.up_proj.weight.T)
                inter[i] += _agg(act.abs())
                y = h + act @ m.down_proj.weight.T
                hidden += _agg(n1.abs()) + _agg(n2.abs())
                bi[i] += (1 - torch.nn.functional.cosine_similarity(x, y, dim=-1)).double().sum()
                if i + 1 < L:  # the hand-written pass follows transformers' own
                    assert torch.allclose(y, hs[i + 1], atol=1e-4)
                x = y
            hidden += _agg(_rms(x, lm.model.norm.weight, eps).abs())
            assert torch.allclose(lm.lm_head(_rms(x, lm.model.norm.weight, eps)),
                                  lm(input_ids=batch).logits, atol=1e-4)
            count += b * s
    return {"heads": heads.sqrt(), "intermediate": inter.sqrt(), "hidden": hidden.sqrt(), "bi": bi / count}


def test_activation_importance_matches_a_hand_written_forward(tiny):
    from warmstart.ops.importance import activation_importance

    tokens = _tokens(tiny)
    imp = activation_importance(tiny[0], tokens)
    ref = _reference(_lm(tiny[0]), tokens)
    assert torch.allclose(imp.heads.double(), ref["heads"], rtol=1e-4)
    assert torch.allclose(imp.intermediate.double(), ref["intermediate"], rtol=1e-4, atol=1e-7)
    assert torch.allclose(imp.hidden.double(), ref["hidden"], rtol=1e-4)
    assert torch.allclose(imp.block_influence.double(), ref["bi"], rtol=1e-4, atol=1e-6)
    assert torch.allclose(imp.kv_heads, imp.heads.reshape(4, 3, 2).sum(-1))


def _independent_choice(ref, kv_new=2, heads_new=4, hidden=24, inter=32, layers=2):
    def top(x, k):
        return sorted(torch.argsort(torch.as_tensor(x), descending=True, stable=True)[:k].tolist())

    keep_heads = []
    for i in range(ref["heads"].shape[0]):
        groups = ref["heads"][i].reshape(3, 2)
        kept = []
        for g in top(groups.sum(-1), kv_new):
            kept += [g * 2 + r for r in top(groups[g], heads_new // kv_new)]
        keep_heads.append(kept)
    return {"hidden": top(ref["hidden"], hidden),
            "intermediate": [top(r, inter) for r in ref["intermediate"]],
            "heads": keep_heads, "layers": top(ref["bi"], layers)}


def _sliced_model(src, keep, layers):
    """The pruned model built by direct torch indexing of the source's state dict."""
    import transformers as tf

    lm = _lm(src)
    sd = lm.state_dict()
    cfg = lm.config.to_dict()
    cfg.update(hidden_size=len(keep["hidden"]), intermediate_size=len(keep["intermediate"][0]),
               num_attention_heads=len(keep["heads"][0]), num_key_value_heads=len(keep["kv_heads"][0]),
               num_hidden_layers=len(layers))
    out = tf.LlamaForCausalLM(tf.LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
    hid = torch.tensor(keep["hidden"])
    D = lm.config.head_dim

    def rows(heads):
        return torch.tensor([h * D + e for h in heads for e in range(D)])

    new = {"model.embed_tokens.weight": sd["model.embed_tokens.weight"][:, hid],
           "model.norm.weight": sd["model.norm.weight"][hid], "lm_head.weight": sd["model.embed_tokens.weight"][:, hid]}
    for j, i in enumerate(layers):
        p, q = f"model.layers.{i}.", f"model.layers.{j}."
        qh, kvh, inter = rows(keep["heads"][i]), rows(keep["kv_heads"][i]), torch.tensor(keep["intermediate"][i])
        new[q + "input_layernorm.weight"] = sd[p + "input_layernorm.weight"][hid]
        new[q + "post_attention_layernorm.weight"] = sd[p + "post_attention_layernorm.weight"][hid]
        new[q + "self_attn.q_proj.weight"] = sd[p + "self_attn.q_proj.weight"][qh][:, hid]
        new[q + "self_attn.k_proj.weight"] = sd[p + "self_attn.k_proj.weight"][kvh][:, hid]
        new[q + "self_attn.v_proj.weight"] = sd[p + "self_attn.v_proj.weight"][kvh][:, hid]
        new[q + "self_attn.o_proj.weight"] = sd[p + "self_attn.o_proj.weight"][hid][:, qh]
        new[q + "mlp.gate_proj.weight"] = sd[p + "mlp.gate_proj.weight"][inter][:, hid]
        new[q + "mlp.up_proj.weight"] = sd[p + "mlp.up_proj.weight"][inter][:, hid]
        new[q + "mlp.down_proj.weight"] = sd[p + "mlp.down_proj.weight"][hid][:, inter]
    missing, unexpected = out.load_state_dict(new, strict=False)
    assert not unexpected and all("rotary" in m or m == "lm_head.weight" for m in missing)
    return out.eval()


def test_prune_keeps_what_an_independent_computation_chooses_and_slices_it(tiny, tmp_path):
    from warmstart.ops.prune import prune_model

    out = tmp_path / "pruned"
    r = prune_model(tiny[0], out, corpus=[tiny[1]], layers=2, batches=BATCHES, batch_size=BATCH, seq_len=SEQ,
                    **SHAPE)
    ref = _reference(_lm(tiny[0]), _tokens(tiny))
    want = _independent_choice(ref)
    assert r.layers == want["layers"]
    assert r.keep["hidden"] == want["hidden"]
    assert r.keep["intermediate"] == want["intermediate"]
    assert r.keep["heads"] == want["heads"]
    # GQA: every kept query head's KV group is kept, each kept group holds 2 of its own heads.
    for heads, kvs in zip(r.keep["heads"], r.keep["kv_heads"]):
        assert sorted({h // 2 for h in heads}) == kvs and len(kvs) == 2
        assert all(sum(h // 2 == k for h in heads) == 2 for k in kvs)
    pruned = _lm(out)
    assert (pruned.config.num_hidden_layers, pruned.config.hidden_size, pruned.config.num_attention_heads,
            pruned.config.num_key_value_heads, pruned.config.intermediate_size) == (2, 24, 4, 2, 32)
    expected = _sliced_model(tiny[0], r.keep, r.layers)
    x = _tokens(tiny)[0]
    with torch.no_grad():
        assert torch.allclose(pruned(input_ids=x).logits, expected(input_ids=x).logits, atol=1e-5)
        gen = pruned.generate(x[:1, :5], max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 9)


def test_block_loss_is_the_loss_of_the_model_without_the_block(tiny):
    import copy

    from warmstart.arch import open_model
    from warmstart.ops.importance import block_loss_increase

    tokens = _tokens(tiny)[:2]
    lm = _lm(tiny[0])

    def loss(model):
        total, n = 0.0, 0
        with torch.no_grad():
            for b in tokens:
                lg = model(input_ids=b, use_cache=False).logits
                total += float(torch.nn.functional.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]),
                                                                 b[:, 1:].reshape(-1), reduction="sum"))
                n += b[:, 1:].numel()
        return total / n

    got = block_loss_increase(lm, open_model(tiny[0]), tokens)
    base = loss(lm)
    for i in range(4):
        short = copy.deepcopy(lm)
        short.model.layers = torch.nn.ModuleList([m for j, m in enumerate(short.model.layers) if j != i])
        short.config.num_hidden_layers = 3
        assert abs(float(got[i]) - (loss(short) - base)) < 1e-4


def test_magnitude_importance_is_weight_norms(tiny):
    from warmstart.arch import open_model
    from warmstart.ops.importance import magnitude_importance

    imp = magnitude_importance(open_model(tiny[0]))
    sd = _lm(tiny[0]).state_dict()
    p = "model.layers.1."
    want = (sd[p + "mlp.gate_proj.weight"].pow(2).sum(1) + sd[p + "mlp.up_proj.weight"].pow(2).sum(1)
            + sd[p + "mlp.down_proj.weight"].pow(2).sum(0)).sqrt()
    assert torch.allclose(imp.intermediate[1], want, rtol=1e-5)
    q = sd[p + "self_attn.q_proj.weight"].reshape(6, 8, 48).pow(2).sum((1, 2))
    o = sd[p + "self_attn.o_proj.weight"].reshape(48, 6, 8).pow(2).sum((0, 2))
    assert torch.allclose(imp.heads[1], (q + o).sqrt(), rtol=1e-5)


@pytest.mark.parametrize("importance", ["magnitude", "select"])
def test_baselines_write_loadable_models(tiny, tmp_path, capsys, importance):
    out = tmp_path / importance
    code = main(["prune", str(tiny[0]), str(out), "--importance", importance, "--layers", "3",
                 "--depth-importance", "even", "--hidden", "24", "--heads", "4", "--kv-heads", "2",
                 "--intermediate", "32", "--quiet"])
    assert code == 0
    lm = _lm(out)
    assert lm.config.num_hidden_layers == 3 and lm.config.num_key_value_heads == 2
    assert lm.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=3, do_sample=False).shape == (1, 6)


def test_select_with_keep_matches_select_without(tiny, tmp_path):
    """Weight Selection's evenly spaced indices given explicitly as keep give the same checkpoint."""
    from warmstart.arch import open_model
    from warmstart.ops import registry
    from warmstart.ops import width as W
    from warmstart.plan import PlannedCheckpoint

    m = open_model(tiny[0])
    plain = registry.apply(m, "select", hidden=24, intermediate=32, heads=4, kv_heads=2)
    keep = {"hidden": W.evenly_spaced(48, 24), "intermediate": W.evenly_spaced(64, 32),
            "kv_heads": W.evenly_spaced(3, 2)}  # query heads: select's evenly spaced ones inside the groups
    given = registry.apply(m, "select", keep=keep, heads=4)
    a, b = PlannedCheckpoint(plain.plan, plain.config), PlannedCheckpoint(given.plan, given.config)
    assert a.names() == b.names()
    for n in a.names():
        assert torch.equal(a.get(n), b.get(n)), n


BAD = [
    (["--hidden", "96"], "only removes units"),
    (["--layers", "9"], "cannot keep 9"),
    (["--heads", "3", "--kv-heads", "2", "--hidden", "24"], "do not divide"),
    (["--heads", "6", "--kv-heads", "2", "--hidden", "48"], "whole KV groups"),
    (["--hidden", "24", "--heads", "4", "--kv-heads", "2", "--batches", "100000"], "fewer than"),
    (["--hidden", "24", "--heads", "4", "--kv-heads", "2", "--corpus-empty"], "fewer than"),
    (["--hidden", "24", "--heads", "4", "--kv-heads", "2", "--no-corpus"], "need a calibration corpus"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_input_is_one_line_exit_2_nothing_written(tiny, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    corpus = [str(tiny[1])]
    if "--corpus-empty" in extra:
        empty = tmp_path / "empty.txt"
        empty.write_text("\n\n")
        corpus = [str(empty)]
    if "--no-corpus" in extra:
        corpus = []
    extra = [e for e in extra if e not in ("--corpus-empty", "--no-corpus")]
    argv = ["prune", str(tiny[0]), str(out), *(["--corpus", *corpus] if corpus else []), "--seq-len", str(SEQ),
            "--batch-size", "2", "--batches", "3", *extra, "--quiet"]  # a later --batches wins
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
