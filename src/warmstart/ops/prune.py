"""Importance pruning: keep the units and blocks that matter most, as measured on data.

The registered operation ``prune`` only slices: it takes the source indices
to keep (per unit space, optionally per block, and the kept blocks) and
plans them with Weight Selection's machinery (``select`` with ``keep``) and
a layer map, so the checkpoint is written tensor by tensor like every other
operation. :func:`prune_model` decides the indices first, from one pass of
the model over calibration batches (:mod:`warmstart.ops.importance`), then
writes. Methods (``importance``):

- ``activation``: Minitron's activation importance (heads by their output's
  norm, whole KV groups for GQA; MLP neurons by their activation; residual
  channels by the norm layers' outputs, the same in every block);
- ``magnitude``: weight norms (data-free baseline);
- ``select``: Weight Selection's evenly spaced units (data-free baseline).

Depth (``depth_importance``): ``block-influence`` (ShortGPT), ``loss`` (the
calibration loss increase when the block is skipped), ``even`` (evenly
spaced, first and last kept) or ``first``. Kept blocks stay in order; they
need not be contiguous. Nothing here is function-preserving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from warmstart.errors import ParamError, WarmstartError
from warmstart.ops import importance as I
from warmstart.ops.depth import drop_map
from warmstart.ops.registry import Transform, register
from warmstart.registry import Registry


@dataclass(frozen=True)
class Criterion:
    """How units or blocks are ranked: whether it needs the calibration pass, and the choice it makes."""

    name: str
    needs_data: bool
    choose: Callable[..., Any]  # width: (model, importance, targets) -> keep | None; depth: (model, importance, n)
    summary: str


WIDTH_IMPORTANCE: Registry[Criterion] = Registry("width importance")
DEPTH_IMPORTANCE: Registry[Criterion] = Registry("depth importance")


def _criterion(registry: Registry, name: str, needs_data: bool, summary: str):
    return registry.decorator(name, lambda fn: Criterion(name, needs_data, fn, summary))


@_criterion(WIDTH_IMPORTANCE, "activation", True, "Minitron: heads by output norm, neurons by activation, "
            "channels by the norm layers' outputs")
def _activation(model, imp, targets):
    return choose_keep(model, imp, targets)


@_criterion(WIDTH_IMPORTANCE, "magnitude", False, "weight norms (data-free baseline)")
def _magnitude(model, imp, targets):
    return choose_keep(model, I.magnitude_importance(model), targets)


@_criterion(WIDTH_IMPORTANCE, "select", False, "Weight Selection: evenly spaced units (data-free baseline)")
def _select(model, imp, targets):
    return None  # the select operation's own evenly spaced choice


@_criterion(DEPTH_IMPORTANCE, "block-influence", True, "ShortGPT: 1 - cos(block input, block output)")
def _block_influence(model, imp, n):
    return I.choose_layers(imp.block_influence, n)


@_criterion(DEPTH_IMPORTANCE, "loss", True, "the loss increase when the block is removed")
def _block_loss(model, imp, n):
    return I.choose_layers(imp.block_loss, n)


@_criterion(DEPTH_IMPORTANCE, "even", False, "evenly spaced blocks, first and last kept (data-free)")
def _even(model, imp, n):
    return drop_map(model.dims.layers, n, "even")


@_criterion(DEPTH_IMPORTANCE, "first", False, "the first blocks (data-free)")
def _first(model, imp, n):
    return drop_map(model.dims.layers, n, "first")


IMPORTANCE_METHODS = tuple(WIDTH_IMPORTANCE.names())
DEPTH_METHODS = tuple(DEPTH_IMPORTANCE.names())


@register("prune", "shrink", "keep given units (per block where given) and blocks: importance pruning's slicing")
def prune(model, *, keep: dict | None = None, layers: list[int] | None = None) -> Transform:
    """Slice to the given source indices: `keep` as select's, `layers` the kept blocks in order."""
    from warmstart.ops import registry

    src = model.checkpoint.path
    steps: list[tuple[str, dict]] = []
    if keep:
        steps.append(("select", {"keep": keep}))
    if layers is not None:
        kept = list(layers)
        if not kept or any(isinstance(x, bool) or not isinstance(x, int) for x in kept):
            raise ParamError("layers", f"prune: layers must be a non-empty list of block indices, got {layers!r}", src)
        if kept != sorted(set(kept)):
            raise ParamError("layers", "prune: kept layers must be distinct and in increasing order", src)
        if kept[-1] >= model.dims.layers:
            raise ParamError("layers", f"prune: layer {kept[-1]} is outside the source's 0..{model.dims.layers - 1}",
                             src)
        if len(kept) < model.dims.layers:
            steps.append(("layer_map", {"spec": kept}))
    if not steps:
        raise WarmstartError("prune: nothing to keep or drop (give keep and/or layers)", src)
    return registry.chain(model, steps)


@dataclass
class PruneResult:
    chain: Any  # ops.chain.ChainResult
    importance: Any  # importance.Importance or None (Weight Selection without depth data)
    keep: dict | None
    layers: list[int] | None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return self.summary()

    def as_dict(self) -> dict:
        return {**self.chain.as_dict(), "keep_layers": self.layers, "notes": self.notes}

    def summary(self) -> list[str]:
        """The chain's summary, with the (long) index lists replaced by counts."""
        chain = [ln for ln in self.chain.summary() if not ln.startswith("operations:")]
        from warmstart.ops.chain import describe_step

        ops = []
        for name, params in self.chain.steps:
            if name != "prune":
                ops.append(describe_step(name, params))
                continue
            what = []
            if params.get("keep") is not None:
                what.append("keep " + describe_keep(params["keep"]))
            if params.get("layers") is not None:
                what.append(f"blocks {params['layers']}")
            ops.append("prune(" + "; ".join(what) + ")")
        return self.notes + ["operations: " + " -> ".join(ops)] + chain


def _check_layers(model, layers) -> int | None:
    if layers is None:
        return None
    L = model.dims.layers
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ParamError("layers", f"prune: --layers must be a positive whole number, got {layers!r}",
                         model.checkpoint.path)
    if layers > L:
        raise ParamError("layers", f"prune: the source has {L} layers; cannot keep {layers}", model.checkpoint.path)
    return layers


def plan_targets(model, *, hidden=None, intermediate=None, heads=None, kv_heads=None):
    """Validated width targets (None when no width is asked), before anything expensive runs."""
    from warmstart.ops import width as W

    if all(v is None for v in (hidden, intermediate, heads, kv_heads)):
        return None
    d = model.dims
    targets = W.resolve_targets(model, "prune", hidden=hidden, intermediate=intermediate, heads=heads,
                                kv_heads=kv_heads)
    for key in W.SPACES:
        if getattr(targets, key) > getattr(d, key):
            raise WarmstartError(f"prune: {key} {getattr(d, key)} -> {getattr(targets, key)}: the source has only "
                                 f"{getattr(d, key)} (pruning only removes units)", model.checkpoint.path)
    if targets.heads // targets.kv_heads > d.heads // d.kv_heads:
        raise WarmstartError(
            f"prune: {targets.heads} heads over {targets.kv_heads} KV heads need {targets.heads // targets.kv_heads} "
            f"query heads per KV group, but the source's groups have {d.heads // d.kv_heads}; whole KV groups are "
            "kept, so keep more KV heads", model.checkpoint.path)
    if all(getattr(targets, k) == getattr(d, k) for k in W.SPACES):
        return None
    return targets


def choose_keep(model, imp, targets) -> dict:
    """The source indices to keep in every space (all four listed, so the sizes are explicit), from scores."""
    from warmstart.ops import importance as I
    from warmstart.ops import width as W

    d = model.dims
    keep: dict[str, Any] = {W.HIDDEN: I.top(imp.hidden, targets.hidden)}
    keep[W.INTER] = [I.top(imp.intermediate[i], targets.intermediate) for i in range(d.layers)]
    heads = [I.choose_heads(imp.heads[i], imp.kv_heads[i], targets.kv_heads, targets.heads, d.kv_heads)
             for i in range(d.layers)]
    keep[W.HEADS] = heads
    group = d.heads // d.kv_heads
    keep[W.KV] = [sorted({h // group for h in hs}) for hs in heads]
    return keep


def prune_model(src, out, *, corpus=None, importance: str = "activation", layers: int | None = None,
                depth_importance: str | None = None, hidden=None, intermediate=None, heads=None, kv_heads=None,
                batches: int = 16, batch_size: int = 4, seq_len: int = 256, dtype: str | None = None,
                force: bool = False, max_shard_bytes: int | None = None, progress: bool = False,
                measured=None, dry_run: bool = False) -> PruneResult:
    """Measure importance on `corpus` (files), choose what to keep, write the pruned model to `out`.

    Everything is validated (target shape, output, corpus length) before the
    model runs; the output is written atomically by the chain executor.
    `measured` (an :class:`~warmstart.ops.importance.Importance` of this
    source) skips the calibration pass, so several prunings share one.
    """
    from warmstart.arch import open_model
    from warmstart.checkpoint.writer import check_output
    from warmstart.ops.chain import apply_chain

    width = WIDTH_IMPORTANCE.get(importance)
    check_output(out, force)
    model = open_model(src)
    n_layers = _check_layers(model, layers)
    targets = plan_targets(model, hidden=hidden, intermediate=intermediate, heads=heads, kv_heads=kv_heads)
    depth = None
    if n_layers is not None and n_layers < model.dims.layers:
        depth = DEPTH_IMPORTANCE.get(depth_importance or ("block-influence" if corpus else "even")).name
    elif depth_importance is not None:
        DEPTH_IMPORTANCE.get(depth_importance)
    if targets is None and depth is None:
        raise WarmstartError("prune: nothing to do: give --layers below the source's and/or smaller widths", src)
    needs_data = (targets is not None and width.needs_data) or (depth is not None and
                                                               DEPTH_IMPORTANCE.get(depth).needs_data)
    imp = None
    lines: list[str] = []
    if needs_data and measured is not None:
        if depth == "loss" and measured.block_loss is None:
            raise WarmstartError("prune: the given importance has no block loss; measure it with block_loss=True")
        imp = measured
    elif needs_data:
        if not corpus:
            raise WarmstartError("prune: activation importance and block importance need a calibration corpus "
                                 "(--corpus FILES)", src)
        tokens = I.calibration_tokens(src, list(corpus), batches=batches, batch_size=batch_size, seq_len=seq_len)
        imp = I.activation_importance(src, tokens, block_loss=depth == "loss")
        lines.append(f"calibration: {imp.tokens} tokens ({batches} batches of {batch_size} x {seq_len}), "
                     f"loss {imp.loss:.4f}")
    keep = width.choose(model, imp, targets) if targets is not None else None
    kept_layers = None
    if depth is not None:
        kept_layers = DEPTH_IMPORTANCE.get(depth).choose(model, imp, n_layers)
        lines.append(f"depth ({depth}): kept blocks {kept_layers}")
    steps: list[tuple[str, dict]] = []
    if targets is not None and keep is None:  # Weight Selection: evenly spaced units
        steps.append(("select", {"hidden": targets.hidden, "intermediate": targets.intermediate,
                                 "heads": targets.heads, "kv_heads": targets.kv_heads}))
        if kept_layers is not None:
            steps.append(("prune", {"layers": kept_layers}))
    else:
        steps.append(("prune", {"keep": keep, "layers": kept_layers}))
    if targets is not None:
        lines.append(f"width ({importance}): hidden {model.dims.hidden} -> {targets.hidden}, intermediate "
                     f"{model.dims.intermediate} -> {targets.intermediate}, heads {model.dims.heads} -> "
                     f"{targets.heads}, KV heads {model.dims.kv_heads} -> {targets.kv_heads}")
    result = apply_chain(src, out, steps, dtype=dtype, force=force, max_shard_bytes=max_shard_bytes,
                         progress=progress, dry_run=dry_run)
    return PruneResult(result, imp, keep, kept_layers, lines)


def describe_keep(keep: dict | None) -> str:
    """'hidden 24, intermediate 32 per block, ...': what a keep dict holds, without the indices."""
    if not keep:
        return "evenly spaced units"
    parts = []
    for k, v in keep.items():
        per_block = bool(v) and isinstance(v[0], (list, tuple))
        parts.append(f"{k} {len(v[0]) if per_block else len(v)}" + (" per block" if per_block else ""))
    return ", ".join(parts)


def corpus_paths(items) -> list[Path]:
    """Files and folders named by the user -> the files (folders read recursively)."""
    from warmstart.corpus import corpus_files

    return list(corpus_files(list(items)))
