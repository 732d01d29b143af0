"""A grid of peak learning rates: the same tuning effort for every arm.

A head start measured against an untuned scratch run is not a head start.
With ``lr_grid: [1e-3, 3e-3, 1e-2]`` in a recipe (or ``lrs:`` on one arm),
each arm trains once per peak learning rate and seed; for each arm the bench
keeps the learning rate whose **median final held-out loss over seeds** is
lowest (ties: the smaller rate), then measures everything against the
reference arm at *its* best rate. So the target is scratch's final loss at
scratch's best learning rate, and each warm arm is scored at its own best.
The criterion is the final loss, not the time to the target, so the
reference is tuned by the rule that every other arm is tuned by.

An arm without a grid (its own ``lr``, or no ``lr_grid`` in the recipe)
trains once, at its ``lr`` or the recipe's ``train.lr``.

A run of a grid arm is named ``ARM@lrVALUE`` (``prune@lr0.001``; ``@`` is
not allowed in arm names): its directory is ``seed-K/arms/ARM@lrVALUE``, so
each (arm, lr, seed) run is finished, resumed and cached on its own.
"""

from __future__ import annotations

import math

from warmstart.bench import metrics as M


def lrs_of(recipe, arm) -> list[float] | None:
    """The peak learning rates `arm` tries, smallest first; None when it has no grid (one run)."""
    if arm.lrs is not None:
        return list(arm.lrs)
    if arm.lr is None and recipe.lr_grid is not None:
        return list(recipe.lr_grid)
    return None


def runs_of(recipe, arm) -> list[float | None]:
    """One entry per run of `arm` and seed: each learning rate of its grid, or [None] (its one lr)."""
    return lrs_of(recipe, arm) or [None]


def lr_text(lr: float) -> str:
    return f"{lr:g}"


def run_name(name: str, lr: float | None) -> str:
    """The run's directory name: the arm's name, with ``@lrVALUE`` for a run of a grid."""
    return name if lr is None else f"{name}@lr{lr_text(lr)}"


def _final(record: dict) -> float:
    """A run's final held-out loss; a run that diverged (NaN) or never evaluated counts as infinitely bad."""
    ev = M.evals(record["rows"])
    if not ev:
        return math.inf
    x = ev[-1]["eval_loss"]
    return float(x) if x is not None and math.isfinite(x) else math.inf


def choose(recipe, grid_runs: list[dict]) -> dict:
    """For every grid arm: the runs' final losses per learning rate and the one chosen.

    `grid_runs` is one dict per seed, ``{arm name: {lr: record}}``. Returns
    ``{arm name: {"lrs": [...], "finals": {lr: [per seed]}, "median": {lr: m}, "chosen": lr}}``
    for the arms that have a grid.
    """
    out = {}
    for arm in recipe.arms:
        lrs = lrs_of(recipe, arm)
        if lrs is None:
            continue
        finals = {lr: [_final(seed[arm.name][lr]) for seed in grid_runs] for lr in lrs}
        medians = {lr: M.median(v) for lr, v in finals.items()}
        chosen = min(lrs, key=lambda lr: (medians[lr] if not math.isnan(medians[lr]) else math.inf, lr))
        out[arm.name] = {"lrs": lrs, "finals": finals, "median": medians, "chosen": chosen}
    return out


def chosen_runs(recipe, grid_runs: list[dict], choice: dict) -> list[dict]:
    """Per seed, ``{arm name: record}`` with each grid arm's record at its chosen learning rate."""
    out = []
    for seed in grid_runs:
        arms = {}
        for name, by_lr in seed.items():
            lr = choice[name]["chosen"] if name in choice else None
            arms[name] = by_lr[lr]
        out.append(arms)
    return out


def to_json(choice: dict) -> dict:
    """results.json's ``grid``: learning rates as text keys (JSON keys are strings)."""
    return {name: {"lrs": c["lrs"], "chosen": c["chosen"],
                   "median_final_eval_loss": {lr_text(lr): c["median"][lr] for lr in c["lrs"]},
                   "final_eval_loss": {lr_text(lr): c["finals"][lr] for lr in c["lrs"]}}
            for name, c in choice.items()}


def _cell(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, str) or (isinstance(x, float) and math.isinf(x)):
        return "diverged"
    return f"{x:.3f}"


def markdown_lines(recipe, grid: dict, seeds: int) -> list[str]:
    """report.md's section on the grid: the rates tried, each arm's choice and the per-rate finals."""
    if not grid:
        return []
    lines = ["## Learning-rate grid", ""]
    if recipe.lr_grid is not None:
        lines.append(f"Recipe grid of peak learning rates: {', '.join(lr_text(x) for x in recipe.lr_grid)}. "
                     "Each arm trains once per rate and seed; the rate with the lowest "
                     f"{'median ' if seeds > 1 else ''}final held-out loss{' over seeds' if seeds > 1 else ''} "
                     "is kept, and every figure in this report is at each arm's kept rate (the target is the "
                     "reference arm's final loss at its kept rate).")
    else:
        lines.append("Arms with `lrs:` train once per rate and seed and keep the rate with the lowest "
                     f"{'median ' if seeds > 1 else ''}final held-out loss; every figure in this report is at the "
                     "kept rate.")
    lines.append("")
    all_lrs = sorted({lr for c in grid.values() for lr in c["lrs"]})
    lines.append("| arm | " + " | ".join(f"lr {lr_text(lr)}" for lr in all_lrs) + " | chosen lr |")
    lines.append("|---|" + "---|" * (len(all_lrs) + 1))
    for name, c in grid.items():
        medians = c["median_final_eval_loss"]
        cells = []
        for lr in all_lrs:
            key = lr_text(lr)
            if key not in medians:
                cells.append("")
                continue
            text = _cell(medians[key])
            cells.append(f"**{text}**" if lr == c["chosen"] else text)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {lr_text(c['chosen'])} |")
    lines.append("")
    lines.append(f"Each cell is the {'median over seeds of the ' if seeds > 1 else ''}final held-out loss at that "
                 "peak learning rate; bold marks the kept rate.")
    untuned = [a.name for a in recipe.arms if a.name not in grid]
    ref = recipe.target.arm if recipe.target.loss is None else None
    tried = {name: tuple(c["lrs"]) for name, c in grid.items()}
    unequal = sorted(n for n in tried if ref in tried and tried[n] != tried[ref])
    lines.append("")
    if untuned:
        lines += [f"Not tuned (one learning rate each): {', '.join(f'`{n}`' for n in untuned)}.", ""]
    if unequal or (ref is not None and ref in untuned and grid):
        lines += [f"**Note: unequal tuning effort**: the reference `{ref}` did not try the same rates as "
                  + ", ".join(f"`{n}`" for n in (unequal or list(grid))) + ".", ""]
    return lines
