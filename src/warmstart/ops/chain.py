"""Apply a chain of registered operations to a model directory, in one streaming pass.

``warmstart grow``, ``warmstart shrink`` and ``warmstart run RECIPE.yaml`` all
end here: the operations are planned one after another against each
other's planned output (:func:`warmstart.ops.registry.chain`), the plans are
composed so that the output reads only the source checkpoint, and the
executor writes the result tensor by tensor. No intermediate checkpoint is
ever written.

A recipe is YAML::

    model: SmolLM2-135M          # paths are relative to the recipe's folder
    out: SmolLM2-grown
    steps:
      - op: hyperclone
        mult: 2
      - op: expand
        layers: 40

Every step's parameters are checked against the operation's signature before
anything runs (:meth:`warmstart.registry.Registry.validate`), and errors name
the field (``steps[1].layers: ...``), whoever wrote the chain: a recipe, a
bench arm or the grow/shrink flags.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from warmstart import safe_yaml
from warmstart.arch import open_model
from warmstart.checkpoint.atomic import check_output
from warmstart.checkpoint.dtypes import parse_user_dtype
from warmstart.errors import ParamError, SpecError, WarmstartError
from warmstart.ops import registry
from warmstart.ops.optimizer_carry import OUTPUT_NAME, load_state, plan_carry, write_carry
from warmstart.plan import execute


@dataclass
class ChainResult:
    out: Path
    steps: list[tuple[str, dict]]
    transform: Any  # registry.Transform of the whole chain
    report: Any  # writer.WriteReport
    optimizer_state: Path | None = None
    optimizer_copied: int = 0
    optimizer_fresh: int = 0
    verify: Any = None  # verify.VerifyReport when asked to compare the output with the source

    def lines(self) -> list[str]:
        """What the commands print: the summary, and for a dry run the plan, block by block."""
        out = self.summary()
        if self.report.dry_run:
            cfg = self.transform.config
            arch = (cfg.get("architectures") or [cfg.get("model_type", "?")])[0]
            out[-1:-1] = [f"plan: {arch} ({cfg.get('model_type')}), {len(self.report.tensors)} tensors, "
                          f"{self.report.parameters:,} parameters"]
            blocks = block_summary(self.report.tensors)
            if len(blocks) > 14:  # every tensor's origin is in --json; the text shows the pattern
                blocks = blocks[:9] + [f"... {len(blocks) - 12} more blocks (all of them with --json)"] + blocks[-3:]
            out[-1:-1] = ["  " + line for line in blocks]
        return out

    def as_dict(self) -> dict:
        return {"out": str(self.out), "steps": [{"op": n, **p} for n, p in self.steps],
                "exact": self.transform.exact, "notes": self.transform.notes, "config": self.transform.config,
                "write": self.report.as_dict(),
                "optimizer_state": str(self.optimizer_state) if self.optimizer_state else None,
                "verify": self.verify.as_dict() if self.verify is not None else None}

    def summary(self) -> list[str]:
        """What the commands print: operations, exactness notes, output."""
        out = ["operations: " + " -> ".join(describe_step(n, p) for n, p in self.steps)]
        out += [f"  {n}" for n in self.transform.notes]
        exact = self.transform.exact
        out.append("exactness: " + {True: "exact (the output computes the same function as the source)",
                                    False: "not function-preserving (a warm start for further training)",
                                    None: "not applicable"}[exact])
        out.append(self.report.line())
        if self.optimizer_state is not None:
            out.append(f"optimizer state carried over to {self.optimizer_state}: moments of "
                       f"{self.optimizer_copied} parameters copied, {self.optimizer_fresh} new parameters start "
                       "at zero (step 0)")
        return out


_BLOCK = re.compile(r"([A-Za-z0-9_.]*?(?:layers|layer|h|blocks)\.\d+)\.")


def block_summary(tensors: list[dict]) -> list[str]:
    """One line per output block (and one for the rest): how many tensors, and where they come from."""
    groups: dict[str, list[str]] = {}
    for t in tensors:
        m = _BLOCK.match(t["name"])  # anchored: the output block itself
        groups.setdefault(m.group(1) if m else "outside the blocks", []).append(t["from"])
    out = []
    for name, froms in groups.items():
        kinds: dict[str, int] = {}
        for f in froms:
            kind = {"copy": "copied", "new,": "new", "new": "new"}.get(f.split(" ", 1)[0], "computed")
            m = _BLOCK.search(f + ".")
            key = f"{kind} from {m.group(1)}" if m else kind
            kinds[key] = kinds.get(key, 0) + 1
        out.append(f"{name} ({len(froms)} tensors): " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    return out


def describe_step(name: str, params: dict) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in params.items() if v is not None)
    return f"{name}({shown})"


def apply_chain(src: str | Path, out: str | Path, steps: list[tuple[str, dict]], *, dtype: str | None = None,
                force: bool = False, max_shard_bytes: int | None = None, progress: bool = False,
                optimizer_state: str | Path | None = None, where: str | Callable[[int], str] = "steps",
                path: str | Path | None = None, dry_run: bool = False) -> ChainResult:
    """Plan `steps` on the model at `src` and write the result to `out` atomically.

    `where` and `path` say how an error names its step (``steps[1].layers``
    in the recipe at `path`).
    """
    code = parse_user_dtype(dtype)
    out = check_output(out, force, [src, optimizer_state, path])
    model = open_model(src)
    transform = registry.chain(model, steps, where=where, path=path)
    carry = None
    if optimizer_state is not None:
        carry = plan_carry(model, transform, load_state(optimizer_state), [name for name, _ in steps])

    def finish(tmp: Path) -> None:
        if carry is not None:
            write_carry(tmp, carry, progress)

    record = {"chain": [{"op": n, **p} for n, p in steps], "exact": transform.exact}
    report = execute(transform.plan, out, config=dict(transform.config), copy_files=model.checkpoint.extra_files(),
                     force=force, dtype=code,
                     max_shard_bytes=max_shard_bytes, progress=progress, desc="writing", finish=finish,
                     record=record, dry_run=dry_run)
    result = ChainResult(out, steps, transform, report)
    if carry is not None and not dry_run:
        result.optimizer_state = out / OUTPUT_NAME
        result.optimizer_copied, result.optimizer_fresh = carry.copied, carry.fresh
    return result


# -- the chain schema ------------------------------------------------------------
# One schema for a chain, whoever writes it: `warmstart run` recipes (steps:),
# bench arms (grow:) and the grow/shrink flags all become [{op: NAME, PARAM: VALUE}].

def _loc(parts: tuple) -> str:
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text


def parse_steps(items: Any, *, where: str | Callable[[int], str] = "steps", path: str | Path | None = None,
                error: type[WarmstartError] = SpecError) -> list[tuple[str, dict]]:
    """Validate a chain written as [{op: NAME, PARAM: VALUE, ...}]: each op exists, each parameter is its own.

    Errors name the field as ``steps[i].param`` (or what `where` says).
    """
    at = where if callable(where) else (lambda i: f"{where}[{i}]")
    if not isinstance(items, list) or not items:
        raise error(f"{at(0).rsplit('[', 1)[0]}: give at least one step, as [{{op: NAME, ...}}]", path)
    steps = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise error(f"{at(i)}: a step is a mapping {{op: NAME, PARAM: VALUE}}, got {item!r}", path)
        if "op" not in item:
            raise error(f"{at(i)}.op: Field required (name the operation, e.g. op: stack)", path)
        name = item["op"]
        if not isinstance(name, str):
            raise error(f"{at(i)}.op: the operation's name is text, got {name!r}", path)
        params = {k: v for k, v in item.items() if k != "op"}
        try:
            registry.get(name)
        except WarmstartError as err:
            raise error(f"{at(i)}.op: {err.message}", path) from None
        try:
            registry.OPERATIONS.validate(name, params)
        except ParamError as err:
            raise error(f"{at(i)}.{err.param}: {err.message}", path) from None
        steps.append((name, params))
    return steps


class Recipe(BaseModel):
    """A `warmstart run` recipe: a model, an output and a chain."""

    model_config = ConfigDict(extra="forbid")
    model: str
    out: str
    steps: list[dict[str, Any]] = Field(min_length=1)
    optimizer_state: str | None = None
    dtype: Literal["fp32", "fp16", "bf16"] | None = None


def load_recipe(path: str | Path) -> tuple[Recipe, list[tuple[str, dict]]]:
    """Parse and validate a recipe; returns it with model/out resolved and its (op, params) steps."""
    path = Path(path)
    raw = load_yaml(path, "recipe")
    if not isinstance(raw, dict):
        raise SpecError("a recipe is a mapping with model, out and steps", path)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        raise SpecError(f"{_loc(e['loc']) or 'recipe'}: {e['msg']}", path) from None
    base = path.parent
    recipe.model = os.path.normpath(base / recipe.model)
    recipe.out = os.path.normpath(base / recipe.out)
    if recipe.optimizer_state:
        recipe.optimizer_state = os.path.normpath(base / recipe.optimizer_state)
    return recipe, parse_steps(recipe.steps, where="steps", path=path)


def load_yaml(path: Path, what: str) -> Any:
    """A YAML file as data, through the one capped loader (:mod:`warmstart.safe_yaml`); one-line errors."""
    return safe_yaml.load_yaml(path, f"{what} file", SpecError)