"""Weight Selection: initialize a narrower model with evenly spaced slices of a wider one.

From "Initializing Models with Larger Ones". Every width space keeps evenly
spaced units, ``floor(i * n_src / n_new)``, the same ones in every layer and in
every tensor that shares the space, so the kept hidden units line up from the
embedding to the output head. Heads are kept whole (``head_dim`` and RoPE's
rotation pairs untouched): first evenly spaced KV heads, then, inside each kept
KV head's group, evenly spaced query heads of that group, so every kept query
head still attends with its own KV head. Nothing is rescaled; the function is
not preserved (the paper trains on from here).

``keep`` replaces the evenly spaced choice by given source indices, which is
how importance pruning (:mod:`warmstart.ops.prune`) reuses this slicing: per
space a list of source units (the same in every block), and for the
intermediate units, query heads and KV heads also one list per block. Kept
query heads must fill whole kept KV groups evenly (GQA), so every query head
keeps its own KV head.
"""

from __future__ import annotations

from warmstart.errors import WarmstartError
from warmstart.ops import width as W
from warmstart.ops.registry import Transform, register


def select_maps(model, targets: W.Targets) -> dict[str, W.UnitMap]:
    """Evenly spaced unit maps of every space (Weight Selection)."""
    d = model.dims
    group_src = d.heads // d.kv_heads
    group_new = targets.heads // targets.kv_heads
    if group_new > group_src:
        raise WarmstartError(
            f"select: {targets.heads} heads over {targets.kv_heads} KV heads need {group_new} query heads per KV "
            f"head, but the source's KV heads serve only {group_src}; keep more KV heads", model.checkpoint.path)
    within = W.evenly_spaced(group_src, group_new)
    kv = W.UnitMap(W.KV, d.kv_heads, tuple(W.evenly_spaced(d.kv_heads, targets.kv_heads)), d.head_dim, divide=False)
    heads = W.head_map(kv, d.heads, targets.heads, d.head_dim, pick=lambda s, r, g: within[r], divide=False)

    def even(space: str, n_src: int, n_new: int) -> W.UnitMap:
        return W.UnitMap(space, n_src, tuple(W.evenly_spaced(n_src, n_new)), 1, divide=False)

    return {
        W.HIDDEN: even(W.HIDDEN, d.hidden, targets.hidden),
        W.INTER: even(W.INTER, d.intermediate, targets.intermediate),
        W.HEADS: heads,
        W.KV: kv,
    }


def _indices(model, space: str, values, n_src: int, n_new: int) -> tuple[int, ...]:
    src = model.checkpoint.path
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise WarmstartError(f"select: keep[{space!r}] must be a list of unit indices, got {values!r}", src)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n_src:
            raise WarmstartError(f"select: keep[{space!r}] holds {v!r}, not a unit index in 0..{n_src - 1}", src)
        out.append(v)
    if len(set(out)) != len(out):
        raise WarmstartError(f"select: keep[{space!r}] names a unit twice", src)
    if len(out) != n_new:
        raise WarmstartError(f"select: keep[{space!r}] keeps {len(out)} units, but the target size is {n_new}", src)
    return tuple(sorted(out))


def _per_layer(model, space: str, value) -> list | None:
    """[list per block] when `value` is a list of lists, None when it is one list for every block."""
    if value is None or not isinstance(value, (list, tuple)) or not value:
        return None
    nested = [isinstance(v, (list, tuple)) for v in value]
    if not any(nested):
        return None
    if not all(nested) or len(value) != model.dims.layers:
        raise WarmstartError(f"select: keep[{space!r}] must be one list of indices, or one list per block "
                             f"({model.dims.layers} lists)", model.checkpoint.path)
    return list(value)


def _head_maps(model, targets: W.Targets, kv_keep, heads_keep) -> dict[str, W.UnitMap]:
    """KV-head and query-head maps from kept indices: query heads grouped under their own KV head."""
    d, src = model.dims, model.checkpoint.path
    group_src = d.heads // d.kv_heads
    group_new = targets.heads // targets.kv_heads
    if heads_keep is not None:
        heads_idx = _indices(model, W.HEADS, heads_keep, d.heads, targets.heads)
        groups = sorted({h // group_src for h in heads_idx})
        if kv_keep is None:
            kv_keep = groups
        kv_idx = _indices(model, W.KV, kv_keep, d.kv_heads, targets.kv_heads)
        index = []
        for k in kv_idx:
            mine = [h for h in heads_idx if h // group_src == k]
            if len(mine) != group_new:
                raise WarmstartError(
                    f"select: kept query heads must fill every kept KV head's group with {group_new} heads "
                    f"(GQA); KV head {k} gets {len(mine)}", src)
            index += mine
        if len(index) != len(heads_idx):
            stray = sorted(set(heads_idx) - set(index))
            raise WarmstartError(f"select: query head {stray[0]} is kept but its KV head {stray[0] // group_src} is "
                                 "not (GQA: a query head stays with its KV group)", src)
        kv = W.UnitMap(W.KV, d.kv_heads, kv_idx, d.head_dim, divide=False)
        return {W.KV: kv, W.HEADS: W.UnitMap(W.HEADS, d.heads, tuple(index), d.head_dim, divide=False)}
    kv_idx = _indices(model, W.KV, kv_keep, d.kv_heads, targets.kv_heads)
    kv = W.UnitMap(W.KV, d.kv_heads, kv_idx, d.head_dim, divide=False)
    within = W.evenly_spaced(group_src, group_new)
    return {W.KV: kv, W.HEADS: W.head_map(kv, d.heads, targets.heads, d.head_dim, pick=lambda s, r, g: within[r],
                                          divide=False)}


def _keep_maps(model, targets: W.Targets, keep: dict) -> dict:
    """{"all": maps shared by every block or None, layer: maps of that block} from `keep`."""
    d, src = model.dims, model.checkpoint.path
    if not isinstance(keep, dict):
        raise WarmstartError(f"select: keep must map unit spaces to indices, got {keep!r}", src)
    unknown = sorted(set(keep) - set(W.SPACES))
    if unknown:
        raise WarmstartError(f"select: keep has unknown space {unknown[0]!r} (spaces: {', '.join(W.SPACES)})", src)
    if _per_layer(model, W.HIDDEN, keep.get(W.HIDDEN)) is not None:
        raise WarmstartError("select: the hidden units are one residual stream: keep['hidden'] is one list for "
                             "every block", src)
    shared: dict[str, W.UnitMap] = {}
    if keep.get(W.HIDDEN) is not None:
        shared[W.HIDDEN] = W.UnitMap(W.HIDDEN, d.hidden, _indices(model, W.HIDDEN, keep[W.HIDDEN], d.hidden,
                                                                  targets.hidden), 1, divide=False)
    layers: dict[int, dict[str, W.UnitMap]] = {}
    inter = keep.get(W.INTER)
    inter_layers = _per_layer(model, W.INTER, inter)
    if inter_layers is not None:
        for i, v in enumerate(inter_layers):
            layers.setdefault(i, {})[W.INTER] = W.UnitMap(
                W.INTER, d.intermediate, _indices(model, W.INTER, v, d.intermediate, targets.intermediate), 1,
                divide=False)
    elif inter is not None:
        shared[W.INTER] = W.UnitMap(W.INTER, d.intermediate, _indices(model, W.INTER, inter, d.intermediate,
                                                                      targets.intermediate), 1, divide=False)
    kv, hq = keep.get(W.KV), keep.get(W.HEADS)
    kv_layers, hq_layers = _per_layer(model, W.KV, kv), _per_layer(model, W.HEADS, hq)
    if kv_layers is not None or hq_layers is not None:
        for i in range(d.layers):
            k = kv_layers[i] if kv_layers is not None else kv
            h = hq_layers[i] if hq_layers is not None else hq
            if k is None and h is None:
                continue
            layers.setdefault(i, {}).update(_head_maps(model, targets, k, h))
    elif kv is not None or hq is not None:
        shared.update(_head_maps(model, targets, kv, hq))
    return {"all": shared or None, **layers}


def _keep_sizes(model, keep: dict | None) -> dict:
    """Target sizes implied by `keep` (the length of its lists)."""
    out = {}
    for space, value in (keep or {}).items() if isinstance(keep, dict) else ():
        if isinstance(value, (list, tuple)) and value:
            first = value[0]
            out[space] = len(first) if isinstance(first, (list, tuple)) else len(value)
    return out


@register("select", "shrink")
def select(model, *, hidden=None, intermediate=None, heads=None, kv_heads=None, seed=0,
           keep: dict | None = None) -> Transform:
    """Weight Selection: keep evenly spaced units and whole heads, the same in every layer (not exact).

    With `keep`, the given source units instead (see the module's docstring).
    """
    given = {W.HIDDEN: hidden, W.INTER: intermediate, W.HEADS: heads, W.KV: kv_heads}
    for space, n in _keep_sizes(model, keep).items():
        if given.get(space) is None:
            given[space] = n
    if given[W.HEADS] is not None and given[W.KV] is None and keep and keep.get(W.HEADS) is not None:
        g = model.dims.heads // model.dims.kv_heads
        if given[W.HEADS] % g == 0:
            given[W.KV] = given[W.HEADS] // g  # whole KV groups of kept query heads
    targets = W.resolve_targets(model, "select", hidden=given[W.HIDDEN], intermediate=given[W.INTER],
                                heads=given[W.HEADS], kv_heads=given[W.KV], grow=False)
    W.check_direction(model, targets, "select", grow=False)
    maps = select_maps(model, targets)
    layer_maps: dict[int, dict[str, W.UnitMap]] = {}
    if keep is not None:
        chosen = _keep_maps(model, targets, keep)
        maps.update(chosen.pop("all") or {})
        layer_maps = chosen
        notes = ["kept the given source units (hidden units the same in every block; intermediate units and heads "
                 + ("chosen per block" if layer_maps else "the same in every block")
                 + "); whole heads, query heads with their own KV head; no rescaling"]
    else:
        notes = [("evenly spaced units, the same in every layer; whole heads, KV heads chosen first and query heads "
                  "inside their groups; no rescaling")]
    notes.append("not exact: the narrower model starts near, not at, the source's function")
    spec = W.WidthSpec("select", maps, seed=int(seed), notes=notes, layer_maps=layer_maps)
    return W.width_transform(model, targets, spec, exact=False)
