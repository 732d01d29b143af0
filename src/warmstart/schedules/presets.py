"""Named schedules that expand to phases for a given run length.

Each preset takes ``total`` (steps) first and returns a :class:`Schedule`
whose phases add up to exactly ``total``. In the compact string a preset is
the whole body: ``wsd(total=10000, warmup=500)``, ``peak=3e-4; total=10000;
cosine(warmup=500, min_ratio=0.1)``, or a bare name when the total comes
from elsewhere (``total=`` or the CLI's ``--steps``).
"""

from __future__ import annotations

from warmstart.schedules.phases import (
    SGDR,
    Decay,
    FieldError,
    InvSqrt,
    Rewarm,
    Stable,
    Warmup,
    check_int_at_least,
    check_ratio,
)
from warmstart.schedules.schedule import Schedule


def _split(total, warmup, *, need_after: int = 1) -> tuple[int, int]:
    total = check_int_at_least(total, 1, name="total")
    warmup = check_int_at_least(warmup, 0, name="warmup")
    if warmup + need_after > total:
        raise FieldError(f"warmup {warmup} leaves fewer than {need_after} step(s) of {total}")
    return total, warmup


def _warm(warmup: int, shape: str, cls=Warmup, start: float = 0.0) -> list:
    return [cls(shape, warmup, start)] if warmup else []


def constant(total: int, warmup: int = 0, warmup_shape: str = "linear") -> Schedule:
    """Warmup, then the peak until the end."""
    total, warmup = _split(total, warmup)
    return Schedule(tuple(_warm(warmup, warmup_shape) + [Stable(total - warmup)]))


def cosine(total: int, warmup: int = 0, min_ratio: float = 0.0, warmup_shape: str = "linear") -> Schedule:
    """Warmup, then a cosine decay to ``min_ratio`` on the last step."""
    total, warmup = _split(total, warmup)
    return Schedule(tuple(_warm(warmup, warmup_shape) + [Decay("cosine", total - warmup, min_ratio)]))


def d2z(total: int, warmup: int = 0, warmup_shape: str = "linear") -> Schedule:
    """Warmup, then linear decay to zero ("Straight to Zero: Why Linearly Decaying
    the Learning Rate to Zero Works Best for LLMs")."""
    total, warmup = _split(total, warmup)
    return Schedule(tuple(_warm(warmup, warmup_shape) + [Decay("linear", total - warmup, 0.0)]))


def linear(total: int, warmup: int = 0, end: float = 0.0, warmup_shape: str = "linear") -> Schedule:
    """Warmup, then linear decay to ``end`` (``d2z`` is ``end=0``)."""
    total, warmup = _split(total, warmup)
    return Schedule(tuple(_warm(warmup, warmup_shape) + [Decay("linear", total - warmup, end)]))


def wsd(
    total: int,
    warmup: int = 0,
    decay_frac: float = 0.2,
    shape: str = "1-sqrt",
    end: float = 0.0,
    warmup_shape: str = "linear",
) -> Schedule:
    """Warmup-stable-decay: the last ``round(decay_frac * total)`` steps decay with ``shape``.

    MiniCPM ("MiniCPM: Unveiling the Potential of Small Language Models with
    Scalable Training Strategies") introduced it with an exponential decay;
    1-sqrt is the cooldown recommended by "Scaling Laws and Compute-Optimal
    Training Beyond Fixed Training Durations". An ``exp`` decay needs ``end > 0``.
    """
    decay_frac = check_ratio(decay_frac, name="decay_frac")
    total, warmup = _split(total, warmup)
    decay = max(1, round(decay_frac * total))
    stable = total - warmup - decay
    if stable < 0:
        raise FieldError(f"warmup {warmup} + decay {decay} exceed total {total}")
    phases = _warm(warmup, warmup_shape) + ([Stable(stable)] if stable else []) + [Decay(shape, decay, end)]
    return Schedule(tuple(phases))


def sgdr(
    total: int, t0: int, t_mult: int = 1, warmup: int = 0, min_ratio: float = 0.0, warmup_shape: str = "linear"
) -> Schedule:
    """Cosine warm restarts with period ``t0 * t_mult**i`` after an optional warmup."""
    total, warmup = _split(total, warmup)
    return Schedule(tuple(_warm(warmup, warmup_shape) + [SGDR(total - warmup, t0, t_mult, min_ratio)]))


def invsqrt(total: int, warmup: int = 0, timescale: float | None = None, warmup_shape: str = "linear") -> Schedule:
    """Warmup, then ``sqrt(timescale / (timescale + s + 1))``; timescale defaults to the warmup (or 1)."""
    total, warmup = _split(total, warmup)
    tau = float(timescale) if timescale is not None else float(max(warmup, 1))
    return Schedule(tuple(_warm(warmup, warmup_shape) + [InvSqrt(total - warmup, tau)]))


def infinite(
    total: int,
    warmup: int,
    cooldown: int,
    anneal: int,
    level: float = 0.5,
    end: float = 0.0,
    cooldown_shape: str = "cosine",
    anneal_shape: str = "linear",
    warmup_shape: str = "linear",
) -> Schedule:
    """Warmup, cooldown to ``level``, constant at ``level``, final anneal to ``end``.

    The "infinite" schedule of "Simple and Scalable Strategies to Continually
    Pre-train Large Language Models": the constant phase can run as long as
    new data keeps coming, and any checkpoint taken in it can be annealed.
    ``level`` 0.5 and the shapes are this library's defaults, not the paper's.
    """
    total, warmup = _split(total, warmup)
    cooldown = check_int_at_least(cooldown, 1, name="cooldown")
    anneal = check_int_at_least(anneal, 1, name="anneal")
    stable = total - warmup - cooldown - anneal
    if stable < 1:
        raise FieldError(f"warmup + cooldown + anneal = {warmup + cooldown + anneal} leave no constant phase in {total}")
    level = check_ratio(level, name="level")
    phases = _warm(warmup, warmup_shape) + [
        Decay(cooldown_shape, cooldown, level),
        Stable(stable),
        Decay(anneal_shape, anneal, end),
    ]
    return Schedule(tuple(phases))


def rewarm(
    total: int,
    warmup: int,
    min_ratio: float = 0.0,
    start: float = 0.0,
    shape: str = "cosine",
    warmup_shape: str = "linear",
) -> Schedule:
    """Re-warm from ``start`` to this schedule's peak, then decay to ``min_ratio``.

    "Continual Pre-Training of Large Language Models: How to (re)warm your
    model?": continue a finished run on new data with a fresh warmup and
    decay. Give the new peak as ``peak=`` in the spec; the torch adapter
    uses it regardless of the loaded optimizer's learning rates.
    """
    total, warmup = _split(total, warmup)
    phases = _warm(warmup, warmup_shape, Rewarm, start) + [Decay(shape, total - warmup, min_ratio)]
    return Schedule(tuple(phases))


PRESETS = {
    "constant": constant,
    "cosine": cosine,
    "d2z": d2z,
    "linear": linear,
    "wsd": wsd,
    "sgdr": sgdr,
    "invsqrt": invsqrt,
    "infinite": infinite,
    "rewarm": rewarm,
}
