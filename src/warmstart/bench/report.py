"""report.md, curves.png and results.json for a finished bench.

results.json holds per-seed metrics and the median over seeds; infinities
are written as the string ``"inf"`` and undefined values (a speedup of an
arm that starts below the target, a cost that is not known) as ``null``,
so the file is strict JSON. Each file is written to a temporary name and
renamed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from warmstart.bench import metrics as M

TARGET_FRACTION = 0.60  # the project's goal: the best warm arm at <= 60% of scratch's FLOPs, source counted


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
    tmp = path.parent / f".{path.name}.partial"
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)


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
        d["total_flops"] = a["result"]["flops"]
        d["params"] = a["result"]["params"]
        d["teacher_flops"] = float(a["result"].get("teacher_flops") or 0.0)
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


def best_warm(summary: dict) -> tuple[str | None, float]:
    """The warm arm with the smallest FLOPs fraction (source counted), not flagged as starting below."""
    best, frac = None, math.inf
    for name, a in summary["arms"].items():
        if a["kind"] == "scratch" or "starts_below" in a["flags"]:
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
        lines.append(f"**Target**: the `{ref}` arm's final eval loss, **{_fmt(s['target'])}**. Time to target is "
                     f"{how} (every {recipe.train.eval_every} steps).")
    else:
        lines.append(f"**Target**: eval loss {_fmt(s['target'])} (fixed in the recipe).")
    lines.append("")
    for name, src in s["sources"].items():
        ok = name not in s["source_not_beaten"]
        gap = (src["final_eval_loss"] - s["reference_final"]) if s["reference_final"] is not None else math.nan
        lines.append(f"- Source `{name}` ({src['params']:,} parameters): its own final eval loss "
                     f"**{_fmt(src['final_eval_loss'])}**, cost {_big(src['flops'])} FLOPs. `{ref}` ends at "
                     f"**{_fmt(s['reference_final'])}**, {_fmt(gap)} nats below it: "
                     + ("clearly below (the bigger model is worth having)." if ok else
                        f"**FLAG: not clearly below (margin {recipe.honesty_margin}); the speedups are meaningless.**"))
    if s["sources"]:
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
                 "once its FLOPs plus its source's equal scratch's total training FLOPs. Wall-time speedups are in "
                 "results.json. FLOPs are 6 x N x tokens, N = parameters without the input embedding table.")
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
        verdict = "meets" if results["best"]["meets_goal"] else "does not meet"
        lines.append(f"**Best warm arm: `{best}`**, reaching the target with {_pct(frac)} of scratch's FLOPs, source "
                     f"counted: it {verdict} the goal of at most {TARGET_FRACTION:.0%}.")
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
    return "\n".join(lines)


def plot(path: Path, recipe, runs: list[dict], results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from warmstart.bench.train import read_log

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = list(recipe.arms[i].name for i in range(len(recipe.arms)))
    for run in runs:
        for j, name in enumerate(names):
            a = run["arms"][name]
            ev = M.evals(a["rows"])
            c = colors[j % len(colors)]
            label = name if run is runs[0] else None
            alpha = 1.0 if len(runs) == 1 else 0.6
            ax1.plot([r["tokens"] for r in ev], [r["eval_loss"] for r in ev], color=c, label=label, alpha=alpha)
            offset = 0.0
            sc = a["source_cost"]
            if sc is not None and sc.get("flops") is not None and not math.isnan(sc["flops"]):
                offset = sc["flops"]
            ax2.plot([offset + r["flops"] for r in ev], [r["eval_loss"] for r in ev], color=c, label=label,
                     alpha=alpha)
        for sname, src in run["sources"].items():
            ev = M.evals(read_log(src["log"]))
            ax2.plot([r["flops"] for r in ev], [r["eval_loss"] for r in ev], color="gray", linestyle=":",
                     label=f"source {sname}" if run is runs[0] else None)
    target = results["summary"]["target"]
    for ax in (ax1, ax2):
        ax.axhline(target, color="black", linestyle="--", linewidth=0.8, label="target")
        ax.set_ylabel("eval loss (nats/token)")
        ax.grid(alpha=0.3)
    lo = target - 0.6
    ymax = max(M.evals(run["arms"][names[0]]["rows"])[0]["eval_loss"] for run in runs)
    for ax in (ax1, ax2):
        ax.set_ylim(max(0.0, lo), min(ymax, target + 2.5))
    ax1.set_xlabel("tokens (this arm's training)")
    ax2.set_xlabel("FLOPs, the source's pretraining included")
    ax1.set_title("eval loss vs tokens")
    ax2.set_title("eval loss vs FLOPs (6ND)")
    ax2.legend(fontsize=8)
    fig.suptitle(f"warmstart bench: {recipe.name}")
    fig.tight_layout()
    tmp = path.parent / f".{path.stem}.partial.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def write(work: Path, recipe, runs: list[dict], data_info: dict, mode: str = "interpolate") -> dict:
    """Compute the metrics and write results.json, report.md and curves.png into `work`."""
    per_seed = [seed_metrics(recipe, run, mode) for run in runs]
    for s in per_seed:  # paths relative to the bench directory, which is renamed when done
        for a in s["arms"].values():
            a["log"] = os.path.relpath(a["log"], work)
        for v in s["sources"].values():
            v["log"] = os.path.relpath(v["log"], work)
    summary = summarize(per_seed)
    best, frac = best_warm(summary)
    results = {"recipe": recipe.name, "seeds": len(runs), "mode": mode, "data": data_info, "summary": summary,
               "best": {"arm": best, "fraction_with_source": frac, "goal": TARGET_FRACTION,
                        "meets_goal": bool(best is not None and frac <= TARGET_FRACTION
                                           and not summary["source_not_beaten"])},
               "per_seed": per_seed}
    _write(work / "results.json", json.dumps(_clean(results), indent=2))
    _write(work / "report.md", markdown(recipe, results))
    plot(work / "curves.png", recipe, runs, results)
    return results
