"""The bench's training loop: determinism, exact resume, logged quantities checked independently."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from warmstart.bench.train import eval_offsets, flops_params, read_log, train
from warmstart.errors import WarmstartError

CFG = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
KW = dict(steps=12, batch_size=4, seq_len=16, lr=3e-3, eval_every=4, eval_batches=2, progress=False,
          schedule="warmup:linear:2 > decay:cosine:10:0.1")


@pytest.fixture(scope="module")
def tokens():
    # A learnable stream: a noisy repeating pattern, so the loss must fall.
    rng = np.random.default_rng(0)
    base = np.tile(np.arange(64, dtype=np.uint16), 200)
    noise = rng.integers(0, 64, size=base.size).astype(np.uint16)
    mask = rng.random(base.size) < 0.2
    return np.where(mask, noise, base).astype(np.uint16)


@pytest.fixture(scope="module")
def straight(tokens, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    return train(CFG, tokens[:10000], tokens[10000:], out_dir=out, checkpoint_every=4, save_every=6, **KW)


def test_log_rows_and_closed_form_lr(straight):
    rows = read_log(straight.log_path)
    assert [r["step"] for r in rows] == list(range(13))  # step 0 = the evaluation before training
    for r in rows[1:]:
        assert r["tokens"] == r["step"] * 4 * 16
        assert r["flops"] == pytest.approx(6 * straight.flops_params * r["tokens"])
    # Hand-computed: linear warmup (i + 1) / 2 over 2 updates, then cosine from 1 to 0.1 over 10.
    def lr(i):
        if i < 2:
            return 3e-3 * (i + 1) / 2
        p = (i - 1) / 10  # progress (s + 1) / n: the last update sits at the end level
        return 3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
    for r in rows[1:]:
        assert r["lr"] == pytest.approx(lr(r["step"] - 1), rel=1e-9)
    evals = [r["step"] for r in rows if r.get("eval_loss") is not None]
    assert evals == [0, 4, 8, 12]
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"] - 0.1  # it learned the pattern
    assert json.loads((straight.out_dir / "result.json").read_text())["final_eval_loss"] == rows[-1]["eval_loss"]


def test_flops_params_by_hand(straight):
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(str(straight.final_dir))
    h, i, L, V, kv = 32, 48, 2, 64, 2 * (32 // 4)
    per_layer = h * h + 2 * h * kv + h * h + 3 * h * i + 2 * h
    assert flops_params(model) == L * per_layer + h + V * h  # tied: the head counted, the lookup not
    assert straight.flops_params == L * per_layer + h + V * h


def test_eval_loss_matches_second_implementation(straight, tokens):
    import torch
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(str(straight.final_dir)).eval()
    held = tokens[10000:]
    offsets = eval_offsets(len(held), 16, 2 * 4)
    with torch.no_grad():
        losses = [model(input_ids=torch.tensor(held[o:o + 17].astype(np.int64))[None],
                        labels=torch.tensor(held[o:o + 17].astype(np.int64))[None]).loss.item()
                  for o in offsets]
    assert straight.final_eval_loss == pytest.approx(float(np.mean(losses)), abs=1e-5)


def test_saved_checkpoints(straight):
    assert [p.split("/")[-1] for p in straight.saved] == ["step-000006"]
    assert (straight.out_dir / "checkpoints" / "step-000006" / "model.safetensors").is_file()
    assert not (straight.out_dir / "state").exists()  # resume state dropped once finished


def test_interrupted_run_resumes_exactly(tokens, straight, tmp_path):
    out = tmp_path / "run"

    def stop(row):
        if row["step"] == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(CFG, tokens[:10000], tokens[10000:], out_dir=out, checkpoint_every=4, on_step=stop, **KW)
    assert len(read_log(out / "log.jsonl")) == 11
    resumed = train(CFG, tokens[:10000], tokens[10000:], out_dir=out, checkpoint_every=4, resume=True, **KW)
    assert resumed.resumed_from == 8
    a, b = read_log(straight.log_path), read_log(resumed.log_path)
    assert [r["step"] for r in b] == list(range(13))
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert [r.get("eval_loss") for r in a] == [r.get("eval_loss") for r in b]
    # A finished run is returned as is.
    again = train(CFG, tokens[:10000], tokens[10000:], out_dir=out, resume=True, **KW)
    assert again.final_eval_loss == resumed.final_eval_loss


def test_existing_output_refused(tokens, straight):
    with pytest.raises(WarmstartError, match="already exists"):
        train(CFG, tokens[:10000], tokens[10000:], out_dir=straight.out_dir, **KW)


def test_too_few_tokens_and_bad_batch(tokens, tmp_path):
    with pytest.raises(WarmstartError, match="fewer than one sequence"):
        train(CFG, tokens[:10], tokens[10000:], out_dir=tmp_path / "a", **KW)
    with pytest.raises(WarmstartError, match="not divisible"):
        train(CFG, tokens[:10000], None, out_dir=tmp_path / "b", **{**KW, "grad_accum": 3})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_grad_accumulation_follows_the_same_curve(tokens, straight, tmp_path):
    acc = train(CFG, tokens[:10000], tokens[10000:], out_dir=tmp_path / "acc", grad_accum=2, save_final=False, **KW)
    a, b = read_log(straight.log_path), read_log(acc.log_path)
    for x, y in zip(a[1:], b[1:]):
        assert y["train_loss"] == pytest.approx(x["train_loss"], abs=2e-4)
