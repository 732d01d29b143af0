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
anything runs, and errors name the field (``steps[1].layers: ...``).
"""

from __future__ import annotations

import inspect
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from warmstart.errors import ParamError, SpecError, WarmstartError


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
                optimizer_state: str | Path | None = None) -> ChainResult:
    """Plan `steps` on the model at `src` and write the result to `out` atomically."""
    from warmstart.arch import open_model
    from warmstart.checkpoint.dtypes import config_dtype_name, parse_user_dtype
    from warmstart.checkpoint.writer import check_output
    from warmstart.ops import registry
    from warmstart.plan import execute

    code = parse_user_dtype(dtype)
    out = check_output(out, force)
    model = open_model(src)
    transform = registry.chain(model, steps)
    carry = None
    if optimizer_state is not None:
        from warmstart.optimizer_state import load_state, plan_carry

        carry = plan_carry(model, steps, load_state(optimizer_state))
    plan = transform.plan.with_dtype(code)
    config = dict(transform.config)
    if code is not None:
        config["torch_dtype"] = config_dtype_name(code)
        config.pop("dtype", None)

    def finish(tmp: Path) -> None:
        if carry is not None:
            from warmstart.optimizer_state import write_carry

            write_carry(tmp, carry, progress)

    report = execute(plan, out, config=config, copy_files=model.checkpoint.extra_files(), force=force,
                     max_shard_bytes=max_shard_bytes, progress=progress, desc="writing", finish=finish)
    result = ChainResult(out, steps, transform, report)
    if carry is not None:
        from warmstart.optimizer_state import OUTPUT_NAME

        result.optimizer_state = out / OUTPUT_NAME
        result.optimizer_copied, result.optimizer_fresh = carry.copied, carry.fresh
    return result


# -- recipes -------------------------------------------------------------------

def _recipe_models():
    """The pydantic models of a recipe (built on first use: pydantic is not needed to grow)."""
    global _MODELS
    if _MODELS is None:
        from pydantic import BaseModel, ConfigDict, Field

        class RecipeStep(BaseModel):
            model_config = ConfigDict(extra="allow")
            op: str

        class Recipe(BaseModel):
            model_config = ConfigDict(extra="forbid")
            model: str
            out: str
            steps: list[RecipeStep] = Field(min_length=1)
            optimizer_state: str | None = None
            dtype: Literal["fp32", "fp16", "bf16"] | None = None

        _MODELS = Recipe
    return _MODELS


_MODELS = None


def _loc(parts: tuple) -> str:
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text


def load_recipe(path: str | Path) -> tuple[Any, list[tuple[str, dict]]]:
    """Parse and validate a recipe; returns it with model/out resolved and its (op, params) steps."""
    from pydantic import ValidationError

    from warmstart.ops import registry
    from warmstart.safe_yaml import load_yaml

    path = Path(path)
    raw = load_yaml(path, "recipe file", SpecError)
    if not isinstance(raw, dict):
        raise SpecError("a recipe is a mapping with model, out and steps", path)
    try:
        recipe = _recipe_models().model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        raise SpecError(f"{_loc(e['loc']) or 'recipe'}: {e['msg']}", path) from None
    base = path.parent
    recipe.model = os.path.normpath(base / recipe.model)
    recipe.out = os.path.normpath(base / recipe.out)
    if recipe.optimizer_state:
        recipe.optimizer_state = os.path.normpath(base / recipe.optimizer_state)
    steps = []
    for i, step in enumerate(recipe.steps):
        try:
            op = registry.get(step.op)
        except WarmstartError as err:
            raise SpecError(f"steps[{i}].op: {err.message}", path) from None
        params = dict(step.model_extra or {})
        steps.append((step.op, check_params(op.fn, params, f"steps[{i}]", path)))
    return recipe, steps


def check_params(fn, params: dict, where: str, path: Path) -> dict:
    """Check names and types of an operation's parameters against its signature."""
    from pydantic import TypeAdapter, ValidationError

    sig = inspect.signature(fn)
    accepted = [n for n, p in list(sig.parameters.items())[1:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    for name in params:
        if name not in accepted:
            raise SpecError(f"{where}.{name}: unknown parameter (accepted: {', '.join(accepted)})", path)
    for name in accepted:
        p = sig.parameters[name]
        if name not in params:
            if p.default is inspect.Parameter.empty:
                raise SpecError(f"{where}.{name}: required", path)
            continue
        hint = hints.get(name)
        if hint is None or hint is Any:
            continue
        try:
            TypeAdapter(hint).validate_python(params[name], strict=True)
        except ValidationError as err:
            raise SpecError(f"{where}.{name}: {err.errors()[0]['msg']} (got {params[name]!r})", path) from None
    return params


def plan_recipe_steps(model, steps: list[tuple[str, dict]], path: Path) -> None:
    """Plan each step against the previous one's output, so an error names its step."""
    from warmstart.arch.spec import describe
    from warmstart.ops import registry
    from warmstart.plan import PlannedCheckpoint

    current = model
    for i, (name, params) in enumerate(steps):
        try:
            t = registry.apply(current, name, **params)
        except ParamError as err:
            raise SpecError(f"steps[{i}].{err.param}: {err.message}", path) from None
        except WarmstartError as err:
            raise SpecError(f"steps[{i}] ({name}): {err.message}", path) from None
        current = describe(PlannedCheckpoint(t.plan, t.config, f"<after {name}>"))
