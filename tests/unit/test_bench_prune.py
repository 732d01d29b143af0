"""Bench arms from a real-style checkpoint: pruned starts, distillation (cached and live), teacher FLOPs."""

from __future__ import annotations

import json

import pytest
import yaml

from warmstart.cli import main

TEXT = " ".join(f"the {w} of line {i} is {w[::-1]} and {i * 7 % 13}." for i in range(300)
                for w in ("king", "queen", "ghost", "sword"))


@pytest.fixture
def setup(tmp_path, monkeypatch):

    from tests.conftest import build_tiny, make_bpe

    monkeypatch.setenv("WARMSTART_CACHE", str(tmp_path / "cache"))
    teacher = build_tiny("llama", tmp_path / "teacher", vocab_size=300, hidden_size=48, num_attention_heads=6,
                         num_key_value_heads=3, head_dim=8, num_hidden_layers=4, intermediate_size=64)
    make_bpe(teacher, TEXT, 300, {"eos": "<|endoftext|>"})
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for d in range(2):
        (corpus / f"doc{d}.txt").write_text(TEXT[d::2].replace("  ", " ") + "\n" + TEXT)
    data = {
        "name": "prune",
        "corpus": [str(corpus)],
        "tokenizer": {"path": str(teacher)},
        "heldout": 0.1,
        "model": {"hidden": 24, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 32, "seq_len": 16},
        "train": {"steps": 4, "batch_size": 4, "lr": 3e-3, "eval_every": 2, "eval_batches": 2,
                  "checkpoint_every": 2},
        "arms": [
            {"name": "scratch"},
            {"name": "scratch_kd", "distill": {"teacher": "teacher", "top_k": 8, "windows": 40}},
            {"name": "pruned", "checkpoint": "teacher", "prune": {"batches": 2, "batch_size": 2}},
            {"name": "pruned_kd", "checkpoint": "teacher", "prune": {"batches": 2, "batch_size": 2},
             "distill": {"top_k": 8, "windows": 40, "alpha": 0.2, "temperature": 2.0}},
            {"name": "select_live", "checkpoint": "teacher", "prune": {"importance": "select",
                                                                     "depth_importance": "even"},
             "distill": {"live": True, "norms_only": True}},
        ],
    }
    path = tmp_path / "prune.yaml"
    path.write_text(yaml.safe_dump(data))
    return tmp_path, path, teacher


def test_prune_and_distill_arms_run_and_count_the_teacher(setup, capsys):
    import transformers as tf

    from warmstart.bench.train import flops_params, read_log

    tmp, path, teacher = setup
    out = tmp / "bench"
    assert main(["bench", str(path), "--out", str(out), "--quiet"]) == 0, capsys.readouterr().err
    n_teacher = flops_params(tf.AutoModelForCausalLM.from_pretrained(str(teacher)))
    work = next(p for p in out.rglob("seed-0") if p.is_dir())
    for arm in ("scratch_kd", "pruned_kd", "select_live"):
        rows = [r for r in read_log(work / "arms" / arm / "log.jsonl") if r["step"] > 0]
        assert [r["teacher_flops"] for r in rows] == [2.0 * n_teacher * 64 * r["step"] for r in rows]
        assert all(r["flops_with_teacher"] == r["flops"] + r["teacher_flops"] for r in rows)
    for arm in ("scratch", "pruned"):
        assert all("teacher_flops" not in r for r in read_log(work / "arms" / arm / "log.jsonl"))
    pruned = json.loads((work.parent / "pruned" / "pruned" / "config.json").read_text())
    assert (pruned["num_hidden_layers"], pruned["hidden_size"], pruned["num_key_value_heads"]) == (2, 24, 2)
    # PERP: the live-distilled arm trained only its norms, so its embedding is the pruned start's.
    from safetensors.torch import load_file

    start = load_file(str(work.parent / "pruned" / "select_live" / "model.safetensors"))
    final = load_file(str(work / "arms" / "select_live" / "final" / "model.safetensors"))
    assert (start["model.embed_tokens.weight"] == final["model.embed_tokens.weight"]).all()
    assert not (start["model.norm.weight"] == final["model.norm.weight"]).all()
    report = (out / "report.md").read_text()
    assert "teacher FLOPs" in report
    results = json.loads((out / "results.json").read_text())
    arms = results["per_seed"][0]["arms"]
    # The pruned checkpoint's pretraining is sunk (counted 0); the teacher's forwards are reported.
    assert arms["pruned"]["source_cost"] == {"tokens": 0.0, "flops": 0.0, "time": 0.0}
    assert arms["pruned_kd"]["teacher_flops"] == 2.0 * n_teacher * 4 * 64


def test_teacher_with_another_tokenizer_is_refused(setup, capsys):
    tmp, path, _ = setup
    data = yaml.safe_load(path.read_text())
    data["tokenizer"] = {"vocab_size": 300}
    path.write_text(yaml.safe_dump(data))
    code = main(["bench", str(path), "--out", str(tmp / "bench"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "tokenizer differs" in err[0]
