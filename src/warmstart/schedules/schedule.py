"""The schedule object: phases, a peak and a length. Parsing lives in :mod:`warmstart.schedules.spec`.

Kept apart from the parser so that presets (which build schedules) and the
parser (which knows the presets' names) do not import each other.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from warmstart.errors import SpecError
from warmstart.schedules.phases import (
    REST,
    Decay,
    FieldError,
    Phase,
    check_positive,
    check_steps,
    format_value,
)

SETTINGS = ("peak", "total")


class ScheduleSpecError(SpecError):
    """A schedule spec that does not parse or validate.

    ``token`` and ``position`` (0-based index into ``text``) locate the
    offending piece when the spec came from a string; the one-line message
    shows both (as a 1-based column).
    """

    def __init__(
        self,
        problem: str,
        *,
        text: str | None = None,
        token: str | None = None,
        position: int | None = None,
        phase_index: int | None = None,
        setting: str | None = None,
        path=None,
    ):
        self.problem = problem
        self.text = text
        self.token = token
        self.position = position
        self.phase_index = phase_index
        self.setting = setting
        if position is not None and text is not None:
            message = f"{problem}: {token!r} at column {position + 1} of {text!r}"
        else:
            message = problem
        super().__init__(message, path)


@dataclass(frozen=True)
class Schedule:
    """A sequence of phases, evaluated as multipliers of a peak learning rate.

    ``peak`` (optional) is the absolute learning rate that multiplier 1.0
    stands for; ``total`` (optional) is the intended run length: the phases
    may not need more steps than that, and one phase may use ``'*'`` as its
    length to fill the rest. Steps past the phases hold the last value.
    """

    phases: tuple[Phase, ...]
    peak: float | None = None
    total: int | None = None
    _lengths: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _befores: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _final: float = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        phases = tuple(self.phases)
        object.__setattr__(self, "phases", phases)
        if not phases:
            raise ScheduleSpecError("a schedule needs at least one phase")
        for i, p in enumerate(phases):
            if not isinstance(p, Phase):
                raise ScheduleSpecError(f"phase {i} is not a Phase: {p!r}", phase_index=i)
        if self.peak is not None:
            try:
                object.__setattr__(self, "peak", check_positive(self.peak, name="peak"))
            except FieldError as err:
                raise ScheduleSpecError(str(err), setting="peak") from None
        if self.total is not None:
            try:
                object.__setattr__(self, "total", check_steps(self.total, allow_rest=False))
            except FieldError as err:
                raise ScheduleSpecError(f"total: {err}", setting="total") from None

        rest = [i for i, p in enumerate(phases) if p.steps == REST]
        fixed = sum(p.steps for p in phases if p.steps != REST)
        if len(rest) > 1:
            raise ScheduleSpecError("only one phase may have length '*'", phase_index=rest[1])
        if rest and self.total is None:
            raise ScheduleSpecError(
                "a '*' length fills up to total, but no total=N is given", phase_index=rest[0]
            )
        if self.total is not None:
            need = fixed + (1 if rest else 0)
            if need > self.total:
                raise ScheduleSpecError(
                    f"the phases need {need} steps but total is {self.total}", setting="total"
                )
        lengths = tuple(
            (self.total - fixed) if p.steps == REST else p.steps for p in phases
        )

        befores = []
        before = 1.0
        for i, (p, n) in enumerate(zip(phases, lengths)):
            if isinstance(p, Decay):
                a = p.start_level(before)
                if p.end > a:
                    raise ScheduleSpecError(
                        f"decay ends at {p.end!r}, above the level {a!r} it starts from",
                        phase_index=i,
                    )
            befores.append(before)
            before = p.value(n - 1, n, before)
        offsets = [0]
        for n in lengths[:-1]:
            offsets.append(offsets[-1] + n)
        object.__setattr__(self, "_lengths", lengths)
        object.__setattr__(self, "_offsets", tuple(offsets))
        object.__setattr__(self, "_befores", tuple(befores))
        object.__setattr__(self, "_final", before)

    # --- evaluation

    @property
    def length(self) -> int:
        """Steps covered by the phases (``total`` may add held steps after them)."""
        return self._offsets[-1] + self._lengths[-1]

    @property
    def num_steps(self) -> int:
        """The run length: ``total`` if given, else the phases' length."""
        return self.total if self.total is not None else self.length

    @property
    def lengths(self) -> tuple[int, ...]:
        return self._lengths

    @property
    def offsets(self) -> tuple[int, ...]:
        return self._offsets

    def phase_at(self, step: int) -> tuple[int, int]:
        """(phase index, local step) of a step inside the phases."""
        i = bisect.bisect_right(self._offsets, step) - 1
        return i, step - self._offsets[i]

    def multiplier(self, step: int) -> float:
        """Multiplier of the peak used by the update with 0-based index ``step``."""
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step >= self.length:
            return self._final
        i, s = self.phase_at(step)
        return self.phases[i].value(s, self._lengths[i], self._befores[i])

    __call__ = multiplier

    def lr(self, step: int, peak: float | None = None) -> float:
        """Absolute learning rate: ``peak * multiplier(step)``."""
        return self._peak(peak) * self.multiplier(step)

    def multipliers(self, n: int | None = None) -> list[float]:
        n = self.num_steps if n is None else n
        return [self.multiplier(s) for s in range(n)]

    def lrs(self, n: int | None = None, peak: float | None = None) -> list[float]:
        p = self._peak(peak)
        return [p * m for m in self.multipliers(n)]

    def _peak(self, peak: float | None) -> float:
        p = self.peak if peak is None else peak
        if p is None:
            raise SpecError("no peak learning rate: put peak=LR in the spec or pass one")
        return float(p)

    def with_peak(self, peak: float | None) -> "Schedule":
        return Schedule(self.phases, peak=peak, total=self.total)

    # --- serialisation

    def to_string(self) -> str:
        head = []
        if self.peak is not None:
            head.append(f"peak={format_value(self.peak)}")
        if self.total is not None:
            head.append(f"total={self.total}")
        body = " > ".join(":".join([p.kind, *p.args()]) for p in self.phases)
        return "; ".join([*head, body])

    def __str__(self) -> str:
        return self.to_string()

    def to_dict(self) -> dict:
        out: dict = {}
        if self.peak is not None:
            out["peak"] = self.peak
        if self.total is not None:
            out["total"] = self.total
        out["phases"] = [p.to_dict() for p in self.phases]
        return out
