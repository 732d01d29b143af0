"""Weight Selection: initialize a narrower model with evenly spaced slices of a wider one.

From "Initializing Models with Larger Ones". Every width space keeps evenly
spaced units, ``floor(i * n_src / n_new)``, the same ones in every layer and in
every tensor that shares the space, so the kept hidden units line up from the
embedding to the output head. Heads are kept whole (``head_dim`` and RoPE's
rotation pairs untouched): first evenly spaced KV heads, then, inside each kept
KV head's group, evenly spaced query heads of that group, so every kept query
head still attends with its own KV head. Nothing is rescaled; the function is
not preserved (the paper trains on from here).
"""

from __future__ import annotations

from warmstart.errors import WarmstartError
from warmstart.ops import width as W
from warmstart.ops.registry import Transform, register


def select_maps(model, targets: W.Targets) -> dict[str, W.UnitMap]:
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


@register("select", "shrink")
def select(model, *, hidden=None, intermediate=None, heads=None, kv_heads=None, seed=0) -> Transform:
    """Weight Selection: keep evenly spaced units and whole heads, the same in every layer (not exact)."""
    targets = W.resolve_targets(model, "select", hidden=hidden, intermediate=intermediate, heads=heads,
                                kv_heads=kv_heads, grow=False)
    W.check_direction(model, targets, "select", grow=False)
    maps = select_maps(model, targets)
    notes = ["evenly spaced units, the same in every layer; whole heads, KV heads chosen first and query heads "
             "inside their groups; no rescaling",
             "not exact: the narrower model starts near, not at, the source's function"]
    spec = W.WidthSpec("select", maps, seed=int(seed), notes=notes)
    return W.width_transform(model, targets, spec, exact=False)
