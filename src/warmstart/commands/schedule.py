"""`warmstart schedule show|plot`: look at learning-rate schedules before training with them."""

from __future__ import annotations

import argparse
import json
import math

from warmstart.commands.common import add_json, examples
from warmstart.errors import WarmstartError
from warmstart.schedules.plot import add_figure_arguments, check_output, figure_style, plot_schedules
from warmstart.schedules.spec import resolve


def register(sub) -> None:
    p = sub.add_parser("schedule", help="show or plot closed-form learning-rate schedules",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=examples("warmstart schedule show 'wsd(total=1000, warmup=50, decay=0.2)' --every 100",
                                       "warmstart schedule plot cosine 'wsd(decay=0.2)' --steps 1000 --out lr.pdf"))
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    p.set_defaults(func=_no_action, _parser=p)

    show = actions.add_parser("show", help="print step and lr as a table",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=examples("warmstart schedule show 'peak=3e-4; warmup:linear:100 > "
                                              "decay:cosine:900' --every 100"))
    show.add_argument("spec", help="schedule spec, e.g. 'peak=3e-4; warmup:linear:100 > decay:cosine:900' or a .yaml/.json file")
    show.add_argument("--steps", type=int, default=None, help="rows up to this many steps (default: the schedule's length); also the total for a bare preset")
    show.add_argument("--peak", type=float, default=None, help="peak lr (overrides the spec's peak=)")
    show.add_argument("--every", type=int, default=1, help="print every K-th step (the last step is always printed)")
    add_json(show)
    show.set_defaults(func=run)

    plot = actions.add_parser("plot", help="draw several schedules on one figure",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=examples("warmstart schedule plot cosine 'wsd(decay=0.2)' --steps 1000 "
                                              "--out lr.png"))
    plot.add_argument("specs", nargs="+", metavar="SPEC", help="schedule specs (or spec files)")
    plot.add_argument("--steps", type=int, default=None, help="x range (default: the longest schedule); also the total for bare presets")
    plot.add_argument("--peak", type=float, default=None, help="peak lr for every schedule (overrides peak=)")
    plot.add_argument("--out", required=True, help="figure to write: .png, .pdf or .svg")
    plot.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    add_json(plot)
    plot.add_argument("--label", action="append", default=None, metavar="TEXT",
                      help="legend entry of a SPEC, once per SPEC in order (default: the spec itself)")
    add_figure_arguments(plot)
    plot.set_defaults(func=run)


def _no_action(args) -> int:
    args._parser.print_help()
    return 2


def run(args) -> int:
    if args.steps is not None and args.steps < 1:
        raise WarmstartError(f"--steps must be at least 1, got {args.steps}")
    if args.peak is not None and not (args.peak > 0 and math.isfinite(args.peak)):
        raise WarmstartError(f"--peak must be a finite number > 0, got {args.peak}")

    if args.action == "show":
        if args.every < 1:
            raise WarmstartError(f"--every must be at least 1, got {args.every}")
        sched = resolve(args.spec, total=args.steps)
        n = args.steps if args.steps is not None else sched.num_steps
        table = format_table(sched, n, peak=args.peak, every=args.every)  # checks the size first
        if args.json:
            peak = args.peak if args.peak is not None else sched.peak
            steps = sorted({*range(0, n, args.every), n - 1})
            rows = [{"step": t, "multiplier": sched.multiplier(t),
                     **({"lr": peak * sched.multiplier(t)} if peak is not None else {})} for t in steps]
            print(json.dumps({"spec": sched.with_peak(peak).to_string(), "steps": n, "rows": rows}, indent=2))
            return 0
        print(table)
        return 0

    out = check_output(args.out, args.force)
    if args.label is not None and len(args.label) != len(args.specs):
        raise WarmstartError(f"--label: give one per SPEC, got {len(args.label)} for {len(args.specs)} SPEC(s)")
    scheds = [resolve(spec, total=args.steps) for spec in args.specs]
    n = args.steps if args.steps is not None else max(s.num_steps for s in scheds)
    plot_schedules(scheds, args.label or args.specs, n, out, peak=args.peak, style=figure_style(args))
    print(json.dumps({"out": str(out), "specs": args.specs, "steps": n}) if args.json else f"wrote {out}")
    return 0


# The most rows `schedule show` prints (each is computed and held before printing).
MAX_ROWS = 1_000_000


def format_table(sched, n: int, *, peak: float | None = None, every: int = 1) -> str:
    """The `show` table: step, multiplier and (when a peak is known) lr."""
    from warmstart.errors import WarmstartError

    rows = -(-n // every)
    if rows > MAX_ROWS:
        raise WarmstartError(f"the table would have {rows} rows ({n} steps, every {every}), more than {MAX_ROWS}; "
                             f"pass --every {-(-n // MAX_ROWS)} or more")
    p = peak if peak is not None else sched.peak
    steps = list(range(0, n, every))
    if steps[-1] != n - 1:
        steps.append(n - 1)
    lines = [f"# {sched.with_peak(p).to_string()}"]
    lines.append(f"{'step':>8}  {'multiplier':>12}" + (f"  {'lr':>12}" if p is not None else ""))
    for s in steps:
        m = sched.multiplier(s)
        row = f"{s:>8}  {m:>12.6f}"
        if p is not None:
            row += f"  {p * m:>12.6g}"
        lines.append(row)
    return "\n".join(lines)
