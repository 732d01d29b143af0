"""Schedule phases: closed-form multipliers of a peak learning rate.

A phase covers ``n`` steps and maps its local step ``s`` (0-based) to a
multiplier of the peak learning rate. Every phase uses one boundary
convention, *end-inclusive*: with progress ``p = (s + 1) / n``, the first
step is one increment into the phase and the last step lands exactly on the
phase's target. So a linear warmup of 4 steps gives 0.25, 0.5, 0.75, 1.0:
no update is wasted at lr 0 and the last warmup step already trains at the
peak; a decay to ``end`` spends its last step exactly at ``end``.

Phases that continue from where the previous one stopped (``stable``,
``decay``, ``invsqrt`` with no explicit start) receive that level as
``before``; it is 1.0 (the peak) for a first phase.

The phase objects only hold their spec; they are frozen dataclasses so two
phases are equal exactly when their specs are, which is what the spec round
trip relies on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

from warmstart.errors import SpecError

WARMUP_SHAPES = ("linear", "cosine", "exp")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt", "exp")

REST = "*"  # a phase length that fills the schedule up to its total


class FieldError(SpecError, ValueError):
    """A single value is wrong; the string parser re-raises it with the token's position."""

    def __str__(self) -> str:
        return self.message


# --- field checks (shared by the string parser, from_dict and the constructors)


def check_steps(value, *, allow_rest: bool = True):
    if allow_rest and value == REST:
        return REST
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise FieldError("expected a whole number of steps") from None
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise FieldError("expected a whole number of steps")
    if value <= 0:
        raise FieldError("a length must be at least 1 step")
    return value


def check_ratio(value, *, name: str = "ratio"):
    value = _to_float(value)
    if value < 0.0:
        raise FieldError(f"{name} must be >= 0 (a multiplier of the peak)")
    if value > 1.0:
        raise FieldError(f"{name} {value!r} is above the peak (multipliers are at most 1)")
    return value


def check_positive(value, *, name: str = "value"):
    value = _to_float(value)
    if value <= 0.0:
        raise FieldError(f"{name} must be > 0")
    return value


def check_int_at_least(value, lo: int, *, name: str):
    if isinstance(value, bool):
        raise FieldError(f"{name} must be a whole number >= {lo}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise FieldError(f"{name} must be a whole number >= {lo}") from None
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < lo:
        raise FieldError(f"{name} must be a whole number >= {lo}")
    return value


def _to_float(value) -> float:
    if isinstance(value, bool):
        raise FieldError("expected a number")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise FieldError("expected a number") from None
    if not math.isfinite(out):
        raise FieldError("expected a finite number")
    return out


def _check_shape(value, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise FieldError(f"unknown {what} shape {value!r} (expected one of {', '.join(allowed)})")
    return value


# --- shapes


def warmup_value(shape: str, start: float, p: float) -> float:
    """Multiplier at progress p in (0, 1] of a warmup from ``start`` to 1."""
    if p >= 1.0:
        return 1.0
    if shape == "linear":
        return start + (1.0 - start) * p
    if shape == "cosine":
        return start + (1.0 - start) * 0.5 * (1.0 - math.cos(math.pi * p))
    if shape == "exp":
        return start * (1.0 / start) ** p
    raise AssertionError(shape)


def decay_value(shape: str, a: float, b: float, p: float) -> float:
    """Multiplier at progress p in (0, 1] of a decay from ``a`` to ``b``."""
    if p >= 1.0:
        return b
    if shape == "linear":
        return b + (a - b) * (1.0 - p)
    if shape == "cosine":
        return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * p))
    if shape == "1-sqrt":
        return b + (a - b) * (1.0 - math.sqrt(p))
    if shape == "exp":
        return a * (b / a) ** p
    raise AssertionError(shape)


# --- phases


class Phase:
    """Base of all phases: ``kind`` names it in the spec, fields are its arguments."""

    kind: ClassVar[str]
    steps: int | str

    # field name -> checker; the order of the dataclass fields is the
    # positional order in the compact string.
    def _check(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            object.__setattr__(self, f.name, check_field(type(self), f.name, value))
        self._check_phase()

    def _check_phase(self) -> None:  # cross-field checks
        pass

    def value(self, s: int, n: int, before: float) -> float:
        """Multiplier at local step ``s`` in ``[0, n)``; ``before`` is the previous level."""
        raise NotImplementedError

    def start_level(self, before: float) -> float:
        """Level the phase starts from (its value 'at step -1')."""
        return before

    def args(self) -> list[str]:
        """Positional arguments for the compact string, trailing defaults dropped."""
        out: list[str] = []
        defaults: list[bool] = []
        for f in fields(self):
            value = getattr(self, f.name)
            out.append(format_value(value))
            defaults.append(value == f.default and f.name not in required_fields(type(self)))
        while defaults and defaults[-1]:
            out.pop()
            defaults.pop()
        return out

    def to_dict(self) -> dict:
        out: dict = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in required_fields(type(self)) or value != f.default:
                out[f.name] = value
        return out


def format_value(value) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def required_fields(cls) -> tuple[str, ...]:
    from dataclasses import MISSING

    return tuple(f.name for f in fields(cls) if f.default is MISSING)


def check_field(cls, name: str, value):
    """Validate and normalise one field value of phase class ``cls``."""
    if name == "shape":
        return _check_shape(value, cls.shapes, cls.kind)
    if name == "steps":
        return check_steps(value)
    if name == "t0":
        return check_int_at_least(value, 1, name="t0")
    if name == "t_mult":
        return check_int_at_least(value, 1, name="t_mult")
    if name == "timescale":
        return check_positive(value, name="timescale")
    if name in ("start", "end", "level"):
        return check_ratio(value, name=name)
    raise AssertionError(name)


@dataclass(frozen=True)
class Warmup(Phase):
    """Rise from ``start`` (a ratio of the peak) to the peak; the last step is the peak."""

    shape: str
    steps: int | str
    start: float = 0.0
    kind: ClassVar[str] = "warmup"
    shapes: ClassVar[tuple[str, ...]] = WARMUP_SHAPES

    def __post_init__(self):
        self._check()

    def _check_phase(self):
        if self.shape == "exp" and self.start <= 0.0:
            raise FieldError("an exp warmup needs a start ratio > 0, e.g. warmup:exp:1000:0.01")

    def value(self, s, n, before):
        return warmup_value(self.shape, self.start, (s + 1) / n)

    def start_level(self, before):
        return self.start


@dataclass(frozen=True)
class Rewarm(Warmup):
    """A warmup that restarts training from a loaded checkpoint.

    Mathematically the same rise as :class:`Warmup`, to *this* schedule's
    peak; the name records the intent and the torch adapter always takes
    the peak from the spec, never from the loaded optimizer's
    ``initial_lr`` (see "Continual Pre-Training of Large Language Models:
    How to (re)warm your model?").
    """

    kind: ClassVar[str] = "rewarm"

    def __post_init__(self):
        self._check()


@dataclass(frozen=True)
class Stable(Phase):
    """Hold a level: ``level`` if given, else wherever the previous phase ended."""

    steps: int | str
    level: float | None = None
    kind: ClassVar[str] = "stable"
    shapes: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        self._check()

    def value(self, s, n, before):
        return before if self.level is None else self.level

    def start_level(self, before):
        return before if self.level is None else self.level


@dataclass(frozen=True)
class Constant(Stable):
    """Same as :class:`Stable`; kept as its own word so the spec round-trips."""

    kind: ClassVar[str] = "constant"

    def __post_init__(self):
        self._check()


@dataclass(frozen=True)
class Decay(Phase):
    """Fall from ``start`` (default: the previous level) to ``end``; the last step is ``end``."""

    shape: str
    steps: int | str
    end: float = 0.0
    start: float | None = None
    kind: ClassVar[str] = "decay"
    shapes: ClassVar[tuple[str, ...]] = DECAY_SHAPES

    def __post_init__(self):
        self._check()

    def _check_phase(self):
        if self.shape == "exp" and self.end <= 0.0:
            raise FieldError("an exp decay needs an end ratio > 0, e.g. decay:exp:2000:0.01")
        if self.start is not None and self.end > self.start:
            raise FieldError(f"decay ends at {self.end!r}, above its start {self.start!r}")

    def value(self, s, n, before):
        a = before if self.start is None else self.start
        return decay_value(self.shape, a, self.end, (s + 1) / n)

    def start_level(self, before):
        return before if self.start is None else self.start


@dataclass(frozen=True)
class SGDR(Phase):
    """Cosine cycles from the peak down to ``end``, restarting at the peak.

    Cycle ``i`` lasts ``t0 * t_mult**i`` steps ("SGDR: Stochastic Gradient
    Descent with Warm Restarts"); each cycle follows the end-inclusive
    convention, so its last step is ``end`` and the next step restarts
    one increment below the peak. The phase may cut the last cycle short.
    """

    steps: int | str
    t0: int
    t_mult: int = 1
    end: float = 0.0
    kind: ClassVar[str] = "sgdr"
    shapes: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        self._check()

    def cycle(self, s: int) -> tuple[int, int]:
        """(position in cycle, cycle length) of local step s."""
        length = self.t0
        if self.t_mult == 1:
            return s % length, length
        while s >= length:
            s -= length
            length *= self.t_mult
        return s, length

    def value(self, s, n, before):
        pos, length = self.cycle(s)
        return decay_value("cosine", 1.0, self.end, (pos + 1) / length)

    def start_level(self, before):
        return 1.0


@dataclass(frozen=True)
class InvSqrt(Phase):
    """Inverse square root decay: ``start * sqrt(timescale / (timescale + s + 1))``.

    With ``timescale`` equal to the warmup length this is the classic
    ``peak * sqrt(warmup / step)`` rule continued after a warmup.
    """

    steps: int | str
    timescale: float
    start: float | None = None
    kind: ClassVar[str] = "invsqrt"
    shapes: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        self._check()

    def value(self, s, n, before):
        a = before if self.start is None else self.start
        return a * math.sqrt(self.timescale / (self.timescale + s + 1))

    def start_level(self, before):
        return before if self.start is None else self.start


PHASES: dict[str, type[Phase]] = {
    cls.kind: cls for cls in (Warmup, Rewarm, Stable, Constant, Decay, SGDR, InvSqrt)
}


def phase_fields(cls) -> list[str]:
    return [f.name for f in fields(cls)]


def make_phase(kind: str, values: dict) -> Phase:
    """Build a phase from already-validated field values; wraps FieldError as SpecError."""
    cls = PHASES[kind]
    try:
        return cls(**values)
    except FieldError as err:
        raise SpecError(f"{kind}: {err}") from None
