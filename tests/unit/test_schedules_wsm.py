"""WSM merge weights: merging constant-lr checkpoints lands where the decayed run lands."""

from __future__ import annotations

import math

import numpy as np
import pytest

from warmstart.errors import SpecError
from warmstart.schedules.wsm import effective_multipliers, merge, segment_multipliers, wsm_weights


@pytest.mark.parametrize("shape, end", [("linear", 0.0), ("cosine", 0.0), ("1-sqrt", 0.0), ("exp", 0.05), ("linear", 0.2)])
@pytest.mark.parametrize("k, interval", [(1, 1), (2, 3), (5, 1), (6, 4)])
def test_weights_are_a_convex_combination(shape, end, k, interval):
    c = wsm_weights(shape, k, interval, end)
    assert len(c) == k
    assert math.isclose(sum(c), 1.0, rel_tol=0, abs_tol=1e-12)
    assert all(x >= 0 for x in c)


def test_linear_weights_by_hand():
    # k=5, interval=1: the decay covers 4 updates with multipliers 3/4, 2/4, 1/4, 0
    # w = [1, 3/4, 1/2, 1/4, 0] -> c_j = w_j - w_{j+1}
    assert wsm_weights("linear", 5) == pytest.approx([0.25, 0.25, 0.25, 0.25, 0.0], abs=1e-15)
    # interval=2: 4 segments of 2 updates over a decay of 8: multipliers 7/8 .. 0
    # segment means: (7/8+6/8)/2, (5/8+4/8)/2, (3/8+2/8)/2, (1/8+0)/2
    w = [1, 13 / 16, 9 / 16, 5 / 16, 1 / 16]
    assert wsm_weights("linear", 5, 2) == pytest.approx([w[i] - w[i + 1] for i in range(4)] + [w[4]], abs=1e-15)
    assert segment_multipliers("cosine", 3, 1) == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 2)), 0.0], abs=1e-15)


def run_constant_and_decayed(updates, shape, k, interval, end, lr=0.1):
    """Checkpoints of the constant-lr run and the end point of the decayed run.

    The update vectors are fixed (they do not depend on the parameters), as
    for a linear loss; the window of k checkpoints starts at theta_start.
    """
    theta_start = np.array([1.0, -2.0, 0.5])
    checkpoints = [theta_start.copy()]
    theta = theta_start.copy()
    for j in range(k - 1):
        for i in range(interval):
            theta = theta - lr * updates[j * interval + i]
        checkpoints.append(theta.copy())
    n = (k - 1) * interval
    # decayed schedule written by hand (end-inclusive progress (s+1)/n)
    def f(s):
        p = (s + 1) / n
        return {
            "linear": end + (1 - end) * (1 - p),
            "cosine": end + (1 - end) * 0.5 * (1 + math.cos(math.pi * p)),
            "1-sqrt": end + (1 - end) * (1 - math.sqrt(p)),
            "exp": end**p,
        }[shape]
    decayed = theta_start.copy()
    for s in range(n):
        decayed = decayed - lr * f(s) * updates[s]
    return checkpoints, decayed


@pytest.mark.parametrize("shape, end", [("linear", 0.0), ("cosine", 0.1), ("1-sqrt", 0.0), ("exp", 0.01)])
def test_merge_equals_decay_with_distinct_updates_every_step(shape, end):
    rng = np.random.default_rng(0)
    k = 9
    updates = rng.normal(size=(k - 1, 3))  # a different fixed vector for every update
    cks, decayed = run_constant_and_decayed(updates, shape, k, 1, end)
    merged = merge(cks, wsm_weights(shape, k, 1, end))
    assert np.allclose(merged, decayed, rtol=0, atol=1e-13)


@pytest.mark.parametrize("shape, end", [("linear", 0.0), ("cosine", 0.0), ("1-sqrt", 0.0), ("exp", 0.05)])
def test_merge_equals_decay_with_constant_gradient_and_interval(shape, end):
    k, interval = 6, 5
    g = np.array([0.3, -1.0, 2.0])  # linear loss a.theta: the same update every step
    updates = np.tile(g, ((k - 1) * interval, 1))
    cks, decayed = run_constant_and_decayed(updates, shape, k, interval, end)
    merged = merge(cks, wsm_weights(shape, k, interval, end))
    assert np.allclose(merged, decayed, rtol=0, atol=1e-13)
    # and with distinct vectors inside a segment it is only approximate: the
    # identity needs the per-segment multiplier to be constant
    rng = np.random.default_rng(1)
    cks, decayed = run_constant_and_decayed(rng.normal(size=((k - 1) * interval, 3)), shape, k, interval, end)
    assert not np.allclose(merge(cks, wsm_weights(shape, k, interval, end)), decayed, rtol=0, atol=1e-13)


def test_effective_multipliers_and_dict_merge():
    c = wsm_weights("linear", 4, 2)
    eff = effective_multipliers(c, 2)
    # decay of 6 updates: 5/6, 4/6, ..., 0; segment means 3/4, 5/12, 1/12
    assert eff == pytest.approx([3 / 4, 3 / 4, 5 / 12, 5 / 12, 1 / 12, 1 / 12], abs=1e-15)
    merged = merge([{"w": np.ones(2)}, {"w": 3 * np.ones(2)}], [0.25, 0.75])
    assert np.allclose(merged["w"], 2.5)
    with pytest.raises(SpecError):
        merge([np.ones(2)], [0.5, 0.5])
    with pytest.raises(SpecError):
        wsm_weights("exp", 3)  # exp needs end > 0
    with pytest.raises(SpecError):
        wsm_weights("linear", 0)
