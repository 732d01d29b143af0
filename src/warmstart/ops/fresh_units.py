"""Width growth with fresh units: random where they are written, zero where they are read.

``fresh-units`` adds MLP units and attention heads that start as new
parameters instead of copies: the rows that compute a new unit (gate/up rows,
a new head's query/key/value rows) are drawn i.i.d. normal at the source
tensor's std, and the columns that read it (the down projection's, the
output projection's) start at zero. The model computes exactly the source's
function, as with LLaMA Pro's zero-initialized blocks or the masked start of
"Masked Structural Growth for 2x Faster Language Model Pre-training", and the
new units are not copies, so nothing ties them to the old ones: their
outgoing weights get gradients at the first step (the units' activations are
not zero), and their incoming weights once those move off zero.

Net2Net's copies (``net2net``) and bert2BERT's next-layer units (``aki``) are
the other choices for the same units; the hidden size is not grown here
(a zero residual unit would change every norm's statistics), nor are heads
that change their key/value group (the new query heads come after the old
ones, so a group must keep its size).
"""

from __future__ import annotations

from warmstart.errors import WarmstartError
from warmstart.ops import width as W
from warmstart.ops.net2net import random_extension
from warmstart.ops.registry import Transform, register


@register("fresh-units", "width")
def fresh_units(model, *, hidden=None, intermediate=None, heads=None, kv_heads=None, mult=None, seed=0) -> Transform:
    """Extra MLP units and heads drawn at random, their outgoing weights zero (exact)."""
    targets = W.resolve_targets(model, "fresh-units", hidden=hidden, intermediate=intermediate, heads=heads,
                                kv_heads=kv_heads, mult=mult, grow=True)
    W.check_direction(model, targets, "fresh-units", grow=True)
    d, src = model.dims, model.checkpoint.path
    if targets.hidden != d.hidden:
        raise WarmstartError(f"fresh-units keeps the hidden size ({d.hidden}): a zero residual unit would change every "
                             "norm's statistics; grow the hidden size with net2net or hyperclone", src)
    grow_heads = targets.heads != d.heads or targets.kv_heads != d.kv_heads
    if grow_heads and targets.heads * d.kv_heads != d.heads * targets.kv_heads:
        raise WarmstartError(f"fresh-units appends whole key/value groups: {targets.heads} heads over "
                             f"{targets.kv_heads} KV heads changes the group size {d.heads // d.kv_heads}; grow both "
                             "by the same factor", src)
    if grow_heads and model.family.qk_norm == "projection":
        raise WarmstartError("fresh-units: this family's query/key norm runs over all heads, so new heads would "
                             "change the old heads' values; grow heads with net2net", src)
    seed = int(seed)
    # The extra units' entries in the maps only mark them as extra (UnitMap.fresh); their values are drawn.
    maps = {
        W.HIDDEN: W.identity_map(W.HIDDEN, d.hidden),
        W.INTER: _extra(random_extension(W.INTER, d.intermediate, targets.intermediate, seed)),
        W.HEADS: _extra(random_extension(W.HEADS, d.heads, targets.heads, seed, d.head_dim)),
        W.KV: _extra(random_extension(W.KV, d.kv_heads, targets.kv_heads, seed, d.head_dim)),
    }
    notes = [f"fresh units (seed {seed}): extra MLP units and heads drawn i.i.d. normal at each source tensor's std "
             "where they are computed, zero where they are read",
             "exact: the new units' outgoing weights are zero, so the output is the source's"]
    spec = W.WidthSpec("fresh-units", maps, seed=seed, fresh_units=True, notes=notes)
    return W.width_transform(model, targets, spec, exact=True)


def _extra(m: W.UnitMap) -> W.UnitMap:
    """The same map with its extra units pointing at a unit they cannot share a count with: nothing is divided."""
    return W.UnitMap(m.space, m.source, m.index, m.unit, divide=False)
