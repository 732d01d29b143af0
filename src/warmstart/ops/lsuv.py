"""LSUV scales of ``expand``'s new blocks, measured in a calibration pass ("All you need is a good init").

LSUV proper (Mishkin & Matas) pre-initializes every layer with an orthogonal
matrix, then, layer by layer in order, divides the weights by the std of the
layer's output on a calibration batch until that std is 1. A block inserted
into a trained residual network must not output unit variance: its branches
add to a residual stream whose scale the trained blocks expect. So here LSUV
is applied to the *last layer of each residual branch* of the new block (the
attention output and MLP down projections), with the target set relative to
the stream: each branch's output scale is ``target`` times the scale of the
residual stream the branch reads. A scale is that of a typical token, the
median over the calibration tokens of each token's RMS over channels (see
:class:`TokenScale` for why not the std over every entry). The default target
is 0.02: small enough that a trained model stays near its function (on
SmolLM2-135M, 0.05 already costs 10 points of top-1 agreement), large enough
that every weight of the new block gets a gradient from the first step (with
zero output projections only those projections do); docs/fresh.md has the
measurements behind it.

The pass loads the source model (like importance pruning) and runs the grown
model without writing it: a forward hook on each source block that is
followed by inserted blocks runs deep copies of that block (their output
projections replaced by the seeded orthogonal matrices of
:mod:`warmstart.ops.fresh`) on its output, so later blocks see exactly what
they will see in the grown model. New blocks are measured in depth order,
the attention projection before the MLP's (whose input depends on it). A
branch's output is linear in its projection's scale and its input does not
depend on it, so one pass per projection sets the scale exactly on the
calibration data (LSUV's iteration would stop after one step); each pass
stops right after the projection it measures.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

from warmstart.errors import WarmstartError
from warmstart.ops import importance as I
from warmstart.ops.fresh import LSUV_ROLES, lsuv_seed, orthogonal

DEFAULT_TARGET = 0.02


@dataclass
class LsuvScales:
    """Measured scales (one [attention, mlp] pair per new block, in order) and what the pass saw."""

    new_layers: list[int]
    scales: list[list[float]]
    residual_scale: list[list[float]]  # typical token RMS of the stream each branch reads
    target: float
    tokens: int
    seconds: float
    notes: list[str] = field(default_factory=list)


class _Stop(Exception):
    """Raised by a hook once the projection being measured has run: the rest of the forward is not needed."""


class TokenScale:
    """The scale of a typical token: the median over tokens of each token's RMS over channels.

    Not the std over every entry: trained LLMs carry massive activations
    ("Massive Activations in Large Language Models"), a few tokens whose
    residual norm is 100x the others' (SmolLM2-135M, block 20: median token
    RMS 9.2, std over all entries 127), and a branch scaled to the latter
    would swamp every ordinary token.
    """

    def __init__(self):
        self.parts: list = []

    def add(self, x):
        self.parts.append(x.detach().double().pow(2).mean(dim=-1).sqrt().flatten())

    def value(self) -> float:
        import torch

        return float(torch.quantile(torch.cat(self.parts), 0.5))


def _inserted_after(layer_map: list[int], new_layers: list[int]) -> dict[int, list[int]]:
    """Source block -> the new output blocks that follow it (expand: each new block follows a kept one)."""
    new = set(new_layers)
    after: dict[int, list[int]] = {}
    last = None
    kept = []
    for j, s in enumerate(layer_map):
        if j in new:
            if last is None:
                raise WarmstartError("lsuv: a new block cannot come first")
            after.setdefault(last, []).append(j)
        else:
            last = s
            kept.append(s)
    if kept != sorted(set(kept)) or len(kept) != len(set(layer_map)):
        raise WarmstartError("lsuv: the kept blocks must be the source's, in order (as expand makes them)")
    return after


def _relative(model, role: str, layer: int) -> str | None:
    """The module path of a role's tensor inside its block (``self_attn.o_proj``), or None."""
    from warmstart.ops.depth import block_prefix

    name = model.layout.name(role, layer)
    if name is None:
        return None
    head = f"{block_prefix(model)}{layer}."
    return name[len(head):].rsplit(".", 1)[0]


def measure_scales(model_dir, tokens, layer_map: list[int], new_layers: list[int], *,
                   target: float = DEFAULT_TARGET, seed: int = 0, lm=None) -> LsuvScales:
    """LSUV scales of every new block's output projections on `tokens` ([batches, batch, seq])."""
    import torch

    from warmstart.arch import open_model

    start = time.perf_counter()
    model = open_model(model_dir)
    lm = lm if lm is not None else I.load_causal_lm(model_dir, model, op="lsuv", hint="")
    blocks = I._block_modules(lm, model)
    after = _inserted_after(layer_map, new_layers)
    copies: dict[int, torch.nn.Module] = {}
    proj: dict[tuple[int, str], torch.nn.Module] = {}
    unit: dict[tuple[int, str], torch.Tensor] = {}
    for s, js in after.items():
        for j in js:
            block = copy.deepcopy(blocks[s])
            for role in LSUV_ROLES:
                rel = _relative(model, role, s)
                if rel is None:
                    raise WarmstartError(f"lsuv: block {s} has no {role} tensor", model.checkpoint.path)
                mod = block.get_submodule(rel)
                with torch.no_grad():
                    unit[j, role] = orthogonal(tuple(mod.weight.shape), lsuv_seed(seed, j, role))
                    mod.weight.zero_()
                    if getattr(mod, "bias", None) is not None:
                        mod.bias.zero_()
                proj[j, role] = mod
            copies[j] = block

    def run_inserted(s):
        def hook(mod, args, kwargs, output):
            h = I._hidden_out(output)
            for j in after[s]:
                if args:
                    out = copies[j](h, *args[1:], **kwargs)
                else:
                    out = copies[j](**{**kwargs, "hidden_states": h})
                h = I._hidden_out(out)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
        return hook

    residual_roles = {"attn.o.weight": "norm_attn.weight", "mlp.down.weight": "norm_mlp.weight"}
    scales = {j: [0.0, 0.0] for j in new_layers}
    stream_scale = {j: [0.0, 0.0] for j in new_layers}
    handles = [blocks[s].register_forward_hook(run_inserted(s), with_kwargs=True) for s in after]
    try:
        for j in sorted(new_layers):
            s = layer_map[j]
            for k, role in enumerate(LSUV_ROLES):
                out_m, res_m = TokenScale(), TokenScale()

                def on_out(mod, args, output):
                    out_m.add(output)
                    raise _Stop  # the stream the branch reads was seen before its projection ran

                def on_stream(mod, args, kwargs):
                    res_m.add(I._hidden_in(args, kwargs))

                norm_rel = _relative(model, residual_roles[role], s)
                reader = copies[j].get_submodule(norm_rel) if norm_rel is not None else copies[j]
                with torch.no_grad():
                    proj[j, role].weight.copy_(unit[j, role])  # at scale 1 the output's scale is the unit's
                local = [proj[j, role].register_forward_hook(on_out),
                         reader.register_forward_pre_hook(on_stream, with_kwargs=True)]
                try:
                    with torch.inference_mode():
                        for batch in tokens:
                            try:
                                lm(input_ids=batch, use_cache=False)
                            except _Stop:
                                pass
                finally:
                    for h in local:
                        h.remove()
                u, r = out_m.value(), res_m.value()
                if not u > 0:
                    raise WarmstartError(f"lsuv: the {role} branch of new block {j} outputs zeros on the "
                                         "calibration batches; cannot scale it", model.checkpoint.path)
                scale = target * r / u
                with torch.no_grad():
                    proj[j, role].weight.mul_(scale)
                scales[j][k] = scale
                stream_scale[j][k] = r
    finally:
        for h in handles:
            h.remove()
    order = sorted(new_layers)
    return LsuvScales(order, [scales[j] for j in order], [stream_scale[j] for j in order], float(target),
                      int(tokens.numel()), time.perf_counter() - start)


def calibrate_grow(src, steps: list[tuple[str, dict]], *, corpus, batches: int, batch_size: int, seq_len: int,
                   target: float) -> tuple[list[tuple[str, dict]], LsuvScales]:
    """`grow`'s steps with the measured LSUV scales added to its expand step (validated first)."""
    import math

    from warmstart.arch import open_model
    from warmstart.ops import depth
    from warmstart.ops.fresh import FRESH

    if len(steps) != 1 or steps[0][0] != "expand":
        raise WarmstartError("lsuv measures the new blocks on the source model, so it runs alone: grow in width "
                             "first (one command), then expand with --new-block-init lsuv (another)")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 0:
        raise WarmstartError(f"--lsuv-target must be a number > 0, got {target!r}")
    params = dict(steps[0][1])
    model = open_model(src)
    name = params.get("new_block_init", "lsuv")
    FRESH.get(name)
    depth.check_scalable(model, name)
    plan = depth.expand(model, layers=params.get("layers"), new_block_init="zero")  # validates layers
    if not corpus:
        raise WarmstartError(f"--new-block-init {name} needs a calibration corpus (--corpus FILES)", src)
    tokens = I.calibration_tokens(src, list(corpus), batches=batches, batch_size=batch_size, seq_len=seq_len,
                                  op=name)
    measured = measure_scales(src, tokens, plan.maps["layers"], plan.maps["new_layers"], target=target,
                              seed=params.get("seed", 0))
    params["lsuv_scales"] = [[float(f"{v:.6g}") for v in pair] for pair in measured.scales]  # 1e-6: readable
    measured.notes.append(f"lsuv calibration: {measured.tokens} tokens ({batches} batches of {batch_size} x "
                          f"{seq_len}), each new branch's typical token RMS = {target:g} x the stream's, took {measured.seconds:.2f} s")
    return [("expand", params)], measured
