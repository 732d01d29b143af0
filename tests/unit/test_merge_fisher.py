"""Fisher-weighted merging: the estimator against the exact expectation, storage and reuse, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import build_tiny
from warmstart.checkpoint.reader import Checkpoint
from warmstart.cli import main
from warmstart.merge import fisher as fisher_mod

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster on a shared machine


CHARS = [chr(i) for i in range(32, 127)]  # 95 printable characters: ids 0..94 < vocab 128


def _tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(CHARS)}, unk_token=" "))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.save(str(path / "tokenizer.json"))
    return path


def _models(tmp_path, n=3) -> list[Path]:
    return [_tokenizer(build_tiny("llama", tmp_path / f"m{i}", seed=i)) for i in range(n)]


def _text(tmp_path) -> Path:
    p = tmp_path / "data.txt"
    p.write_text("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer "
                 "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles. " * 2)
    return p


class _TinyLM(torch.nn.Module):
    """A causal LM small enough to enumerate: embedding, a causal running mean, an MLP, a head."""

    def __init__(self, vocab=10, dim=6):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, input_ids):
        h = self.embed(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1).view(1, -1, 1)
        return type("Out", (), {"logits": self.head(torch.tanh(self.mix(h)))})()


def test_estimator_matches_the_exact_fisher_expectation():
    """Sampled labels, one backward per batch, give the per-token Fisher in expectation.

    Second implementation: enumerate every label y at every position and sum
    p(y|x_<t) * grad(log p(y|x_<t))^2 exactly, divided by the tokens.
    """
    torch.manual_seed(0)
    model = _TinyLM()
    x = torch.tensor([[3, 7, 1, 9], [2, 2, 5, 0]])
    B, L = x.shape
    params = dict(model.named_parameters())
    exact = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    with torch.no_grad():
        probs = torch.softmax(model(x).logits.double(), -1)
    for b in range(B):
        for t in range(L):
            for y in range(10):
                model.zero_grad()
                torch.log_softmax(model(x[b:b + 1]).logits[0, t], -1)[y].backward()
                for n, p in params.items():
                    exact[n] += float(probs[b, t, y]) * p.grad.double() ** 2 / (B * L)
    est = fisher_mod.estimate_fisher(model, [x] * 1000, seed=1)
    assert set(est) == set(params)
    e = torch.cat([exact[n].flatten() for n in params])
    m = torch.cat([est[n].double().flatten() for n in params])
    assert abs(m.sum() / e.sum() - 1) < 0.05
    assert torch.corrcoef(torch.stack([e, m]))[0, 1] > 0.99
    # A wrong normalization (per batch instead of per token) or the empirical
    # Fisher (data labels) would miss these bounds; so does a single batch.
    few = fisher_mod.estimate_fisher(model, [x], seed=1)
    assert torch.corrcoef(torch.stack([e, torch.cat([few[n].double().flatten() for n in params])]))[0, 1] < 0.9


def test_fisher_is_stored_beside_the_model_and_reused(tmp_path, monkeypatch):
    model = _models(tmp_path, 1)[0]
    data = _text(tmp_path)
    path = fisher_mod.ensure_fisher(model, data, 2, batch_size=2, seq_len=8)
    assert path == model / "fisher.safetensors"
    stored = load_file(path)
    ck = Checkpoint(model)
    assert set(stored) <= set(ck.names()) and "model.embed_tokens.weight" in stored
    for n, t in stored.items():
        assert t.shape == ck.info(n).shape and bool((t >= 0).all()) and float(t.sum()) > 0

    def boom(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(fisher_mod, "estimate_fisher", boom)
    assert fisher_mod.ensure_fisher(model, data, 2, batch_size=2, seq_len=8) == path  # same data: reused
    assert fisher_mod.ensure_fisher(model, None) == path  # no data given: whatever is stored
    with pytest.raises(AssertionError, match="recomputed"):  # other settings: recomputed
        fisher_mod.ensure_fisher(model, data, 3, batch_size=2, seq_len=8)


def test_fisher_goes_to_the_cache_when_the_model_directory_is_read_only(tmp_path, monkeypatch):
    model = _models(tmp_path, 1)[0]
    monkeypatch.setenv("WARMSTART_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fisher_mod, "_writable", lambda d: False)
    path = fisher_mod.ensure_fisher(model, _text(tmp_path), 1, batch_size=2, seq_len=8)
    assert path.is_relative_to(tmp_path / "cache" / "fisher") and path.is_file()
    assert not (model / "fisher.safetensors").exists()
    assert fisher_mod.find_fisher(model) == path


def test_cli_fisher_merge_weights_each_element_by_its_fisher(tmp_path):
    models = _models(tmp_path)
    out = tmp_path / "out"
    rc = main(["merge", *map(str, models), str(out), "--method", "fisher", "--fisher-data", str(_text(tmp_path)),
               "--fisher-batches", "2", "--fisher-batch-size", "2", "--fisher-seq-len", "8", "--quiet"])
    assert rc == 0
    got = load_file(out / "model.safetensors")
    xs = [load_file(m / "model.safetensors") for m in models]
    fs = [load_file(m / "fisher.safetensors") for m in models]
    floor = 1e-10
    for n, t in got.items():
        num = sum((f[n].double() + floor) * x[n].double() for f, x in zip(fs, xs))
        den = sum(f[n].double() + floor for f in fs)
        assert torch.allclose(t.double(), num / den, rtol=1e-5, atol=1e-6), n
    mean = sum(x["model.embed_tokens.weight"] for x in xs) / 3
    assert not torch.allclose(got["model.embed_tokens.weight"], mean, atol=1e-4)  # not just the mean
    assert len(json.loads((out / "merge.json").read_text())["fisher"]) == 3


def test_cli_fisher_with_equal_fishers_is_the_mean(tmp_path):
    models = _models(tmp_path)
    g = torch.Generator().manual_seed(0)
    shared = {n: torch.rand(Checkpoint(models[0]).info(n).shape, generator=g)
              for n in Checkpoint(models[0]).names()}
    for m in models:
        meta = {"weights": fisher_mod.weights_fingerprint(m), "format": "pt"}
        save_file(shared, m / "fisher.safetensors", metadata=meta)
    out, ref = tmp_path / "fisher", tmp_path / "mean"
    assert main(["merge", *map(str, models), str(out), "--method", "fisher", "--quiet"]) == 0
    assert main(["merge", *map(str, models), str(ref), "--quiet"]) == 0
    a, b = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    xs = [load_file(m / "model.safetensors") for m in models]
    for n in a:
        scale = max(float(x[n].abs().max()) for x in xs)
        assert (a[n].double() - b[n].double()).abs().max() <= 4 * 2.0**-24 * scale, n


def test_cli_fisher_bad_input(tmp_path, capsys):
    models = _models(tmp_path, 2)
    out = tmp_path / "out"
    assert main(["merge", *map(str, models), str(out), "--method", "fisher", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "needs --fisher-data" in err and str(models[0]) in err
    assert not out.exists()
    short = tmp_path / "short.txt"
    short.write_text("too short")
    assert main(["merge", *map(str, models), str(out), "--method", "fisher", "--fisher-data", str(short),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(short) in err and "lower --fisher-batches" in err
    assert main(["merge", *map(str, models), str(out), "--method", "fisher", "--fisher-data",
                 str(tmp_path / "absent.txt"), "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err
    assert not out.exists() and not (models[0] / "fisher.safetensors").exists()
