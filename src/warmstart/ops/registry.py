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

from warmstart.errors import WarmstartError


@dataclass
class Transform:
    plan: Any  # warmstart.plan.Plan over [model.checkpoint]
    config: dict  # the output's config.json
    exact: bool | None = None  # True: function-preserving by construction; False: approximate; None: not applicable
    notes: list[str] = field(default_factory=list)
    maps: dict[str, Any] = field(default_factory=dict)  # e.g. layer map, unit maps: for optimizer-state carry-over


@dataclass(frozen=True)
class Operation:
    name: str
    kind: str  # "depth", "width" or "shrink"
    fn: Callable[..., Transform]
    summary: str


OPERATIONS: dict[str, Operation] = {}


def register(name: str, kind: str, summary: str = ""):
    """Decorator: make `fn(model, **params) -> Transform` available as `name`."""

    def wrap(fn):
        if name in OPERATIONS:
            raise ValueError(f"operation {name!r} registered twice")
        OPERATIONS[name] = Operation(name, kind, fn, summary or (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return wrap


def load_all() -> dict[str, Operation]:
    """Import every operation module so that its registrations run."""
    import importlib
    import pkgutil

    import warmstart.ops as ops

    for info in pkgutil.iter_modules(ops.__path__):
        if info.name != "registry":
            importlib.import_module(f"warmstart.ops.{info.name}")
    return OPERATIONS


def get(name: str, kind: str | None = None) -> Operation:
    load_all()
    op = OPERATIONS.get(name)
    if op is None or (kind is not None and op.kind != kind):
        names = sorted(n for n, o in OPERATIONS.items() if kind is None or o.kind == kind)
        raise WarmstartError(f"unknown {kind or ''} method {name!r}; available: {', '.join(names)}".replace("  ", " "))
    return op


def apply(model, name: str, **params) -> Transform:
    return get(name).fn(model, **params)


def chain(model, steps: list[tuple[str, dict]]) -> Transform:
    """Apply operations one after another, planning each against the previous result.

    Returns one Transform whose plan reads only the original checkpoint.
    """
    from warmstart.arch.spec import describe
    from warmstart.plan import PlannedCheckpoint, compose

    if not steps:
        raise WarmstartError("empty chain of operations")
    current = model
    total = None
    notes: list[str] = []
    exact: bool | None = None
    for i, (name, params) in enumerate(steps):
        t = apply(current, name, **params)
        notes += [f"{name}: {n}" for n in t.notes]
        if t.exact is not None:
            exact = t.exact if exact is None else (exact and t.exact)
        total = t if total is None else Transform(compose(t.plan, total.plan), t.config, exact, notes, t.maps)
        if i + 1 < len(steps):
            current = describe(PlannedCheckpoint(total.plan, t.config, f"<after {name}>"))
    total.notes = notes
    total.exact = exact
    return total
