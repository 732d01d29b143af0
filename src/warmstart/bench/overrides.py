"""``--set KEY=VALUE``: scale a recipe from the command line without copying it.

The same recipe runs on 2 CPU cores and, scaled up, on a GPU; the scaled run
is the committed file plus a few flags::

    warmstart bench recipes/prune_distill.yaml runs/pd \\
        --set train.tokens=4194304 --set seeds=5 --set arms.prune.tokens=1048576

A key is a dotted path into the recipe's mapping, applied to the YAML data
*before* validation, so every value goes through the recipe's one pydantic
schema and its cross-field checks. Arms (a list in the recipe) are addressed
by name (``arms.prune.lr``), by index (``arms.2.lr``) or all at once
(``arms.*.tokens``). A value is read as YAML (``3``, ``1e-3``, ``[1e-3, 3e-3]``,
``{alpha: 0.5}``, ``null`` to remove a key, or an arm: ``arms.scratch_kd=null``). Setting ``steps`` removes the
``tokens`` beside it and the other way round, since a budget is one or the
other. A bad key or value is one line naming the flag.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from warmstart.errors import SpecError

MAX_OVERRIDES = 256
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_BUDGET = {"steps": "tokens", "tokens": "steps"}  # one replaces the other


class OverrideError(SpecError):
    """A ``--set`` flag that names no field, or whose value makes the recipe invalid."""


@dataclass(frozen=True)
class Override:
    text: str  # the flag's own text, KEY=VALUE, for messages
    key: tuple[str, ...]
    value: Any

    @property
    def flag(self) -> str:
        return f"--set {self.text}"


def _numbers(value):
    """YAML 1.1 reads ``1e-3`` as a string; a learning rate written that way is meant as a number."""
    if isinstance(value, str) and _FLOAT.match(value) and not value.isdigit():
        return float(value)
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    return value


def parse_override(item) -> Override:
    """``"train.tokens=4194304"`` (or a ``(key, value)`` pair) -> :class:`Override`."""
    from warmstart.safe_yaml import parse_yaml

    if isinstance(item, tuple) and len(item) == 2:
        key, value = item
        text = f"{key}={value}"
    elif isinstance(item, str):
        text = item
        if "=" not in item:
            raise OverrideError(f"--set {item}: give KEY=VALUE (e.g. --set train.tokens=4194304)")
        key, raw = item.split("=", 1)
        try:
            value = _numbers(parse_yaml(raw, None, OverrideError)) if raw.strip() else ""
        except OverrideError as err:
            raise OverrideError(f"--set {item}: the value is {err.message}") from None
    else:
        raise OverrideError(f"--set: expected KEY=VALUE, got {item!r}")
    parts = tuple(key.strip().split("."))
    if not key.strip() or any(not p for p in parts):
        raise OverrideError(f"--set {text}: the key must be a dotted path such as train.tokens or arms.NAME.lr")
    return Override(text, parts, value)


def parse_overrides(items) -> list[Override]:
    """Flags as given (``KEY=VALUE`` strings), or a mapping ``{dotted key: value}`` from Python."""
    if items is None:
        return []
    if isinstance(items, Mapping):
        items = list(items.items())
    elif isinstance(items, str):
        items = [items]
    items = list(items) if isinstance(items, Iterable) else [items]
    if len(items) > MAX_OVERRIDES:
        raise OverrideError(f"--set: more than {MAX_OVERRIDES} overrides")
    return [parse_override(i) for i in items]


def _list_items(seq: list, part: str, where: str, o: Override) -> list[tuple[int, str]]:
    """The (index, path) of the list items `part` names: an index, ``*``, or an item's ``name``."""
    if part == "*":
        return [(i, f"{where}[{i}]") for i in range(len(seq))]
    if part.lstrip("-").isdigit():
        i = int(part)
        if not 0 <= i < len(seq):
            raise OverrideError(f"{o.flag}: {where} has {len(seq)} entries, no index {i}")
        return [(i, f"{where}[{i}]")]
    names = [item.get("name") if isinstance(item, dict) else None for item in seq]
    if part in names:
        i = names.index(part)
        return [(i, f"{where}[{i}]")]
    known = ", ".join(str(n) for n in names if n is not None) or "none"
    raise OverrideError(f"{o.flag}: no entry of {where} named {part!r} ({where}: {known})")


def _set(node, parts: tuple[str, ...], value, where: str, o: Override, paths: list[str], wild: bool = False) -> None:
    """Set `value` at `parts` under `node`. Under a ``*`` (`wild`), an item without the intermediate mapping
    (an arm without ``distill``, for ``arms.*.distill.windows``) is left alone instead of given one."""
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        # An arm's name may hold dots: the longest run of parts that is a name wins.
        for n in range(len(parts), 0, -1):
            name = ".".join(parts[:n])
            if any(isinstance(x, dict) and x.get("name") == name for x in node) and n > 1:
                head, rest = name, parts[n:]
                break
        items = _list_items(node, head, where, o)
        for i, path in reversed(items):
            if not rest:
                if value is None:
                    del node[i]  # e.g. arms.scratch_kd=null: run the recipe without that arm
                    paths.append(where)
                else:
                    node[i] = value
                    paths.append(path)
            else:
                _set(node[i], rest, value, path, o, paths, wild or head == "*")
        return
    if not isinstance(node, dict):
        raise OverrideError(f"{o.flag}: {where or 'the recipe'} is the value {node!r}, not a mapping of fields")
    path = f"{where}.{head}" if where else head
    if not rest:
        if value is None:
            node.pop(head, None)
        else:
            node[head] = value
            if head in _BUDGET and _BUDGET[head] in node:
                node.pop(_BUDGET[head])
        paths.append(path)
        return
    child = node.get(head)
    if child is None:
        if wild:
            return
        child = node[head] = {}
    _set(child, rest, value, path, o, paths, wild)


def apply(data: dict, overrides: list[Override]) -> tuple[dict, list[tuple[Override, list[str]]]]:
    """A copy of the recipe's mapping with every override set, and the field paths each one touched."""
    out = copy.deepcopy(data)
    touched = []
    for o in overrides:
        paths: list[str] = []
        _set(out, o.key, copy.deepcopy(o.value), "", o, paths)
        if not paths:
            raise OverrideError(f"{o.flag}: no entry has {'.'.join(o.key[o.key.index('*') + 1:-1])}, so it sets "
                                "nothing")
        touched.append((o, paths))
    return out, touched


def blame(message: str, touched: list[tuple[Override, list[str]]]) -> str:
    """A validation error after overrides, as one line naming the flag that caused it.

    The error's field path (``arms[2].tokens: ...``) is matched against the
    paths each flag set; an error no single flag explains names them all.
    """
    field = message.split(":", 1)[0]
    best, depth = None, -1
    for o, paths in touched:
        for p in paths:
            if field == p or field.startswith((p + ".", p + "[")) or p.startswith((field + ".", field + "[")):
                d = len(p)
                if d >= depth:  # the most specific path; of equals, the last flag (its value is the one set)
                    best, depth = o, d
    if best is not None:
        return f"{best.flag}: {message}"
    flags = " ".join(o.flag for o, _ in touched)
    return f"with {flags}: {message}"
