"""The bench's Mixture-of-Experts accounting: active parameters for the 6ND rule, the load-balancing loss in
training (not in evaluation), and the expert-load summary."""

from __future__ import annotations

import math

import numpy as np
import pytest


def _mixtral(experts=4, top_k=2, aux=0.5, seed=0):
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=16, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=experts,
                           num_experts_per_tok=top_k, max_position_embeddings=32, tie_word_embeddings=False,
                           router_aux_loss_coef=aux, output_router_logits=True)
    return tf.MixtralForCausalLM(cfg)


def test_flops_count_only_the_experts_a_token_uses():
    from warmstart.bench.train import flops_params

    model = _mixtral(experts=4, top_k=2)
    total = sum(p.numel() for p in model.parameters())
    embed = 64 * 32
    per_expert = 3 * 32 * 16  # gate, up, down of one expert
    inactive = 2 * (4 - 2) * per_expert  # two layers, two unused experts each
    assert flops_params(model) == total - embed - inactive


def test_dense_flops_unchanged():
    import transformers as tf

    from warmstart.bench.train import flops_params

    model = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=16,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                               tie_word_embeddings=False))
    assert flops_params(model) == sum(p.numel() for p in model.parameters()) - 64 * 32


def test_load_balancing_loss_joins_training_only():
    import torch
    import torch.nn.functional as F

    from warmstart.bench.train import _loss

    model = _mixtral(aux=0.5)
    x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        out = model(input_ids=x)
        ce = F.cross_entropy(out.logits.reshape(-1, 64), y.reshape(-1))
        assert _loss(model, x, y).item() == pytest.approx(ce.item(), rel=1e-6)
        model.train()
        assert _loss(model, x, y).item() == pytest.approx(ce.item() + 0.5 * out.aux_loss.item(), rel=1e-5)
    assert out.aux_loss.item() > 0


def test_expert_load_shares_and_balance():
    from warmstart.bench.moe import balance, expert_load

    model = _mixtral(experts=4, top_k=2)
    tokens = np.random.default_rng(0).integers(0, 64, 2000)
    shares = expert_load(model, tokens, [0, 100, 200, 300, 400, 500], seq_len=16, batch_size=4)
    assert len(shares) == 2 and all(len(s) == 4 and math.isclose(sum(s), 1.0) for s in shares)
    even = balance([[0.25] * 4, [0.25] * 4])
    assert even["entropy"] == pytest.approx(1.0) and even["max_over_mean"] == pytest.approx(1.0)
    skewed = balance([[1.0, 0.0, 0.0, 0.0]])
    assert skewed["entropy"] == pytest.approx(0.0) and skewed["max_over_mean"] == pytest.approx(4.0)


def test_moe_from_scratch_arm_through_the_upcycle_chain(tmp_path, monkeypatch, capsys, one_thread):
    """A scratch arm with `grow`: the recipe's model randomly initialized (seeded), then the chain. With
    `upcycle` and drop_ratio 1.0 that is an MoE from scratch: every expert re-drawn, none a copy, trained with
    active-parameter FLOPs; seeds give different starts."""
    import json

    import yaml
    from safetensors.torch import load_file

    from tests.conftest import word_corpus
    from warmstart.cli import main

    monkeypatch.setenv("WARMSTART_CACHE", str(tmp_path / "cache"))
    corpus = word_corpus(tmp_path / "corpus")
    moe = {"op": "upcycle", "experts": 4, "top_k": 2, "drop_ratio": 1.0, "output_router_logits": True}
    recipe = {
        "name": "moe", "corpus": [str(corpus)], "tokenizer": {"vocab_size": 300}, "heldout": 0.1, "seeds": 2,
        "model": {"hidden": 16, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 32, "seq_len": 16,
                  "tie_embeddings": False},
        "train": {"steps": 4, "batch_size": 4, "lr": 3e-3, "eval_every": 2, "eval_batches": 2},
        "arms": [{"name": "scratch"}, {"name": "moe-scratch", "grow": moe}],
    }
    path = tmp_path / "moe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    assert main(["bench", str(path), str(out), "--quiet", "--threads", "1"]) == 0, capsys.readouterr().err

    starts = []
    for seed in (0, 1):
        grown = out / f"seed-{seed}" / "grown" / "moe-scratch"
        assert json.loads((grown / "config.json").read_text())["model_type"] == "mixtral"
        w = load_file(str(grown / "model.safetensors"))
        experts = sorted(k for k in w if ".mlp.experts.0." in k or ".block_sparse_moe.experts.0." in k)
        assert experts, sorted(w)[:20]
        first = experts[0]
        other = first.replace("experts.0.", "experts.1.")
        assert not np.allclose(w[first].numpy(), w[other].numpy())  # re-drawn, not copies
        starts.append(w[first].numpy())
        rows = [json.loads(line) for line in (out / f"seed-{seed}" / "arms" / "moe-scratch" / "log.jsonl")
                .read_text().splitlines()]
        evals = [r["eval_loss"] for r in rows if r.get("eval_loss") is not None]
        assert evals[0] > 0.8 * math.log(300)  # a random start: about the uniform loss over the vocabulary
        settings = json.loads((out / f"seed-{seed}" / "arms" / "moe-scratch" / "result.json").read_text())
        assert settings["flops_params"] < settings["params"]  # FLOPs from the active experts only
    assert not np.allclose(starts[0], starts[1])  # each seed its own random start
    assert "from scratch, the random model then transformed by upcycle(" in (out / "report.md").read_text()
