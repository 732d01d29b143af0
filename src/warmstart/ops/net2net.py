"""Net2Net / bert2BERT width growth to any larger size.

``net2net`` is the function-preserving widening of "Net2Net: Accelerating
Learning via Knowledge Transfer" as carried to transformers by "bert2BERT:
Towards Reusable Pretrained Language Models" (function-preserving
initialization, FPI): the first units keep their place, every extra unit is a
copy of a source unit drawn at random, and whatever reads a copied unit is
divided by that unit's copy count. Heads are copied whole, and an extra KV
head brings query heads of its own source group so GQA stays consistent.

The copies are uneven (some units twice, most once), so a norm over the
hidden units sees a different mean, variance and RMS than the source: the
result is exact only when the hidden size is unchanged (MLP and head growth
alone are exact, gated MLPs included), otherwise approximate; ``warmstart
verify`` measures by how much.

``aki`` is bert2BERT's advanced knowledge initialization: the same maps, but in
each block the extra output units take their weights from the next block (the
last block from itself), which breaks the symmetry between copies at the
price of exactness.
"""

from __future__ import annotations

import math

import numpy as np

from warmstart.errors import WarmstartError
from warmstart.ops import width as W
from warmstart.ops.registry import Transform, register

_SPACE_IDS = {W.HIDDEN: 1, W.INTER: 2, W.HEADS: 3, W.KV: 4}


def _rng(seed: int, space: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPACE_IDS[space]])


def random_extension(space: str, n_src: int, n_new: int, seed: int, unit: int = 1) -> W.UnitMap:
    """Identity on the first n_src units; each extra unit copies a source unit drawn uniformly."""
    extra = _rng(seed, space).integers(0, n_src, size=n_new - n_src).tolist() if n_new > n_src else []
    return W.UnitMap(space, n_src, tuple(range(n_src)) + tuple(int(i) for i in extra), unit)


def net2net_maps(model, targets: W.Targets, seed: int) -> dict[str, W.UnitMap]:
    d = model.dims
    kv = random_extension(W.KV, d.kv_heads, targets.kv_heads, seed, d.head_dim)
    rng = _rng(seed, W.HEADS)
    pending: dict[int, list[int]] = {}

    def pick(s: int, r: int, g: int) -> int:
        # The first g query heads handed to a source group are its own heads in order (identity where
        # the group keeps its place); further ones are drawn without replacement, cycling.
        if r < g:
            return r
        if not pending.get(s):
            pending[s] = rng.permutation(g).tolist()
        return int(pending[s].pop(0))

    heads = W.head_map(kv, d.heads, targets.heads, d.head_dim, pick)
    missing = sorted(set(range(d.heads)) - set(heads.index))
    if missing:
        raise WarmstartError(
            f"net2net: {targets.heads} heads over {targets.kv_heads} KV heads leave source head {missing[0]} without "
            "a copy (too few heads per KV head); grow the heads at least as much as the KV heads",
            model.checkpoint.path)
    return {
        W.HIDDEN: random_extension(W.HIDDEN, d.hidden, targets.hidden, seed),
        W.INTER: random_extension(W.INTER, d.intermediate, targets.intermediate, seed),
        W.HEADS: heads,
        W.KV: kv,
    }


def _noise(model, method: str, noise_snr_db):
    if noise_snr_db is None:
        return None
    try:
        value = float(noise_snr_db)
    except (TypeError, ValueError):
        raise WarmstartError(f"{method}: noise_snr_db must be a number, got {noise_snr_db!r}",
                             model.checkpoint.path) from None
    if not math.isfinite(value):
        raise WarmstartError(f"{method}: noise_snr_db must be finite, got {noise_snr_db!r}", model.checkpoint.path)
    return value


def _grow(model, method: str, *, hidden, intermediate, heads, kv_heads, mult, noise_snr_db, seed, aki: bool):
    targets = W.resolve_targets(model, method, hidden=hidden, intermediate=intermediate, heads=heads,
                                kv_heads=kv_heads, mult=mult, grow=True)
    W.check_direction(model, targets, method, grow=True)
    noise = _noise(model, method, noise_snr_db)
    maps = net2net_maps(model, targets, int(seed))
    hidden_kept = targets.hidden == model.dims.hidden
    # A query/key norm over the whole projection (OLMo 2) sees unevenly copied heads as the hidden norms see
    # unevenly copied hidden units: its RMS changes.
    uneven_heads = model.family.qk_norm == "projection" and (
        maps[W.HEADS].uniform_count is None or maps[W.KV].uniform_count is None)
    notes = [f"random unit map (seed {seed}): the first units keep their place, extra units copy random source "
             "units; inputs read from a copied unit are divided by its copy count"]
    if aki:
        exact = False
        notes.append("approximate (AKI): in each block the extra output units take the next block's weights "
                     "(the last block its own)")
    elif hidden_kept and uneven_heads:
        exact = False
        notes.append("approximate: the query/key RMSNorms run over the whole projection, and their statistics over "
                     "unevenly copied heads differ from the source's; measure the difference with warmstart verify")
    elif hidden_kept:
        exact = True
        notes.append("exact: the hidden size is unchanged and MLP units and heads are copied with their readers "
                     "divided by the copy count")
    else:
        exact = False
        norm = {"rms": "RMSNorm", "layer": "LayerNorm"}.get(model.family.norm, model.family.norm)
        notes.append(f"approximate: {norm} statistics over the unevenly copied hidden units differ from the "
                     "source's; measure the difference with warmstart verify")
    if noise is not None:
        notes.append(f"noise at {noise:g} dB SNR (seed {seed}) added in +/- pairs across the copies of each input "
                     "unit; it cancels over the copies")
    spec = W.WidthSpec(method, maps, noise_snr_db=noise, seed=int(seed), next_layer_rows=aki, notes=notes)
    return W.width_transform(model, targets, spec, exact=exact)


@register("net2net", "width")
def net2net(model, *, hidden=None, intermediate=None, heads=None, kv_heads=None, mult=None, noise_snr_db=None,
            seed=0) -> Transform:
    """Net2Net / bert2BERT FPI: widen to any size by copying random units (approximate under norms)."""
    return _grow(model, "net2net", hidden=hidden, intermediate=intermediate, heads=heads, kv_heads=kv_heads,
                 mult=mult, noise_snr_db=noise_snr_db, seed=seed, aki=False)


@register("aki", "width")
def aki(model, *, hidden=None, intermediate=None, heads=None, kv_heads=None, mult=None, noise_snr_db=None,
        seed=0) -> Transform:
    """bert2BERT AKI: Net2Net maps with extra units taken from the next layer (not exact)."""
    return _grow(model, "aki", hidden=hidden, intermediate=intermediate, heads=heads, kv_heads=kv_heads,
                 mult=mult, noise_snr_db=noise_snr_db, seed=seed, aki=True)
