"""Dense -> MoE upcycling: the outputs load in transformers' MoE classes and, where declared exact, compute
the dense model's logits (checked by running both models); Drop-Upcycling and non-renormalized routing are
labelled warm starts and do differ; bad input is refused in one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import build_tiny
from warmstart.cli import main

TOL = 1e-4


def build_qwen2(path: Path, seed: int = 0) -> Path:
    """A tiny random Qwen2 (q/k/v biases), saved with transformers' save_pretrained."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, rms_norm_eps=1e-6)
    model = tf.Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def _ids():
    import torch

    return torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))


def _load(path):
    import torch
    import transformers as tf

    tf.utils.logging.set_verbosity_error()
    return tf.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, local_files_only=True).eval()


def _compare(dense_dir, moe_dir):
    """(relative max logit difference, top-1 agreement) of the two models on the same tokens."""
    import torch

    ids = _ids()
    with torch.no_grad():
        a = _load(dense_dir)(input_ids=ids).logits
        b = _load(moe_dir)(input_ids=ids).logits
    rel = ((a - b).abs().max() / a.abs().max()).item()
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    return rel, top1


def _upcycle(src, out, before=None, **params):
    from warmstart.api import upcycle as upcycle_model

    return upcycle_model(src, out, before=before, **params)


@pytest.fixture
def tiny_qwen2(tmp_path) -> Path:
    return build_qwen2(tmp_path / "tiny-qwen2")


LLAMA_EXACT = [
    dict(experts=4, top_k=2),  # Sparse Upcycling: copies
    dict(experts=4, top_k=1, router="zero"),
    dict(experts=8, top_k=2, granularity=2),  # fine-grained: 4 copies of 2 half-MLPs
    dict(experts=8, top_k=4, granularity=4, router_std=1.0),  # a strong router still picks whole copies
]


@pytest.mark.parametrize("params", LLAMA_EXACT, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_llama_to_mixtral_exact(tiny_llama, tmp_path, params):
    import transformers as tf

    result = _upcycle(tiny_llama, tmp_path / "moe", **params)
    assert result.transform.exact is True
    model = _load(tmp_path / "moe")
    assert isinstance(model, tf.MixtralForCausalLM)
    g = params.get("granularity", 1)
    assert model.config.num_local_experts == params["experts"]
    assert model.config.num_experts_per_tok == params["top_k"]
    assert model.config.intermediate_size == 64 // g
    assert tuple(model.model.layers[0].mlp.experts.gate_up_proj.shape) == (params["experts"], 2 * 64 // g, 32)
    rel, top1 = _compare(tiny_llama, tmp_path / "moe")
    assert rel <= TOL and top1 == 1.0


QWEN2_EXACT = [
    dict(experts=4, top_k=2),
    dict(experts=4, top_k=2, granularity=2, shared_experts=1),  # routed copies of one half, the other half shared
    dict(experts=6, top_k=2, granularity=3, shared_experts=1, router_std=1.0),  # 3 copies of 2 slices + shared
    dict(experts=4, top_k=4, norm_topk=False),  # all experts chosen: softmax weights sum to one
]


@pytest.mark.parametrize("params", QWEN2_EXACT, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_qwen2_to_qwen2_moe_exact(tiny_qwen2, tmp_path, params):
    import transformers as tf

    result = _upcycle(tiny_qwen2, tmp_path / "moe", **params)
    assert result.transform.exact is True
    model = _load(tmp_path / "moe")
    assert isinstance(model, tf.Qwen2MoeForCausalLM)
    g, s = params.get("granularity", 1), params.get("shared_experts", 0)
    cfg = model.config
    assert (cfg.num_experts, cfg.num_experts_per_tok) == (params["experts"], params["top_k"])
    assert cfg.moe_intermediate_size == 48 // g and cfg.shared_expert_intermediate_size == s * 48 // g
    assert cfg.norm_topk_prob is params.get("norm_topk", True) and cfg.qkv_bias is True
    assert cfg.mlp_only_layers == [] and cfg.decoder_sparse_step == 1
    rel, top1 = _compare(tiny_qwen2, tmp_path / "moe")
    assert rel <= TOL and top1 == 1.0


def test_chain_hyperclone_then_upcycle_is_exact_and_generates(tiny_llama, tmp_path):
    """AquilaMoE's scale-up then scale-out, as one streaming chain reading only the dense checkpoint."""
    import torch

    from warmstart.arch import open_model
    from warmstart.ops import registry

    t = registry.chain(open_model(tiny_llama), [("hyperclone", {"mult": 2}), ("upcycle", {"experts": 4, "top_k": 2})])
    assert t.exact is True
    assert all(r.source == 0 for s in t.plan.steps for r in s.inputs)
    assert t.config["hidden_size"] == 64 and t.config["intermediate_size"] == 128
    result = _upcycle(tiny_llama, tmp_path / "moe", before=[("hyperclone", {"mult": 2})], experts=4, top_k=2)
    assert result.transform.exact is True
    rel, top1 = _compare(tiny_llama, tmp_path / "moe")
    assert rel <= TOL and top1 == 1.0
    ids = _ids()[:1, :6]
    with torch.no_grad():
        a = _load(tiny_llama).generate(input_ids=ids, max_new_tokens=10, do_sample=False)
        b = _load(tmp_path / "moe").generate(input_ids=ids, max_new_tokens=10, do_sample=False)
    assert b.shape == (1, 16) and torch.equal(a, b)


def test_recipe_runs_the_chain(tiny_llama, tmp_path, capsys):
    recipe = tmp_path / "aquila.yaml"
    recipe.write_text(f"model: {tiny_llama}\nout: {tmp_path / 'moe'}\nsteps:\n  - op: hyperclone\n    mult: 2\n"
                      "  - op: upcycle\n    experts: 4\n    top_k: 2\n    granularity: 2\n")
    assert main(["run", str(recipe), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "exactness: exact" in out
    cfg = json.loads((tmp_path / "moe" / "config.json").read_text())
    assert cfg["model_type"] == "mixtral" and cfg["hidden_size"] == 64 and cfg["intermediate_size"] == 64
    rel, top1 = _compare(tiny_llama, tmp_path / "moe")
    assert rel <= TOL and top1 == 1.0


def test_experts_stream_from_the_dense_tensors(tiny_llama):
    """Each expert tensor is one step reading one dense MLP tensor (whole copies are byte copies); routers read none."""
    from warmstart.arch import open_model
    from warmstart.ops import registry

    model = open_model(tiny_llama)
    copies = registry.apply(model, "upcycle", experts=4, top_k=2)
    sliced = registry.apply(model, "upcycle", experts=8, top_k=2, granularity=2)
    for t in (copies, sliced):
        for s in t.plan.steps:
            if ".experts." in s.name:
                assert len(s.inputs) == 1 and ".mlp." in s.inputs[0].name
            if s.name.endswith("block_sparse_moe.gate.weight"):
                assert s.inputs == ()
    assert all(s.is_copy for s in copies.plan.steps if ".experts." in s.name)
    assert not any(s.is_copy for s in sliced.plan.steps if ".experts." in s.name)


def test_fine_grained_router_rows_tie_within_copies(tiny_llama):
    from warmstart.arch import open_model
    from warmstart.plan import PlannedCheckpoint

    t = __import__("warmstart.ops.registry", fromlist=["apply"]).apply(
        open_model(tiny_llama), "upcycle", experts=6, top_k=2, granularity=2, seed=3)
    w = PlannedCheckpoint(t.plan, t.config).get("model.layers.1.block_sparse_moe.gate.weight")
    assert w.shape == (6, 32)
    for c in range(3):
        assert (w[2 * c] == w[2 * c + 1]).all()
    assert not (w[0] == w[2]).all()


def test_drop_upcycling_is_labelled_and_differs(tiny_llama, tmp_path):
    import torch
    from safetensors import safe_open

    result = _upcycle(tiny_llama, tmp_path / "moe", experts=4, top_k=2, drop_ratio=0.5, seed=7)
    assert result.transform.exact is False
    assert any("not exact" in n and "Drop-Upcycling" in n for n in result.transform.notes)
    rel, _ = _compare(tiny_llama, tmp_path / "moe")
    assert rel > 1e-3
    with safe_open(str(tiny_llama / "model.safetensors"), "pt") as f:
        dense = f.get_tensor("model.layers.0.mlp.up_proj.weight")
    with safe_open(str(tmp_path / "moe" / "model.safetensors"), "pt") as f:
        experts = [f.get_tensor(f"model.layers.0.block_sparse_moe.experts.{e}.w3.weight") for e in range(4)]
    kept = [(x == dense).all(dim=1) for x in experts]  # which units (rows) are still the dense ones
    for k in kept:
        assert int((~k).sum()) == 32  # half of 64 units re-initialized, the rest copied exactly
    assert len({tuple(k.tolist()) for k in kept}) == 4  # different units per expert
    again = _upcycle(tiny_llama, tmp_path / "again", experts=4, top_k=2, drop_ratio=0.5, seed=7)
    assert again.transform.exact is False
    with safe_open(str(tmp_path / "again" / "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("model.layers.0.block_sparse_moe.experts.2.w3.weight"), experts[2])


def test_non_renormalized_top_k_is_labelled_and_differs(tiny_qwen2, tmp_path):
    result = _upcycle(tiny_qwen2, tmp_path / "moe", experts=4, top_k=2, norm_topk=False)
    assert result.transform.exact is False
    assert any("not renormalized" in n for n in result.transform.notes)
    rel, _ = _compare(tiny_qwen2, tmp_path / "moe")
    assert rel > 1e-3


@pytest.mark.parametrize("params,why", [
    (dict(experts=8, top_k=2, granularity=2, router="zero"), "zero router"),
    (dict(experts=8, top_k=3, granularity=2), "not a multiple"),
])
def test_fine_grained_conditions_are_labelled(tiny_llama, params, why):
    from warmstart.arch import open_model
    from warmstart.ops import registry

    t = registry.apply(open_model(tiny_llama), "upcycle", **params)
    assert t.exact is False and any(why in n for n in t.notes)


def test_cli_writes_and_dry_run_writes_nothing(tiny_llama, tmp_path, capsys):
    out = tmp_path / "moe"
    assert main(["upcycle", str(tiny_llama), str(out), "--experts", "4", "--top-k", "2", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "MixtralForCausalLM" in text and "exactness: exact" in text and not out.exists()
    assert main(["upcycle", str(tiny_llama), str(out), "--experts", "4", "--top-k", "2", "--quiet"]) == 0
    assert "exactness: exact" in capsys.readouterr().out
    assert main(["upcycle", str(tiny_llama), str(out), "--experts", "4", "--top-k", "2", "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err


BAD = [
    (["--experts", "4", "--top-k", "5"], "top-k 5 is more than the 4 experts"),
    (["--experts", "4", "--top-k", "2", "--granularity", "5"], "does not divide the intermediate size 64"),
    (["--experts", "4", "--top-k", "2", "--drop-ratio", "1.5"], "within [0, 1]"),
    (["--experts", "4", "--top-k", "2", "--drop-ratio", "-0.1"], "within [0, 1]"),
    (["--experts", "4", "--top-k", "2", "--drop-ratio", "nan"], "within [0, 1]"),
    (["--experts", "4", "--top-k", "2", "--shared-experts", "1", "--granularity", "2"], "no shared experts"),
    (["--experts", "3", "--top-k", "2", "--granularity", "2"], "not whole copies"),
    (["--experts", "0", "--top-k", "1"], "at least 1"),
    (["--experts", "4", "--top-k", "2", "--router", "kmeans"], "--corpus"),
    (["--experts", "4", "--top-k", "2", "--no-norm-topk"], "always renormalizes"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_one_line_exit_2_nothing_written(tiny_llama, tmp_path, capsys, args, message):
    out = tmp_path / "moe"
    code = main(["upcycle", str(tiny_llama), str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == [tiny_llama]


def test_family_without_moe_class_is_refused(tmp_path, capsys):
    gpt2 = build_tiny("gpt2", tmp_path / "gpt2")
    capsys.readouterr()
    code = main(["upcycle", str(gpt2), str(tmp_path / "moe"), "--experts", "4", "--top-k", "2"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no Mixture-of-Experts class" in err
    assert not (tmp_path / "moe").exists()


def test_qwen2_shared_experts_need_a_slice_left(tiny_qwen2, tmp_path, capsys):
    code = main(["upcycle", str(tiny_qwen2), str(tmp_path / "moe"), "--experts", "4", "--top-k", "2",
                 "--shared-experts", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "at least one slice must remain" in err and not (tmp_path / "moe").exists()


def test_llama_with_attention_bias_is_refused(tmp_path, capsys):
    src = build_tiny("llama", tmp_path / "biased", attention_bias=True)
    capsys.readouterr()
    code = main(["upcycle", str(src), str(tmp_path / "moe"), "--experts", "4", "--top-k", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "no biases" in err and not (tmp_path / "moe").exists()


@pytest.mark.integration
def test_smollm2_upcycled_x8_is_exact_and_generates(smollm2_dir, real_text, tmp_path):
    import torch
    import transformers as tf

    from warmstart.verify import compare

    out = tmp_path / "smollm2-moe"
    result = _upcycle(smollm2_dir, out, experts=8, top_k=2)
    assert result.transform.exact is True
    report = compare(smollm2_dir, out, text=real_text)
    assert report.max_rel <= TOL and report.top1_agreement == 1.0
    tok = tf.AutoTokenizer.from_pretrained(str(smollm2_dir))
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        a = _load(smollm2_dir).generate(input_ids=ids, max_new_tokens=12, do_sample=False)
        moe = _load(out)
        assert isinstance(moe, tf.MixtralForCausalLM) and moe.config.num_local_experts == 8
        b = moe.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    assert b.shape[1] == ids.shape[1] + 12 and torch.equal(a, b)


def _with_char_tokenizer(model_dir: Path) -> Path:
    """Give a tiny model a character-level tokenizer (ids below its vocabulary of 128)."""
    import transformers as tf
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = {chr(i): i for i in range(32, 127)}
    vocab["[UNK]"] = 0
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tf.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(str(model_dir))
    return model_dir


def test_kmeans_router_is_data_driven_tied_and_exact(tiny_llama, tmp_path):
    import torch
    from safetensors import safe_open

    from warmstart.arch import open_model
    from warmstart.ops.upcycle_router import mlp_inputs

    src = _with_char_tokenizer(tiny_llama)
    corpus = tmp_path / "calibration.txt"
    corpus.write_text("To be, or not to be, that is the question. " * 30 + "0123456789 {}[]()<>|~ " * 30)
    result = _upcycle(src, tmp_path / "moe", experts=8, top_k=2, granularity=2, router="kmeans",
                      corpus=str(corpus), calibration_tokens=1024)
    assert result.transform.exact is True
    rel, top1 = _compare(src, tmp_path / "moe")
    assert rel <= TOL and top1 == 1.0
    with safe_open(str(tmp_path / "moe" / "model.safetensors"), "pt") as f:
        w = f.get_tensor("model.layers.1.block_sparse_moe.gate.weight")
    assert all(torch.equal(w[2 * c], w[2 * c + 1]) for c in range(4))  # tied within each copy
    norms = w.norm(dim=1)
    assert torch.allclose(norms, norms[0].expand_as(norms))  # equal norms: argmax = nearest centroid in angle
    x = mlp_inputs(open_model(src), src, corpus.read_text(), 1024)[1]
    logits = x @ w.T
    assert abs(logits.std().item() - 1.0) < 0.05  # scaled to unit spread on the calibration tokens
    used = logits[:, ::2].argmax(dim=1).unique().numel()
    assert used >= 2  # the clusters split the calibration tokens


def test_kmeans_router_needs_a_readable_corpus(tiny_llama, tmp_path, capsys):
    code = main(["upcycle", str(tiny_llama), str(tmp_path / "moe"), "--experts", "4", "--top-k", "2",
                 "--router", "kmeans", "--corpus", str(tmp_path / "missing.txt")])
    err = capsys.readouterr().err
    assert code == 2 and "no such calibration text file" in err and not (tmp_path / "moe").exists()


def test_kmeans_router_in_a_chain_calibrates_on_the_grown_model(tiny_llama, tmp_path):
    src = _with_char_tokenizer(tiny_llama)
    corpus = tmp_path / "calibration.txt"
    corpus.write_text("Something is rotten in the state of Denmark. " * 40)
    result = _upcycle(src, tmp_path / "moe", before=[("hyperclone", {"mult": 2})], experts=4, top_k=2,
                      router="kmeans", corpus=str(corpus), calibration_tokens=256)
    assert result.transform.exact is True
    rel, top1 = _compare(src, tmp_path / "moe")
    assert rel <= TOL and top1 == 1.0


def test_verify_measures_upcycled_outputs(tiny_llama, tmp_path, capsys):
    src = _with_char_tokenizer(tiny_llama)
    text = tmp_path / "text.txt"
    text.write_text("Though this be madness, yet there is method in it. " * 4)
    _upcycle(src, tmp_path / "exact", experts=4, top_k=2, granularity=2)
    _upcycle(src, tmp_path / "drop", experts=4, top_k=2, drop_ratio=0.3)
    capsys.readouterr()
    assert main(["verify", str(src), str(tmp_path / "exact"), "--text", str(text), "--expect-exact"]) == 0
    assert "exact within" in capsys.readouterr().out
    assert main(["verify", str(src), str(tmp_path / "drop"), "--text", str(text), "--expect-exact"]) == 1
    assert "verification failed" in capsys.readouterr().out


@pytest.fixture
def qwen3_family(monkeypatch):
    """Until the qwen3 arch spec lands: the llama spec answering for qwen3 (its q_norm/k_norm are copied as is)."""
    import dataclasses

    from warmstart.arch import spec
    from warmstart.arch.llama import FAMILY

    if any("qwen3" in f.model_types for f in spec.families().values()):
        return
    test_family = dataclasses.replace(FAMILY, name="qwen3-test", model_types=("qwen3",))
    monkeypatch.setattr(spec, "_FAMILIES", {**spec.families(), test_family.name: test_family})


def test_qwen3_to_qwen3_moe_exact(qwen3_family, tmp_path):
    import torch
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.Qwen3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                         tie_word_embeddings=True)
    dense = tf.Qwen3ForCausalLM(cfg)
    with torch.no_grad():
        for _, p in dense.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    dense.save_pretrained(str(tmp_path / "qwen3"))
    result = _upcycle(tmp_path / "qwen3", tmp_path / "moe", experts=8, top_k=2, granularity=2)
    assert result.transform.exact is True
    model = _load(tmp_path / "moe")
    assert isinstance(model, tf.Qwen3MoeForCausalLM)
    assert (model.config.num_experts, model.config.moe_intermediate_size, model.config.norm_topk_prob) == (8, 32, True)
    rel, top1 = _compare(tmp_path / "qwen3", tmp_path / "moe")
    assert rel <= TOL and top1 == 1.0


def test_output_router_logits_for_training(tiny_llama, tmp_path):
    import torch

    assert main(["upcycle", str(tiny_llama), str(tmp_path / "moe"), "--experts", "4", "--top-k", "2",
                 "--output-router-logits", "--aux-loss-coef", "0.02", "--quiet"]) == 0
    cfg = json.loads((tmp_path / "moe" / "config.json").read_text())
    assert cfg["output_router_logits"] is True and cfg["router_aux_loss_coef"] == 0.02
    out = _load(tmp_path / "moe")(input_ids=_ids(), labels=_ids())
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss)
    _upcycle(tiny_llama, tmp_path / "plain", experts=4, top_k=2)
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["output_router_logits"] is False
