"""Closed-form learning-rate schedules for warm starts.

``lr = peak * multiplier(step)`` with the spec as the only state; see
docs/schedules.md. The torch adapter (:mod:`.lr_scheduler`), the Trainer
factory (:mod:`.hf_trainer`), the loss-curve laws (:mod:`.loss_law`) and the
WSM merge weights (:mod:`.wsm`) are imported from their modules so that
importing this package stays free of torch and scipy.
"""

from warmstart.schedules.phases import (
    SGDR,
    Constant,
    Decay,
    InvSqrt,
    Phase,
    Rewarm,
    Stable,
    Warmup,
)
from warmstart.schedules.presets import PRESETS, constant, cosine, d2z, infinite, invsqrt, linear, rewarm, sgdr, wsd
from warmstart.schedules.spec import Schedule, ScheduleSpecError, from_dict, load, parse, resolve

__all__ = [
    "PRESETS",
    "SGDR",
    "Constant",
    "Decay",
    "InvSqrt",
    "Phase",
    "Rewarm",
    "Schedule",
    "ScheduleSpecError",
    "Stable",
    "Warmup",
    "constant",
    "cosine",
    "d2z",
    "from_dict",
    "infinite",
    "invsqrt",
    "linear",
    "load",
    "parse",
    "resolve",
    "rewarm",
    "sgdr",
    "wsd",
]
