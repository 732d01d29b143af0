"""Merge methods, registered by name: each turns its parameters into per-input coefficients.

Every method except ``fisher`` is linear with one scalar per input:
``merged = sum_i c_i * theta_i``, so a new linear method is one function
returning the ``c_i``. ``fisher`` weighs every element by each model's
diagonal Fisher information as well (see :mod:`warmstart.merge.fisher`); its
scalars are the per-model factors ``lambda_i`` of "Merging Models with
Fisher-Weighted Averaging".

Inputs are always given oldest first for the ordered methods (``ema``, ``wsm``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from warmstart.errors import WarmstartError
from warmstart.registry import Registry
from warmstart.schedules.wsm import decay_multipliers, wsm_weights

# |sum(weights) - 1| above this is "not summing to 1" for `weighted`.
SUM_TOLERANCE = 1e-6


class MergeError(WarmstartError):
    """Merge inputs or parameters that cannot be merged as asked."""


@dataclass
class Coefficients:
    """What a method resolved to: one scalar per input, and whether Fisher weights apply."""

    method: str
    values: list[float]
    fisher: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return math.fsum(self.values)


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[..., Coefficients]
    summary: str
    ordered: bool = False  # inputs are a series, oldest first
    fisher: bool = False


METHODS: Registry[MergeMethod] = Registry("merge method", error=MergeError)


def register(name: str, summary: str, *, ordered: bool = False, fisher: bool = False):
    """Decorator: make `fn(n, **params) -> Coefficients` available as method `name`."""
    return METHODS.decorator(name, lambda fn: MergeMethod(name, fn, summary, ordered, fisher))


def get(name: str) -> MergeMethod:
    return METHODS.get(name)


def resolve(name: str, n: int, **params) -> Coefficients:
    """Coefficients of method `name` for `n` inputs; unused parameters are refused."""
    if n < 2:
        raise MergeError(f"merging needs at least two inputs, got {n}")
    method = get(name)
    given = {k: v for k, v in params.items() if v is not None}
    extra = sorted(set(given) - set(METHODS.parameters(name)))
    if extra:
        flags = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise MergeError(f"method {name!r} does not take {flags}")
    return method.fn(n, **given)


# --- checks -----------------------------------------------------------------


def _finite_list(values: Sequence[float], what: str) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise MergeError(f"{what}: {v!r} is not a number") from None
        if not math.isfinite(f):
            raise MergeError(f"{what}: {v!r} is not a finite number")
        out.append(f)
    return out


def check_steps(steps: Sequence[int] | None, n: int) -> list[int] | None:
    """Training steps of an ordered series: one per input, strictly increasing."""
    if steps is None:
        return None
    out = []
    for s in steps:
        if isinstance(s, bool) or not float(s).is_integer():
            raise MergeError(f"--input-steps: {s!r} is not a whole step number")
        out.append(int(s))
    if len(out) != n:
        raise MergeError(f"--input-steps gives {len(out)} steps for {n} checkpoints")
    for a, b in zip(out, out[1:]):
        if b <= a:
            raise MergeError(f"--input-steps must increase (checkpoints are given oldest first): {a} then {b}")
    return out


# --- methods ----------------------------------------------------------------


@register("mean", "uniform average (model soup; 'Fusing finetuned models for better pretraining')")
def mean(n: int) -> Coefficients:
    return Coefficients("mean", [1.0 / n] * n)


@register("weighted", "weighted average with explicit weights")
def weighted(n: int, weights: Sequence[float] | None = None, normalize: bool = True) -> Coefficients:
    """merged = sum_i w_i theta_i, exactly as given.

    The weights are never rescaled. By default they must sum to 1 (an
    average); ``normalize=False`` (--no-normalize) takes them as raw
    coefficients, so a sum other than 1 scales the result.
    """
    if weights is None:
        raise MergeError("method 'weighted' needs --weights (one per checkpoint)")
    w = _finite_list(weights, "--weights")
    if len(w) != n:
        raise MergeError(f"--weights gives {len(w)} weights for {n} checkpoints")
    total = math.fsum(w)
    if normalize and abs(total - 1.0) > SUM_TOLERANCE:
        raise MergeError(
            f"--weights sum to {total:.9g}, not 1; give weights that sum to 1, "
            "or pass --no-normalize to use them as raw coefficients"
        )
    notes = [] if normalize else [f"raw coefficients (sum {total:.6g})"]
    return Coefficients("weighted", w, notes=notes)


def ema_coefficients(decays: Sequence[float]) -> list[float]:
    """Closed form of e_1 = theta_1, e_j = d_j e_(j-1) + (1 - d_j) theta_j over a series.

    ``decays[j]`` is d_j for j >= 1 (``decays[0]`` is unused). The result sums
    to 1: c_1 = prod_(i>1) d_i, c_j = (1 - d_j) prod_(i>j) d_i.
    """
    n = len(decays)
    coeffs = [0.0] * n
    tail = 1.0  # product of d_i for i > j
    for j in range(n - 1, 0, -1):
        coeffs[j] = (1.0 - decays[j]) * tail
        tail *= decays[j]
    coeffs[0] = tail
    return coeffs


@register("ema", "exponential moving average over an ordered series (decay, or half-life in steps)", ordered=True)
def ema(n: int, ema_decay: float | None = None, ema_half_life: float | None = None,
        steps: Sequence[int] | None = None) -> Coefficients:
    """EMA over checkpoints given oldest first.

    Without ``steps``, ``ema_decay`` is the decay per checkpoint. With
    ``steps``, the decay is per training step: between checkpoints saved at
    steps s and s', the running average decays by ``ema_decay ** (s' - s)``,
    or by ``0.5 ** ((s' - s) / ema_half_life)``.
    """
    if (ema_decay is None) == (ema_half_life is None):
        raise MergeError("method 'ema' needs exactly one of --ema-decay and --ema-half-life")
    steps = check_steps(steps, n)
    if ema_decay is not None:
        d = _finite_list([ema_decay], "--ema-decay")[0]
        if not 0.0 < d < 1.0:
            raise MergeError(f"--ema-decay must lie strictly between 0 and 1, got {d}")
        if steps is None:
            decays = [d] * n
            note = f"decay {d} per checkpoint"
        else:
            decays = [1.0] + [d ** (b - a) for a, b in zip(steps, steps[1:])]
            note = f"decay {d} per step"
    else:
        h = _finite_list([ema_half_life], "--ema-half-life")[0]
        if h <= 0:
            raise MergeError(f"--ema-half-life must be positive, got {h}")
        if steps is None:
            raise MergeError("--ema-half-life is in steps: give the checkpoints' training steps with --input-steps")
        decays = [1.0] + [0.5 ** ((b - a) / h) for a, b in zip(steps, steps[1:])]
        note = f"half-life {h:g} steps"
    return Coefficients("ema", ema_coefficients(decays), notes=[note])


# Without --input-steps, wsm takes the checkpoints as equally spaced and far apart:
# segments this many updates long make the segment means the decay's
# continuous-time averages to within about 1/(2 * CONTINUOUS_INTERVAL).
CONTINUOUS_INTERVAL = 1000
# The longest window (in updates) whose decay wsm evaluates update by update.
MAX_WSM_SPAN = 10**8


def wsm_coefficients(n: int, shape: str = "linear", end: float = 0.0, steps: Sequence[int] | None = None) -> list[float]:
    """Merge coefficients (oldest first) that emulate a decay over the window of `n` checkpoints.

    The construction is :mod:`warmstart.schedules.wsm`'s: the update between
    checkpoints j-1 and j keeps weight c_j + ... + c_n, set to the mean of the
    schedule's decay multipliers over that segment. Equally spaced `steps`
    (or none) use :func:`warmstart.schedules.wsm.wsm_weights` as it is;
    unequal spacing takes the segment means over the same decay multipliers.
    """
    steps = check_steps(steps, n)
    if steps is None:
        return list(wsm_weights(shape, n, CONTINUOUS_INTERVAL, end))
    if steps[-1] - steps[0] > MAX_WSM_SPAN:
        raise MergeError(f"--input-steps span {steps[-1] - steps[0]} updates; wsm evaluates the decay update by "
                         f"update and takes at most {MAX_WSM_SPAN} (give the steps in coarser units)")
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    if len(set(gaps)) == 1:
        return list(wsm_weights(shape, n, gaps[0], end))
    f = decay_multipliers(shape, steps[-1] - steps[0], end)
    offsets = [s - steps[0] for s in steps]
    w = [1.0] + [math.fsum(f[a:b]) / (b - a) for a, b in zip(offsets, offsets[1:])]
    return [w[j] - w[j + 1] for j in range(n - 1)] + [w[-1]]


@register("wsm", "merge a constant-learning-rate window to emulate a decay ('WSM: Decay-Free Learning Rate "
                 "Schedule via Checkpoint Merging for LLM Pre-training')", ordered=True)
def wsm(n: int, wsm_shape: str = "linear", wsm_end: float = 0.0, steps: Sequence[int] | None = None) -> Coefficients:
    """Checkpoints oldest first; with `steps`, the decay spans steps[0]..steps[-1] update by update."""
    wsm_end = _finite_list([wsm_end], "--wsm-end")[0] if wsm_end is not None else 0.0
    values = wsm_coefficients(n, shape=wsm_shape, end=wsm_end, steps=steps)
    span = f"steps {steps[0]}..{steps[-1]}" if steps else f"{n} equally spaced checkpoints"
    return Coefficients("wsm", values, notes=[f"{wsm_shape} decay to {wsm_end:g} emulated over {span}"])


@register("fisher", "Fisher-weighted average ('Merging Models with Fisher-Weighted Averaging')", fisher=True)
def fisher(n: int, weights: Sequence[float] | None = None) -> Coefficients:
    """Per-model factors lambda_i (default 1); the Fisher weighting normalizes by itself."""
    if weights is None:
        lam = [1.0] * n
    else:
        lam = _finite_list(weights, "--weights")
        if len(lam) != n:
            raise MergeError(f"--weights gives {len(lam)} weights for {n} checkpoints")
        if any(v < 0 for v in lam) or not any(v > 0 for v in lam):
            raise MergeError("--weights for 'fisher' must be non-negative with at least one positive")
    return Coefficients("fisher", lam, fisher=True)
