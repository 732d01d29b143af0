"""Time to a target, as MLCommons AlgoPerf scores training algorithms.

An arm's cost to reach the target eval loss is read off its evaluation log:
the first evaluation at or below the target, linearly interpolated with the
evaluation before it (``mode="interpolate"``, the default: the crossing point
of the straight line between the two evaluations), or the first evaluation's
own cost (``mode="first"``, what AlgoPerf does with its fixed eval
intervals). An arm that never gets there costs infinity. Costs are measured
in tokens, FLOPs (6 x N x tokens) and training wall time.

Speedups are ratios against the reference (scratch) arm's own cost to the
target, without and with the cost of training the warm arm's source ("the
accounting of "Stacking Your Transformers"). Two flags keep the comparison
honest: ``starts_below`` (a warm arm whose very first evaluation is already
at the target: its speedup is not a speedup and is reported as such, never
as infinity) and ``source_not_beaten`` (the reference does not end at least
``margin`` below a source's own final loss: the bigger model was not worth
training, and every speedup is meaningless).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

INF = math.inf
KEYS = ("tokens", "flops", "time")


def evals(rows: list[dict]) -> list[dict]:
    """The evaluated rows of a log, in step order."""
    return sorted((r for r in rows if r.get("eval_loss") is not None), key=lambda r: r["step"])


def cost_to_target(rows: list[dict], target: float, key: str = "flops", mode: str = "interpolate") -> float:
    """Cost (column `key`) at which the eval loss first reaches `target`; infinity if never."""
    if mode not in ("interpolate", "first"):
        raise ValueError(f"mode must be 'interpolate' or 'first', got {mode!r}")
    ev = evals(rows)
    prev = None
    for r in ev:
        loss = r["eval_loss"]
        if loss <= target:
            if prev is None or mode == "first":
                return float(r[key])
            x0, x1 = float(prev[key]), float(r[key])
            l0 = prev["eval_loss"]
            return x0 + (x1 - x0) * (l0 - target) / (l0 - loss)
        prev = r
    return INF


def loss_at(rows: list[dict], cost: float, key: str = "flops") -> float | None:
    """Eval loss at `cost`, linearly interpolated between evaluations; None past the last one."""
    ev = evals(rows)
    if not ev or cost > float(ev[-1][key]) + 1e-9 * max(1.0, abs(cost)):
        return None
    if cost <= float(ev[0][key]):
        return ev[0]["eval_loss"]
    for a, b in zip(ev, ev[1:]):
        x0, x1 = float(a[key]), float(b[key])
        if x0 <= cost <= x1:
            if x1 == x0:
                return b["eval_loss"]
            return a["eval_loss"] + (b["eval_loss"] - a["eval_loss"]) * (cost - x0) / (x1 - x0)
    return ev[-1]["eval_loss"]


def ratio(num: float, den: float) -> float:
    if den == INF:
        return 0.0 if num != INF else math.nan
    if den == 0:
        return INF
    return num / den


@dataclass
class ArmMetrics:
    name: str
    kind: str
    final_eval_loss: float | None
    first_eval_loss: float | None
    to_target: dict  # key -> cost of this arm's own training to the target
    source_cost: dict  # key -> cost of training its source (0 for scratch; None if unknown)
    speedup: dict  # key -> reference cost / this arm's cost (without the source)
    speedup_with_source: dict  # key -> reference cost / (this arm's cost + source cost)
    fraction_with_source: dict  # key -> (this arm's cost + source cost) / reference cost
    loss_at_equal_compute: float | None  # eval loss when arm FLOPs + source FLOPs = reference's total FLOPs
    flags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def arm_metrics(name: str, kind: str, rows: list[dict], target: float, reference: dict, reference_total_flops: float,
                source_cost: dict | None, mode: str = "interpolate") -> ArmMetrics:
    """Metrics of one arm against the reference's cost to the same target.

    ``reference``: key -> the reference arm's cost to the target.
    ``source_cost``: key -> what the arm's source cost (None: unknown, e.g. a downloaded checkpoint).
    """
    ev = evals(rows)
    first = ev[0]["eval_loss"] if ev else None
    final = ev[-1]["eval_loss"] if ev else None
    flags: list[str] = []
    to = {k: cost_to_target(rows, target, k, mode) for k in KEYS}
    starts_below = kind != "scratch" and first is not None and first <= target
    if starts_below:
        flags.append("starts_below")
    src = source_cost if source_cost is not None else None
    speed, speed_src, frac = {}, {}, {}
    for k in KEYS:
        if starts_below:
            speed[k] = speed_src[k] = frac[k] = math.nan
            if src is not None:
                frac[k] = ratio(src[k], reference[k])
            continue
        speed[k] = ratio(reference[k], to[k])
        if src is None:
            speed_src[k] = frac[k] = math.nan
        else:
            total = to[k] + src[k]
            speed_src[k] = ratio(reference[k], total)
            frac[k] = ratio(total, reference[k])
    budget = reference_total_flops - (src["flops"] if src else 0.0)
    equal = loss_at(rows, budget, "flops") if budget >= 0 else None
    if budget < 0:
        flags.append("source_costs_more_than_reference")
    return ArmMetrics(name, kind, final, first, to, src if src is not None else {k: None for k in KEYS},
                      speed, speed_src, frac, equal, flags)


def honesty(reference_final: float, source_finals: dict[str, float], margin: float) -> list[str]:
    """Sources the reference does not clearly beat: a recipe where growing is not worth it."""
    return [name for name, loss in source_finals.items() if not reference_final < loss - margin]


def median(values: list[float]) -> float:
    """Median that keeps infinities and skips NaN (NaN if nothing is left)."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return math.nan
    return float(statistics.median(vals))
