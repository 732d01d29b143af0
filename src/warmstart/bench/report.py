"""report.md, curves.png and results.json for a finished bench.

results.json holds per-seed metrics and the median over seeds; infinities
are written as the string ``"inf"`` and undefined values (a speedup of an
arm that starts below the target, a cost that is not known) as ``null``,
so the file is strict JSON. Each file is written to a temporary name and
renamed.

The figure is always written as curves.png (report.md shows it); the
``figure_formats`` of :func:`write` (``warmstart bench --figure-format``)
add the same figure as curves.pdf and/or curves.svg, vector files a paper
can include as they are.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from warmstart.bench import adapter_arm
from warmstart.bench import grid as G
from warmstart.bench import metrics as M
from warmstart.bench.recipe import grow_chain
from warmstart.bench.train import default_schedule, read_log
from warmstart.checkpoint.atomic import write_text
from warmstart.schedules.plot import FIGURE_FORMATS, save_figure


def _clean(x):
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _write(path: Path, data: str | bytes) -> None:
    write_text(path, data)


def seed_metrics(recipe, run: dict, mode: str = "interpolate") -> dict:
    """Metrics of one seed's arms against the reference arm (or a fixed target loss)."""
    arms = run["arms"]
    if recipe.target.loss is not None:
        target = float(recipe.target.loss)
        ref_name = recipe.target.arm if recipe.target.arm in arms else None
    else:
        ref_name = recipe.target.arm
        target = M.evals(arms[ref_name]["rows"])[-1]["eval_loss"]
    ref_rows = arms[ref_name]["rows"] if ref_name else None
    if ref_rows is not None:
        reference = {k: M.cost_to_target(ref_rows, target, k, mode) for k in M.KEYS}
        ref_total = float(arms[ref_name]["result"]["flops"])
        ref_final = M.evals(ref_rows)[-1]["eval_loss"]
    else:
        reference = {k: M.INF for k in M.KEYS}
        ref_total, ref_final = M.INF, None
    out = {}
    for name, a in arms.items():
        m = M.arm_metrics(name, a["kind"], a["rows"], target, reference, ref_total, a["source_cost"], mode)
        d = m.to_dict()
        d["source"] = a["source"]
        d["log"] = a["log"]
        d["lr"] = a.get("lr")  # the peak learning rate of this run (the kept one, for a grid arm)
        d["total_flops"] = a["result"]["flops"]
        d["params"] = a["result"]["params"]
        d["teacher_flops"] = float(a["result"].get("teacher_flops") or 0.0)
        if a.get("trainable_params") is not None:  # an adapter arm: only its factors train
            d["trainable_params"] = a["trainable_params"]
        if d["teacher_flops"]:  # distillation: the teacher's forwards are not sunk, count them too
            with_teacher = M.cost_to_target(a["rows"], target, "flops_with_teacher", mode)
            d["flops_to_target_with_teacher"] = with_teacher
            d["speedup_with_teacher"] = M.ratio(reference["flops"], with_teacher)
        out[name] = d
    src_finals = {n: s["final_eval_loss"] for n, s in run["sources"].items()}
    not_beaten = M.honesty(ref_final, src_finals, recipe.honesty_margin) if ref_final is not None else []
    return {"seed": run["seed"], "target": target, "reference": ref_name, "reference_final": ref_final,
            "reference_cost": reference, "sources": {n: dict(v) for n, v in run["sources"].items()}, "source_not_beaten": not_beaten, "arms": out}


def summarize(per_seed: list[dict]) -> dict:
    """Median over seeds of every number; flags are kept if any seed raised them."""
    names = list(per_seed[0]["arms"])
    summary = {}
    for name in names:
        rows = [s["arms"][name] for s in per_seed]
        d = {"kind": rows[0]["kind"], "source": rows[0]["source"],
             "flags": sorted({f for r in rows for f in r["flags"]})}
        for key in ("final_eval_loss", "first_eval_loss", "loss_at_equal_compute", "total_flops"):
            d[key] = M.median([r[key] for r in rows])
        for key in ("teacher_flops", "flops_to_target_with_teacher", "speedup_with_teacher"):
            if all(key in r for r in rows):
                d[key] = M.median([r[key] for r in rows])
        for group in ("to_target", "source_cost", "speedup", "speedup_with_source", "fraction_with_source"):
            d[group] = {k: M.median([r[group][k] for r in rows]) for k in M.KEYS}
        summary[name] = d
    sources = {}
    for s in per_seed:
        for n, v in s["sources"].items():
            sources.setdefault(n, []).append(v)
    src = {n: {"final_eval_loss": M.median([v["final_eval_loss"] for v in vs]),
               "flops": M.median([v["flops"] for v in vs]), "params": vs[0]["params"]} for n, vs in sources.items()}
    return {"arms": summary, "sources": src, "target": M.median([s["target"] for s in per_seed]),
            "reference_final": M.median([s["reference_final"] for s in per_seed if s["reference_final"] is not None]),
            "source_not_beaten": sorted({n for s in per_seed for n in s["source_not_beaten"]})}


def best_warm(summary: dict, reference: str | None = None) -> tuple[str | None, float]:
    """The warm arm with the smallest FLOPs fraction (source counted), not flagged as starting below;
    never the reference arm itself (whose curve may reach its own final loss before its budget)."""
    best, frac = None, math.inf
    for name, a in summary["arms"].items():
        if a["kind"] == "scratch" or "starts_below" in a["flags"] or name == reference:
            continue
        f = a["fraction_with_source"]["flops"]
        if f is not None and not math.isnan(f) and f < frac:
            best, frac = name, f
    return best, frac


def _fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "never"
    return f"{x:.{digits}f}"


def _big(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "never"
    return f"{x:.3g}"


def _pct(x) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x))):
        return "n/a"
    if math.isinf(x):
        return "never"
    return f"{100 * x:.0f}%"


def _x(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "inf"
    return f"{x:.2f}x"


def _value(v) -> str:
    """A parameter or spec as the recipe writes it (3e-3, not 0.003)."""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return json.dumps(v, separators=(", ", ": "))
    return str(v)


def chain_text(arm) -> str:
    """The arm's ``grow`` chain as `warmstart grow` steps: ``hyperclone(mult=2) > expand(layers=4)``."""
    return " > ".join(f"{op}({', '.join(f'{k}={_value(v)}' for k, v in params.items())})"
                      for op, params in grow_chain(arm))


def describe_arm(recipe, arm, chosen_lr: float | None = None) -> dict:
    """What an arm ran: its start, its grow chain and its training (steps, peak lr, schedule), in words.

    ``start`` and ``training`` are the two halves; ``text`` joins them for report.md and the figure.
    `chosen_lr`: the rate kept from the arm's learning-rate grid.
    """
    steps = recipe.steps_of(arm, arm.name, recipe.steps)
    lr = arm.lr if arm.lr is not None else (recipe.train.lr if recipe.train.lr is not None else 1e-3)
    grid = G.lrs_of(recipe, arm)
    if chosen_lr is not None:
        lr = chosen_lr
    schedule = arm.schedule if arm.schedule is not None else recipe.train.schedule
    schedule = _value(schedule) if schedule is not None else default_schedule(steps)
    if arm.source:
        src = recipe.sources[arm.source]
        src_steps = recipe.steps_of(src, f"sources.{arm.source}")
        origin = (f"source `{arm.source}` ({src.model.hidden} wide, {src.model.layers} "
                  f"layer{'s' if src.model.layers != 1 else ''}, "
                  f"pretrained {src_steps} steps by the bench)")
    elif arm.checkpoint:
        origin = f"checkpoint `{arm.checkpoint}`"
    else:
        origin = None
    if arm.adapter is not None:
        start = adapter_arm.describe(arm.adapter, origin)
    elif origin is None:
        start = f"from scratch, the random model then transformed by {chain_text(arm)}" if arm.grow else "from scratch"
    elif arm.grow:
        start = f"grown from {origin} by {chain_text(arm)}"
    elif arm.prune is not None:
        start = (f"pruned from {origin} to the target shape ({arm.prune.importance} importance, blocks by "
                 f"{arm.prune.depth_importance or 'block-influence'})")
    else:
        start = f"continues {origin}"
    if arm.shrink_perturb is not None:
        start += f", then shrink-and-perturb (shrink {arm.shrink_perturb.shrink:g}, noise {arm.shrink_perturb.noise:g})"
    training = f"{steps} steps at peak lr {lr:g}, schedule `{schedule}`"
    if grid is not None and chosen_lr is not None:
        training = (f"{steps} steps at peak lr {lr:g} (the best of {', '.join(G.lr_text(x) for x in grid)}), "
                    f"schedule `{schedule}`")
    if arm.distill is not None:
        d = arm.distill
        how = "live" if d.live else f"top-{d.top_k} cached"
        training += (f", distilled from `{d.teacher or arm.checkpoint}` (alpha {d.alpha:g}, T {d.temperature:g}, "
                     f"{how}{', norms and biases only' if d.norms_only else ''})")
    return {"start": start, "training": training, "text": f"{start}; {training}"}


def _speedup_cells(a: dict, key: str) -> str:
    return f"{_x(a['speedup'][key])} | {_x(a['speedup_with_source'][key])}"


def markdown(recipe, results: dict) -> str:
    s = results["summary"]
    seeds = results["seeds"]
    lines = [f"# Bench `{recipe.name}`", ""]
    lines.append(f"{len(recipe.arms)} arms, {seeds} seed(s){' (medians)' if seeds > 1 else ''}; "
                 f"target model hidden {recipe.model.hidden}, {recipe.model.layers} layers, seq {recipe.model.seq_len}; "
                 f"{recipe.steps} steps of {recipe.tokens_per_step} tokens; "
                 f"{results['data']['train_tokens']:,} training / {results['data']['val_tokens']:,} held-out tokens, "
                 f"vocab {results['data']['vocab_size']}.")
    lines.append("")
    ref = recipe.target.arm
    if recipe.target.loss is None:
        how = ("interpolated linearly between evaluations" if results["mode"] == "interpolate"
               else "that of the first evaluation at or below it")
        lines.append(f"**The recipe's target**: eval loss **{_fmt(s['target'])}**, the final eval loss of the "
                     f"reference arm `{ref}`. Time to target is {how} (every {recipe.train.eval_every} steps).")
    else:
        lines.append(f"**The recipe's target**: eval loss **{_fmt(s['target'])}** (fixed in the recipe).")
    lines.append("")
    lines.append("## Arms")
    lines.append("")
    arms = results.get("arms") or {a.name: describe_arm(recipe, a) for a in recipe.arms}
    for name, d in arms.items():
        lines.append(f"- `{name}`: {d['text']}.")
    lines.append("")
    overrides = getattr(recipe, "_overrides", ())
    if overrides:
        lines.append("The recipe file with " + " ".join(f"`--set {o}`" for o in overrides) + ".")
        lines.append("")
    lines.extend(G.markdown_lines(recipe, results.get("grid") or {}, seeds))
    for name, src in s["sources"].items():
        ok = name not in s["source_not_beaten"]
        gap = (src["final_eval_loss"] - s["reference_final"]) if s["reference_final"] is not None else math.nan
        lines.append(f"- Source `{name}` ({src['params']:,} parameters): its own final eval loss "
                     f"**{_fmt(src['final_eval_loss'])}**, cost {_big(src['flops'])} FLOPs. `{ref}` ends at "
                     f"**{_fmt(s['reference_final'])}**, {_fmt(gap)} nats below it: "
                     + ((("clearly below (the fine-tuning is worth doing)." if any(
                         a.adapter is not None and a.source == name for a in recipe.arms)
                         else "clearly below (the bigger model is worth having).")) if ok else
                        f"**FLAG: not clearly below (margin {recipe.honesty_margin}); the speedups are meaningless.**"))
    if s["sources"]:
        lines.append("")
    lines.append("## Time to the target")
    lines.append("")
    lines.append("| arm | kind | final eval loss | eval loss at equal compute | tokens to target | FLOPs to target "
                 "| time to target (s) | speedup | speedup incl. source | FLOPs incl. source / scratch | flags |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, a in s["arms"].items():
        kind = a["kind"] + (f" from `{a['source']}`" if a["source"] else "")
        lines.append(
            f"| {name} | {kind} | {_fmt(a['final_eval_loss'])} | {_fmt(a['loss_at_equal_compute'])} "
            f"| {_big(a['to_target']['tokens'])} | {_big(a['to_target']['flops'])} | {_fmt(a['to_target']['time'], 1)} "
            f"| {_x(a['speedup']['flops'])} | {_x(a['speedup_with_source']['flops'])} "
            f"| {_pct(a['fraction_with_source']['flops'])} | {', '.join(a['flags']) or ''} |")
    lines.append("")
    lines.append("Speedups are FLOPs ratios (scratch's FLOPs to the target over the arm's); \"incl. source\" adds the "
                 "source's own pretraining FLOPs to the arm's. \"Eval loss at equal compute\" is the arm's eval loss "
                 "once its FLOPs plus its source's equal scratch's total training FLOPs. FLOPs are 6 x N x tokens, "
                 "N = parameters without the input embedding table (for a Mixture-of-Experts, only the router and "
                 "the top-k experts a token uses).")
    if any(a.adapter is not None for a in recipe.arms):
        lines[-1] += (f" For adapter arms the reference is `{recipe.target.arm}`, not scratch, \"source\" is the "
                      "initialization's calibration, and FLOPs are 4 N + 6 n per token (see below).")
    lines.append("")
    lines += adapter_arm.report_lines(recipe, results)
    lines.append("## Speedups in tokens, FLOPs and wall time")
    lines.append("")
    lines.append("| arm | tokens | tokens incl. source | FLOPs | FLOPs incl. source | wall time | wall time incl. source |")
    lines.append("|---|---|---|---|---|---|---|")
    for name, a in s["arms"].items():
        lines.append(f"| {name} | {_speedup_cells(a, 'tokens')} | {_speedup_cells(a, 'flops')} "
                     f"| {_speedup_cells(a, 'time')} |")
    lines.append("")
    lines.append("Each is the reference's cost to the target over the arm's (n/a: an arm that starts at or below the "
                 "target, or a source whose cost is not known). Wall time is this machine's training time to the "
                 "target (evaluations left out); a source's time is its own training time, also when it was reused "
                 "from the cache. On a shared machine wall time measures the load as much as the method: tokens and "
                 "FLOPs do not depend on it.")
    lines.append("")
    taught = {n: a for n, a in s["arms"].items() if a.get("teacher_flops")}
    if taught:
        lines.append("Distillation: the teacher's forward passes (2 x teacher parameters x tokens, cached or live) "
                     "are not sunk; with them counted:")
        lines.append("")
        lines.append("| arm | teacher FLOPs (whole run) | FLOPs to target without teacher | with teacher "
                     "| speedup with teacher |")
        lines.append("|---|---|---|---|---|")
        for name, a in taught.items():
            lines.append(f"| {name} | {_big(a['teacher_flops'])} | {_big(a['to_target']['flops'])} "
                         f"| {_big(a['flops_to_target_with_teacher'])} | {_x(a['speedup_with_teacher'])} |")
        lines.append("")
    best, frac = results["best"]["arm"], results["best"]["fraction_with_source"]
    if best is None:
        warm = [a for a in results["summary"]["arms"].values() if a["kind"] != "scratch"]
        if not warm:
            lines.append("No warm arm to compare.")
        elif all("starts_below" in a["flags"] for a in warm):
            lines.append("Every warm arm starts at or below the target, so no speedup can be given (see the flags).")
        else:
            lines.append("No warm arm reaches the target within its budget.")
    else:
        b = s["arms"][best]
        lines.append(f"**Best warm arm: `{best}`**, reaching the recipe's target (eval loss {_fmt(s['target'])}) "
                     f"with {_pct(frac)} of {_whose(recipe)} FLOPs, source counted: "
                     f"speedup {_x(b['speedup_with_source']['flops'])} in FLOPs, "
                     f"{_x(b['speedup_with_source']['tokens'])} in tokens and "
                     f"{_x(b['speedup_with_source']['time'])} in wall time.")
    flagged = [n for n, a in s["arms"].items() if "starts_below" in a["flags"]]
    if flagged:
        lines.append("")
        lines.append(f"**FLAG**: {', '.join(f'`{n}`' for n in flagged)} start(s) at or below the target before "
                     "training: no speedup is claimed for them.")
    if s["source_not_beaten"]:
        lines.append("")
        lines.append("**FLAG: this recipe is not honest**: the reference does not end clearly below every source's "
                     "own loss, so the bigger model is not worth training on this budget. Raise the budget.")
    lines.append("")
    lines.append("![eval loss curves](curves.png)")
    lines.append("")
    lines.append("Eval loss against tokens (left) and against FLOPs with the source's pretraining included (right). "
                 "The dashed line is the recipe's target; a cross marks where each arm first reaches it; the legend "
                 "gives each arm's speedup, source counted, and what it ran.")
    lines.append("")
    return "\n".join(lines)


def _whose(recipe) -> str:
    """Whose FLOPs the best arm's fraction is of: scratch's, or the reference arm's (e.g. an adapter recipe's)."""
    ref = recipe.target.arm
    return "scratch's" if recipe.target.loss is not None or recipe.arm(ref).kind == "scratch" else f"`{ref}`'s"


def _legend_entry(name: str, a: dict, desc: dict, reference: str | None) -> str:
    """An arm's legend entry: name, speedups to the target with the source counted, what it ran."""
    if name == reference:
        head = f"{name} (reference)"
    elif "starts_below" in a["flags"]:
        head = f"{name}: starts at or below the target, no speedup"
    else:
        sw = a["speedup_with_source"]
        head = f"{name}: {_x(sw['flops'])} FLOPs, {_x(sw['tokens'])} tokens, source counted"
    return f"{head}\n{desc['start']}; {desc['training']}".replace("`", "")


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(line, width, subsequent_indent="  ") for line in text.splitlines())


def plot(paths, recipe, runs: list[dict], results: dict) -> None:
    """Eval loss against tokens and against FLOPs (source included), the target line, the crossings
    and a legend under both panels that describes each arm and gives its speedups; one figure, written to
    each of `paths` (its format from the extension)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    ncol = 1 if len(recipe.arms) + len(recipe.sources) <= 5 else 2
    width = 150 // ncol  # characters per legend line at fontsize 8 across a 12-inch figure
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = [a.name for a in recipe.arms]
    summary = results["summary"]
    target = summary["target"]
    reference = recipe.target.arm if recipe.target.arm in names else None
    descriptions = results.get("arms") or {a.name: describe_arm(recipe, a) for a in recipe.arms}
    per_seed = results.get("per_seed") or [None] * len(runs)
    handles = []
    for run, metrics in zip(runs, per_seed):
        first = run is runs[0]
        for j, name in enumerate(names):
            a = run["arms"][name]
            ev = M.evals(a["rows"])
            c = colors[j % len(colors)]
            alpha = 1.0 if len(runs) == 1 else 0.6
            offset = 0.0
            sc = a["source_cost"]
            if sc is not None and sc.get("flops") is not None and not math.isnan(sc["flops"]):
                offset = sc["flops"]
            ax1.plot([r["tokens"] for r in ev], [r["eval_loss"] for r in ev], color=c, alpha=alpha)
            line, = ax2.plot([offset + r["flops"] for r in ev], [r["eval_loss"] for r in ev], color=c, alpha=alpha)
            if first:
                line.set_label(_wrap(_legend_entry(name, summary["arms"][name], descriptions[name], reference), width))
                handles.append(line)
            if metrics is None:
                continue
            to = metrics["arms"][name]["to_target"]
            if _finite(to["tokens"]):
                ax1.plot([to["tokens"]], [target], "X", color=c, ms=8, mec="black", mew=0.6, zorder=5)
            if _finite(to["flops"]):
                ax2.plot([offset + to["flops"]], [target], "X", color=c, ms=8, mec="black", mew=0.6, zorder=5)
        for sname, src in run["sources"].items():
            if any(a.adapter is not None and a.source == sname for a in recipe.arms):
                continue  # the base every adapter arm fine-tunes: shared, so sunk, and not on this axis
            ev = M.evals(read_log(src["log"]))
            line, = ax2.plot([r["flops"] for r in ev], [r["eval_loss"] for r in ev], color="gray", linestyle=":")
            if first:
                line.set_label(f"source {sname}: its own pretraining, final eval loss {_fmt(src['final_eval_loss'])}")
                handles.append(line)
    if recipe.target.loss is None:
        what = f"the recipe's target: eval loss {_fmt(target)}, the final eval loss of {reference}"
    else:
        what = f"the recipe's target: eval loss {_fmt(target)} (fixed in the recipe)"
    for ax in (ax1, ax2):
        ax.axhline(target, color="black", linestyle="--", linewidth=0.8)
        ax.annotate(f"target {_fmt(target)}", xy=(0.0, target), xycoords=("axes fraction", "data"),
                    xytext=(4, -3), textcoords="offset points", ha="left", va="top", fontsize=8)
        ax.set_ylabel("eval loss (nats/token)")
        ax.grid(alpha=0.3)
    handles.append(Line2D([], [], color="black", linestyle="--", linewidth=0.8, label=what))
    handles.append(Line2D([], [], color="gray", marker="X", linestyle="none", mec="black", mew=0.6, ms=8,
                          label="where the arm first reaches the target"))
    lo = target - 0.6
    ymax = max(M.evals(run["arms"][names[0]]["rows"])[0]["eval_loss"] for run in runs)
    adapters = any(a.adapter is not None for a in recipe.arms)
    if adapters:  # fine-tuning moves the loss by tenths of a nat: frame the curves, not a fixed span
        losses = [r["eval_loss"] for run in runs for a in run["arms"].values() for r in M.evals(a["rows"])]
        ymax = max(losses)
        lo = min(losses) - 0.05 * max(ymax - min(losses), 1e-3)
        ymax += 0.05 * max(ymax - min(losses), 1e-3)
    for ax in (ax1, ax2):
        ax.set_ylim(max(0.0, lo), min(ymax, target + 2.5))
    ax1.set_xlabel("tokens (this arm's training)")
    ax2.set_xlabel("FLOPs, the initialization's calibration included" if adapters
                   else "FLOPs, the source's pretraining included")
    ax1.set_title("eval loss vs tokens")
    ax2.set_title("eval loss vs FLOPs (LoRA: 4N + 6n per token)" if adapters else "eval loss vs FLOPs (6ND)")
    seeds = f", median speedups of {len(runs)} seeds" if len(runs) > 1 else ""
    lines = sum(h.get_label().count("\n") + 1 for h in handles)
    fig.set_figheight(4.5 + 0.17 * lines / ncol)  # the panels keep their height; the legend gets its own
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle(f"warmstart bench: {recipe.name}{seeds}")
    try:
        for path in paths:
            save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def write(work: Path, recipe, runs: list[dict], data_info: dict, mode: str = "interpolate",
          figure_formats=(), grid: dict | None = None) -> dict:
    """Compute the metrics and write results.json, report.md and curves.png (and curves.pdf/.svg for the
    `figure_formats` asked for) into `work`. `runs` hold each arm's run at its chosen learning rate; `grid`
    is :func:`warmstart.bench.grid.choose`'s record of every rate tried."""
    grid = grid or {}
    per_seed = [seed_metrics(recipe, run, mode) for run in runs]
    for s in per_seed:  # paths relative to the bench directory, which is renamed when done
        for a in s["arms"].values():
            a["log"] = os.path.relpath(a["log"], work)
        for v in s["sources"].values():
            v["log"] = os.path.relpath(v["log"], work)
    summary = summarize(per_seed)
    best, frac = best_warm(summary, recipe.target.arm if recipe.target.loss is None else None)
    results = {"recipe": recipe.name, "seeds": len(runs), "mode": mode, "data": data_info, "summary": summary,
               "arms": {a.name: describe_arm(recipe, a, grid[a.name]["chosen"] if a.name in grid else None)
                        for a in recipe.arms},
               "best": {"arm": best, "fraction_with_source": frac},
               "per_seed": per_seed}
    if grid:
        results["grid"] = G.to_json(grid)
    if getattr(recipe, "_overrides", ()):
        results["overrides"] = list(recipe._overrides)
    _write(work / "results.json", json.dumps(_clean(results), indent=2))
    _write(work / "report.md", markdown(recipe, results))
    plot([work / f"curves.{fmt}" for fmt in figure_formats_of(figure_formats)], recipe, runs, results)
    return results


def figure_formats_of(formats) -> list[str]:
    """PNG always (report.md shows it), then each other format asked for, once."""
    out = ["png"]
    for fmt in formats or ():
        fmt = fmt.lower().lstrip(".")
        if fmt not in FIGURE_FORMATS:
            raise ValueError(f"figure format must be one of {', '.join(FIGURE_FORMATS)}, got {fmt!r}")
        if fmt not in out:
            out.append(fmt)
    return out
