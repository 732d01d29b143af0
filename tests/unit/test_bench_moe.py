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
