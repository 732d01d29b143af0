"""Plots of schedules, written atomically (temporary sibling, then rename)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from warmstart.checkpoint import atomic
from warmstart.errors import WarmstartError

FIGURE_FORMATS = ("png", "pdf", "svg")


def check_output(out: str | os.PathLike, force: bool) -> Path:
    """Refuse an existing figure unless ``force``, and a file name whose extension is not a figure format."""
    out = atomic.check_output(out, force, kind="file")
    figure_format(out)
    return out


def figure_format(out: Path) -> str:
    """The format a figure is written in follows its extension (PNG, PDF or SVG)."""
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FIGURE_FORMATS:
        raise WarmstartError(f"cannot tell the figure format from {out.suffix or 'no extension'!r}; "
                             f"end the name with {', '.join('.' + f for f in FIGURE_FORMATS)}", out)
    return fmt


# Vector figures a paper can use as they are: PDF with TrueType fonts (some venues refuse Type 3), SVG with
# its text kept as text (editable, searchable), and no creation date, so the same figure gives the same bytes.
_VECTOR_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none", "svg.hashsalt": "warmstart"}
_NO_DATE = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}


def save_figure(fig, out: str | os.PathLike, force: bool = True, dpi: int = 120) -> None:
    """Write ``fig`` atomically, in the format of the file's extension."""
    import matplotlib

    out = Path(out)
    fmt = figure_format(out)
    with atomic.atomic_file(out, force) as tmp, matplotlib.rc_context(_VECTOR_RC):
        fig.savefig(tmp, format=fmt, dpi=dpi, metadata=_NO_DATE[fmt])


@dataclass(frozen=True)
class FigureStyle:
    """What a user may set on a figure: title, axis labels, log axes (None keeps the figure's own)."""

    title: str | None = None
    xlabel: str | None = None
    ylabel: str | None = None
    log_x: bool = False
    log_y: bool = False

    def apply(self, ax, *, x_axis=None, title: bool = True) -> None:
        """Set the labels and scales on ``ax`` (the x label and x scale on ``x_axis`` when it differs,
        as for a shared x axis drawn under a second panel)."""
        x_axis = ax if x_axis is None else x_axis
        if title and self.title is not None:
            ax.set_title(self.title)
        if self.xlabel is not None:
            x_axis.set_xlabel(self.xlabel)
        if self.ylabel is not None:
            ax.set_ylabel(self.ylabel)
        if self.log_x:
            # Step 0 has no place on a log axis: start at step 1 rather than squash the curve to the right.
            x_axis.set_xscale("log")
            x_axis.set_xlim(left=1)
        if self.log_y:
            ax.set_yscale("log")


# A figure is a few hundred pixels wide: more points than this are sampled
# (evenly, plus every phase boundary), so 10**12 steps plot as fast as 10**4.
MAX_PLOT_POINTS = 20_000


def plot_steps(sched, steps: int) -> list[int]:
    """The steps at which to draw a schedule: all of them, or an even sample keeping the phase boundaries."""
    if steps <= MAX_PLOT_POINTS:
        return list(range(steps))
    stride = steps / MAX_PLOT_POINTS
    xs = {min(steps - 1, int(i * stride)) for i in range(MAX_PLOT_POINTS)} | {steps - 1}
    for offset in sched.offsets[:MAX_PLOT_POINTS]:
        for s in (offset - 1, offset, offset + 1):
            if 0 <= s < steps:
                xs.add(s)
    return sorted(xs)


def plot_schedules(
    schedules, labels, steps: int, out: str | os.PathLike, *, peak: float | None = None,
    style: FigureStyle = FigureStyle(),
) -> None:
    """Draw several schedules on one labelled figure.

    The y axis is the absolute lr when every schedule has a peak (its own
    ``peak=`` or ``peak`` here), else the multiplier of the peak. ``style``
    sets the title, axis labels and log axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    absolute = peak is not None or all(s.peak is not None for s in schedules)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for sched, label in zip(schedules, labels):
        xs = plot_steps(sched, steps)
        if absolute:
            p = sched._peak(peak)
            ys = [p * sched.multiplier(s) for s in xs]
        else:
            ys = [sched.multiplier(s) for s in xs]
        ax.plot(xs, ys, label=label, lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate" if absolute else "multiplier of the peak lr")
    ax.set_title("learning-rate schedules", fontsize=10)
    style.apply(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    try:
        save_figure(fig, out)
    finally:
        plt.close(fig)


def add_figure_arguments(parser, *, what: str = "the figure") -> None:
    """The options every command that draws a figure takes (``figure_style`` reads them back)."""
    parser.add_argument("--title", default=None, help=f"title of {what} (default: a description of it)")
    parser.add_argument("--xlabel", default=None, help="label of the x axis")
    parser.add_argument("--ylabel", default=None, help="label of the y axis")
    parser.add_argument("--log-x", action="store_true", help="logarithmic x axis (from step 1)")
    parser.add_argument("--log-y", action="store_true", help="logarithmic y axis")


def figure_style(args) -> FigureStyle:
    return FigureStyle(title=args.title, xlabel=args.xlabel, ylabel=args.ylabel, log_x=args.log_x, log_y=args.log_y)
