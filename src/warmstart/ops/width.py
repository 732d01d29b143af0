"""Shared machinery of the width operators: unit maps applied role by role.

A width operation changes four unit spaces of a transformer: the hidden
(residual stream) units, the MLP's intermediate units, the query heads and the
key/value heads (a head is a unit of ``head_dim`` elements and is never split,
so RoPE's rotation pairs and the attention scale stay as they are). Each
operation only decides, for every space, which source unit each new unit comes
from (a :class:`UnitMap`); this module turns the maps into a streaming plan.

Every tensor axis that lives in one of the spaces is either an *output* axis
(the tensor writes those units: rows of a projection, embedding columns, norm
weights, biases), whose new units copy their source unit, or an *input* axis
(the tensor reads those units), whose columns are copied and divided by how
many copies their source unit has. That is the Net2Net rule: a layer reading
``x'`` where each source unit appears ``c`` times sums ``c`` equal terms, so
dividing by ``c`` gives back the source's sum.

Which axis of which role is what is one table (:data:`ROLE_AXES`); GPT-2's
Conv1D weights (stored ``[in, out]``) are transposed around it, and fused
projections (GPT-2's ``c_attn`` and Phi-3's ``qkv_proj``: q, k, v rows;
Phi-3's ``gate_up_proj``: gate, up rows) are split into their parts,
transformed, and fused again (:data:`FUSED_PARTS`).

Family properties read here (declared in the arch spec): query/key norms act
per head (an axis of ``head_dim``, never changed) or over the whole
projection (an axis of heads); an embedding the model multiplies by
sqrt(hidden) (Gemma) is compensated in the stored values so that each new
hidden unit carries the source's value at the new width's multiplier. Offset
norms (``x_hat * (1 + w)``) need nothing: copying the stored weight copies
the effective weight.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from warmstart.arch.spec import EMBED_SCALES
from warmstart.errors import CheckpointError, WarmstartError
from warmstart.inputs import check_width
from warmstart.ops.registry import Transform
from warmstart.plan import Plan, Ref, Step, copy_step

HIDDEN, INTER, HEADS, KV = "hidden", "intermediate", "heads", "kv_heads"
SPACES = (HIDDEN, INTER, HEADS, KV)
OUT, IN = "out", "in"

_H_OUT, _H_IN = (HIDDEN, OUT), (HIDDEN, IN)
_Q_OUT, _Q_IN = (HEADS, OUT), (HEADS, IN)
_KV_OUT = (KV, OUT)
_I_OUT, _I_IN = (INTER, OUT), (INTER, IN)

# role -> one entry per axis, in torch.nn.Linear orientation ([out, in]):
# None (the axis is not a width space: vocabulary, positions, token types)
# or (space, OUT | IN).
ROLE_AXES: dict[str, tuple] = {
    "embed.weight": (None, _H_OUT),
    "pos_embed.weight": (None, _H_OUT),
    "type_embed.weight": (None, _H_OUT),
    "embed_norm.weight": (_H_OUT,),
    "embed_norm.bias": (_H_OUT,),
    "final_norm.weight": (_H_OUT,),
    "final_norm.bias": (_H_OUT,),
    "head.weight": (None, _H_IN),
    "head.bias": (None,),
    "pooler.weight": (_H_OUT, _H_IN),
    "pooler.bias": (_H_OUT,),
    "mm_proj.weight": (None, _H_OUT),  # Gemma 3: image features @ W, W stored [vision_hidden, hidden]
    "norm_attn.weight": (_H_OUT,),
    "norm_attn.bias": (_H_OUT,),
    "norm_mlp.weight": (_H_OUT,),
    "norm_mlp.bias": (_H_OUT,),
    "attn.q.weight": (_Q_OUT, _H_IN),
    "attn.q.bias": (_Q_OUT,),
    "attn.k.weight": (_KV_OUT, _H_IN),
    "attn.k.bias": (_KV_OUT,),
    "attn.v.weight": (_KV_OUT, _H_IN),
    "attn.v.bias": (_KV_OUT,),
    "attn.o.weight": (_H_OUT, _Q_IN),
    "attn.o.bias": (_H_OUT,),
    "mlp.gate.weight": (_I_OUT, _H_IN),
    "mlp.gate.bias": (_I_OUT,),
    "mlp.up.weight": (_I_OUT, _H_IN),
    "mlp.up.bias": (_I_OUT,),
    "mlp.down.weight": (_H_OUT, _I_IN),
    "mlp.down.bias": (_H_OUT,),
    "norm_attn_out.weight": (_H_OUT,),
    "norm_attn_out.bias": (_H_OUT,),
    "norm_mlp_out.weight": (_H_OUT,),
    "norm_mlp_out.bias": (_H_OUT,),
}
# Query/key norms, by Family.qk_norm: per head (a head_dim axis, untouched) or over all heads.
QK_NORM_AXES: dict[str | None, dict[str, tuple]] = {
    "head": {"attn.q_norm.weight": (None,), "attn.k_norm.weight": (None,)},
    "projection": {"attn.q_norm.weight": (_Q_OUT,), "attn.k_norm.weight": (_KV_OUT,)},
}
# Fused projections: the spaces of their parts, stacked along the output axis.
FUSED_PARTS: dict[str, tuple[str, ...]] = {
    "attn.qkv.weight": (HEADS, KV, KV),
    "attn.qkv.bias": (HEADS, KV, KV),
    "mlp.gate_up.weight": (INTER, INTER),
    "mlp.gate_up.bias": (INTER, INTER),
}
FUSED_QKV = ("attn.qkv.weight", "attn.qkv.bias")


def role_axes(family, role: str) -> tuple | None:
    """The axes of `role` under `family` (None when there is no width rule for it)."""
    if role in ROLE_AXES:
        return ROLE_AXES[role]
    return QK_NORM_AXES.get(family.qk_norm, {}).get(role)


# -- unit maps ---------------------------------------------------------------
@dataclass(frozen=True)
class UnitMap:
    """New unit ``j`` of a space comes from source unit ``index[j]``.

    ``unit`` is the number of elements per unit (``head_dim`` for heads, 1
    otherwise). With ``divide``, input axes are divided by each source unit's
    replication count (growth); selection never divides.
    """

    space: str
    source: int
    index: tuple[int, ...]
    unit: int = 1
    divide: bool = True

    @property
    def size(self) -> int:
        return len(self.index)

    @property
    def is_identity(self) -> bool:
        return self.index == tuple(range(self.source))

    def counts(self) -> Counter:
        return Counter(self.index)

    @property
    def uniform_count(self) -> int | None:
        """The replication count when every source unit has the same one, else None."""
        values = set(self.counts().values())
        return values.pop() if len(values) == 1 and len(self.counts()) == self.source else None

    def fresh(self) -> tuple[bool, ...]:
        """Whether new unit j is a later copy (not the first occurrence) of its source unit."""
        seen: set[int] = set()
        out = []
        for i in self.index:
            out.append(i in seen)
            seen.add(i)
        return tuple(out)

    def element_index(self):
        import torch

        idx = torch.tensor(self.index, dtype=torch.long)
        return (idx[:, None] * self.unit + torch.arange(self.unit)[None, :]).reshape(-1)

    def element_scale(self):
        """1 / replication count per new element, or None when nothing is divided."""
        import torch

        if not self.divide:
            return None
        counts = self.counts()
        per_unit = [1.0 / counts[i] for i in self.index]
        if all(c == 1.0 for c in per_unit):
            return None
        return torch.tensor(per_unit, dtype=torch.float32).repeat_interleave(self.unit)

    def element_partner(self):
        """For each new element, the same element of the next copy of its source unit (cyclic).

        Noise ``z - z[partner]`` sums to zero over the copies of each source
        unit (for two copies it is exactly +E and -E), and is zero for units
        with a single copy.
        """
        import torch

        groups: dict[int, list[int]] = {}
        for j, i in enumerate(self.index):
            groups.setdefault(i, []).append(j)
        nxt = list(range(self.size))
        for members in groups.values():
            for k, j in enumerate(members):
                nxt[j] = members[(k + 1) % len(members)]
        idx = torch.tensor(nxt, dtype=torch.long)
        return (idx[:, None] * self.unit + torch.arange(self.unit)[None, :]).reshape(-1)

    def as_dict(self) -> dict[str, Any]:
        return {"space": self.space, "source": self.source, "index": list(self.index), "unit": self.unit,
                "divide": self.divide}


def identity_map(space: str, n: int, unit: int = 1) -> UnitMap:
    return UnitMap(space, n, tuple(range(n)), unit)


def tile_map(space: str, n_src: int, n_new: int, unit: int = 1) -> UnitMap:
    """Whole copies of the source units, one after another: j -> j mod n_src."""
    return UnitMap(space, n_src, tuple(j % n_src for j in range(n_new)), unit)


def evenly_spaced(n_src: int, n_new: int) -> list[int]:
    """n_new indices spread evenly over range(n_src), starting at 0: floor(i * n_src / n_new)."""
    return [(i * n_src) // n_new for i in range(n_new)]


def head_map(kv: UnitMap, heads_src: int, heads_new: int, head_dim: int,
             pick: Callable[[int, int, int], int], divide: bool = True) -> UnitMap:
    """The query-head map that agrees with the KV-head map `kv`.

    Under GQA query head ``h`` attends with KV head ``h // group``. New KV
    head ``k`` is a copy of source KV head ``s = kv.index[k]``, so each of the
    new query heads of its group must be a query head of source group ``s``:
    ``pick(s, r, group_src)`` chooses which, where ``r`` counts the new query
    heads handed to group ``s`` so far.
    """
    g_src = heads_src // kv.source
    g_new = heads_new // kv.size
    handed: Counter = Counter()
    index = []
    for k in range(kv.size):
        s = kv.index[k]
        for _ in range(g_new):
            r = handed[s]
            handed[s] += 1
            index.append(s * g_src + pick(s, r, g_src))
    return UnitMap(HEADS, heads_src, tuple(index), head_dim, divide)


# -- target sizes ----------------------------------------------------------------
@dataclass(frozen=True)
class Targets:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int

    def changes(self, dims, kv: bool = True) -> list[str]:
        """'hidden 576 -> 768', ... for the notes (KV heads left out for families without them)."""
        out = []
        spaces = ((HIDDEN, "hidden"), (INTER, "intermediate"), (HEADS, "heads")) + (((KV, "KV heads"),) if kv else ())
        for key, label in spaces:
            a, b = getattr(dims, key), getattr(self, key)
            out.append(f"{label} {a} -> {b}" if a != b else f"{label} {a}")
        return out


def _as_int(value, what: str, method: str, source) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise WarmstartError(f"{method}: {what} must be a whole number, got {value!r}", source) from None
    if not math.isfinite(f) or abs(f - round(f)) > 1e-6 or round(f) <= 0:
        raise WarmstartError(f"{method}: {what} must be a positive whole number, got {value!r}", source)
    return int(round(f))


def resolve_targets(model, method: str, *, hidden=None, intermediate=None, heads=None, kv_heads=None,
                    mult=None, integer_mult: bool = False, grow: bool | None = None) -> Targets:
    """Target sizes from explicit sizes and/or a multiplier (explicit sizes win).

    Without a multiplier, sizes not given follow the hidden size: heads stay
    ``hidden / head_dim`` where the source has that relation (and KV heads keep
    the heads-per-KV-head ratio), the intermediate size keeps its ratio to hidden.
    """
    d, fam, src = model.dims, model.family, model.checkpoint.path
    if all(v is None for v in (hidden, intermediate, heads, kv_heads, mult)):
        raise WarmstartError(f"{method}: give target sizes (hidden, intermediate, heads, kv_heads) or a multiplier",
                             src)
    explicit = {k: (None if v is None else _as_int(v, k, method, src))
                for k, v in ((HIDDEN, hidden), (INTER, intermediate), (HEADS, heads), (KV, kv_heads))}
    if grow is not None:  # say "bigger than the source" before any derived-size complaint
        for key, value in explicit.items():
            old = getattr(d, key)
            if value is not None and ((grow and value < old) or (not grow and value > old)):
                relation = "smaller" if grow else "bigger"
                other = "select (warmstart shrink)" if grow else "hyperclone or net2net (warmstart grow)"
                raise WarmstartError(f"{method}: target {key} {value} is {relation} than the source's {old}; "
                                     f"{method} only {'grows' if grow else 'shrinks'} (use {other})", src)
    check_width(model, {k: v for k, v in explicit.items() if v is not None}, method)
    if mult is not None:
        if isinstance(mult, bool):
            raise WarmstartError(f"{method}: the multiplier must be a number, got {mult!r}", src)
        try:
            m = float(mult)
        except (TypeError, ValueError):
            raise WarmstartError(f"{method}: the multiplier must be a number, got {mult!r}", src) from None
        if not math.isfinite(m) or m <= 0:
            raise WarmstartError(f"{method}: the multiplier must be positive, got {mult!r}", src)
        if integer_mult and abs(m - round(m)) > 1e-9:
            raise WarmstartError(f"{method} needs an integer multiplier, got {mult!r} (net2net takes other sizes)",
                                 src)
        check_width(model, {key: getattr(d, key) * m for key in SPACES}, f"{method} x{m:g}")
        base = {}
        for key in SPACES:
            value = getattr(d, key) * m
            if abs(value - round(value)) > 1e-6:
                raise WarmstartError(
                    f"{method}: {key} {getattr(d, key)} x {mult} = {value:g} is not a whole number; "
                    f"give the {key} size explicitly", src)
            base[key] = int(round(value))
        t = {k: explicit[k] if explicit[k] is not None else base[k] for k in SPACES}
    else:
        hd = d.head_dim
        h = explicit[HIDDEN]
        if h is None and explicit[HEADS] is not None and "head_dim" not in fam.fields:
            h = explicit[HEADS] * hd  # families whose hidden size is heads x head_dim
        h = h if h is not None else d.hidden
        a = explicit[HEADS]
        if a is None:
            if d.hidden == d.heads * hd and h != d.hidden:
                if h % hd:
                    raise WarmstartError(
                        f"{method}: hidden {h} is not a whole number of heads of head_dim {hd}; give the heads",
                        src)
                a = h // hd
            else:
                a = d.heads
        k = explicit[KV]
        if k is None:
            if (d.kv_heads * a) % d.heads:
                raise WarmstartError(
                    f"{method}: {a} heads do not keep the ratio of {d.heads} heads to {d.kv_heads} KV heads; "
                    f"give the KV heads", src)
            k = d.kv_heads * a // d.heads
        i = explicit[INTER]
        if i is None:
            i = int(round(d.intermediate * h / d.hidden))
        t = {HIDDEN: h, INTER: i, HEADS: a, KV: k}
    targets = Targets(t[HIDDEN], t[INTER], t[HEADS], t[KV])
    if targets.heads % targets.kv_heads:
        raise WarmstartError(f"{method}: {targets.heads} heads do not divide into {targets.kv_heads} KV heads", src)
    if targets.hidden % targets.heads:
        raise WarmstartError(f"{method}: hidden {targets.hidden} is not a multiple of {targets.heads} heads "
                             "(transformers refuses such a config)", src)
    if "head_dim" not in fam.fields and targets.hidden != targets.heads * d.head_dim:
        raise WarmstartError(
            f"{method}: {fam.name} needs hidden = heads x head_dim ({targets.heads} x {d.head_dim} = "
            f"{targets.heads * d.head_dim}), got hidden {targets.hidden}", src)
    if "kv_heads" not in fam.fields and targets.kv_heads != targets.heads:
        raise WarmstartError(f"{method}: {fam.name} has no separate KV heads; kv_heads must equal heads "
                             f"({targets.heads}), got {targets.kv_heads}", src)
    return targets


def check_direction(model, targets: Targets, method: str, grow: bool) -> None:
    """Growth operators only grow, selection only shrinks; at least one size must change."""
    d, src = model.dims, model.checkpoint.path
    changed = False
    for key in SPACES:
        a, b = getattr(d, key), getattr(targets, key)
        if (grow and b < a) or (not grow and b > a):
            verb = "grows" if grow else "shrinks"
            other = "select" if grow else "hyperclone or net2net"
            raise WarmstartError(f"{method} only {verb}: {key} {a} -> {b} (use {other})", src)
        changed |= a != b
    if not changed:
        raise WarmstartError(f"{method}: the target sizes equal the source's ({', '.join(targets.changes(d))}); "
                             "nothing to do", src)


# -- applying maps to tensors --------------------------------------------------
def _noise_seed(seed: int, name: str, part: int) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(f"{name}#{part}".encode())) % (2**63)


def transform(x, axes: Sequence, maps: dict[str, UnitMap]):
    """Apply the unit maps to tensor `x` whose axes are described by `axes` (Linear orientation)."""
    if x.is_floating_point() and x.element_size() < 4:
        x = x.float()  # compute in fp32; the writer casts back to the tensor's dtype
    for dim, ax in enumerate(axes):
        if ax is None:
            continue
        space, mode = ax
        m = maps[space]
        if m.is_identity:
            continue
        x = x.index_select(dim, m.element_index())
        if mode == IN:
            scale = m.element_scale()
            if scale is not None:
                shape = [1] * x.dim()
                shape[dim] = -1
                x = x * scale.to(x.dtype).reshape(shape)
    return x


def out_shape(shape: Sequence[int], axes: Sequence, maps: dict[str, UnitMap]) -> tuple[int, ...]:
    new = list(shape)
    for dim, ax in enumerate(axes):
        if ax is not None:
            m = maps[ax[0]]
            new[dim] = m.size * m.unit
    return tuple(new)


def _expected(shape: Sequence[int], axes: Sequence, maps: dict[str, UnitMap]) -> bool:
    if len(shape) != len(axes):
        return False
    for dim, ax in enumerate(axes):
        if ax is not None:
            m = maps[ax[0]]
            if shape[dim] != m.source * m.unit:
                return False
    return True


def _rows_from(a, b, fresh_rows):
    """`a` with the rows marked in `fresh_rows` taken from `b` (AKI)."""
    if fresh_rows is None or not bool(fresh_rows.any()):
        return a
    out = a.clone()
    out[fresh_rows] = b[fresh_rows]
    return out


def _fresh_rows(axes, maps):
    import torch

    ax = axes[0]
    if ax is None or ax[1] != OUT:
        return None
    m = maps[ax[0]]
    return torch.tensor(m.fresh(), dtype=torch.bool).repeat_interleave(m.unit)


# -- plans -----------------------------------------------------------------------
@dataclass
class WidthSpec:
    """Everything a width plan needs besides the model."""

    method: str
    maps: dict[str, UnitMap]
    noise_snr_db: float | None = None
    seed: int = 0
    next_layer_rows: bool = False  # AKI: fresh output units from the next layer's tensor
    fresh_units: bool = False  # extra units drawn at random where written, zero where read (see fresh_units.py)
    notes: list[str] = field(default_factory=list)
    embed_factor: float = 1.0  # stored embedding multiplied by this (the model's own multiplier changed)
    # Per-block overrides of the intermediate/head/KV maps (importance pruning keeps different
    # units in each block); the hidden map is shared by every block, since the residual stream is.
    layer_maps: dict[int, dict[str, UnitMap]] = field(default_factory=dict)

    def maps_for(self, layer: int | None) -> dict[str, UnitMap]:
        if layer is None or layer not in self.layer_maps:
            return self.maps
        return {**self.maps, **self.layer_maps[layer]}


def _logical(x, transposed: bool):
    return x.t() if transposed else x


def tensor_fn(role: str, name: str, transposed: bool, spec: WidthSpec, parts: Sequence[tuple[tuple, int]] | None,
              axes: tuple | None = None, factor: float = 1.0, maps: dict[str, UnitMap] | None = None):
    """The function computing one output tensor from its source tensor (and, for AKI, the next layer's)."""
    import torch

    maps = spec.maps if maps is None else maps
    role_axes_ = axes if axes is not None else ROLE_AXES.get(role)

    def compute(*inputs):
        xs = [_logical(x, transposed) for x in inputs]
        if parts is None:
            pieces = [(xs, role_axes_, 0)]
        else:
            pieces = []
            offset = 0
            for k, (axes, length) in enumerate(parts):
                pieces.append(([x.narrow(0, offset, length) for x in xs], axes, k))
                offset += length
        outs = []
        for xs_part, axes, k in pieces:
            y = transform(xs_part[0], axes, maps)
            if spec.fresh_units:
                y = draw_fresh_units(y, xs_part[0], axes, maps, _noise_seed(spec.seed, name, k))
            if len(xs_part) > 1:
                y = _rows_from(y, transform(xs_part[1], axes, maps), _fresh_rows(axes, maps))
            if spec.noise_snr_db is not None:
                y = add_pair_noise(y, axes, maps, spec.noise_snr_db, _noise_seed(spec.seed, name, k))
            outs.append(y)
        y = outs[0] if len(outs) == 1 else torch.cat(outs, 0)
        if factor != 1.0:
            y = y * factor
        return _logical(y, transposed).contiguous()

    return compute


def draw_fresh_units(y, x, axes, maps, seed: int):
    """`y` with its extra units made fresh: rows written for them drawn i.i.d. normal at the source tensor's std
    (biases zero), columns reading them zero, so nothing downstream sees them until they are trained."""
    import torch

    for dim, ax in enumerate(axes):
        if ax is None:
            continue
        m = maps[ax[0]]
        mask = torch.tensor(m.fresh(), dtype=torch.bool).repeat_interleave(m.unit)
        if not bool(mask.any()):
            continue
        idx = mask.nonzero().squeeze(1)
        y = y.clone() if y is x else y
        if ax[1] == IN or y.dim() == 1:
            y = y.index_fill(dim, idx, 0.0)
        else:
            shape = list(y.shape)
            shape[dim] = len(idx)
            gen = torch.Generator().manual_seed(seed)
            std = float(x.float().std()) if x.numel() > 1 else 0.0
            y = y.index_copy(dim, idx, (torch.randn(shape, generator=gen) * std).to(y.dtype))
    return y


def add_pair_noise(x, axes, maps, snr_db: float, seed: int):
    """Noise that cancels over the copies of each replicated input unit (function unchanged)."""
    import torch

    target = None
    for dim, ax in enumerate(axes):
        if ax is not None and ax[1] == IN and x.dim() == 2:
            m = maps[ax[0]]
            if any(c > 1 for c in m.counts().values()):
                target = (dim, m)
    if target is None:
        return x
    dim, m = target
    partner = m.element_partner()
    share = float((partner != torch.arange(partner.numel())).double().mean())
    power = float(torch.linalg.vector_norm(x.float(), dtype=torch.float64)) ** 2 / x.numel()
    if power == 0.0 or share == 0.0:
        return x
    noise_power = power / (10.0 ** (float(snr_db) / 10.0))
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(x.shape, generator=gen, dtype=torch.float32)
    e = z.index_select(dim, partner)
    torch.sub(z, e, out=e)  # z - z[partner]: sums to zero over the copies of each source unit
    del z
    # An element of e has variance 2 where its unit is replicated and 0 elsewhere: scale so
    # that the mean noise power over the whole tensor is `noise_power`.
    e.mul_(math.sqrt(noise_power / (2.0 * share)))
    return x + e.to(x.dtype)


def build_plan(model, spec: WidthSpec):
    """The plan writing the width-transformed model, one output tensor per step.

    Returns ``(plan, untied)``. A tied output head is untied when the hidden
    units are divided on the input side (growth): the embedding writes copies,
    the head must read them divided, so they can no longer share one tensor.
    Buffers are copied; tensors of unknown role are copied when no axis has a
    size the operation changes, and refused otherwise.
    """
    ckpt, layout, fam, maps = model.checkpoint, model.layout, model.family, spec.maps
    src = ckpt.path
    changed_sizes = {m.source * m.unit for m in maps.values() if not m.is_identity}
    hidden_scaled = maps[HIDDEN].element_scale() is not None
    untie = model.dims.tied and hidden_scaled
    # The model multiplies the embedding by its own factor (sqrt(hidden) for Gemma): the stored values make up
    # for the change, so that each hidden unit starts from the source's value.
    spec.embed_factor = embed_compensation(fam, maps[HIDDEN].source, maps[HIDDEN].size)
    plan = Plan([ckpt])
    last_layer = max(layout.layer_indices(), default=-1)

    def add_role(name: str, role: str, layer: int | None, out_name: str | None = None):
        maps = spec.maps_for(layer)
        info = ckpt.info(name)
        shape = tuple(info.shape)
        transposed = fam.conv1d and len(shape) == 2 and role.startswith(("attn.", "mlp."))
        logical = tuple(reversed(shape)) if transposed else shape
        parts = None
        axes = None
        if role in FUSED_PARTS:
            fused = FUSED_PARTS[role]
            lengths = [maps[s].source * maps[s].unit for s in fused]
            rest = (_H_IN,) if len(logical) == 2 else ()
            parts = [(((s, OUT),) + rest, n) for s, n in zip(fused, lengths)]
            if logical[0] != sum(lengths) or not _expected(logical[1:], rest, maps):
                raise CheckpointError(f"fused tensor {name!r} ({role}) has shape {shape}, which does not match the "
                                      f"config's sizes", src)
            new_rows = sum(maps[s].size * maps[s].unit for s in fused)
            new_logical = (new_rows,) + out_shape(logical[1:], rest, maps)
            all_axes = [a for axes_, _ in parts for a in axes_]
        else:
            axes = role_axes(fam, role)
            if not _expected(logical, axes, maps):
                raise CheckpointError(f"tensor {name!r} ({role}) has shape {shape}, which does not match the "
                                      f"config's sizes", src)
            new_logical = out_shape(logical, axes, maps)
            all_axes = list(axes)
        factor = spec.embed_factor if role == "embed.weight" and out_name is None else 1.0
        trivial = all(maps[a[0]].is_identity for a in all_axes if a is not None) and factor == 1.0
        new_shape = tuple(reversed(new_logical)) if transposed else new_logical
        inputs = (Ref(0, name),)
        if spec.next_layer_rows and layer is not None and layer < last_layer and not trivial:
            upper = layout.name(role, layer + 1)
            if upper is not None:
                inputs = (Ref(0, name), Ref(0, upper))
        if trivial and out_name is None:
            plan.add(copy_step(0, ckpt, name))
            return
        target = out_name or name
        plan.add(Step(target, new_shape, info.dtype, inputs,
                      tensor_fn(role, target, transposed, spec, parts, axes, factor, maps),
                      note=f"{spec.method} {role}" + (f" layer {layer}" if layer is not None else "")))

    for name in ckpt.names():
        if name in layout.buffers:
            plan.add(copy_step(0, ckpt, name))  # position ids, masks, RoPE frequencies: no width axis
            continue
        tr = layout.roles.get(name)
        if tr is None:
            shape = tuple(ckpt.info(name).shape)
            clash = [n for n in shape if n in changed_sizes]
            if clash:
                raise WarmstartError(
                    f"{spec.method}: tensor {name!r} of shape {shape} has no known role and a size ({clash[0]}) "
                    f"that the width change touches; refusing to guess how to resize it", src)
            plan.add(copy_step(0, ckpt, name))
            continue
        if role_axes(fam, tr.role) is None and tr.role not in FUSED_PARTS:
            raise WarmstartError(f"{spec.method}: no width rule for role {tr.role!r} ({name})", src)
        add_role(name, tr.role, tr.layer)
        if untie and tr.role == "embed.weight" and not layout.has("head.weight"):
            head_name = fam.tensor_name("head.weight", prefix=layout.prefix)
            add_role(name, "head.weight", None, out_name=head_name)
    return plan, untie


def embed_compensation(family, hidden_src: int, hidden_new: int) -> float:
    """Factor on the stored embedding that keeps ``multiplier(hidden) * value`` when the hidden size changes."""
    if hidden_src == hidden_new:
        return 1.0
    return family.embed_multiplier(hidden_src) / family.embed_multiplier(hidden_new)


def output_config(model, targets: Targets, untie: bool) -> dict:
    fam = model.family
    changes: dict[str, Any] = {HIDDEN: targets.hidden, INTER: targets.intermediate, HEADS: targets.heads}
    if "kv_heads" in fam.fields:
        changes[KV] = targets.kv_heads
    if "head_dim" in fam.fields:
        changes["head_dim"] = model.dims.head_dim
    if untie:
        changes["tied"] = False
    return fam.set_dims(model.config, **changes)


def width_transform(model, targets: Targets, spec: WidthSpec, exact: bool):
    """Plan, config, notes and maps of a width operation."""
    plan, untie = build_plan(model, spec)
    kv = "kv_heads" in model.family.fields
    notes = [", ".join(targets.changes(model.dims, kv)) + f" (head_dim {model.dims.head_dim} kept)"]
    if spec.embed_factor != 1.0:
        notes.append(f"embedding values multiplied by {spec.embed_factor:.6g}: the model multiplies them by "
                     f"{EMBED_SCALES.get(model.family.embed_scale, model.family.embed_scale)}, which changes with the hidden size")
    if untie:
        n = spec.maps[HIDDEN].uniform_count
        scale = f"divided by {n}" if n else "divided by each hidden unit's copy count"
        notes.append(f"tied embeddings untied: the output head is the embedding with its hidden columns copied and "
                     f"{scale} (tie_word_embeddings false)")
    notes += spec.notes
    maps = {k: m.as_dict() for k, m in spec.maps.items()}
    return Transform(plan=plan, config=output_config(model, targets, untie), exact=exact, notes=notes, maps=maps)
