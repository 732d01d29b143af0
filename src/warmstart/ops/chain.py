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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from warmstart.arch import open_model
from warmstart.checkpoint.atomic import check_output
from warmstart.checkpoint.dtypes import config_dtype_name, parse_user_dtype
from warmstart.errors import ParamError, SpecError, WarmstartError
from warmstart.ops import registry
from warmstart.ops.optimizer_carry import OUTPUT_NAME, load_state, plan_carry, write_carry
from warmstart.plan import execute
from warmstart import safe_yaml


@dataclass
class ChainResult:
    out: Path
    steps: list[tuple[str, dict]]
    transform: Any  # registry.Transform of the whole chain
    report: Any  # writer.WriteReport
    optimizer_state: Path | None = None
    optimizer_copied: int = 0
    optimizer_fresh: int = 0
    lines: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """What the commands print: operations, exactness notes, output."""
        out = ["operations: " + " -> ".join(describe_step(n, p) for n, p in self.steps)]
        out += [f"  {n}" for n in self.transform.notes]
        exact = self.transform.exact
        out.append("exactness: " + {True: "exact (the output computes the same function as the source)",
                                    False: "not function-preserving (a warm start for further training)",
                                    None: "not applicable"}[exact])
        r = self.report
        out.append(f"wrote {r.path} ({len(r.files)} files, {r.total_bytes / 1e6:.1f} MB: "
                   f"{r.copied_bytes / 1e6:.1f} MB copied as bytes, {r.computed_bytes / 1e6:.1f} MB computed)")
        if self.optimizer_state is not None:
            out.append(f"optimizer state carried over to {self.optimizer_state}: moments of "
                       f"{self.optimizer_copied} parameters copied, {self.optimizer_fresh} new parameters start "
                       "at zero (step 0)")
        return out


def describe_step(name: str, params: dict) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in params.items() if v is not None)
    return f"{name}({shown})"


def apply_chain(src: str | Path, out: str | Path, steps: list[tuple[str, dict]], *, dtype: str | None = None,
                force: bool = False, max_shard_bytes: int | None = None, progress: bool = False,
                optimizer_state: str | Path | None = None, where: str | Callable[[int], str] = "steps",
                path: str | Path | None = None) -> ChainResult:
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
    plan = transform.plan.with_dtype(code)
    config = dict(transform.config)
    if code is not None:
        config["torch_dtype"] = config_dtype_name(code)
        config.pop("dtype", None)

    def finish(tmp: Path) -> None:
        if carry is not None:
            write_carry(tmp, carry, progress)

    record = {"command": "chain", "source": str(src), "steps": [{"op": n, **p} for n, p in steps],
              "exact": transform.exact}
    report = execute(plan, out, config=config, copy_files=model.checkpoint.extra_files(), force=force,
                     max_shard_bytes=max_shard_bytes, progress=progress, desc="writing", finish=finish,
                     record=record)
    result = ChainResult(out, steps, transform, report)
    if carry is not None:
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