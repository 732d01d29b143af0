"""`warmstart predict LOG`: fit a loss-curve law to a logged run and predict another schedule."""

from __future__ import annotations

import argparse
import json

from warmstart.commands.common import add_json, examples
from warmstart.errors import WarmstartError
from warmstart.schedules.loss_law import plot_prediction, predict, read_log
from warmstart.schedules.plot import add_figure_arguments, check_output, figure_style
from warmstart.schedules.spec import resolve


def register(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="fit a loss-vs-schedule law to a training log and predict the loss of another schedule",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples("warmstart predict runs/tiny/seed-0/arms/scratch/log.jsonl --fit-schedule "
                        "'cosine(warmup=1, min_ratio=0.1)' --schedule 'wsd(decay=0.2)' --out pred.png"),
    )
    p.add_argument("log", help="JSONL or CSV log with step, lr and eval_loss/loss/train_loss")
    p.add_argument("--fit-schedule", required=True, metavar="SPEC", help="the schedule the logged run used")
    p.add_argument("--schedule", required=True, metavar="SPEC", help="the schedule to predict")
    p.add_argument("--steps", type=int, default=None, help="length of the predicted run (default: its schedule's)")
    p.add_argument("--loss-key", default=None, help="loss column (default: eval_loss, loss, then train_loss)")
    p.add_argument("--lam", type=float, default=0.999, help="momentum of the annealing area (default 0.999)")
    p.add_argument("--out", default=None, help="write a PNG of the fit and the prediction")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--label", default=None, metavar="TEXT",
                   help="legend entry of the predicted curve (default: \"predicted\")")
    add_figure_arguments(p, what="the --out figure")
    add_json(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.steps is not None and args.steps < 1:
        raise WarmstartError(f"--steps must be at least 1, got {args.steps}")
    if not 0.0 <= args.lam < 1.0:
        raise WarmstartError(f"--lam must be in [0, 1), got {args.lam}")
    out = check_output(args.out, args.force) if args.out else None
    log = read_log(args.log, args.loss_key)
    fit_sched = resolve(args.fit_schedule, total=int(log.steps.max()))
    target = resolve(args.schedule, total=args.steps if args.steps is not None else fit_sched.num_steps)
    pred = predict(log, fit_sched, target, steps=args.steps, lam=args.lam)
    if out is not None:
        plot_prediction(pred, out, style=figure_style(args), label=args.label)
    if args.json:
        print(json.dumps({"log": str(pred.log.path), "loss_key": pred.log.loss_key, "law": pred.best.law,
                          "fits": [{"law": f.law, "rmse": f.rmse, "params": f.params} for f in pred.fits],
                          "steps": int(pred.steps.max()), "final_loss": pred.final_loss,
                          "schedule": pred.target.with_peak(pred.target_peak).to_string(),
                          "figure": str(out) if out is not None else None}, indent=2, default=float))
        return 0
    print(format_report(pred))
    if out is not None:
        print(f"wrote {out}")
    return 0


def format_report(pred) -> str:
    lines = [
        f"log: {pred.log.path} ({pred.log.loss_key}, {len(pred.log.steps)} rows; "
        f"lr matches --fit-schedule with peak {pred.fit_peak:.6g})",
        f"{'law':<12} {'fit rmse':>10}  parameters",
    ]
    for fit in pred.fits:
        params = " ".join(f"{k}={v:.4g}" for k, v in fit.params.items())
        lines.append(f"{fit.law:<12} {fit.rmse:>10.4g}  {params}")
    n = int(pred.steps.max())
    lines.append(f"using the {pred.best.law} law (lower fit error on {pred.fit_points} logged losses after the warmup)")
    lines.append(f"predicted final loss after {n} steps of {pred.target.with_peak(pred.target_peak).to_string()}: {pred.final_loss:.4f}")
    return "\n".join(lines)
