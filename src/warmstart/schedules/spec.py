"""A learning-rate schedule as a hand-writable spec, evaluated in closed form.

The spec is the only state: ``Schedule.multiplier(step)`` is a pure function
of the step, so resuming, rewarming or re-plotting a schedule never depends
on what an optimizer or scheduler object happened to hold.

Compact string grammar (whitespace is ignored)::

    spec     := [setting ';']... body
    setting  := 'peak' '=' FLOAT | 'total' '=' INT
    body     := phase ('>' phase)...  |  PRESET  |  PRESET '(' [arg (',' arg)...] ')'
    phase    := KIND (':' arg)...
    arg      := VALUE | NAME '=' VALUE

for example ``peak=3e-4; warmup:linear:1000 > stable:9000 > decay:1-sqrt:2000:0.0``
or ``peak=3e-4; total=12000; wsd(warmup=1000, decay_frac=0.2)``. The same
content as a dict (for YAML/JSON)::

    {"peak": 0.0003, "phases": [{"kind": "warmup", "shape": "linear", "steps": 1000},
                                {"kind": "stable", "steps": 9000},
                                {"kind": "decay", "shape": "1-sqrt", "steps": 2000}]}

``parse(s)`` / ``to_string()`` and ``from_dict(d)`` / ``to_dict()`` round-trip
exactly: ``parse(x.to_string()) == x`` and ``from_dict(x.to_dict()) == x``.
Presets are expanded when parsed, so ``to_string`` writes their phases.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from warmstart.errors import SpecError
from warmstart.inputs import read_text
from warmstart.safe_yaml import MAX_YAML_BYTES, parse_yaml
from warmstart.schedules.phases import (
    PHASES,
    FieldError,
    Phase,
    check_field,
    check_positive,
    check_steps,
    phase_fields,
    required_fields,
)
from warmstart.schedules.presets import PRESETS
from warmstart.schedules.schedule import SETTINGS, Schedule, ScheduleSpecError  # noqa: F401  (re-exported)

_TOKEN = re.compile(r"\s*(?:(?P<sep>[;>:,()=])|(?P<word>[^\s;>:,()=]+))")


@dataclass(frozen=True)
class _Tok:
    kind: str  # "sep" or "word"
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    toks = []
    pos = 0
    while True:
        m = _TOKEN.match(text, pos)
        if not m:
            rest = text[pos:]
            if rest.strip():  # cannot happen with this token class, kept as a guard
                raise ScheduleSpecError("unexpected character", text=text, token=rest[:1], position=pos)
            break
        kind = "sep" if m.group("sep") else "word"
        start = m.start(kind)
        toks.append(_Tok(kind, m.group(kind), start))
        pos = m.end()
    return toks


def _split(toks: list[_Tok], sep: str) -> list[list[_Tok]]:
    out: list[list[_Tok]] = [[]]
    for t in toks:
        if t.kind == "sep" and t.text == sep:
            out.append([])
        else:
            out[-1].append(t)
    return out


class _Parser:
    def __init__(self, text: str, default_total: int | None):
        self.text = text
        self.default_total = default_total

    def fail(self, problem: str, tok: _Tok | None, **kw):
        if tok is None:
            tok = _Tok("word", self.text.strip()[-1:] if self.text.strip() else "", max(len(self.text.rstrip()) - 1, 0))
        raise ScheduleSpecError(problem, text=self.text, token=tok.text, position=tok.pos, **kw)

    def parse(self) -> Schedule:
        if not isinstance(self.text, str):
            raise ScheduleSpecError(f"a schedule spec must be a string, got {type(self.text).__name__}")
        toks = _tokenize(self.text)
        if not toks:
            raise ScheduleSpecError("empty schedule spec")
        segments = _split(toks, ";")
        seps = [t for t in toks if t.kind == "sep" and t.text == ";"]
        settings: dict[str, object] = {}
        setting_toks: dict[str, _Tok] = {}
        body: list[_Tok] | None = None
        for i, seg in enumerate(segments):
            if not seg:
                where = seps[i - 1] if i > 0 else seps[0]
                self.fail("empty part between ';'", where)
            is_setting = (
                len(seg) >= 2 and seg[0].kind == "word" and seg[1].text == "=" and seg[1].kind == "sep"
            )
            if is_setting:
                if body is not None:
                    self.fail("settings (peak=, total=) go before the phases", seg[0])
                self._setting(seg, settings, setting_toks)
            else:
                if body is not None:
                    self.fail("only one schedule body is allowed; separate phases with '>'", seg[0])
                body = seg
        if body is None:
            self.fail("no phases: the spec only has settings", toks[-1])

        peak = settings.get("peak")
        total = settings.get("total")
        if body[0].kind == "word" and (len(body) == 1 or (body[1].kind == "sep" and body[1].text == "(")):
            phases, preset_tok = self._preset(body, total), body[0]
        else:
            phases, preset_tok = self._chain(body), None
        try:
            return Schedule(tuple(p for p, _ in phases), peak=peak, total=total)
        except ScheduleSpecError as err:
            if err.setting is not None and err.setting in setting_toks:
                self.fail(err.problem, setting_toks[err.setting])
            if err.phase_index is not None and preset_tok is None:
                self.fail(err.problem, phases[err.phase_index][1])
            self.fail(err.problem, preset_tok or body[0])
        raise AssertionError  # pragma: no cover

    def _setting(self, seg, settings, setting_toks):
        key, eq = seg[0], seg[1]
        if key.text not in SETTINGS:
            self.fail(f"unknown setting (expected one of {', '.join(SETTINGS)})", key)
        if key.text in settings:
            self.fail("setting given twice", key)
        if len(seg) < 3:
            self.fail(f"{key.text}= needs a value", eq)
        if len(seg) > 3:
            self.fail("unexpected text after the setting value", seg[3])
        value = seg[2]
        try:
            if key.text == "peak":
                settings["peak"] = check_positive(value.text, name="peak")
            else:
                settings["total"] = check_steps(value.text, allow_rest=False)
        except FieldError as err:
            self.fail(f"{key.text}: {err}", value)
        setting_toks[key.text] = key

    def _args(self, toks: list[_Tok], sep: str, end: str | None = None):
        """Split ``toks`` (without the leading name) into [(name|None, value_tok, first_tok)]."""
        out = []
        for piece in _split(toks, sep):
            if not piece:
                self.fail("missing value", toks[0] if toks else None)
            if piece[0].kind != "word":
                self.fail("expected a value", piece[0])
            if len(piece) == 1:
                out.append((None, piece[0], piece[0]))
            elif len(piece) == 3 and piece[1].text == "=" and piece[2].kind == "word":
                out.append((piece[0].text, piece[2], piece[0]))
            else:
                bad = piece[1] if len(piece) > 1 else piece[0]
                self.fail("expected VALUE or NAME=VALUE", bad)
        return out

    def _chain(self, body: list[_Tok]):
        phases = []
        gts = [t for t in body if t.kind == "sep" and t.text == ">"]
        for j, piece in enumerate(_split(body, ">")):
            if not piece:
                self.fail("empty phase", gts[j - 1] if j > 0 else gts[0])
            phases.append((self._phase(piece), piece[0]))
        return phases

    def _phase(self, piece: list[_Tok]) -> Phase:
        head = piece[0]
        if head.kind != "word":
            self.fail("expected a phase kind", head)
        cls = PHASES.get(head.text)
        if cls is None:
            from warmstart.schedules.presets import PRESETS

            hint = " (presets stand alone as the whole body)" if head.text in PRESETS else ""
            self.fail(f"unknown phase kind (expected one of {', '.join(PHASES)}){hint}", head)
        names = phase_fields(cls)
        req = required_fields(cls)
        usage = cls.kind + "".join(f":{n.upper()}" for n in names if n in req)
        optional = [n.upper() for n in names if n not in req]
        if optional:
            usage += "[:" + "[:".join(optional) + "]" * len(optional)
        rest = piece[1:]
        if not rest:
            self.fail(f"a {cls.kind} phase needs arguments: {usage}", head)
        if rest[0].kind != "sep" or rest[0].text != ":":
            self.fail("expected ':' after the phase kind", rest[0])
        values: dict = {}
        positional = True
        for k, (name, tok, first) in enumerate(self._args(rest[1:], ":") if len(rest) > 1 else []):
            if name is None:
                if not positional:
                    self.fail("positional value after a NAME=VALUE argument", tok)
                if k >= len(names):
                    self.fail(f"too many arguments for {usage}", tok)
                name = names[k]
            else:
                positional = False
                if name not in names:
                    self.fail(f"unknown argument for {cls.kind} (expected {', '.join(names)})", first)
                if name in values:
                    self.fail("argument given twice", first)
            try:
                values[name] = check_field(cls, name, tok.text)
            except FieldError as err:
                self.fail(str(err) if name == "shape" else f"{cls.kind} {name}: {err}", tok)
        if len(rest) == 1:
            self.fail(f"missing arguments after ':': {usage}", rest[0])
        missing = [n for n in required_fields(cls) if n not in values]
        if missing:
            self.fail(f"{cls.kind} is missing {', '.join(missing)}: {usage}", head)
        try:
            return cls(**values)
        except FieldError as err:
            self.fail(str(err), head)
        raise AssertionError  # pragma: no cover

    def _preset(self, body: list[_Tok], total):
        head = body[0]
        fn = PRESETS.get(head.text)
        if fn is None:
            if head.text in PHASES:
                self.fail(f"a {head.text} phase needs arguments after ':'", head)
            self.fail(
                f"unknown preset or phase (presets: {', '.join(PRESETS)}; phases: {', '.join(PHASES)})",
                head,
            )
        args: list = []
        kwargs: dict = {}
        if len(body) > 1:
            if body[-1].text != ")" or body[-1].kind != "sep":
                self.fail("expected ')' at the end of the preset call", body[-1])
            inner = body[2:-1]
            if any(t.kind == "sep" and t.text in "()" for t in inner):
                bad = next(t for t in inner if t.kind == "sep" and t.text in "()")
                self.fail("unexpected parenthesis", bad)
            params = list(inspect.signature(fn).parameters)
            for name, tok, first in self._args(inner, ",") if inner else []:
                if name is None:
                    if kwargs:
                        self.fail("positional value after a NAME=VALUE argument", tok)
                    if len(args) >= len(params):
                        self.fail(f"too many arguments for {head.text}", tok)
                    args.append(_literal(tok.text))
                else:
                    if name not in params:
                        self.fail(f"unknown argument for {head.text} (expected {', '.join(params)})", first)
                    if name in kwargs or params.index(name) < len(args):
                        self.fail("argument given twice", first)
                    kwargs[name] = _literal(tok.text)
        if not args and "total" not in kwargs:
            t = total if total is not None else self.default_total
            if t is None:
                self.fail(f"preset {head.text} needs a total number of steps (total=N)", head)
            kwargs["total"] = t
        sig = inspect.signature(fn)
        given = set(list(sig.parameters)[: len(args)]) | set(kwargs)
        missing = [
            n for n, prm in sig.parameters.items() if prm.default is inspect.Parameter.empty and n not in given
        ]
        if missing:
            self.fail(f"preset {head.text} is missing {', '.join(missing)}", head)
        try:
            sched = fn(*args, **kwargs)
        except (FieldError, SpecError) as err:
            problem = getattr(err, "problem", None) or getattr(err, "message", None) or str(err)
            self.fail(f"{head.text}: {problem}", head)
        return [(p, head) for p in sched.phases]


_INT = re.compile(r"[+-]?\d+")


def _literal(text: str):
    if _INT.fullmatch(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def parse(text: str, *, total: int | None = None) -> Schedule:
    """Parse the compact string form. ``total`` is the default length for a bare preset."""
    return _Parser(text, total).parse()


# --- dict form


def from_dict(data) -> Schedule:
    """Build a schedule from its dict/list form (as loaded from YAML or JSON).

    Accepts ``{"peak": .., "total": .., "phases": [...]}``, a bare list of
    phase dicts, or a compact string.
    """
    if isinstance(data, Schedule):
        return data
    if isinstance(data, str):
        return parse(data)
    if isinstance(data, (list, tuple)):
        data = {"phases": list(data)}
    if not isinstance(data, dict):
        raise ScheduleSpecError(f"a schedule must be a mapping, a list or a string, got {type(data).__name__}")
    unknown = set(data) - {"peak", "total", "phases"}
    if unknown:
        raise ScheduleSpecError(f"unknown schedule key(s): {', '.join(sorted(map(str, unknown)))}")
    raw = data.get("phases")
    if isinstance(raw, str):
        body = parse(raw)
        phases = list(body.phases)
    elif isinstance(raw, (list, tuple)) and raw:
        phases = [_phase_from_dict(i, item) for i, item in enumerate(raw)]
    else:
        raise ScheduleSpecError("phases: expected a non-empty list of phases")
    try:
        return Schedule(tuple(phases), peak=data.get("peak"), total=data.get("total"))
    except ScheduleSpecError as err:
        if err.phase_index is not None:
            raise ScheduleSpecError(f"phases[{err.phase_index}]: {err.problem}") from None
        raise


def _phase_from_dict(i: int, item) -> Phase:
    where = f"phases[{i}]"
    if not isinstance(item, dict):
        raise ScheduleSpecError(f"{where}: expected a mapping with 'kind', got {item!r}")
    kind = item.get("kind")
    cls = PHASES.get(kind)
    if cls is None:
        raise ScheduleSpecError(f"{where}.kind: unknown phase kind {kind!r} (expected one of {', '.join(PHASES)})")
    names = phase_fields(cls)
    values = {}
    for key, value in item.items():
        if key == "kind":
            continue
        if key not in names:
            raise ScheduleSpecError(f"{where}.{key}: unknown field for {kind} (expected {', '.join(names)})")
        if value is None:
            continue
        try:
            values[key] = check_field(cls, key, value)
        except FieldError as err:
            raise ScheduleSpecError(f"{where}.{key}: {err}") from None
    missing = [n for n in required_fields(cls) if n not in values]
    if missing:
        raise ScheduleSpecError(f"{where}: {kind} is missing {', '.join(missing)}")
    try:
        return cls(**values)
    except FieldError as err:
        raise ScheduleSpecError(f"{where}: {kind}: {err}") from None


# --- files and mixed inputs


def load(path: str | os.PathLike) -> Schedule:
    """Read a schedule from a .yaml/.yml/.json file (dict form) or any other text file (string form)."""
    p = Path(path)

    def refuse(message, path=None):
        return ScheduleSpecError(message, path=path)

    text = read_text(p, "schedule file", MAX_YAML_BYTES, refuse)
    try:
        if p.suffix in (".yaml", ".yml"):
            data = parse_yaml(text, p, refuse)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            data = text.strip()
        return from_dict(data)
    except ScheduleSpecError as err:
        raise ScheduleSpecError(err.problem if err.position is None else err.message, path=p) from None
    except Exception as err:  # yaml/json syntax errors
        raise ScheduleSpecError(f"not a valid schedule file: {err}".splitlines()[0], path=p) from None


def resolve(spec, *, total: int | None = None) -> Schedule:
    """A Schedule from a Schedule, a dict/list, a compact string, or a path to a spec file."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, (dict, list, tuple)):
        return from_dict(spec)
    if isinstance(spec, os.PathLike):
        return load(spec)
    if isinstance(spec, str):
        looks_like_file = spec.rstrip("/").endswith((".yaml", ".yml", ".json", ".txt")) or os.sep in spec
        if looks_like_file and os.path.exists(spec):
            return load(spec)  # refuses a directory, FIFO or device by name
        return parse(spec, total=total)
    raise ScheduleSpecError(f"cannot make a schedule from {type(spec).__name__}")
