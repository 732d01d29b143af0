"""Loss-curve laws over learning-rate schedules: fit one run, predict another.

Two published laws, both functions of the learning rates used so far:

* "Scaling Law with Learning Rate Annealing"::

      L(s) = L0 + A * S1(s)**(-alpha) - C * S2(s)
      S1(s) = sum_{i<s} eta_i                     (forward area)
      m_i   = lam * m_{i-1} + (eta_{i-1} - eta_i)  (momentum of the lr drops)
      S2(s) = sum_{i<s} m_i                        (annealing area), lam = 0.999

* "A Multi-Power Law for Loss Curve Prediction Across Learning Rate Schedules"::

      L(s)  = L0 + A * S1(s)**(-alpha) - LD(s)
      LD(s) = B * sum_{k<s} (eta_{k-1} - eta_k) * G(eta_k**(-gamma) * (S1(s) - S1(k)))
      G(x)  = 1 - (C * x + 1)**(-beta)

Conventions used here: ``eta_i`` is the lr of the update with 0-based index
``i`` (exactly what :meth:`Schedule.lr` returns) and ``L(s)`` is the loss
after ``s`` updates. Learning rates are divided by the fitted run's peak
before anything is summed, which only rescales ``A``, ``C`` (and the
multi-power ``C``) and keeps the fit well conditioned; predictions use the
same scale. Drops inside the leading warmup are not counted (the warmup
raises the lr; neither paper models it as annealing), so both laws start
counting drops at the end of the first warmup.

Fitting uses :func:`scipy.optimize.least_squares` with bounds (L0 >= 0: a
cross-entropy floor cannot be negative), started from
the best points of a grid over the nonlinear exponents where the linear
coefficients come from non-negative least squares (variable projection);
the law with the lower fit RMSE is the one used for prediction.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from warmstart.errors import WarmstartError
from warmstart.inputs import read_text
from warmstart.schedules.phases import Warmup
from warmstart.schedules.plot import FigureStyle, save_figure
from warmstart.schedules.spec import Schedule

LOSS_KEYS = ("eval_loss", "loss", "train_loss")
TISSUE = "annealing"  # "Scaling Law with Learning Rate Annealing"
MULTI_POWER = "multi-power"


# --- reading logs


@dataclass
class LossLog:
    """Losses after ``steps`` updates, and the lr the log recorded on those rows."""

    path: str
    steps: np.ndarray
    losses: np.ndarray
    lrs: np.ndarray
    loss_key: str


def read_log(path: str | os.PathLike, loss_key: str | None = None) -> LossLog:
    """Read a JSONL or CSV training log with ``step``, ``lr`` and a loss column.

    The loss column is ``loss_key`` if given, else the first of
    ``eval_loss``, ``loss``, ``train_loss`` that any row has; rows without
    it (e.g. steps with no evaluation) are skipped, NaN values are errors.
    """
    p = Path(path)
    text = read_text(p, "log file", 256 * 1024 * 1024)
    rows: list[tuple[int, dict]] = []
    if p.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        try:
            if not reader.fieldnames:
                raise WarmstartError("empty CSV log (no header)", p)
            for n, row in enumerate(reader, start=2):
                rows.append((n, {k.strip(): v for k, v in row.items() if k is not None and v not in (None, "")}))
        except csv.Error as err:
            raise WarmstartError(f"not a CSV log: {err}", p) from None
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):  # JSONDecodeError, huge integers, deep nesting
                raise WarmstartError(f"line {n} is not JSON (expected one object per line, or a .csv file)", p) from None
            if not isinstance(obj, dict):
                raise WarmstartError(f"line {n} is not a JSON object", p)
            rows.append((n, {k: v for k, v in obj.items() if v is not None}))
    if not rows:
        raise WarmstartError("the log has no rows", p)
    keys = set().union(*(r.keys() for _, r in rows))
    for need in ("step", "lr"):
        if need not in keys:
            raise WarmstartError(f"no '{need}' column (columns: {', '.join(sorted(keys))})", p)
    if loss_key is None:
        loss_key = next((k for k in LOSS_KEYS if k in keys), None)
        if loss_key is None:
            raise WarmstartError(
                f"no loss column: expected one of {', '.join(LOSS_KEYS)} (columns: {', '.join(sorted(keys))})", p
            )
    elif loss_key not in keys:
        raise WarmstartError(f"no '{loss_key}' column (columns: {', '.join(sorted(keys))})", p)

    by_step: dict[int, tuple[float, float]] = {}
    for n, row in rows:
        if loss_key not in row:
            continue
        try:
            step_f = float(row["step"])
            loss = float(row[loss_key])
            lr = float(row["lr"]) if "lr" in row else math.nan
        except (KeyError, TypeError, ValueError):
            raise WarmstartError(f"line {n}: step, lr and {loss_key} must be numbers", p) from None
        if not math.isfinite(loss):
            raise WarmstartError(f"line {n}: {loss_key} is {loss} (the run diverged or logged NaN)", p)
        if not math.isfinite(step_f) or step_f < 0 or not step_f.is_integer():
            raise WarmstartError(f"line {n}: step must be a whole number >= 0, got {row['step']!r}", p)
        if "lr" not in row or not math.isfinite(lr):
            raise WarmstartError(f"line {n}: missing or non-finite lr", p)
        by_step[int(step_f)] = (loss, lr)  # a repeated step keeps its last row
    if not by_step:
        raise WarmstartError(f"no row has a '{loss_key}' value", p)
    steps = np.array(sorted(by_step), dtype=np.int64)
    losses = np.array([by_step[s][0] for s in steps], dtype=np.float64)
    lrs = np.array([by_step[s][1] for s in steps], dtype=np.float64)
    return LossLog(str(p), steps, losses, lrs, loss_key)


# --- schedule helpers


def leading_warmup(schedule: Schedule) -> int:
    """Steps in the warmup/rewarm phases at the start of ``schedule``."""
    n = 0
    for phase, length in zip(schedule.phases, schedule.lengths):
        if not isinstance(phase, Warmup):
            break
        n += length
    return n


def lr_sequence(schedule: Schedule, n: int, peak: float) -> np.ndarray:
    """The lr of updates 0..n-1."""
    return np.array(schedule.lrs(n, peak), dtype=np.float64)


# --- the laws


def _prefix(eta: np.ndarray) -> np.ndarray:
    """P[x] = sum_{i<x} eta_i, for x = 0..n."""
    return np.concatenate([[0.0], np.cumsum(eta)])


def _drops(eta: np.ndarray, warmup: int) -> np.ndarray:
    d = np.zeros_like(eta)
    d[1:] = eta[:-1] - eta[1:]
    d[: max(warmup, 1)] = 0.0
    return d


def annealing_areas(eta: np.ndarray, steps: np.ndarray, warmup: int = 0, lam: float = 0.999):
    """(S1, S2) of "Scaling Law with Learning Rate Annealing" at ``steps``."""
    from scipy.signal import lfilter

    d = _drops(eta, warmup)
    m = lfilter([1.0], [1.0, -lam], d)
    s1 = _prefix(eta)[steps]
    s2 = _prefix(m)[steps]
    return s1, s2


class _MultiPowerTerms:
    """The parameter-free parts of the multi-power loss drop at fixed steps.

    Exact when the schedule has at most ``max_blocks`` lr changes; beyond
    that, consecutive drops between evaluation points are merged into blocks
    evaluated at their drop-weighted centre (a close approximation for smooth
    schedules).
    """

    def __init__(self, eta: np.ndarray, steps: np.ndarray, warmup: int, max_blocks: int = 4000):
        idx, dvals, reps = _drop_blocks(eta, steps, warmup, max_blocks)
        P = _prefix(eta)
        # only the (step, drop) pairs with the drop before the step take part;
        # keep them flat and sum per step with bincount
        rows, cols = np.nonzero(idx[None, :] <= steps[:, None])
        self.n = len(steps)
        self.rows = rows
        # span = S1(s) - S1(k): the lr area since drop k, up to step s
        self.span = np.maximum(P[steps][rows] - P[reps][cols], 0.0)
        self.drop = dvals[cols]
        self.log_e = np.log(np.maximum(eta[reps], 1e-12))[cols]
        self.empty = rows.size == 0

    def _sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.rows, weights=values, minlength=self.n)

    def ld(self, C: float, beta: float, gamma: float, grad: bool = False):
        """LD/B, and optionally its derivatives by (C, beta, gamma)."""
        if self.empty:
            z = np.zeros(self.n)
            return (z, z, z, z) if grad else z
        x = self.span * np.exp(-gamma * self.log_e)
        u = C * x + 1.0
        log_u = np.log(u)
        u_b = np.exp(-beta * log_u)
        ld = self._sum(self.drop * (1.0 - u_b))
        if not grad:
            return ld
        dx = self.drop * beta * u_b / u * x  # drop * d(1 - u^-beta)/du * x
        d_c = self._sum(dx)
        d_beta = self._sum(self.drop * u_b * log_u)
        d_gamma = self._sum(dx * -C * self.log_e)
        return ld, d_c, d_beta, d_gamma


def multi_power_ld(
    eta: np.ndarray, steps: np.ndarray, warmup: int, C: float, beta: float, gamma: float, max_blocks: int = 4000
) -> np.ndarray:
    """The multi-power loss drop ``LD(s) / B`` at ``steps`` (see :class:`_MultiPowerTerms`)."""
    return _MultiPowerTerms(eta, np.asarray(steps, dtype=np.int64), warmup, max_blocks).ld(C, beta, gamma)


def _drop_blocks(eta, steps, warmup, max_blocks):
    """(block end, summed drop, representative index) of the nonzero lr drops."""
    d = _drops(eta, warmup)
    nz = np.nonzero(d)[0]
    if nz.size <= max_blocks:
        return nz + 1, d[nz], nz
    # Cut at every evaluation step and at a regular grid so blocks stay short.
    grid = np.linspace(nz[0], nz[-1] + 1, max_blocks + 1).astype(np.int64)
    cuts = np.unique(np.concatenate([grid, steps, [nz[-1] + 1]]))
    which = np.searchsorted(cuts, nz, side="right")
    ends, dsum, reps = [], [], []
    for b in np.unique(which):
        sel = nz[which == b]
        w = np.abs(d[sel])
        ends.append(int(cuts[b]) if b < len(cuts) else int(sel[-1] + 1))
        dsum.append(d[sel].sum())
        reps.append(int(round(float((sel * w).sum() / w.sum()))))
    return np.array(ends), np.array(dsum), np.array(reps)


@dataclass
class Fit:
    """A fitted law; ``predict`` takes absolute lrs per update."""

    law: str
    params: dict[str, float]
    rmse: float
    lr_scale: float
    lam: float = 0.999
    notes: list[str] = field(default_factory=list)

    def predict(self, lrs: np.ndarray, steps, warmup: int = 0) -> np.ndarray:
        eta = np.asarray(lrs, dtype=np.float64) / self.lr_scale
        steps = np.asarray(steps, dtype=np.int64)
        p = self.params
        if self.law == TISSUE:
            s1, s2 = annealing_areas(eta, steps, warmup, self.lam)
            return p["L0"] + p["A"] * _pow(s1, -p["alpha"]) - p["C"] * s2
        s1 = _prefix(eta)[steps]
        ld = multi_power_ld(eta, steps, warmup, p["C"], p["beta"], p["gamma"])
        return p["L0"] + p["A"] * _pow(s1, -p["alpha"]) - p["B"] * ld


def _pow(x: np.ndarray, a: float) -> np.ndarray:
    return np.power(np.maximum(x, 1e-12), a)


def _prepare(lrs, steps, losses, warmup, lr_scale):
    lrs = np.asarray(lrs, dtype=np.float64)
    steps = np.asarray(steps, dtype=np.int64)
    losses = np.asarray(losses, dtype=np.float64)
    scale = float(lr_scale if lr_scale is not None else lrs.max())
    if not scale > 0:
        raise WarmstartError("the learning rates are all zero: nothing to fit")
    keep = (steps > max(warmup, 0)) & (steps <= len(lrs))
    if keep.sum() < 6:
        raise WarmstartError(
            f"only {int(keep.sum())} logged losses after the warmup ({warmup} steps): need at least 6 to fit"
        )
    return lrs / scale, steps[keep], losses[keep], scale


def fit_annealing(lrs, steps, losses, warmup: int = 0, lam: float = 0.999, lr_scale=None) -> Fit:
    """Fit "Scaling Law with Learning Rate Annealing" (L0, A, alpha, C)."""
    from scipy.optimize import least_squares, nnls

    eta, steps, y, scale = _prepare(lrs, steps, losses, warmup, lr_scale)
    s1, s2 = annealing_areas(eta, steps, warmup, lam)

    def linear(alpha):
        X = np.stack([np.ones_like(s1), _pow(s1, -alpha), -s2], axis=1)
        coef, _ = nnls(X, y)
        return coef, X @ coef - y

    starts = []
    for alpha in np.linspace(0.05, 2.0, 40):
        coef, r = linear(alpha)
        starts.append((float(r @ r), alpha, coef))
    starts.sort(key=lambda t: t[0])

    def resid(x):
        L0, A, alpha, C = x
        return L0 + A * _pow(s1, -alpha) - C * s2 - y

    best = None
    for _, alpha, (L0, A, C) in starts[:4]:
        x0 = np.array([L0, max(A, 1e-9), alpha, max(C, 0.0)])
        res = least_squares(
            resid, x0, bounds=([0.0, 0.0, 1e-3, 0.0], [np.inf, np.inf, 5.0, np.inf]), x_scale="jac"
        )
        if best is None or res.cost < best.cost:
            best = res
    L0, A, alpha, C = (float(v) for v in best.x)
    rmse = float(np.sqrt(np.mean(best.fun**2)))
    return Fit(TISSUE, {"L0": L0, "A": A, "alpha": alpha, "C": C}, rmse, scale, lam)


def fit_multi_power(lrs, steps, losses, warmup: int = 0, lr_scale=None) -> Fit:
    """Fit the multi-power law (L0, A, alpha, B, C, beta, gamma)."""
    from scipy.optimize import least_squares, nnls

    eta, steps, y, scale = _prepare(lrs, steps, losses, warmup, lr_scale)
    s1 = _prefix(eta)[steps]
    log_s1 = np.log(np.maximum(s1, 1e-12))
    terms = _MultiPowerTerms(eta, steps, warmup)

    starts = []
    for alpha in (0.2, 0.4, 0.7, 1.0):
        power = _pow(s1, -alpha)
        for C in (0.1, 1.0, 10.0):
            for beta in (0.3, 0.6, 1.0):
                for gamma in (0.2, 0.6):
                    X = np.stack([np.ones_like(s1), power, -terms.ld(C, beta, gamma)], axis=1)
                    coef, _ = nnls(X, y)
                    r = X @ coef - y
                    starts.append((float(r @ r), (alpha, C, beta, gamma), coef))
    starts.sort(key=lambda t: t[0])

    def resid(x):
        L0, A, alpha, B, C, beta, gamma = x
        return L0 + A * _pow(s1, -alpha) - B * terms.ld(C, beta, gamma) - y

    def jac(x):
        L0, A, alpha, B, C, beta, gamma = x
        power = _pow(s1, -alpha)
        ld, d_c, d_beta, d_gamma = terms.ld(C, beta, gamma, grad=True)
        return np.stack(
            [np.ones_like(s1), power, -A * power * log_s1, -ld, -B * d_c, -B * d_beta, -B * d_gamma], axis=1
        )

    lo = [0.0, 0.0, 1e-3, 0.0, 1e-6, 1e-3, 0.0]
    hi = [np.inf, np.inf, 5.0, np.inf, 1e6, 5.0, 1.5]
    best = None
    for _, (alpha, C, beta, gamma), (L0, A, B) in starts[:3]:
        x0 = np.array([L0, max(A, 1e-9), alpha, max(B, 0.0), C, beta, gamma])
        res = least_squares(resid, x0, jac=jac, bounds=(lo, hi), x_scale="jac", max_nfev=200)
        if best is None or res.cost < best.cost:
            best = res
    names = ("L0", "A", "alpha", "B", "C", "beta", "gamma")
    params = {k: float(v) for k, v in zip(names, best.x)}
    rmse = float(np.sqrt(np.mean(best.fun**2)))
    return Fit(MULTI_POWER, params, rmse, scale)


def fit_laws(lrs, steps, losses, warmup: int = 0, lam: float = 0.999, lr_scale=None) -> list[Fit]:
    """Both laws, best (lowest fit RMSE) first."""
    fits = [
        fit_annealing(lrs, steps, losses, warmup, lam, lr_scale),
        fit_multi_power(lrs, steps, losses, warmup, lr_scale),
    ]
    return sorted(fits, key=lambda f: f.rmse)


# --- predicting a schedule from a log


@dataclass
class Prediction:
    log: LossLog
    fit_schedule: Schedule
    target: Schedule
    fit_peak: float
    target_peak: float
    lr_offset: int
    fits: list[Fit]
    steps: np.ndarray  # where the target curve was evaluated
    losses: np.ndarray
    fit_steps: np.ndarray  # the fitted law over the logged run
    fit_losses: np.ndarray
    fit_points: int = 0  # logged losses the laws were fitted to

    @property
    def best(self) -> Fit:
        return self.fits[0]

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1])


def match_log_to_schedule(log: LossLog, schedule: Schedule) -> tuple[float, int]:
    """(peak, offset) such that the log's lr on the row for step s is ``peak * m(s - offset)``.

    Logs differ on whether the row for step s shows the lr of the update
    just done (offset 1) or of the next one (offset 0); both are accepted,
    anything else is an error naming the first row that disagrees.
    """
    best = None
    for offset in (1, 0):
        sel = log.steps - offset >= 0
        steps = log.steps[sel] - offset
        mult = np.array([schedule.multiplier(int(s)) for s in steps])
        lrs = log.lrs[sel]
        if schedule.peak is not None:
            peak = schedule.peak
        else:
            pos = mult > 0
            if not pos.any():
                continue
            peak = float(np.median(lrs[pos] / mult[pos]))
        want = peak * mult
        bad = np.abs(lrs - want) > 1e-6 * peak + 1e-4 * np.abs(want)
        if not bad.any():
            return peak, offset
        first = int(np.argmax(bad))
        if best is None:
            best = (int(steps[first] + offset), float(lrs[first]), float(want[first]))
    if best is None:
        raise WarmstartError("the log's learning rates are all zero", log.path)
    step, have, want = best
    raise WarmstartError(
        f"lr column does not follow --fit-schedule: step {step} logs lr {have:.6g}, the schedule gives {want:.6g}",
        log.path,
    )


def _curve_steps(n: int, points: int = 400) -> np.ndarray:
    steps = np.unique(np.linspace(1, n, min(points, n)).round().astype(np.int64))
    return steps


# The longest run (in updates) the laws are fitted to or predict: each needs a
# few float64 arrays of one value per update.
MAX_LAW_STEPS = 10**7


def predict(
    log: LossLog | str | os.PathLike,
    fit_schedule: Schedule,
    target: Schedule,
    *,
    steps: int | None = None,
    lam: float = 0.999,
    max_points: int = 300,
) -> Prediction:
    """Fit both laws to ``log`` (run with ``fit_schedule``) and predict ``target``'s loss curve.

    The target runs for ``steps`` updates (default: its own length); without
    a ``peak=`` it uses the fitted run's peak.
    """
    if not isinstance(log, LossLog):
        log = read_log(log)
    n_fit = int(log.steps.max())
    if n_fit > MAX_LAW_STEPS:
        raise WarmstartError(f"the log reaches step {n_fit}; the laws are evaluated update by update, "
                             f"for at most {MAX_LAW_STEPS} steps", log.path)
    n = int(steps) if steps is not None else target.num_steps
    if n > MAX_LAW_STEPS:
        raise WarmstartError(f"the predicted run has {n} steps; the laws are evaluated update by update, "
                             f"for at most {MAX_LAW_STEPS} steps")
    peak, offset = match_log_to_schedule(log, fit_schedule)
    lrs = lr_sequence(fit_schedule, n_fit, peak)
    warm = leading_warmup(fit_schedule)
    sel = log.steps > warm
    fit_steps, fit_losses = log.steps[sel], log.losses[sel]
    if len(fit_steps) > max_points:  # subsample evenly, always keeping the last point
        pick = np.unique(np.linspace(0, len(fit_steps) - 1, max_points).round().astype(np.int64))
        fit_steps, fit_losses = fit_steps[pick], fit_losses[pick]
    try:
        fits = fit_laws(lrs, fit_steps, fit_losses, warm, lam, lr_scale=peak)
    except WarmstartError as err:
        raise WarmstartError(err.message, log.path) from None

    target_peak = target.peak if target.peak is not None else peak
    t_lrs = lr_sequence(target, n, target_peak)
    t_warm = leading_warmup(target)
    t_steps = _curve_steps(n)
    t_steps = t_steps[t_steps > t_warm] if (t_steps > t_warm).any() else t_steps[-1:]
    losses = fits[0].predict(t_lrs, t_steps, t_warm)
    curve_steps = _curve_steps(n_fit)
    curve_steps = curve_steps[curve_steps > warm]
    fit_curve = fits[0].predict(lrs, curve_steps, warm)
    return Prediction(
        log, fit_schedule, target, peak, float(target_peak), offset, fits, t_steps, losses, curve_steps, fit_curve,
        fit_points=int((fit_steps > warm).sum()),
    )


def plot_prediction(pred: Prediction, out: str | os.PathLike, *, style: FigureStyle | None = None,
                    label: str | None = None) -> None:
    """Observed losses, the fitted curve and the predicted curve, with both lr schedules below.

    ``style`` (a :class:`warmstart.schedules.plot.FigureStyle`) sets the title, the loss axis's label,
    the shared x axis's label and the log axes; ``label`` names the predicted curve in the legend.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(pred.log.steps, pred.log.losses, ".", ms=3, color="0.5", label=f"logged {pred.log.loss_key}")
    ax.plot(pred.fit_steps, pred.fit_losses, "-", color="C0", label=f"{pred.best.law} law fit (rmse {pred.best.rmse:.3g})")
    ax.plot(pred.steps, pred.losses, "-", color="C3", label=f"{label or 'predicted'}, final {pred.final_loss:.4f}")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("loss-curve law: fit and prediction", fontsize=10)
    n_fit = int(pred.log.steps.max())
    n = int(pred.steps.max())
    xs = np.arange(max(n_fit, n))
    ax_lr.plot(xs[:n_fit], pred.fit_schedule.lrs(n_fit, pred.fit_peak), color="C0", label="fitted run")
    ax_lr.plot(xs[:n], pred.target.lrs(n, pred.target_peak), color="C3", label="predicted run")
    ax_lr.set_xlabel("step")
    ax_lr.set_ylabel("lr")
    ax_lr.legend(loc="upper right", fontsize=8)
    (style or FigureStyle()).apply(ax, x_axis=ax_lr)
    fig.tight_layout()
    try:
        save_figure(fig, out)
    finally:
        plt.close(fig)
