"""``torch.optim.lr_scheduler.LRScheduler`` adapter for a closed-form Schedule.

Every step sets each param group's lr to ``peak_g * schedule.multiplier(step)``
from scratch: nothing is compounded, so a resumed or re-created scheduler
gives bit-identical learning rates. The state dict holds the spec string,
the step and the per-group peaks, and nothing else is needed to restore it.

Peaks, in order of precedence:

1. ``peak_lrs=`` given to the constructor (one float, or one per group);
2. the spec's ``peak=``: the group with the largest base lr gets it and the
   other groups keep their ratios to that group. The ratios come from the
   groups' ``initial_lr`` when an earlier scheduler left one (it records the
   configured base lrs; the current lrs of a finished run may all sit at the
   same absolute floor), else from their current ``lr``; all groups get the
   peak if those are all zero;
3. each group's current ``lr``, as configured on a fresh optimizer.

A stale ``initial_lr`` left in the param groups by an earlier scheduler (as
in an optimizer state loaded from an old run) is never read: it is
overwritten with the new peaks, which is what a rewarm needs.

``count="calls"`` (default) advances one step per ``scheduler.step()`` call,
the usual torch contract. ``count="optimizer"`` counts real optimizer
steps through an optimizer step hook and makes ``scheduler.step()``
idempotent, so a wrapper that calls it several times per update (Accelerate's
``AcceleratedScheduler`` steps ``num_processes`` times) or skips it cannot
shift the schedule.
"""

from __future__ import annotations

import weakref

import torch
from torch.optim.lr_scheduler import LRScheduler

from warmstart.errors import SpecError
from warmstart.schedules.spec import Schedule, parse, resolve

COUNTS = ("calls", "optimizer")


def resolve_peaks(optimizer: torch.optim.Optimizer, schedule: Schedule, peak_lrs=None) -> list[float]:
    """Per-group peak learning rates (see the module docstring for the precedence)."""
    groups = optimizer.param_groups
    if peak_lrs is not None:
        if isinstance(peak_lrs, (int, float)):
            peaks = [float(peak_lrs)] * len(groups)
        else:
            peaks = [float(p) for p in peak_lrs]
        if len(peaks) != len(groups):
            raise SpecError(f"peak_lrs has {len(peaks)} values for {len(groups)} param groups")
        return peaks
    current = [float(g["lr"]) for g in groups]
    if schedule.peak is None:
        return current
    # Ratios between groups: an earlier scheduler's initial_lr records the
    # configured base lrs (the current lrs may have been flattened, e.g. by
    # an absolute eta_min); only its ratios are used, never its values.
    for source in ([float(g["initial_lr"]) for g in groups] if all("initial_lr" in g for g in groups) else None, current):
        if source is not None and max(source) > 0.0:
            ref = max(source)
            return [schedule.peak * (c / ref) for c in source]
    return [schedule.peak] * len(groups)


class ScheduleLR(LRScheduler):
    """Closed-form learning rates from a :class:`Schedule` (or spec string)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule,
        *,
        peak_lrs=None,
        count: str = "calls",
        last_epoch: int = -1,
    ):
        if count not in COUNTS:
            raise SpecError(f"count must be one of {', '.join(COUNTS)}, got {count!r}")
        self.schedule = resolve(schedule)
        self.peak_lrs = resolve_peaks(optimizer, self.schedule, peak_lrs)
        self.count = count
        self.optimizer_steps = 0
        for group, peak in zip(optimizer.param_groups, self.peak_lrs):
            group["initial_lr"] = peak  # override any stale value from a loaded optimizer
        self._hook = None
        super().__init__(optimizer, last_epoch)
        if count == "optimizer":
            self._attach_hook()

    # --- the closed form

    def lrs_at(self, step: int) -> list[float]:
        m = self.schedule.multiplier(step)
        return [p * m for p in self.peak_lrs]

    def get_lr(self) -> list[float]:
        return self.lrs_at(self.last_epoch)

    def _get_closed_form_lr(self) -> list[float]:
        return self.lrs_at(self.last_epoch)

    def _apply(self) -> None:
        values = self.lrs_at(self.last_epoch)
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    # --- stepping

    def step(self, epoch: int | None = None) -> None:
        if self.count == "optimizer" and getattr(self, "_hook", None) is not None:
            # Idempotent: the step is the number of optimizer updates so far.
            self._step_count += 1
            self.last_epoch = self.optimizer_steps
            self._apply()
            return
        super().step(epoch)

    def _attach_hook(self) -> None:
        ref = weakref.ref(self)

        def after_optimizer_step(optimizer, args, kwargs):
            sched = ref()
            if sched is not None:
                sched.optimizer_steps += 1
                sched.last_epoch = sched.optimizer_steps
                sched._apply()

        self.optimizer_steps = max(self.last_epoch, 0)
        self._hook = self.optimizer.register_step_post_hook(after_optimizer_step)

    # --- state

    def state_dict(self) -> dict:
        """Only plain values, so ``torch.load(weights_only=True)`` reads it back."""
        return {
            "spec": self.schedule.to_string(),
            "step": int(self.last_epoch),
            "peak_lrs": [float(p) for p in self.peak_lrs],
            "count": self.count,
            "optimizer_steps": int(self.optimizer_steps),
            "_step_count": int(self._step_count),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore spec, step and peaks exactly, and set the optimizer's lrs for that step."""
        try:
            spec, step, peaks = state_dict["spec"], state_dict["step"], state_dict["peak_lrs"]
        except KeyError as err:
            raise SpecError(f"not a ScheduleLR state dict (missing {err.args[0]!r})") from None
        if len(peaks) != len(self.optimizer.param_groups):
            raise SpecError(
                f"state dict has {len(peaks)} peak lrs for {len(self.optimizer.param_groups)} param groups"
            )
        self.schedule = parse(spec)
        self.last_epoch = int(step)
        self.peak_lrs = [float(p) for p in peaks]
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        self.optimizer_steps = int(state_dict.get("optimizer_steps", max(self.last_epoch, 0)))
        count = state_dict.get("count", "calls")
        if count != self.count:
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            self.count = count
            if count == "optimizer":
                self._attach_hook()
                self.optimizer_steps = int(state_dict.get("optimizer_steps", max(self.last_epoch, 0)))
        for group, peak in zip(self.optimizer.param_groups, self.peak_lrs):
            group["initial_lr"] = peak
        self.base_lrs = list(self.peak_lrs)
        self._apply()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_hook"] = None
        return state


def schedule_lr(optimizer, spec, **kwargs) -> ScheduleLR:
    """Shorthand for ``ScheduleLR(optimizer, spec, **kwargs)``."""
    return ScheduleLR(optimizer, spec, **kwargs)
