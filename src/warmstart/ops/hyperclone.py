"""HyperCloning: grow width by whole-number factors so the grown model computes the same logits.

From "Scaling Smart: Accelerating Large Language Model Pre-Training with Small
Model Initialization". Every width space is tiled: the new hidden vector is
the source's repeated ``n`` times, heads are whole copies (``head_dim`` and
RoPE untouched), KV heads grow with the heads so that each query head copy
attends with a copy of its own KV head. Inputs read from tiled units are
divided by ``n`` (see :mod:`warmstart.ops.width`); RMSNorm and LayerNorm see
the same mean, variance and RMS on a repeated vector, so the function is
preserved exactly. ``noise_snr_db`` adds noise that cancels over the copies
of each input unit, which breaks the symmetry between copies and keeps the
function.
"""

from __future__ import annotations

import math

from warmstart.errors import WarmstartError
from warmstart.ops import width as W
from warmstart.ops.registry import Transform, register


def _factor(model, key: str, new: int) -> int:
    old = getattr(model.dims, key)
    if new % old:
        raise WarmstartError(
            f"hyperclone needs whole-number multiples: {key} {new} is not a multiple of {old} (net2net takes "
            "other sizes)", model.checkpoint.path)
    return new // old


def hyperclone_maps(model, targets: W.Targets) -> dict[str, W.UnitMap]:
    d = model.dims
    for key in W.SPACES:
        _factor(model, key, getattr(targets, key))
    kv = W.tile_map(W.KV, d.kv_heads, targets.kv_heads, d.head_dim)
    heads = W.head_map(kv, d.heads, targets.heads, d.head_dim, pick=lambda s, r, g: r % g)
    if heads.uniform_count is None:
        raise WarmstartError(
            f"hyperclone: {targets.heads} heads over {targets.kv_heads} KV heads cannot copy each of the "
            f"{d.heads} source heads equally often", model.checkpoint.path)
    return {
        W.HIDDEN: W.tile_map(W.HIDDEN, d.hidden, targets.hidden),
        W.INTER: W.tile_map(W.INTER, d.intermediate, targets.intermediate),
        W.HEADS: heads,
        W.KV: kv,
    }


@register("hyperclone", "width")
def hyperclone(model, *, hidden=None, intermediate=None, heads=None, kv_heads=None, mult=None,
               noise_snr_db=None, seed=0) -> Transform:
    """HyperCloning: tile every width space by a whole-number factor; the function is preserved exactly."""
    targets = W.resolve_targets(model, "hyperclone", hidden=hidden, intermediate=intermediate, heads=heads,
                                kv_heads=kv_heads, mult=mult, integer_mult=True, grow=True)
    W.check_direction(model, targets, "hyperclone", grow=True)
    if noise_snr_db is not None:
        try:
            noise_snr_db = float(noise_snr_db)
        except (TypeError, ValueError):
            raise WarmstartError(f"hyperclone: noise_snr_db must be a number, got {noise_snr_db!r}",
                                 model.checkpoint.path) from None
        if not math.isfinite(noise_snr_db):
            raise WarmstartError(f"hyperclone: noise_snr_db must be finite, got {noise_snr_db!r}",
                                 model.checkpoint.path)
    maps = hyperclone_maps(model, targets)
    notes = ["exact: every width space is tiled and inputs read from n copies are divided by n"]
    if noise_snr_db is not None:
        notes.append(f"noise at {noise_snr_db:g} dB SNR (seed {seed}) added in +/- pairs across the copies of each "
                     "input unit: it cancels, so the function is unchanged while the copies differ")
    spec = W.WidthSpec("hyperclone", maps, noise_snr_db=noise_snr_db, seed=int(seed), notes=notes)
    return W.width_transform(model, targets, spec, exact=True)
