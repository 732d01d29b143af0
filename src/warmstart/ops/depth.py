"""Depth operators: new block lists made of the source's blocks.

Every operator here is a *layer map*: output block j is a copy of source
block ``layer_map[j]``. The plan's steps for copied blocks are identity copies,
so the executor moves their bytes file to file without decoding them. The
only computed tensors are the zeros of LLaMA Pro's inserted blocks.

- ``stack`` (G_stack, "Stacking Your Transformers: A Closer Look at Model
  Growth for Efficient LLM Pre-Training"): the whole block list repeated.
- ``interleave``: output block i copies source block round(i * L / N), so
  each source block appears once or twice, in order.
- ``dus`` (SOLAR, "SOLAR 10.7B: Scaling Large Language Models with Simple
  yet Effective Depth Up-Scaling"): two copies of the model, the last K blocks
  dropped from the first and the first K from the second.
- ``expand`` (LLaMA Pro, "LLaMA Pro: Progressive LLaMA with Block
  Expansion"): after every group of blocks, a copy of the group's last block
  whose attention output and MLP down projections are zero, so the block adds
  nothing to the residual stream and the model computes the same function,
  whatever norms sit inside the branches (a norm behind a zero projection
  sees zeros and returns zeros; its bias, if any, is zeroed too). Refused
  where a norm sits on the residual stream itself (post-norm BERT).
- ``layer_map``: any mapping, written ``0-5,0-5,3,4``.
- ``drop`` (shrink): keep N evenly spaced blocks, or the first N.

Each Transform's ``maps`` holds ``layers`` (source block of each output
block) and ``new_layers`` (output blocks that are new, i.e. LLaMA Pro's
inserted blocks). The tensors of new blocks are marked ``fresh`` in the plan
(:class:`~warmstart.plan.Origin`), which the optimizer-state carry-over follows.
"""

from __future__ import annotations

import re
from typing import Any

from warmstart.arch.spec import set_config_value
from warmstart.errors import ParamError, WarmstartError
from warmstart.inputs import MAX_LAYERS, check_layers
from warmstart.ops import fresh as fresh_inits
from warmstart.ops.fresh import Zeros
from warmstart.ops.registry import Transform, register
from warmstart.plan import Origin, Plan, Ref, Step

# Roles that write into the residual stream: zero in an inserted LLaMA Pro block.
# A norm behind the output projection (Gemma 2/3, OLMo 2) maps zeros to zeros once its bias is zero.
RESIDUAL_OUTPUT_ROLES = ("attn.o.weight", "attn.o.bias", "mlp.down.weight", "mlp.down.bias",
                         "norm_attn_out.bias", "norm_mlp_out.bias")


def _src(model) -> Any:
    return model.checkpoint.path


def _count(model, layers: Any, op: str) -> int:
    if isinstance(layers, bool) or not isinstance(layers, int):
        raise ParamError("layers", f"{op} needs a whole number of layers, got {layers!r}", _src(model))
    if layers < 1:
        raise ParamError("layers", f"{op} needs at least one layer, got {layers}", _src(model))
    try:
        return check_layers(model, layers, op)
    except WarmstartError as err:
        raise ParamError("layers", err.message, err.path) from None


def _grow_count(model, layers: Any, op: str) -> int:
    n = _count(model, layers, op)
    L = model.dims.layers
    if n <= L:
        raise ParamError("layers", f"{op} grows the model: --layers must exceed the source's {L} layers, got {n}"
                         " (use `warmstart shrink` to remove layers)", _src(model))
    return n


def block_prefix(model) -> str:
    """The text in front of the block index in every block tensor's name (e.g. 'model.layers.')."""
    template = next(iter(model.family.block_roles.values()))
    return model.layout.prefix + template.split("{i}")[0]


def remap(model, layer_map: list[int], new_layers: set[int] | frozenset[int] = frozenset(), *,
          op: str, exact: bool, notes: list[str], fresh=None) -> Transform:
    """The plan that builds block j from source block layer_map[j].

    Blocks listed in `new_layers` get zero residual-output projections (LLaMA
    Pro), or what `fresh(shape, dtype, layer=j, role=role)` makes (see
    warmstart.ops.fresh). Tensors outside the blocks are copied as they are,
    in the source's order; the output blocks take the place of the source's blocks.
    """
    ckpt = model.checkpoint
    L = model.dims.layers
    for j, s in enumerate(layer_map):
        if not 0 <= s < L:  # callers validate; this guards the invariant
            raise ParamError("layers", f"output layer {j} maps to source layer {s}, outside 0..{L - 1}", _src(model))
    rx = re.compile(re.escape(block_prefix(model)) + r"(\d+)\.(.+)$")
    per_layer: dict[int, list[tuple[str, str]]] = {}
    order: list[str | None] = []  # None marks where the blocks go
    for name in ckpt.names():
        m = rx.match(name)
        if m:
            if not per_layer:
                order.append(None)
            per_layer.setdefault(int(m.group(1)), []).append((name, m.group(2)))
        else:
            order.append(name)
    if not per_layer:
        order.append(None)
    roles = model.layout.roles
    head = block_prefix(model)
    steps: list[Step] = []

    def copy(name: str, out: str, new: bool) -> None:
        info = ckpt.info(name)
        steps.append(Step(out, tuple(info.shape), info.dtype, (Ref(0, name),), note="new block" if new else "",
                          origin=Origin("fresh", Ref(0, name)) if new else None))

    for item in order:
        if item is not None:
            copy(item, item, False)
            continue
        for j, s in enumerate(layer_map):
            new = j in new_layers
            for name, rest in per_layer.get(s, []):
                out = f"{head}{j}.{rest}"
                role = roles.get(name)
                if new and role is not None and role.role in RESIDUAL_OUTPUT_ROLES:
                    info = ckpt.info(name)
                    make = (fresh(info.shape, info.dtype, layer=j, role=role.role) if fresh is not None
                            else Zeros(info.shape, info.dtype))
                    steps.append(Step(out, tuple(info.shape), info.dtype, (), make,
                                      note="new block: fresh residual output", origin=Origin("fresh", Ref(0, name))))
                else:
                    copy(name, out, new)
    config = model.family.set_dims(model.config, layers=len(layer_map))
    # Per-layer lists (sliding or full attention...) follow their layer; a list the config
    # only implies (a pattern, a max_window_layers) is written out so that it still applies.
    for key, values in model.family.per_layer_values(model.config, L).items():
        set_config_value(config, key, [values[s] for s in layer_map])
    maps = {"layers": list(layer_map), "new_layers": sorted(new_layers)}
    return Transform(Plan([ckpt], steps), config, exact, notes, maps)


def describe_map(layer_map: list[int]) -> str:
    """'0-23,6-29' style text for a layer map (runs of consecutive indices collapsed)."""
    parts: list[str] = []
    i = 0
    while i < len(layer_map):
        j = i
        while j + 1 < len(layer_map) and layer_map[j + 1] == layer_map[j] + 1:
            j += 1
        parts.append(str(layer_map[i]) if i == j else f"{layer_map[i]}-{layer_map[j]}")
        i = j + 1
    return ",".join(parts)


def parse_layer_map(spec: Any, num_layers: int, source: Any = None) -> list[int]:
    """'0-5,0-5,3,4' (inclusive ranges, descending allowed) or a list of ints -> indices."""
    if isinstance(spec, (list, tuple)):
        items = list(spec)
        if len(items) > MAX_LAYERS:
            raise ParamError("spec", f"layer map has more than {MAX_LAYERS} entries", source)
        if not items:
            raise ParamError("spec", "layer map is empty", source)
        out = []
        for x in items:
            if isinstance(x, bool) or not isinstance(x, int):
                raise ParamError("spec", f"layer map entry {x!r} is not a layer index", source)
            out.append(x)
    elif isinstance(spec, str):
        out = []
        for part in spec.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
            if not m:
                raise ParamError("spec", f"malformed layer map {spec!r}: {part!r} is not N or A-B "
                                 "(example: 0-5,0-5,3,4)", source)
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) is not None else a
            # the range's first out-of-range index, found before expanding it (0-1000000000 is not built)
            first_bad = a if a >= num_layers else (num_layers if b >= num_layers else None)
            if first_bad is not None:
                raise ParamError("spec", f"layer map refers to layer {first_bad}, but the source has layers "
                                 f"0..{num_layers - 1}", source)
            if len(out) + abs(b - a) + 1 > MAX_LAYERS:
                raise ParamError("spec", f"layer map has more than {MAX_LAYERS} entries", source)
            out.extend(range(a, b + 1) if a <= b else range(a, b - 1, -1))
    else:
        raise ParamError("spec", f"layer map must be text like '0-5,0-5,3,4' or a list, got {spec!r}", source)
    bad = [x for x in out if not 0 <= x < num_layers]
    if bad:
        raise ParamError("spec", f"layer map refers to layer {bad[0]}, but the source has layers 0..{num_layers - 1}",
                         source)
    return out


@register("stack", "depth", "G_stack: repeat the whole block list (N a multiple of the source depth)")
def stack(model, *, layers: int) -> Transform:
    L = model.dims.layers
    n = _grow_count(model, layers, "stack")
    if n % L:
        raise ParamError("layers", f"stack repeats all {L} layers, so --layers must be a multiple of {L}, got {n}",
                         _src(model))
    layer_map = list(range(L)) * (n // L)
    return remap(model, layer_map, op="stack", exact=False, notes=[
        f"G_stack: {n // L} copies of the {L}-layer stack -> {n} layers; not function-preserving "
        "(a warm start: the copies' outputs add up in the residual stream)",
    ])


def interleave_map(L: int, n: int) -> list[int]:
    """Block i of n copies source block round(i * L / n) (halves rounded up)."""
    return [min(L - 1, (2 * i * L + n) // (2 * n)) for i in range(n)]


@register("interleave", "depth", "each source block repeated in place: block i copies round(i * L / N)")
def interleave(model, *, layers: int) -> Transform:
    L = model.dims.layers
    n = _grow_count(model, layers, "interleave")
    layer_map = interleave_map(L, n)
    return remap(model, layer_map, op="interleave", exact=False, notes=[
        f"interleave: block i copies source block round(i*{L}/{n}) -> {describe_map(layer_map)}; "
        "not function-preserving (a warm start)",
    ])


@register("dus", "depth", "SOLAR depth up-scaling: bottom of one copy, top of another")
def dus(model, *, layers: int | None = None, overlap: int | None = None) -> Transform:
    L = model.dims.layers
    src = _src(model)
    if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0):
        raise ParamError("overlap", f"dus overlap must be a whole number >= 0, got {overlap!r}", src)
    if layers is None and overlap is None:
        raise ParamError("layers", "dus needs --layers N or --dus-overlap K (N = 2 * (L - K))", src)
    if overlap is None:
        n = _grow_count(model, layers, "dus")
        if n % 2 or n > 2 * L:
            raise ParamError("layers", f"dus joins two equal parts of the {L}-layer model, so --layers must be even "
                             f"and at most {2 * L}, got {n}", src)
        overlap = L - n // 2
    if overlap >= L:
        raise ParamError("overlap", f"dus overlap {overlap} is too large: each copy has only {L} layers "
                         f"(overlap must be below {L})", src)
    n = 2 * (L - overlap)
    if layers is not None and _count(model, layers, "dus") != n:
        raise ParamError("layers", f"dus with overlap {overlap} on {L} layers gives 2 * ({L} - {overlap}) = {n} layers,"
                         f" not {layers}", src)
    if n <= L:
        raise ParamError("overlap", f"dus overlap {overlap} gives {n} layers, no more than the source's {L}", src)
    keep = L - overlap
    layer_map = list(range(keep)) + list(range(overlap, L))
    return remap(model, layer_map, op="dus", exact=False, notes=[
        f"SOLAR depth up-scaling: layers 0-{keep - 1} of one copy, then {overlap}-{L - 1} of another -> {n} layers; "
        "not function-preserving (a warm start)",
    ])


def expand_map(L: int, n: int) -> tuple[list[int], set[int]]:
    """LLaMA Pro: after each group of L/(n-L) blocks, a copy of the group's last block (marked new)."""
    group = L // (n - L)
    layer_map: list[int] = []
    new: set[int] = set()
    for s in range(L):
        layer_map.append(s)
        if (s + 1) % group == 0:
            new.add(len(layer_map))
            layer_map.append(s)
    return layer_map, new


@register("expand", "depth", "LLaMA Pro block expansion: inserted copies with zero output projections (exact, pre-norm)")
def expand(model, *, layers: int, new_block_init: str = "zero", epsilon: float = 1e-6,
           lsuv_scales: list[list[float]] | None = None, seed: int = 0) -> Transform:
    """`lsuv_scales`: per new block, in order, the measured scales of its attention output and MLP down
    projections (:func:`warmstart.ops.lsuv.measure_scales`); `seed` fixes lsuv's random matrices."""
    L = model.dims.layers
    src = _src(model)
    init = fresh_inits.get(new_block_init, src)
    fam = model.family
    if fam.normalizes_residual:
        raise ParamError("layers", f"expand is refused for {fam.name}: it is a post-norm model, where a block with zero "
                         "output projections still passes the residual stream through its LayerNorms, so the "
                         "function would change (use stack, interleave or dus)", src)
    n = _grow_count(model, layers, "expand")
    added = n - L
    if L % added:
        raise ParamError("layers", f"expand inserts one block after every group of L/(N-L) blocks, so N-L must divide "
                         f"L={L}; N={n} adds {added}, which does not divide {L}", src)
    for role in ("attn.o.weight", "mlp.down.weight"):
        if not model.layout.has(role, 0):
            raise ParamError("layers", f"expand needs the {role} tensor of every block; block 0 has none", src)
    unknown = [n_ for n_ in model.layout.unknown if re.match(re.escape(block_prefix(model)) + r"\d+\.", n_)]
    if unknown:
        raise ParamError("layers", f"expand cannot guarantee an exact block: tensor {unknown[0]!r} has no known role",
                         src)
    layer_map, new = expand_map(L, n)
    scales = None
    if not init.exact:
        check_scalable(model, init.name)
    if init.needs_data:
        scales = _check_scales(model, lsuv_scales, sorted(new), init.name)
    elif lsuv_scales is not None:
        raise ParamError("lsuv_scales", f"lsuv_scales are for new_block_init lsuv, not {init.name}", src)
    if init.exact:
        notes = [f"LLaMA Pro: a new block after every {L // added} blocks ({added} new, {n} layers), each a copy of "
                 "the block before it with attention output and MLP down projections set to zero",
                 "exact: the new blocks add zero to the residual stream (no norm sits on the stream itself), so the "
                 "logits are unchanged"]
    else:
        notes = [f"LLaMA Pro layout: a new block after every {L // added} blocks ({added} new, {n} layers), each a copy "
                 f"of the block before it with attention output and MLP down projections initialized by "
                 f"{init.name}" + ("" if init.needs_data else f" (eps {epsilon:g})") + f": {init.summary}"]
    return remap(model, layer_map, new, op="expand", exact=init.exact, notes=notes,
                 fresh=lambda shape, dtype, **where: init.make(shape, dtype, eps=epsilon, scales=scales, seed=seed,
                                                               **where))


def _check_scales(model, lsuv_scales, new_layers: list[int], name: str) -> dict[int, tuple[float, float]]:
    """{new block: (attention output scale, MLP down scale)} from the list given, validated."""
    import math

    src = _src(model)
    if lsuv_scales is None:
        raise ParamError("lsuv_scales", f"new_block_init {name} needs scales measured on a calibration corpus "
                         "(grow --new-block-init lsuv --corpus FILES)", src)
    if not isinstance(lsuv_scales, (list, tuple)) or len(lsuv_scales) != len(new_layers):
        raise ParamError("lsuv_scales", f"give one [attention, mlp] pair of scales per new block "
                         f"({len(new_layers)}), got {lsuv_scales!r}", src)
    out = {}
    for j, pair in zip(new_layers, lsuv_scales):
        ok = isinstance(pair, (list, tuple)) and len(pair) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in pair)
        if not ok:
            raise ParamError("lsuv_scales", f"scales of new block {j} must be two finite numbers >= 0, got {pair!r}",
                             src)
        out[j] = (float(pair[0]), float(pair[1]))
    return out


def check_scalable(model, name: str) -> None:
    """Refuse a scaled init where a norm behind the output projections (Gemma 2/3, OLMo 2) undoes the scale:
    the branch would output the norm's own scale instead of a small one."""
    if model.layout.has("norm_attn_out.weight", 0) or model.layout.has("norm_mlp_out.weight", 0):
        raise ParamError("new_block_init", f"{name} sets the scale of the output projections, but "
                         f"{model.family.name} has a norm behind them that undoes it; use zero", _src(model))


@register("layer_map", "depth", "any layer map, e.g. 0-5,0-5,3,4")
def layer_map(model, *, spec: Any, layers: int | None = None) -> Transform:
    L = model.dims.layers
    mapping = parse_layer_map(spec, L, _src(model))
    if layers is not None and _count(model, layers, "layer_map") != len(mapping):
        raise ParamError("layers", f"the layer map has {len(mapping)} entries but --layers is {layers}", _src(model))
    identity = mapping == list(range(L))
    return remap(model, mapping, op="layer_map", exact=True if identity else False, notes=[
        f"layer map {describe_map(mapping)} -> {len(mapping)} layers"
        + ("; the identity: unchanged" if identity else "; not function-preserving (a warm start)"),
    ])


def drop_map(L: int, n: int, keep: str) -> list[int]:
    """The kept source blocks: evenly spaced from the first to the last, or the first n."""
    if keep == "first":
        return list(range(n))
    if n == 1:
        return [0]
    return [(2 * i * (L - 1) + (n - 1)) // (2 * (n - 1)) for i in range(n)]


@register("drop", "shrink", "keep N of the source's layers: evenly spaced (first and last kept) or the first N")
def drop(model, *, layers: int, keep: str = "even") -> Transform:
    L = model.dims.layers
    n = _count(model, layers, "drop")
    if n >= L:
        raise ParamError("layers", f"drop keeps fewer layers than the source's {L}, got --layers {n}"
                         " (use `warmstart grow` to add layers)", _src(model))
    if keep not in ("even", "first"):
        raise ParamError("keep", f"drop keeps 'even' (evenly spaced) or 'first' layers, got {keep!r}", _src(model))
    mapping = drop_map(L, n, keep)
    how = "the first" if keep == "first" else "evenly spaced"
    return remap(model, mapping, op="drop", exact=False, notes=[
        f"kept {n} {how} layers of {L}: {describe_map(mapping)}; not function-preserving (a warm start)",
    ])
