"""Bench arms of kind `adapter`: LoRA initializations fine-tuned by the bench's Trainer on a tiny random Llama."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from warmstart.cli import main

TEXT = " ".join(f"def {w}_{i}(x):\n    return x * {i % 7} + {len(w)}\n" for i in range(400)
                for w in ("alpha", "beta", "gamma", "delta"))
TARGETS = ["q_proj", "v_proj"]


@pytest.fixture
def setup(tmp_path, monkeypatch):
    from tests.conftest import build_tiny, make_bpe

    monkeypatch.setenv("WARMSTART_CACHE", str(tmp_path / "cache"))
    base = build_tiny("llama", tmp_path / "base", vocab_size=300, hidden_size=32, num_attention_heads=4,
                      num_key_value_heads=2, num_hidden_layers=2, intermediate_size=64)
    make_bpe(base, TEXT, 300, {"eos": "<|endoftext|>"})
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for d in range(3):
        (corpus / f"mod{d}.py").write_text(TEXT[d * 1000:] + TEXT[: d * 1000])
    adapter = {"rank": 4, "targets": TARGETS, "calib_batches": 2}
    data = {
        "name": "adapter",
        "corpus": [str(corpus)],
        "tokenizer": {"path": "base"},
        "heldout": 0.1,
        "model": {"hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 64, "seq_len": 16},
        "train": {"steps": 6, "batch_size": 4, "lr": 1e-2, "weight_decay": 0.0, "eval_every": 2,
                  "eval_batches": 2, "checkpoint_every": 3},
        "arms": [
            {"name": "default", "checkpoint": "base", "adapter": {"method": "default", **adapter}},
            {"name": "pissa", "checkpoint": "base", "adapter": {"method": "pissa", "alpha": 4, **adapter}},
            {"name": "lora-ga", "checkpoint": "base", "adapter": {"method": "lora-ga", **adapter}},
            {"name": "eva", "checkpoint": "base", "adapter": {"method": "eva", **adapter}},
        ],
        "target": {"arm": "default"},
    }
    path = tmp_path / "adapter.yaml"
    path.write_text(yaml.safe_dump(data))
    return tmp_path, path, base, data


def _heldout_loss(model, tokens, seq_len, batch_size, count):
    """Mean next-token loss on the bench's evaluation windows, computed here with plain torch."""
    import torch
    import torch.nn.functional as F

    from warmstart.bench.train import eval_offsets

    total, n = 0.0, 0
    offsets = list(eval_offsets(len(tokens), seq_len, count))
    with torch.no_grad():
        for o in offsets:
            w = torch.tensor([int(t) for t in tokens[o:o + seq_len + 1]])[None]
            logits = model(input_ids=w[:, :-1]).logits
            total += float(F.cross_entropy(logits[0].double(), w[0, 1:], reduction="sum"))
            n += seq_len
    return total / n


def test_adapter_arms_run_end_to_end(setup, capsys, one_thread):
    import torch
    import transformers as tf
    from peft import PeftModel
    from safetensors.torch import load_file

    from warmstart.bench import data as D
    from warmstart.bench.train import read_log

    tmp, path, base, _ = setup
    out = tmp / "bench"
    assert main(["bench", str(path), str(out), "--quiet"]) == 0, capsys.readouterr().err
    report = (out / "report.md").read_text()
    assert "## Adapter arms: steps to `default`'s final held-out loss" in report
    assert "| pissa | pissa |" in report and "| default | default |" in report

    # FLOPs: 4 N + 6 n per token, from the shapes alone (tied embeddings: the shared matrix counted once).
    h, kv, inter, layers, vocab, r = 32, 16, 64, 2, 300, 4
    n_base = vocab * h + layers * (2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h) + h
    n_adapter = layers * (r * (h + h) + r * (h + kv))
    seed0 = out / "seed-0"
    for arm in ("default", "pissa", "lora-ga", "eva"):
        rows = read_log(seed0 / "arms" / arm / "log.jsonl")
        assert [r_["flops"] for r_ in rows] == [(4 * n_base + 6 * n_adapter) * 64 * r_["step"] for r_ in rows]
        settings = json.loads((seed0 / "arms" / arm / "settings.json").read_text())
        assert settings["trainable_params"] == n_adapter

    results = json.loads((out / "results.json").read_text())
    arms = results["per_seed"][0]["arms"]
    # Calibration: LoRA-GA runs 2 forwards and backwards of 4 x 16 tokens; default and PiSSA read no data.
    ga = json.loads((seed0 / "adapters" / "lora-ga" / "warmstart_adapter.json").read_text())["bench"]
    assert ga["forward_tokens"] == ga["gradient_tokens"] == 2 * 4 * 16
    n_targets = layers * (h * h + kv * h)
    assert arms["lora-ga"]["source_cost"]["flops"] == pytest.approx(
        2 * n_base * 128 + (2 * n_base + 2 * n_targets) * 128)
    eva = json.loads((seed0 / "adapters" / "eva" / "warmstart_adapter.json").read_text())["bench"]
    assert eva["forward_tokens"] >= 2 * 4 * 16 and eva["gradient_tokens"] == 0
    assert arms["default"]["source_cost"]["flops"] == 0.0 and arms["pissa"]["source_cost"]["flops"] == 0.0
    assert arms["default"]["trainable_params"] == n_adapter

    # The steps-to-reference column is the tokens to default's final loss over the tokens of a step.
    target = results["per_seed"][0]["target"]
    ref_rows = read_log(seed0 / "arms" / "default" / "log.jsonl")
    assert target == [r_ for r_ in ref_rows if r_.get("eval_loss") is not None][-1]["eval_loss"]
    for name in ("pissa", "lora-ga", "eva"):
        tokens = arms[name]["to_target"]["tokens"]
        ev = [r_ for r_ in read_log(seed0 / "arms" / name / "log.jsonl") if r_.get("eval_loss") is not None]
        if tokens == "inf":
            assert all(r_["eval_loss"] > target for r_ in ev)
        else:
            assert any(r_["eval_loss"] <= target for r_ in ev)
            steps = tokens / 64  # batch_size 4 x seq_len 16
            assert 0 < steps <= 6 and f"{steps:.3g} (" in report  # the report's steps column
    assert results["best"]["arm"] != "default"

    # Every final adapter is a LoRA against the untouched checkpoint: loaded on it with PEFT, it gives the
    # held-out loss the trainer logged at the end (so the base was not trained, and PiSSA's and LoRA-GA's
    # factors were converted from their residual base correctly).
    data = D.prepare({"main": D.corpus_files([str(tmp / "corpus")], tmp)}, vocab_size=300, heldout=0.1,
                     tokenizer=base)["main"]
    source = load_file(str(base / "model.safetensors"))
    for arm in ("default", "pissa", "lora-ga"):
        final = seed0 / "arms" / arm / "final"
        config = json.loads((final / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str(base.resolve())
        assert config["init_lora_weights"] is True
        model = PeftModel.from_pretrained(tf.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                          str(final)).eval()
        for name, tensor in source.items():  # loading did not touch the base either
            got = dict(model.base_model.model.named_parameters()).get(name)
            if got is None:
                got = model.base_model.model.get_parameter(name.replace(".weight", ".base_layer.weight"))
            assert torch.equal(got, tensor), name
        mine = _heldout_loss(model, data.val, 16, 4, 2 * 4)
        evals = [r_ for r_ in read_log(seed0 / "arms" / arm / "log.jsonl") if r_.get("eval_loss") is not None]
        assert mine == pytest.approx(evals[-1]["eval_loss"], rel=1e-5), arm
        assert abs(evals[-1]["eval_loss"] - evals[0]["eval_loss"]) > 1e-3  # it did train
    assert math.isfinite(results["summary"]["arms"]["pissa"]["final_eval_loss"])


def test_adapter_arm_trains_only_the_adapter(setup, one_thread):
    """The Trainer, given an adapter arm's start, changes the LoRA factors and not one base weight."""
    import torch
    from accelerate import Accelerator

    from warmstart.bench import adapter_arm as AA
    from warmstart.bench import data as D
    from warmstart.bench.recipe import load
    from warmstart.bench.train import train

    tmp, path, base, _ = setup
    recipe = load(path)
    tok = D.prepare({"main": D.corpus_files([str(tmp / "corpus")], tmp)}, vocab_size=300, heldout=0.1,
                    tokenizer=base)["main"]
    acc = Accelerator(cpu=True)
    for arm in (recipe.arm("pissa"), recipe.arm("lora-ga")):
        start = AA.build(base, arm.adapter, train_tokens=tok.train, seq_len=16, batch_size=4, seed=0,
                         corpus=[tmp / "corpus" / "mod0.py"], start_dir=tmp / "start" / arm.name, accelerator=acc)
        before = {n: p.detach().clone() for n, p in start.model.named_parameters()}
        assert {n for n, p in start.model.named_parameters() if p.requires_grad} == {n for n in before if "lora_" in n}
        train(start.model, tok.train, tok.val, out_dir=tmp / "run" / arm.name, steps=3, batch_size=4, seq_len=16,
              lr=1e-2, eval_every=3, eval_batches=1, progress=False, accelerator=acc,
              flops_per_token=start.flops_per_token)
        assert not acc._models and not acc._optimizers  # the run let go of its model in the shared Accelerator
        after = dict(start.model.named_parameters())
        frozen = [n for n in before if "lora_" not in n]
        assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
        assert all(not torch.equal(before[n], after[n]) for n in before if "lora_B" in n)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["arms"][1]["adapter"].update(method="pisa"), "arms[1].adapter.method: unknown adapter method 'pisa'"),
    (lambda d: d["arms"][1]["adapter"].update(rank=0), "arms[1].adapter.rank: Input should be greater than 0"),
    (lambda d: d["arms"][1]["adapter"].update(rank=20), "arms[1].adapter: rank 20 is above the smallest dimension"),
    (lambda d: d["arms"][1]["adapter"].update(targets=["qq_proj"]),
     "arms[1].adapter: target module 'qq_proj' matches no linear layer; available: down_proj, gate_proj"),
    (lambda d: d["arms"][1]["adapter"].update(colour="red"), "arms[1].adapter.colour: unknown field"),
    (lambda d: d["arms"][1].pop("checkpoint"), "arms[1]: adapter needs a checkpoint"),
    (lambda d: d["arms"][1].update(grow=[{"op": "stack", "layers": 4}]), "leave out grow"),
    (lambda d: d.update(target={"arm": "scratch"}) or d["arms"].append({"name": "scratch"}),
     "target.arm: adapter arms are measured against an adapter arm"),
    (lambda d: d["model"].update(hidden=64, heads=8), "arms[0].checkpoint: the adapter's base has hidden 32"),
    (lambda d: d.update(tokenizer={"vocab_size": 300}), "tokenizer differs"),
])
def test_bad_adapter_recipes_exit_2_with_one_line(setup, capsys, change, message):
    tmp, path, _, data = setup
    change(data)
    path.write_text(yaml.safe_dump(data))
    out = tmp / "bad"
    code = main(["bench", str(path), str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists() and not (tmp / ".bad.partial").exists()


def test_interrupted_adapter_arm_resumes_exactly(setup, one_thread):
    """An adapter arm stopped mid-run and resumed (its start rebuilt, then the saved state loaded) follows the
    straight run loss for loss, as every bench arm does."""
    from accelerate import Accelerator

    from warmstart.bench import adapter_arm as AA
    from warmstart.bench import data as D
    from warmstart.bench.recipe import load
    from warmstart.bench.train import read_log, train

    tmp, path, base, _ = setup
    arm = load(path).arm("lora-ga")
    tok = D.prepare({"main": D.corpus_files([str(tmp / "corpus")], tmp)}, vocab_size=300, heldout=0.1,
                    tokenizer=base)["main"]
    acc = Accelerator(cpu=True)
    kw = {"steps": 6, "batch_size": 4, "seq_len": 16, "lr": 1e-2, "eval_every": 2, "eval_batches": 1,
          "progress": False, "accelerator": acc, "checkpoint_every": 2}

    def start():
        return AA.build(base, arm.adapter, train_tokens=tok.train, seq_len=16, batch_size=4, seed=0,
                        corpus=[tmp / "corpus" / "mod0.py"], start_dir=tmp / "start", accelerator=acc)

    s = start()
    straight = train(s.model, tok.train, tok.val, out_dir=tmp / "straight", flops_per_token=s.flops_per_token, **kw)

    def stop(row):
        if row["step"] == 5:
            raise KeyboardInterrupt

    s = start()
    with pytest.raises(KeyboardInterrupt):
        train(s.model, tok.train, tok.val, out_dir=tmp / "cut", on_step=stop, flops_per_token=s.flops_per_token, **kw)
    s = start()
    resumed = train(s.model, tok.train, tok.val, out_dir=tmp / "cut", resume=True, flops_per_token=s.flops_per_token,
                    **kw)
    assert resumed.resumed_from == 4
    a, b = read_log(straight.log_path), read_log(resumed.log_path)
    assert [r["step"] for r in b] == list(range(7))
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert [r.get("eval_loss") for r in a] == [r.get("eval_loss") for r in b]
    assert [r["flops"] for r in a] == [r["flops"] for r in b]


def _source_recipe(**adapter):
    return {"name": "s", "corpus": "shakespeare", "model": {"hidden": 32, "layers": 2, "heads": 2, "seq_len": 16},
            "train": {"steps": 4, "batch_size": 2},
            "sources": {"base": {"model": {"hidden": 32, "layers": 2, "heads": 2}, "steps": 4}},
            "arms": [{"name": "default", "source": "base", "adapter": {"method": "default", "rank": 4}},
                     {"name": "x", "source": "base", "adapter": {"method": "pissa", "rank": 4, **adapter}}],
            "target": {"arm": "default"}}


def test_adapter_on_a_bench_source_is_checked_on_its_planned_shapes():
    from warmstart.bench import recipe as R

    R.parse(_source_recipe())  # q_proj and v_proj (PEFT's Llama default) exist, rank 4 <= 32
    with pytest.raises(R.RecipeError, match=r"arms\[1\].adapter: rank 40 is above the smallest dimension of "
                                            r"model.layers.0.self_attn.q_proj.weight \[32, 32\] \(at most 32\)"):
        R.parse(_source_recipe(rank=40))
    with pytest.raises(R.RecipeError, match=r"arms\[1\].adapter: target module 'c_attn' matches no linear layer; "
                                            r"available: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"):
        R.parse(_source_recipe(targets=["c_attn"]))
    mixed = _source_recipe()
    mixed["arms"][1] = {"name": "x", "checkpoint": "elsewhere", "adapter": {"method": "pissa", "rank": 4}}
    with pytest.raises(R.RecipeError, match=r"arms\[1\].checkpoint: 'elsewhere' is not the base of the reference"):
        R.parse(mixed)


def test_the_shipped_adapter_recipes_parse():
    from pathlib import Path

    from warmstart.bench import recipe as R

    root = Path(__file__).resolve().parents[2] / "recipes"
    for name in ("adapter_init.yaml", "adapter_init_tiny.yaml"):
        r = R.load(root / name)
        methods = [a.adapter.method for a in r.arms]
        assert r.target.arm == "default" and methods[0] == "default" and r.seeds == 3
        assert {"pissa", "olora", "nlora", "eva", "lora-ga", "lora-sb", "gaussian", "init-b"} <= set(methods)
        assert len({(a.adapter.rank, a.adapter.targets[0]) for a in r.arms}) == 1  # the same rank and targets


def test_adapter_arms_on_a_learning_rate_grid(setup, capsys, one_thread):
    """Adapter arms take the recipe's lr_grid like every arm: one run per rate, each at its own peak, the kept
    rate being the one with the lower final held-out loss (checked from the runs' own logs)."""
    from warmstart.bench.train import read_log

    tmp, path, _, data = setup
    data = {**data, "arms": data["arms"][:2], "lr_grid": [1e-3, 1e-2]}
    data["train"] = {k: v for k, v in data["train"].items() if k != "lr"}
    path.write_text(yaml.safe_dump(data))
    out = tmp / "grid"
    assert main(["bench", str(path), str(out), "--quiet"]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    for arm in ("default", "pissa"):
        finals = {}
        for lr in ("0.001", "0.01"):
            rows = read_log(out / "seed-0" / "arms" / f"{arm}@lr{lr}" / "log.jsonl")
            assert max(r["lr"] for r in rows) == pytest.approx(float(lr))
            finals[float(lr)] = [r for r in rows if r.get("eval_loss") is not None][-1]["eval_loss"]
            assert (out / "seed-0" / "adapters" / f"{arm}@lr{lr}" / "warmstart_adapter.json").is_file()
        assert results["grid"][arm]["chosen"] == pytest.approx(min(finals, key=finals.get))
