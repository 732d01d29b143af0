"""Time-to-target metrics on synthetic logs, every expected value worked out by hand."""

from __future__ import annotations

import json
import math

import pytest

from warmstart.bench import metrics as M


def log(points, flops_per_step=100.0, tokens_per_step=10, secs_per_step=0.5):
    """Rows for evals at (step, loss) points, plus unevaluated rows in between."""
    rows = []
    evals = dict(points)
    for step in range(0, max(evals) + 1):
        row = {"step": step, "tokens": step * tokens_per_step, "flops": step * flops_per_step,
               "time": step * secs_per_step, "train_loss": None if step == 0 else 9.0}
        if step in evals:
            row["eval_loss"] = evals[step]
        rows.append(row)
    return rows


SCRATCH = log([(0, 8.0), (10, 5.0), (20, 4.0), (30, 3.5), (40, 3.0)])


def test_interpolated_crossing_by_hand():
    # Target 3.5 is first reached at step 30 exactly.
    assert M.cost_to_target(SCRATCH, 3.5, "flops") == pytest.approx(3000.0)
    # 4.5 lies halfway between the evals at step 10 (5.0) and step 20 (4.0): step 15.
    assert M.cost_to_target(SCRATCH, 4.5, "flops") == pytest.approx(1500.0)
    assert M.cost_to_target(SCRATCH, 4.5, "tokens") == pytest.approx(150.0)
    assert M.cost_to_target(SCRATCH, 4.5, "time") == pytest.approx(7.5)
    # 3.2 lies 60% of the way from 3.5 (step 30) to 3.0 (step 40): step 36.
    assert M.cost_to_target(SCRATCH, 3.2, "flops") == pytest.approx(3600.0)
    # "first" mode takes the first eval at or below the target.
    assert M.cost_to_target(SCRATCH, 4.5, "flops", mode="first") == 2000.0


def test_never_reached_is_infinite():
    assert M.cost_to_target(SCRATCH, 2.9, "flops") == math.inf


def test_non_monotone_curve_uses_first_crossing():
    rows = log([(0, 6.0), (10, 4.0), (20, 4.4), (30, 3.8)])
    # 4.2 is crossed first between step 0 (6.0) and step 10 (4.0): 9/10 of the way -> step 9.
    assert M.cost_to_target(rows, 4.2, "flops") == pytest.approx(900.0)


def test_arm_speedups_with_and_without_source():
    target = 3.0  # scratch's final loss
    reference = {k: M.cost_to_target(SCRATCH, target, k) for k in M.KEYS}
    assert reference["flops"] == 4000.0
    warm = log([(0, 6.0), (10, 3.4), (20, 2.8)])  # crosses 3.0 at step 10 + 10 * 0.4/0.6 = 16.667
    source = {"tokens": 50.0, "flops": 1000.0, "time": 1.0}
    m = M.arm_metrics("warm", "grow", warm, target, reference, 4000.0, source)
    assert m.to_target["flops"] == pytest.approx(5000.0 / 3)
    assert m.speedup["flops"] == pytest.approx(4000.0 / (5000.0 / 3))  # 2.4x
    assert m.speedup_with_source["flops"] == pytest.approx(4000.0 / (5000.0 / 3 + 1000.0))  # 1.5x
    assert m.fraction_with_source["flops"] == pytest.approx((5000.0 / 3 + 1000.0) / 4000.0)  # 2/3
    assert m.flags == []
    # Equal compute: scratch's 4000 FLOPs minus the source's 1000 -> the warm arm at 3000 FLOPs = step 30,
    # past its last eval (step 20): not measured.
    assert m.loss_at_equal_compute is None
    m2 = M.arm_metrics("warm", "grow", warm, target, reference, 2500.0, source)
    # 2500 - 1000 = 1500 FLOPs = step 15, halfway between 3.4 and 2.8.
    assert m2.loss_at_equal_compute == pytest.approx(3.1)


def test_warm_arm_that_never_reaches():
    reference = {"tokens": 400.0, "flops": 4000.0, "time": 20.0}
    slow = log([(0, 6.0), (40, 3.2)])
    m = M.arm_metrics("slow", "grow", slow, 3.0, reference, 4000.0, {"tokens": 0.0, "flops": 100.0, "time": 0.0})
    assert m.to_target["flops"] == math.inf
    assert m.speedup["flops"] == 0.0 and m.fraction_with_source["flops"] == math.inf


def test_starting_below_the_target_is_flagged_not_infinite():
    reference = {"tokens": 400.0, "flops": 4000.0, "time": 20.0}
    below = log([(0, 2.9), (10, 2.7)])
    m = M.arm_metrics("ckpt", "continue", below, 3.0, reference, 4000.0, None)
    assert "starts_below" in m.flags
    assert m.to_target["flops"] == 0.0
    assert all(math.isnan(m.speedup[k]) for k in M.KEYS)  # no speedup claimed, infinite or otherwise
    # A scratch arm is never flagged this way.
    assert M.arm_metrics("s", "scratch", below, 3.0, reference, 4000.0, None).flags == []


def test_honesty_flag():
    assert M.honesty(3.9, {"small": 4.72}, 0.05) == []
    assert M.honesty(3.9, {"small": 3.93}, 0.05) == ["small"]  # only 0.03 below: not clearly
    assert M.honesty(3.9, {"a": 3.8, "b": 5.0}, 0.05) == ["a"]


def test_loss_at_and_median():
    assert M.loss_at(SCRATCH, 2500.0) == pytest.approx(3.75)
    assert M.loss_at(SCRATCH, 4000.0) == 3.0
    assert M.loss_at(SCRATCH, 4001.0) is None
    assert M.median([1.0, math.inf, 3.0]) == 3.0
    assert M.median([1.0, math.nan, 3.0]) == 2.0
    assert math.isnan(M.median([math.nan]))


def test_results_json_is_strict():
    from warmstart.bench.report import _clean

    text = json.dumps(_clean({"a": math.inf, "b": [math.nan, 1.0]}))

    def refuse(name):
        raise ValueError(name)

    assert json.loads(text, parse_constant=refuse) == {"a": "inf", "b": [None, 1.0]}
