"""Operations registered by name, so that a new method is one new function.

An operation takes a :class:`~warmstart.arch.spec.Model` (a checkpoint with
its family, dims and role layout) and keyword parameters, and returns a
:class:`Transform`: a plan over the model's checkpoint, the output config, and
what is known about exactness. Operations never read tensor data while
planning; the plan's functions do, one output tensor at a time.

Chains: the result of one operation is wrapped as a
:class:`~warmstart.plan.PlannedCheckpoint`, described as a Model, handed to
the next operation, and the plans are composed (:func:`chain`), so a chain
streams in one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from warmstart.arch.spec import describe
from warmstart.errors import ParamError, SpecError, WarmstartError
from warmstart.plan import PlannedCheckpoint, compose
from warmstart.registry import Registry
from warmstart.registry import summary as first_line


@dataclass
class Transform:
    plan: Any  # warmstart.plan.Plan over [model.checkpoint]
    config: dict  # the output's config.json
    exact: bool | None = None  # True: function-preserving by construction; False: approximate; None: not applicable
    notes: list[str] = field(default_factory=list)
    maps: dict[str, Any] = field(default_factory=dict)  # what the operation did: layer map, unit maps
    step_maps: list[dict[str, Any]] = field(default_factory=list)  # in a chain: each step's maps, in order


@dataclass(frozen=True)
class Operation:
    name: str
    kind: str  # "depth", "width", "shrink" ...
    fn: Callable[..., Transform]
    summary: str


OPERATIONS: Registry[Operation] = Registry("method", package="warmstart.ops")


def register(name: str, kind: str, summary: str = ""):
    """Decorator: make `fn(model, **params) -> Transform` available as `name`."""
    return OPERATIONS.decorator(name, lambda fn: Operation(name, kind, fn, first_line(fn, summary)))


def load_all() -> dict[str, Operation]:
    """Import every operation module so that its registrations run."""
    return OPERATIONS.load()


def names(kind: str | None = None) -> list[str]:
    return OPERATIONS.names(None if kind is None else (lambda o: o.kind == kind))


def get(name: str, kind: str | None = None) -> Operation:
    return OPERATIONS.get(name, kind=kind, where=None if kind is None else (lambda o: o.kind == kind))


def apply(model, name: str, **params) -> Transform:
    return get(name).fn(model, **params)


def chain(model, steps: list[tuple[str, dict]], *, where: str | Callable[[int], str] = "steps",
          path=None, error: type[WarmstartError] = SpecError) -> Transform:
    """Apply operations one after another, planning each against the previous result.

    The only loop over a chain's steps: ``grow``, ``shrink``, ``run`` and the
    bench all come here. Returns one Transform whose plan reads only the
    original checkpoint; each output tensor's step keeps its provenance
    (:class:`~warmstart.plan.Origin`) through :func:`~warmstart.plan.compose`.
    An error names its step as ``steps[i].param`` (`where` gives the
    ``steps[i]`` part), raised as `error` with `path` (the recipe), or with the
    path the operation named.
    """
    if not steps:
        raise error("empty chain of operations", path)
    at = where if callable(where) else (lambda i: f"{where}[{i}]")
    current = model
    total = None
    notes: list[str] = []
    step_maps: list[dict] = []
    exact: bool | None = None
    for i, (name, params) in enumerate(steps):
        try:
            get(name)
        except WarmstartError as err:
            raise error(f"{at(i)}.op: {err.message}", path) from None
        try:
            OPERATIONS.validate(name, params)
            t = apply(current, name, **params)
        except ParamError as err:
            raise error(f"{at(i)}.{err.param}: {err.message}", path if path is not None else err.path) from None
        except WarmstartError as err:
            raise error(f"{at(i)} ({name}): {err.message}", path if path is not None else err.path) from None
        notes += [f"{name}: {n}" for n in t.notes]
        if t.exact is not None:
            exact = t.exact if exact is None else (exact and t.exact)
        total = t if total is None else Transform(compose(t.plan, total.plan), t.config, exact, notes, t.maps)
        step_maps.append(t.maps)
        if i + 1 < len(steps):
            current = describe(PlannedCheckpoint(total.plan, t.config, f"<after {name}>"))
    total.notes = notes
    total.exact = exact
    total.step_maps = step_maps
    return total
