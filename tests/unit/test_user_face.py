"""Bugs a new user met in the first hour (issue 12), each with a test that failed before its fix."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
import transformers

from tests.conftest import build_tiny
from warmstart.cli import main
from warmstart.verify import BUILTIN_TEXT


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _with_tokenizer(model: Path) -> Path:
    """Give a tiny model a word-level tokenizer over the built-in text, so verify can run."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(BUILTIN_TEXT.replace(",", " ").replace(".", " ").replace(":", " ").split()))
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words[:100])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(model))
    return model


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_verify_without_tokenizer_is_one_line_and_exit_2(tmp_path, capsys, family):
    model = build_tiny(family, tmp_path / "m")
    capsys.readouterr()
    code, out, err = _run(capsys, "verify", model, model, "--expect-exact")
    assert code == 2  # not 1, which --expect-exact uses for "not exact"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no tokenizer" in lines[0] and str(model) in lines[0] and "Traceback" not in err


def test_verify_names_its_text_and_does_not_depend_on_the_cache(tmp_path, capsys, monkeypatch):
    model = _with_tokenizer(build_tiny("llama", tmp_path / "m"))
    code, out, _ = _run(capsys, "verify", model, model, "--json")
    assert code == 0
    first = json.loads(out)
    assert first["text"] == "built-in paragraph"
    # The same command with a different cache (where Hamlet would have been found) gives the same figures.
    monkeypatch.setenv("WARMSTART_CACHE", str(tmp_path / "other-cache"))
    code, out, _ = _run(capsys, "verify", model, model, "--json")
    assert json.loads(out)["loss_source"] == first["loss_source"]
    text = tmp_path / "t.txt"
    text.write_text(BUILTIN_TEXT[::-1].swapcase() + " " + BUILTIN_TEXT)
    code, out, _ = _run(capsys, "verify", model, model, "--text", text)
    assert code == 0 and f"text in {text}" in out.splitlines()[0]


def test_bench_settings_record_the_schedule_actually_used(tmp_path):
    import numpy as np

    from warmstart.bench.train import lr_function, train

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 64, 5000).astype(np.uint16)
    cfg = dict(model_type="llama", vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    train(cfg, tokens, tokens, out_dir=tmp_path / "run", steps=40, batch_size=2, seq_len=8, lr=1e-3,
          eval_every=20, eval_batches=1, progress=False)
    recorded = json.loads((tmp_path / "run" / "settings.json").read_text())["schedule"]
    assert recorded not in (None, "None")
    # what is recorded reproduces the learning rates of the log (so predict can be run on the bench's logs)
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    lr = lr_function(recorded, 40, 1e-3)
    assert all(abs(r["lr"] - lr(max(r["step"] - 1, 0))) < 1e-12 for r in rows if r["step"] > 0)


def test_grown_sentence_transformer_keeps_its_modules(tmp_path, capsys):
    model = build_tiny("bert", tmp_path / "st")
    (model / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (model / "sentence_bert_config.json").write_text('{"max_seq_length": 64, "do_lower_case": false}')
    (model / "1_Pooling").mkdir()
    (model / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    out = tmp_path / "grown"
    code, _, err = _run(capsys, "grow", model, out, "--width-method", "hyperclone", "--width-mult", 2, "--quiet")
    assert code == 0, err
    assert json.loads((out / "modules.json").read_text())[2]["path"] == "2_Normalize"
    assert (out / "2_Normalize").is_dir() and (out / "sentence_bert_config.json").is_file()
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == json.loads((out / "config.json").read_text())["hidden_size"] == 64
    assert pooling["pooling_mode_mean_tokens"] is True
    assert not (out / "generation_config.json").exists()  # an encoder generates nothing


def test_causal_models_still_get_a_generation_config(tiny_llama, tmp_path, capsys):
    out = tmp_path / "o"
    assert _run(capsys, "grow", tiny_llama, out, "--layers", 4, "--depth-method", "stack", "--quiet")[0] == 0
    assert (out / "generation_config.json").is_file()
    transformers.GenerationConfig.from_pretrained(str(out))


def test_running_average_save_follows_the_umask(tiny_llama, tmp_path):
    from warmstart.merge.running import RunningAverage

    model = transformers.LlamaForCausalLM.from_pretrained(str(tiny_llama))
    avg = RunningAverage(model, ema_decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    avg.update()
    old = os.umask(0o022)
    try:
        avg.save(tmp_path / "avg")
    finally:
        os.umask(old)
    for f in (tmp_path / "avg").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f.name
