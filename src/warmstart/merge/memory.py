"""The merge methods on models already in memory: state dicts and nn.Modules.

Same methods, same arithmetic (fp32 accumulation around the first input) and
the same checks as the streaming merge, with inputs named by position.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

from warmstart.merge import combine
from warmstart.merge.combine import all_finite
from warmstart.merge.methods import MergeError, resolve


def _reader(t, label: str, name: str):
    def read():
        import torch

        x = t.detach()
        if x.is_floating_point() and not all_finite(x):
            bad = "NaN" if bool(torch.isnan(x).any()) else "Inf"
            raise MergeError(f"{label}: tensor {name!r} holds {bad} values")
        return x.clone()

    return read


def merge_state_dicts(state_dicts: Sequence[Mapping], method: str = "mean", *,
                      fishers: Sequence[Mapping] | None = None, fisher_floor: float = combine.FISHER_FLOOR,
                      **params) -> dict:
    """Merge state dicts (oldest first for ema/wsm) with `method`; parameters as for the CLI.

    ``params``: weights, normalize, ema_decay, ema_half_life, steps, wsm_shape,
    wsm_end. ``fishers``: for ``fisher``, one dict of Fisher tensors per input
    (tensors without one get the lambda-weighted mean). Every output tensor
    keeps the first input's dtype and device.
    """
    n = len(state_dicts)
    if params.get("normalize", True) is True:
        params.pop("normalize", None)
    coeffs = resolve(method, n, **params)
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        missing = [k for k in first if k not in sd]
        extra = [k for k in sd if k not in first]
        if missing or extra:
            what = f"has no tensor {missing[0]!r}" if missing else f"has extra tensor {extra[0]!r}"
            raise MergeError(f"input {i} {what} (compared with input 0)")
        for k, v in first.items():
            if tuple(sd[k].shape) != tuple(v.shape):
                raise MergeError(f"input {i}: tensor {k!r} has shape {list(sd[k].shape)}, input 0 {list(v.shape)}")
    if coeffs.fisher:
        if fishers is None or len(fishers) != n:
            raise MergeError("method 'fisher' needs one Fisher dict per input")
    out = {}
    for name, t0 in first.items():
        readers = [_reader(sd[name], f"input {i}", name) for i, sd in enumerate(state_dicts)]
        if not t0.is_floating_point():
            value = combine.combine_equal(readers, lambda i, _n=name: MergeError(
                f"input {i}: integer tensor {_n!r} differs from input 0's"))
        elif coeffs.fisher and all(name in f for f in fishers):
            freaders = [_reader(f[name], f"Fisher {i}", name) for i, f in enumerate(fishers)]
            value = combine.combine_fisher(readers, freaders, coeffs.values, fisher_floor)
        else:
            values = coeffs.values
            if coeffs.fisher:
                values = [v / coeffs.total for v in values]
            value = combine.combine_linear(readers, values)
        out[name] = value.to(t0.dtype)
    return out


def merge_modules(modules: Sequence, method: str = "mean", *, into=None, **params):
    """Merge modules of one architecture; the result is loaded into `into` (default: a copy of the first)."""
    merged = merge_state_dicts([m.state_dict() for m in modules], method, **params)
    target = copy.deepcopy(modules[0]) if into is None else into
    target.load_state_dict(merged)
    return target
