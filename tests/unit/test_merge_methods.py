"""Merge coefficients and the in-memory merge: checked against hand computations and second implementations."""

from __future__ import annotations

import math

import pytest
import torch

from warmstart.merge.memory import merge_state_dicts
from warmstart.merge.methods import MergeError, resolve, wsm_coefficients

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster on a shared machine


def test_mean_coefficients():
    assert resolve("mean", 4).values == [0.25] * 4


def test_weighted_must_sum_to_one_unless_no_normalize():
    assert resolve("weighted", 3, weights=[0.5, 0.25, 0.25]).values == [0.5, 0.25, 0.25]
    with pytest.raises(MergeError, match="sum to 1.1, not 1"):
        resolve("weighted", 3, weights=[0.5, 0.3, 0.3])
    raw = resolve("weighted", 3, weights=[0.5, 0.3, 0.3], normalize=False)
    assert raw.values == [0.5, 0.3, 0.3]  # used as given, never rescaled
    with pytest.raises(MergeError, match="2 weights for 3"):
        resolve("weighted", 3, weights=[0.5, 0.5])
    with pytest.raises(MergeError, match="needs --weights"):
        resolve("weighted", 3)


def test_unused_parameters_and_single_input_are_refused():
    with pytest.raises(MergeError, match="does not take --weights"):
        resolve("mean", 2, weights=[0.5, 0.5])
    with pytest.raises(MergeError, match="at least two"):
        resolve("mean", 1)


def _ema_recursive(xs, decays):
    e = xs[0]
    for x, d in zip(xs[1:], decays[1:]):
        e = d * e + (1 - d) * x
    return e


def test_ema_closed_form_equals_the_recursion():
    xs = [1.0, 10.0, 100.0, 1000.0]
    c = resolve("ema", 4, ema_decay=0.9).values
    assert math.isclose(sum(c), 1.0, rel_tol=1e-15)
    # Hand computation: c = [0.9^3, 0.1*0.9^2, 0.1*0.9, 0.1]
    assert c == pytest.approx([0.729, 0.081, 0.09, 0.1], rel=1e-12)
    assert sum(ci * x for ci, x in zip(c, xs)) == pytest.approx(_ema_recursive(xs, [0.9] * 4), rel=1e-12)


def test_ema_half_life_in_steps():
    # Two checkpoints one half-life apart: the old one keeps half its weight.
    assert resolve("ema", 2, ema_half_life=500, steps=[1000, 1500]).values == pytest.approx([0.5, 0.5])
    # Uneven steps: decays 0.5^(100/100) and 0.5^(300/100).
    c = resolve("ema", 3, ema_half_life=100, steps=[0, 100, 400]).values
    assert sum(ci * x for ci, x in zip(c, [1.0, 2.0, 3.0])) == pytest.approx(
        _ema_recursive([1.0, 2.0, 3.0], [None, 0.5, 0.125]))
    # Per-step decay with --steps: d ** gap
    c = resolve("ema", 2, ema_decay=0.99, steps=[0, 10]).values
    assert c[0] == pytest.approx(0.99 ** 10)
    with pytest.raises(MergeError, match="--input-steps"):
        resolve("ema", 2, ema_half_life=100)
    with pytest.raises(MergeError, match="must increase"):
        resolve("ema", 3, ema_half_life=100, steps=[0, 200, 100])
    with pytest.raises(MergeError, match="exactly one"):
        resolve("ema", 2, ema_decay=0.9, ema_half_life=10, steps=[0, 1])


def test_wsm_linear_hand_computed():
    # 3 checkpoints 2 updates apart: a linear decay over 4 updates has multipliers
    # f = [3/4, 2/4, 1/4, 0] (end-inclusive); segment means w = [1, 5/8, 1/8];
    # c = [1 - 5/8, 5/8 - 1/8, 1/8].
    assert wsm_coefficients(3, "linear", steps=[10, 12, 14]) == pytest.approx([3 / 8, 1 / 2, 1 / 8])
    # Unequal spacing uses the same multipliers: segments [0,1) and [1,4): w = [1, 3/4, 1/4]
    assert wsm_coefficients(3, "linear", steps=[0, 1, 4]) == pytest.approx([1 / 4, 1 / 2, 1 / 4])
    for shape in ("linear", "cosine", "1-sqrt"):
        c = wsm_coefficients(6, shape)
        assert math.isclose(sum(c), 1.0, rel_tol=1e-12) and min(c) >= 0


def _toy_run(multipliers, grads, theta0, lr, checkpoint_steps=()):
    """SGD on the linear losses L_t(theta) = g_t . theta; returns the final theta and the saved ones."""
    theta = torch.nn.Parameter(theta0.clone())
    opt = torch.optim.SGD([theta], lr=lr)
    saved = {}
    if 0 in checkpoint_steps:
        saved[0] = theta.detach().clone()
    for t, (mult, g) in enumerate(zip(multipliers, grads)):
        for group in opt.param_groups:
            group["lr"] = lr * mult
        opt.zero_grad()
        (g * theta).sum().backward()
        opt.step()
        if t + 1 in checkpoint_steps:
            saved[t + 1] = theta.detach().clone()
    return theta.detach(), saved


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
@pytest.mark.parametrize("interval,noisy", [(1, True), (4, False)])
def test_wsm_reproduces_the_decayed_run_on_a_linear_problem(shape, interval, noisy):
    """Merging a constant-lr window with wsm coefficients lands where the decayed schedule does.

    The decayed run uses the schedules module's own WSD schedule; the losses are
    linear so the gradients do not depend on the path. Every update is
    emulated exactly with a checkpoint per update (noisy gradients allowed);
    with checkpoints every 4 updates the gradient must be constant within a
    segment (here: constant throughout).
    """
    from warmstart.schedules.presets import wsd

    torch.manual_seed(0)
    total, decay = 40, 16
    sched = wsd(total, warmup=4, decay_frac=decay / total, shape=shape, end=0.0)
    dec = [sched.multiplier(t) for t in range(total)]
    const = dec[: total - decay] + [1.0] * decay
    base = torch.randn(5, dtype=torch.float64)
    grads = [base + (torch.randn(5, dtype=torch.float64) if noisy else 0) for _ in range(total)]
    theta0 = torch.randn(5, dtype=torch.float64)
    window = list(range(total - decay, total + 1, interval))
    decayed, _ = _toy_run(dec, grads, theta0, 0.1)
    _, saved = _toy_run(const, grads, theta0, 0.1, set(window))
    c = resolve("wsm", len(window), wsm_shape=shape, steps=window).values
    merged = merge_state_dicts([{"theta": saved[s]} for s in window], "weighted", weights=c)["theta"]
    assert torch.allclose(merged, decayed, rtol=0, atol=1e-12)
    # ... and the plain constant-lr endpoint is somewhere else.
    assert not torch.allclose(saved[total], decayed, atol=1e-3)


def _sd(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(7, 5, generator=g).to(dtype), "b": torch.randn(5, generator=g).to(dtype),
            "idx": torch.arange(4)}


@pytest.mark.parametrize("n", [2, 3, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_mean_of_identical_inputs_is_bitwise_the_input(n, dtype):
    sd = _sd(0, dtype)
    out = merge_state_dicts([sd] * n, "mean")
    for k, v in sd.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v)


def test_linear_merge_matches_float64_reference():
    sds = [_sd(i) for i in range(3)]
    w = [0.2, 0.5, 0.3]
    out = merge_state_dicts(sds, "weighted", weights=w)
    for k in ("w", "b"):
        ref = sum(wi * sd[k].double() for wi, sd in zip(w, sds))
        # fp32 accumulation: within a few fp32 ulps of the inputs' magnitude
        scale = max(float(sd[k].abs().max()) for sd in sds)
        assert (out[k].double() - ref).abs().max() <= 4 * 2.0**-24 * scale
    assert torch.equal(out["idx"], sds[0]["idx"])
    raw = merge_state_dicts(sds, "weighted", weights=[1.0, 1.0, 0.0], normalize=False)
    assert torch.allclose(raw["w"], sds[0]["w"] + sds[1]["w"], atol=1e-6)


def test_fisher_with_equal_fisher_is_the_mean():
    sds = [_sd(i) for i in range(3)]
    g = torch.Generator().manual_seed(9)
    f = {k: torch.rand(v.shape, generator=g) for k, v in sds[0].items() if v.is_floating_point()}
    fisher = merge_state_dicts(sds, "fisher", fishers=[f, f, f])
    mean = merge_state_dicts(sds, "mean")
    for k in ("w", "b"):
        assert torch.allclose(fisher[k], mean[k], rtol=0, atol=4 * 2.0**-24 * mean[k].abs().max())


def test_fisher_weighting_matches_elementwise_formula():
    sds = [_sd(i) for i in range(3)]
    g = torch.Generator().manual_seed(3)
    fs = [{k: torch.rand(v.shape, generator=g) ** 3 for k, v in sds[0].items() if v.is_floating_point()}
          for _ in sds]
    lam = [1.0, 2.0, 0.5]
    out = merge_state_dicts(sds, "fisher", fishers=fs, weights=lam, fisher_floor=0.0)
    for k in ("w", "b"):
        num = sum(l * f[k].double() * sd[k].double() for l, f, sd in zip(lam, fs, sds))
        den = sum(l * f[k].double() for l, f in zip(lam, fs))
        assert torch.allclose(out[k].double(), num / den, rtol=1e-5, atol=1e-6)
    # Where one model alone has Fisher mass, it wins that element.
    only = [{"w": torch.zeros(7, 5), "b": torch.zeros(5)} for _ in sds]
    only[1]["w"][2, 3] = 1.0
    out = merge_state_dicts(sds, "fisher", fishers=only)
    assert out["w"][2, 3] == pytest.approx(float(sds[1]["w"][2, 3]), abs=1e-6)
    # Elsewhere all Fishers are zero: the floor makes it the plain mean.
    assert out["w"][0, 0] == pytest.approx(float(sum(sd["w"][0, 0] for sd in sds) / 3), abs=1e-6)


def test_in_memory_bad_input():
    a, b = _sd(0), _sd(1)
    b["w"] = torch.randn(3, 3)
    with pytest.raises(MergeError, match="input 1: tensor 'w' has shape"):
        merge_state_dicts([a, b])
    c = _sd(2)
    c["b"][1] = float("nan")
    with pytest.raises(MergeError, match="input 1: tensor 'b' holds NaN"):
        merge_state_dicts([a, c])
    d = _sd(3)
    d["idx"] = d["idx"] + 1
    with pytest.raises(MergeError, match="integer tensor 'idx' differs"):
        merge_state_dicts([a, d])
    with pytest.raises(MergeError, match="one Fisher dict per input"):
        merge_state_dicts([a, _sd(1)], "fisher")


def test_merge_modules_loads_the_result():
    from warmstart.merge.memory import merge_modules

    torch.manual_seed(0)
    mods = [torch.nn.Linear(4, 3) for _ in range(2)]
    merged = merge_modules(mods, "weighted", weights=[0.25, 0.75])
    assert torch.allclose(merged.weight, 0.25 * mods[0].weight + 0.75 * mods[1].weight, atol=1e-7)
    assert merged is not mods[0] and not torch.equal(mods[0].weight, merged.weight)


def test_finite_check_has_no_false_alarm_on_overflowing_sums():
    from warmstart.merge.combine import all_finite

    big = torch.full((4,), 3e38)  # finite, but the sum overflows to inf
    assert all_finite(torch.tensor([1.0, 2.0])) and all_finite(big)
    assert not all_finite(torch.tensor([1.0, float("nan")]))
    assert not all_finite(torch.tensor([float("inf"), -float("inf")]))
    assert not all_finite(torch.tensor([1.0, float("inf")], dtype=torch.bfloat16))
    out = merge_state_dicts([{"w": big}, {"w": big}])
    assert torch.equal(out["w"], big)
