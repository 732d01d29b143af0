"""Plots of schedules, written atomically (temporary sibling, then rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from warmstart.errors import OutputExists, WarmstartError


def check_output(out: str | os.PathLike, force: bool) -> Path:
    """Refuse an existing output unless ``force``; the folder must exist."""
    out = Path(out)
    if out.exists() and not force:
        raise OutputExists("exists; pass --force to overwrite", out)
    if out.exists() and out.is_dir():
        raise WarmstartError("is a directory", out)
    if not out.parent.is_dir():
        raise WarmstartError("the output folder does not exist", out.parent)
    return out


def save_figure(fig, out: str | os.PathLike, fmt: str = "png") -> None:
    """Write ``fig`` to a temporary file next to ``out``, then rename it into place."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=120)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
