"""RunningAverage: the training-loop hook against averages recomputed from recorded weights."""

from __future__ import annotations

import pytest
import torch

from warmstart.errors import WarmstartError
from warmstart.merge.methods import MergeError
from warmstart.merge.running import RunningAverage

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster on a shared machine


def _train(model, steps, avg=None):
    """SGD on a fixed regression; returns the parameters after every step (fp64 copies)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=g), torch.randn(32, 3, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if avg is not None:
            avg.update()
        history.append({n: p.detach().double().clone() for n, p in model.named_parameters()})
    return history


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def test_ema_matches_the_recursion_on_recorded_weights():
    model = _model()
    avg = RunningAverage(model, ema_decay=0.8)
    hist = _train(model, 10, avg)
    for n in ("weight", "bias"):
        e = hist[0][n]
        for h in hist[1:]:
            e = 0.8 * e + 0.2 * h[n]
        assert torch.allclose(avg.average()[n].double(), e, atol=1e-6)
        assert avg.average()[n].device.type == "cpu" and avg.average()[n].dtype == torch.float32


def test_half_life_and_every():
    model = _model()
    # Half-life 4 steps, a snapshot every 2 steps: decay 0.5 ** (2 / 4) per snapshot.
    avg = RunningAverage(model, ema_half_life=4, every=2)
    hist = _train(model, 8, avg)
    d = 0.5 ** 0.5
    snaps = [hist[i] for i in (1, 3, 5, 7)]  # after steps 2, 4, 6, 8
    e = snaps[0]["weight"]
    for s in snaps[1:]:
        e = d * e + (1 - d) * s["weight"]
    assert avg.updates == 4 and torch.allclose(avg.average()["weight"].double(), e, atol=1e-6)


def test_window_keeps_the_last_k_and_can_weight_them():
    model = _model()
    avg = RunningAverage(model, window=3, every=2)
    hist = _train(model, 10, avg)
    last = [hist[i]["weight"] for i in (5, 7, 9)]  # snapshots after steps 6, 8, 10
    assert torch.allclose(avg.average()["weight"].double(), sum(last) / 3, atol=1e-6)

    model = _model()
    w = [0.2, 0.3, 0.5]
    avg = RunningAverage(model, window=3, weights=w)
    hist = _train(model, 6, avg)
    ref = sum(c * h["bias"] for c, h in zip(w, hist[3:]))
    assert torch.allclose(avg.average()["bias"].double(), ref, atol=1e-6)


def test_swapped_evaluates_the_average_and_restores_training_weights():
    model = _model()
    avg = RunningAverage(model, ema_decay=0.5)
    _train(model, 5, avg)
    before = model.weight.detach().clone()
    with avg.swapped(model):
        assert torch.equal(model.weight.detach(), avg.average()["weight"])
        assert not torch.equal(model.weight.detach(), before)
    assert torch.equal(model.weight.detach(), before)


def test_save_writes_a_model_with_the_averaged_weights_and_tied_head(tmp_path):
    import transformers as tf

    from tests.conftest import build_tiny

    model = tf.AutoModelForCausalLM.from_pretrained(str(build_tiny("llama", tmp_path / "src")))
    avg = RunningAverage(model, window=2)
    ids = torch.randint(0, 128, (2, 9))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        avg.update()
    out = tmp_path / "avg"
    avg.save(out)
    loaded = tf.AutoModelForCausalLM.from_pretrained(str(out))
    ref = avg.average()["model.embed_tokens.weight"]
    assert torch.equal(loaded.model.embed_tokens.weight, ref)
    assert torch.equal(loaded.lm_head.weight, ref)  # the tied head is the averaged embedding
    assert not torch.equal(ref, model.model.embed_tokens.weight.detach())
    assert avg.save(out, force=True) is None
    with pytest.raises(WarmstartError, match="already exists"):
        avg.save(out)


def test_bad_settings():
    model = _model()
    with pytest.raises(MergeError, match="exactly one"):
        RunningAverage(model)
    with pytest.raises(MergeError, match="strictly between"):
        RunningAverage(model, ema_decay=1.0)
    with pytest.raises(MergeError, match="k values"):
        RunningAverage(model, window=3, weights=[0.5, 0.5])
    with pytest.raises(MergeError, match="no update"):
        RunningAverage(model, window=2).average()
