"""One registry type for everything chosen by name: operations, vocabulary methods, merge methods, and what comes next.

A registry maps a name to an entry (any object with ``name`` and ``fn``),
says which names exist (for ``--help`` and error messages), and validates a
method's parameters against its function's signature with pydantic, so every
bad parameter is reported the same way, with the field that is wrong.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
from typing import Any, Callable, Generic, Iterator, TypeVar

from warmstart.errors import ParamError, WarmstartError

E = TypeVar("E")


def summary(fn: Callable, given: str = "") -> str:
    """A method's one-line description: the one given at registration, else its docstring's first line."""
    return given or ((fn.__doc__ or "").strip().splitlines() or [""])[0]


class Registry(Generic[E]):
    """Entries by name.

    `what` names the kind of thing in messages ("method", "merge method");
    `package`, if given, is imported module by module on first lookup so that
    every registration has run; `error` is the error type raised for an
    unknown name; `skip` lists the leading parameters of each function that
    are not user parameters (the model, the number of inputs).
    """

    def __init__(self, what: str, *, package: str | None = None, error: type[WarmstartError] = WarmstartError,
                 skip: int = 1):
        self.what = what
        self.package = package
        self.error = error
        self.skip = skip
        self._entries: dict[str, E] = {}
        self._loaded = package is None

    # -- registration ---------------------------------------------------------
    def add(self, name: str, entry: E) -> E:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str, make: Callable[[Callable], E]) -> Callable[[Callable], Callable]:
        """A decorator registering `make(fn)` under `name` and returning `fn` unchanged."""

        def wrap(fn):
            self.add(name, make(fn))
            return fn

        return wrap

    # -- lookup ---------------------------------------------------------------
    def load(self) -> dict[str, E]:
        if not self._loaded:
            self._loaded = True
            pkg = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(f"{self.package}.{info.name}")
        return self._entries

    def names(self, where: Callable[[E], bool] | None = None) -> list[str]:
        return sorted(n for n, e in self.load().items() if where is None or where(e))

    def get(self, name: str, *, kind: str | None = None, where: Callable[[E], bool] | None = None) -> E:
        """The entry called `name`; `kind` and `where` narrow the choice (and the names listed on error)."""
        entry = self.load().get(name)
        if entry is None or (where is not None and not where(entry)):
            what = f"{kind} {self.what}" if kind else self.what
            raise self.error(f"unknown {what} {name!r}; available: {', '.join(self.names(where))}")
        return entry

    def __contains__(self, name: str) -> bool:
        return name in self.load()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, E]]:
        return sorted(self.load().items())

    def values(self) -> list[E]:
        return [e for _, e in self.items()]

    # -- parameters -----------------------------------------------------------
    def parameters(self, name: str) -> dict[str, inspect.Parameter]:
        """The user parameters of `name`'s function (after the first `skip` ones), by name."""
        sig = inspect.signature(self.get(name).fn)
        params = list(sig.parameters.values())[self.skip:]
        return {p.name: p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def validate(self, name: str, params: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
        """Check `params` against `name`'s signature: names, required ones, and types (pydantic).

        Raises :class:`ParamError` naming the parameter, so that a caller can
        prefix its own path (``steps[1].layers``, ``arms[0].grow.layers``).
        """
        from pydantic import TypeAdapter, ValidationError

        fn = self.get(name).fn
        accepted = self.parameters(name)
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # annotations that do not resolve are simply not checked
            hints = {}
        for key in params:
            if key not in accepted:
                raise ParamError(key, f"{name} has no parameter {key!r} (accepted: {', '.join(accepted) or 'none'})")
        for key, p in accepted.items():
            if key not in params:
                if p.default is inspect.Parameter.empty:
                    raise ParamError(key, "required")
                continue
            hint = hints.get(key)
            if hint is None or hint is Any:
                continue
            try:
                TypeAdapter(hint).validate_python(params[key], strict=strict)
            except ValidationError as err:
                raise ParamError(key, f"{err.errors()[0]['msg']} (got {params[key]!r})") from None
        return params
