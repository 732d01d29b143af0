"""The bench's scratch arm with LSUV ("All you need is a good init"): unit variances checked by hooks, a tiny recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from warmstart.bench import recipe as R
from warmstart.bench.scratch_init import lsuv_init
from warmstart.cli import main


def _tiny(tie: bool):
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=tie)
    return tf.LlamaForCausalLM(cfg)


@pytest.mark.parametrize("tie", [False, True])
def test_lsuv_gives_every_linear_unit_output_variance(tie):
    model = _tiny(tie)
    batch = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(1))
    emb_before = model.get_input_embeddings().weight.clone()
    cost = lsuv_init(model, batch, seed=3, tol=0.05)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    expected = len(linears) - (1 if tie else 0)
    assert cost["layers"] == expected and cost["forwards"] > expected and cost["flops"] > 0
    var = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, n=n: var.__setitem__(n, float(out.double().var())))
             for n, m in linears.items()]
    with torch.no_grad():
        model(input_ids=batch)
    for h in hooks:
        h.remove()
    for name, m in linears.items():
        if tie and name == "lm_head":
            assert torch.equal(model.get_input_embeddings().weight, emb_before)  # the tied head is left alone
            continue
        assert abs(var[name] - 1) < 0.05, (name, var[name])
        w = m.weight.detach().double()  # a scaled orthogonal matrix: the Gram matrix of the short side is c * I
        g = w @ w.t() if w.shape[0] <= w.shape[1] else w.t() @ w
        c = float(g.diagonal().mean())
        assert torch.allclose(g, c * torch.eye(g.shape[0], dtype=torch.float64), atol=1e-5 * c), name


def test_init_field_is_for_scratch_arms_only():
    base = {"model": {"hidden": 16, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 32, "seq_len": 16},
            "train": {"steps": 4, "batch_size": 2},
            "sources": {"s": {"model": {"hidden": 16, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 32},
                              "steps": 2}},
            "arms": [{"name": "scratch"}, {"name": "lsuv", "init": "lsuv"}]}
    r = R.parse(base, "r.yaml")
    assert [a.init for a in r.arms] == ["default", "lsuv"] and r.arms[1].kind == "scratch"
    for arm, message in (({"name": "x", "init": "lsuv", "source": "s"}, "scratch arms"),
                         ({"name": "x", "init": "xavier"}, "arms[1].init")):
        with pytest.raises(R.RecipeError) as info:
            R.parse({**base, "arms": [{"name": "scratch"}, arm]}, "r.yaml")
        assert message in info.value.line()


def test_tiny_recipe_with_an_lsuv_scratch_arm(tmp_path, monkeypatch):
    monkeypatch.setenv("WARMSTART_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    words = "the king queen shall speak of love and war upon a summer day when night falls dark".split()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(" ".join(rng.choice(words, size=8)) + ".\n" for _ in range(400)))
    steps, batch, seq = 6, 4, 16
    recipe = {"name": "tiny", "corpus": [str(corpus)], "tokenizer": {"vocab_size": 300}, "heldout": 0.1,
              "model": {"hidden": 16, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 32, "seq_len": seq},
              "train": {"steps": steps, "batch_size": batch, "lr": 1.0e-2, "eval_every": 3, "eval_batches": 2},
              "arms": [{"name": "scratch"}, {"name": "lsuv", "init": "lsuv"}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "out"
    assert main(["bench", str(path), "--out", str(out), "--quiet"]) == 0
    seed = json.loads((out / "results.json").read_text())["per_seed"][0]
    arms = seed["arms"]
    cost = json.loads((out / "seed-0" / "arms" / "lsuv" / "init_cost.json").read_text())
    # the calibration forwards are counted as the arm's start cost; the default scratch arm has none
    assert arms["lsuv"]["source_cost"]["flops"] == pytest.approx(cost["flops"]) and cost["flops"] > 0
    assert arms["scratch"]["source_cost"]["flops"] == 0
    # a different init: the first evaluations differ
    assert arms["lsuv"]["first_eval_loss"] != pytest.approx(arms["scratch"]["first_eval_loss"], abs=1e-4)
