"""Merge weights that emulate a learning-rate decay (WSM).

"WSM: Decay-Free Learning Rate Schedule via Checkpoint Merging for LLM
Pre-training" trains at a constant lr and replaces the decay by averaging
recent checkpoints. Why averaging is a decay: at constant lr the checkpoint
saved after ``t`` updates is ``theta_t = theta_0 + u_1 + ... + u_t`` (``u_i``
the i-th update). Merging checkpoints ``theta_{t_1} .. theta_{t_k}``
(oldest first, weights ``c_1 .. c_k`` summing to 1) gives

    theta_0 + sum_i w_i u_i,   w_i = sum of c_j over the checkpoints that contain u_i,

so every update before the oldest checkpoint keeps weight 1 and the update
in the segment between checkpoints ``j-1`` and ``j`` keeps
``w_j = c_j + ... + c_k``. A decayed schedule that, from the oldest
checkpoint on, multiplies update ``i`` by ``f_i`` reaches
``theta_0 + sum_i f_i u_i``. Choosing ``w_j`` = the mean of ``f`` over
segment ``j`` and ``c_j = w_j - w_{j+1}`` makes the two equal whenever the
updates inside each segment are equal (exactly so for ``interval=1``, where
each segment is one update). So a window of ``k`` checkpoints saved every
``interval`` updates emulates a decay of ``(k - 1) * interval`` updates.

The decay multipliers ``f`` are those of the ``decay`` phase of
:mod:`warmstart.schedules.phases` (end-inclusive: the last emulated update
has multiplier ``end``), so with ``end=0`` and ``interval=1`` the newest
checkpoint gets weight 0.
"""

from __future__ import annotations

from warmstart.errors import SpecError
from warmstart.schedules.phases import Decay, check_int_at_least


def decay_multipliers(shape: str, steps: int, end: float = 0.0) -> list[float]:
    """Multipliers ``f_0 .. f_{steps-1}`` of a decay from 1 to ``end``."""
    phase = Decay(shape, steps, end)
    return [phase.value(s, steps, 1.0) for s in range(steps)]


def segment_multipliers(shape: str, k: int, interval: int = 1, end: float = 0.0) -> list[float]:
    """``w_1 .. w_k``: 1 for the oldest checkpoint, then the mean decay multiplier of each segment."""
    k = check_int_at_least(k, 1, name="k")
    interval = check_int_at_least(interval, 1, name="interval")
    if k == 1:
        return [1.0]
    f = decay_multipliers(shape, (k - 1) * interval, end)
    segs = [sum(f[j * interval : (j + 1) * interval]) / interval for j in range(k - 1)]
    return [1.0, *segs]


def wsm_weights(shape: str, k: int, interval: int = 1, end: float = 0.0) -> list[float]:
    """Merge coefficients for the last ``k`` checkpoints (oldest first), summing to 1.

    ``shape`` is a decay shape (linear, cosine, 1-sqrt, exp; exp needs
    ``end > 0``); the checkpoints are ``interval`` updates apart.
    """
    w = segment_multipliers(shape, k, interval, end)
    c = [w[j] - w[j + 1] for j in range(len(w) - 1)] + [w[-1]]
    if any(x < -1e-12 for x in c):  # cannot happen for a monotone decay
        raise SpecError(f"{shape} decay gives negative merge weights")
    return c


def effective_multipliers(weights, interval: int = 1) -> list[float]:
    """Per-update multiplier that merging with ``weights`` applies after the oldest checkpoint."""
    out = []
    tail = sum(weights)
    for c in weights[:-1]:
        tail -= c
        out.extend([tail] * interval)
    return out


def merge(checkpoints, weights):
    """``sum_j c_j * checkpoint_j`` for tensors/arrays or dicts of them (same keys)."""
    if len(checkpoints) != len(weights):
        raise SpecError(f"{len(checkpoints)} checkpoints but {len(weights)} weights")
    first = checkpoints[0]
    if isinstance(first, dict):
        return {key: merge([ck[key] for ck in checkpoints], weights) for key in first}
    out = first * weights[0]
    for ck, c in zip(checkpoints[1:], weights[1:]):
        out = out + ck * c
    return out
