"""Hugging Face ``Trainer`` integration.

``Trainer`` steps its scheduler once per optimizer update and skips the
call when the update was skipped (fp16 overflow), which is the ``calls``
contract of :class:`ScheduleLR`; it saves ``scheduler.state_dict()`` to
``scheduler.pt`` and reloads it with ``torch.load(weights_only=True)``,
which works because the state is plain values. So the integration is a
factory for ``Trainer(optimizers=(optimizer, scheduler))``::

    optimizer, scheduler = trainer_optimizers(model, "peak=3e-4; wsd(total=10000, warmup=500)")
    trainer = Trainer(model=model, args=args, optimizers=(optimizer, scheduler), ...)

``ScheduleCheck`` is an optional callback that fails loudly if anything
(another callback, a DeepSpeed config) moved the learning rate away from
the closed form.
"""

from __future__ import annotations

import torch

from warmstart.errors import SpecError
from warmstart.schedules.lr_scheduler import ScheduleLR
from warmstart.schedules.spec import resolve


def trainer_scheduler(optimizer: torch.optim.Optimizer, spec, *, peak_lrs=None, total: int | None = None) -> ScheduleLR:
    """The scheduler to pass as ``Trainer(optimizers=(optimizer, <this>))``.

    ``total`` is the run length used for a bare preset name (``"cosine"``);
    give it ``args.max_steps``.
    """
    return ScheduleLR(optimizer, resolve(spec, total=total), peak_lrs=peak_lrs, count="calls")


def trainer_optimizers(
    model: torch.nn.Module,
    spec,
    *,
    optimizer_cls=torch.optim.AdamW,
    total: int | None = None,
    **optimizer_kwargs,
) -> tuple[torch.optim.Optimizer, ScheduleLR]:
    """An optimizer over the trainable parameters and its :class:`ScheduleLR`.

    The spec must carry ``peak=`` unless ``lr=`` is given for the optimizer.
    """
    schedule = resolve(spec, total=total)
    if "lr" not in optimizer_kwargs:
        if schedule.peak is None:
            raise SpecError("give the peak lr as peak= in the schedule spec or lr= here")
        optimizer_kwargs["lr"] = schedule.peak
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer_cls(params, **optimizer_kwargs)
    return optimizer, ScheduleLR(optimizer, schedule, count="calls")


def schedule_check_callback():
    """A ``TrainerCallback`` checking, after every step, lr == peak * multiplier(global_step)."""
    from transformers import TrainerCallback

    class ScheduleCheck(TrainerCallback):
        def on_step_end(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
            sched = getattr(lr_scheduler, "scheduler", lr_scheduler)  # unwrap AcceleratedScheduler
            if not isinstance(sched, ScheduleLR) or optimizer is None:
                return control
            want = sched.lrs_at(sched.last_epoch)
            have = [float(g["lr"]) for g in optimizer.param_groups]
            if want != have:
                raise RuntimeError(
                    f"learning rate {have} at step {state.global_step} differs from the schedule's {want}"
                )
            if sched.last_epoch != state.global_step:
                raise RuntimeError(
                    f"scheduler is at step {sched.last_epoch} but the Trainer at {state.global_step}"
                )
            return control

    return ScheduleCheck()
