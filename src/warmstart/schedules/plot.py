"""Plots of schedules, written atomically (temporary sibling, then rename)."""

from __future__ import annotations

import os
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


def save_figure(fig, out: str | os.PathLike, force: bool = True, dpi: int = 120) -> None:
    """Write ``fig`` atomically, in the format of the file's extension."""
    out = Path(out)
    fmt = figure_format(out)
    with atomic.atomic_file(out, force) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)


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
    schedules, labels, steps: int, out: str | os.PathLike, *, peak: float | None = None
) -> None:
    """Draw several schedules on one labelled figure.

    The y axis is the absolute lr when every schedule has a peak (its own
    ``peak=`` or ``peak`` here), else the multiplier of the peak.
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
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    try:
        save_figure(fig, out)
    finally:
        plt.close(fig)
