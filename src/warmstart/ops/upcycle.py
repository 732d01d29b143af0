"""Dense -> Mixture-of-Experts upcycling: every expert starts as (a slice of) the dense MLP.

From "Sparse Upcycling: Training Mixture-of-Experts from Dense Checkpoints"
(each expert a copy of the MLP, a new router) and "Drop-Upcycling: Training
Sparse Mixture of Experts with Partial Re-initialization" (re-initialize a
fraction of each expert's intermediate units, different per expert, to break
the symmetry between copies). The output is written in transformers' own MoE
class for the family (:mod:`warmstart.arch.moe`): Mixtral for llama/mistral,
Qwen2-MoE for qwen2, Qwen3-MoE for qwen3.

Units and slices
----------------
The dense MLP ``f(x) = down(act(gate x) * up x)`` is a sum over its ``I``
intermediate units. With granularity ``G`` the units are cut into ``G``
consecutive slices of ``m = I/G`` units, ``f = f_0 + ... + f_{G-1}``. The
first ``S`` slices (``--shared-experts S``) form the shared expert (always
active); the other ``R = G - S`` slices are routed. The ``E`` routed experts
are ``E/R`` copies of those ``R`` slices: expert ``e`` is slice ``S + e mod R``
of copy ``e // R``, its down projection multiplied by ``R``. The router gives
the ``R`` experts of one copy the same row, so they always receive the same
logit.

Exactness (why, and exactly when)
---------------------------------
The MoE layer computes ``sum_{k in top-K} w_k * expert_k(x)`` (+ the shared
expert). It equals ``f(x)`` for every input iff every routed slice receives
total weight ``1/R`` (then ``R * (1/R) * f_g = f_g``):

- ``G = 1`` (copies, the paper's setting): any router; the top-K weights
  need to sum to one, i.e. be renormalized (Mixtral always does;
  Qwen-MoE when ``norm_topk_prob``) or ``K = E``.
- ``R > 1`` (fine-grained): additionally ``K`` a multiple of ``R``. Because the
  ``R`` experts of a copy share a router row, their logits tie, so the top
  ``K = jR`` values are ``j`` whole copies; renormalized, each expert gets
  ``p_c / (R * sum p)`` and each slice ``1/R``. With the zero router every
  expert ties with every other and which ``K`` the top-k kernel returns is
  not defined (torch returns neither the first nor whole copies), so the
  zero router with ``R > 1`` and ``K < E`` is not exact; the random and
  k-means routers are (ties between different copies have probability
  zero).
- The shared expert is scaled by 2 and its sigmoid gate starts at zero
  (``sigmoid(0) = 1/2``), so it contributes exactly its slices.
- Drop-Upcycling (``drop_ratio > 0``) changes the experts: a warm start.

Streaming: each expert tensor is one plan step reading the dense MLP tensor
(a plain byte copy when ``G = 1`` and nothing is dropped), the router a
computed step with no inputs; the executor keeps the dense tensors of a
layer only until its last expert is written.
"""

from __future__ import annotations

import hashlib
from typing import Any

from warmstart.arch.moe import MoeFormat, moe_format_for
from warmstart.errors import ParamError, WarmstartError
from warmstart.ops.fresh import Zeros
from warmstart.ops.registry import Transform, register
from warmstart.plan import Plan, Ref, Step, identity

MLP_ROLES = ("mlp.gate.weight", "mlp.up.weight", "mlp.down.weight")
ROUTERS = ("zero", "random", "kmeans")
DEFAULT_THETA = 10000.0  # the dense classes' RoPE base when a config states none (Mixtral's own default differs)


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from the parts (stable across runs and Python versions, unlike hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# -- plan functions ---------------------------------------------------------------------------------------

class ExpertTensor:
    """One expert's gate/up (rows) or down (columns) projection: a slice of the dense tensor.

    ``scale`` multiplies the result (down projections of fine-grained and
    shared experts); ``drop`` = (seed parts, count) re-initializes ``count``
    of the slice's units, chosen per expert, from a normal with the dense
    tensor's mean and standard deviation (Drop-Upcycling).
    """

    def __init__(self, axis: int, start: int, stop: int, scale: float = 1.0,
                 drop: tuple[tuple, int] | None = None, role: str = ""):
        self.axis, self.start, self.stop, self.scale, self.drop, self.role = axis, start, stop, scale, drop, role

    def __call__(self, w):
        import torch

        part = w.narrow(self.axis, self.start, self.stop - self.start)
        if self.drop is None and self.scale == 1.0:
            return part.contiguous()
        out = part.to(torch.float32).clone()
        if self.drop is not None:
            parts, count = self.drop
            units = dropped_units(parts, self.stop - self.start, count)
            ref = w.to(torch.float32)
            g = torch.Generator().manual_seed(stable_seed(*parts, self.role))
            shape = list(out.shape)
            shape[self.axis] = count
            fresh = torch.randn(shape, generator=g) * ref.std() + ref.mean()
            out.index_copy_(self.axis, units, fresh)
        if self.scale != 1.0:
            out.mul_(self.scale)
        return out.to(w.dtype).contiguous()

    def __repr__(self) -> str:
        return f"ExpertTensor(axis={self.axis}, {self.start}:{self.stop}, scale={self.scale}, drop={self.drop})"


def dropped_units(parts: tuple, units: int, count: int):
    """The `count` units of an expert that Drop-Upcycling re-initializes (the same for its gate, up and down)."""
    import torch

    g = torch.Generator().manual_seed(stable_seed(*parts, "units"))
    return torch.randperm(units, generator=g)[:count].sort().values


class RouterInit:
    """The router weight [experts, hidden] of one layer: zero, or small random rows tied within each copy."""

    def __init__(self, kind: str, experts: int, per_copy: int, hidden: int, std: float, seed_parts: tuple,
                 dtype: str, rows=None):
        self.kind, self.experts, self.per_copy, self.hidden = kind, experts, per_copy, hidden
        self.std, self.seed_parts, self.dtype, self.rows = std, seed_parts, dtype, rows

    def __call__(self):
        import torch

        from warmstart.checkpoint.dtypes import code_to_torch

        copies = self.experts // self.per_copy
        if self.kind == "zero":
            w = torch.zeros(copies, self.hidden)
        elif self.kind == "random":
            g = torch.Generator().manual_seed(stable_seed(*self.seed_parts))
            w = torch.randn(copies, self.hidden, generator=g) * self.std
        else:  # data-driven: rows computed elsewhere (k-means centroids), one per copy
            w = self.rows()
        return w.repeat_interleave(self.per_copy, dim=0).to(code_to_torch(self.dtype)).contiguous()

    def __repr__(self) -> str:
        return f"RouterInit({self.kind}, experts={self.experts}, per_copy={self.per_copy})"


# -- validation ------------------------------------------------------------------------------------------

def _whole(model, name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(name, f"upcycle: {name.replace('_', '-')} must be a whole number, got {value!r}",
                         model.checkpoint.path)
    if value < low:
        raise ParamError(name, f"upcycle: {name.replace('_', '-')} must be at least {low}, got {value}",
                         model.checkpoint.path)
    return value


def check_dense(model, fmt: MoeFormat) -> None:
    """Refuse dense models whose MLP or attention the MoE class cannot represent."""
    src = model.checkpoint.path
    if not model.family.gated_mlp:
        raise WarmstartError(f"upcycle needs a gated MLP (gate, up, down); {model.family.name} has none", src)
    for layer in range(model.dims.layers):
        roles = model.layout.block_roles_of(layer)
        missing = [r for r in MLP_ROLES if r not in roles]
        if missing:
            raise WarmstartError(f"layer {layer} has no {missing[0]} tensor: not a gated-MLP block", src)
        extra = sorted(r for r in roles if r.startswith("mlp.") and r not in MLP_ROLES)
        if extra:
            raise WarmstartError(f"{fmt.model_type} experts have no {extra[0]} (the dense MLP has biases)", src)
        if fmt.attention_bias_field is None:
            biased = sorted(r for r in roles if r.startswith("attn.") and r.endswith(".bias"))
            if biased:
                raise WarmstartError(f"{fmt.model_type} attention has no biases, but layer {layer} has "
                                     f"{roles[biased[0]]}", src)
    strays = [n for n in model.layout.unknown if ".mlp." in n or "block_sparse_moe" in n]
    if strays:
        raise WarmstartError(f"tensor {strays[0]} is part of the MLP but not one the {model.family.name} spec "
                             "knows; cannot upcycle it", src)
    if model.config.get("mlp_bias") or (fmt.attention_bias_field is None and model.config.get("attention_bias")):
        raise WarmstartError(f"config asks for biases that {fmt.model_type} does not have "
                             "(mlp_bias / attention_bias)", src)


# -- the operation ---------------------------------------------------------------------------------------

@register("upcycle", "moe")
def upcycle(model, *, experts: int, top_k: int, shared_experts: int = 0, granularity: int = 1,
            drop_ratio: float = 0.0, router: str = "random", router_std: float | None = None,
            corpus: str | None = None, calibration_tokens: int = 4096, norm_topk: bool = True,
            aux_loss_coef: float = 0.01, output_router_logits: bool = False, seed: int = 0) -> Transform:
    """Sparse Upcycling: dense MLP -> E experts (copies or slices) and a router, in transformers' MoE class."""
    src = model.checkpoint.path
    fmt = moe_format_for(model.config.get("model_type"), src)
    E = _whole(model, "experts", experts, 1)
    K = _whole(model, "top_k", top_k, 1)
    S = _whole(model, "shared_experts", shared_experts, 0)
    G = _whole(model, "granularity", granularity, 1)
    seed = _whole(model, "seed", seed, 0)
    if K > E:
        raise ParamError("top_k", f"upcycle: top-k {K} is more than the {E} experts", src)
    I = model.dims.intermediate
    if I % G:
        raise ParamError("granularity", f"upcycle: granularity {G} does not divide the intermediate size {I}", src)
    if S and not fmt.has_shared:
        raise ParamError("shared_experts", f"upcycle: {fmt.model_type} has no shared experts (Qwen2-MoE has)", src)
    if S >= G:
        raise ParamError("shared_experts", f"upcycle: {S} shared experts take {S} of the {G} slices of the MLP "
                         f"(--granularity {G}); at least one slice must remain for the routed experts: use "
                         f"--granularity above {S}", src)
    R = G - S  # routed slices per copy
    if E % R:
        raise ParamError("experts", f"upcycle: {E} experts are not whole copies of the {R} routed slices "
                         f"(granularity {G} - shared {S}); use a multiple of {R}", src)
    try:
        drop = float(drop_ratio)
    except (TypeError, ValueError):
        raise ParamError("drop_ratio", f"upcycle: drop ratio must be a number, got {drop_ratio!r}", src) from None
    if not 0.0 <= drop <= 1.0:  # also refuses NaN
        raise ParamError("drop_ratio", f"upcycle: drop ratio must be within [0, 1], got {drop_ratio!r}", src)
    if router not in ROUTERS:
        raise ParamError("router", f"upcycle: router must be one of {', '.join(ROUTERS)}, got {router!r}", src)
    if router == "kmeans" and not corpus:
        raise ParamError("corpus", "upcycle: --router kmeans clusters hidden states of a calibration text: "
                         "give --corpus FILE", src)
    if corpus and router != "kmeans":
        raise ParamError("corpus", "upcycle: --corpus is only used by --router kmeans", src)
    if not norm_topk and fmt.norm_topk_field is None:
        raise ParamError("norm_topk", f"upcycle: {fmt.model_type} always renormalizes its top-k weights", src)
    std = router_std if router_std is not None else float(model.config.get("initializer_range") or 0.02)
    if not (isinstance(std, (int, float)) and std >= 0 and std == std and std != float("inf")):
        raise ParamError("router_std", f"upcycle: router std must be a finite number >= 0, got {router_std!r}", src)
    try:
        aux = float(aux_loss_coef)
    except (TypeError, ValueError):
        aux = float("nan")
    if not (aux >= 0 and aux != float("inf")):
        raise ParamError("aux_loss_coef", f"upcycle: aux loss coefficient must be a finite number >= 0, "
                         f"got {aux_loss_coef!r}", src)
    check_dense(model, fmt)

    m = I // G
    n_drop = int(round(drop * m))
    plan, maps = _plan(model, fmt, E=E, R=R, S=S, m=m, n_drop=n_drop, router=router, std=float(std), seed=seed,
                       corpus=corpus, calibration_tokens=calibration_tokens)
    config = moe_config(model, fmt, E=E, K=K, S=S, m=m, norm_topk=norm_topk, aux=aux)
    config["output_router_logits"] = bool(output_router_logits)  # true: transformers adds the balancing loss
    exact, notes = exactness(fmt, E=E, K=K, S=S, G=G, R=R, n_drop=n_drop, drop=drop, router=router,
                             norm_topk=norm_topk)
    return Transform(plan, config, exact, notes, maps)


def exactness(fmt: MoeFormat, *, E: int, K: int, S: int, G: int, R: int, n_drop: int, drop: float,
              router: str, norm_topk: bool) -> tuple[bool, list[str]]:
    """Whether the MoE computes the dense function by construction, and the notes that say why (not)."""
    layout = f"{E} experts, top-{K}, "
    layout += "each a copy of the MLP" if G == 1 else f"granularity {G}: each expert 1/{G} of the MLP's units, " \
        f"down projection x{R}"
    if S:
        layout += f", {S} slice(s) as the shared expert (x2 behind its zero-initialized sigmoid gate)"
    layout += f", router {router}" + (" (rows tied within each copy)" if R > 1 else "")
    notes = [f"{fmt.model_type}: {layout}"]
    reasons = []
    renormalized = fmt.norm_topk_field is None or norm_topk
    if not renormalized and K < E:
        reasons.append("the top-k weights are not renormalized, so they sum to less than one")
    if R > 1 and K < E:
        if K % R:
            reasons.append(f"top-k {K} is not a multiple of the {R} routed slices of a copy, so the chosen experts "
                           "cannot always make up whole copies of the MLP")
        elif router == "zero":
            reasons.append("with the zero router all experts tie and the top-k kernel picks no defined set (not "
                           "whole copies); use --router random or kmeans, whose rows tie only within a copy")
    if n_drop:
        reasons.append(f"Drop-Upcycling re-initializes {n_drop} units ({drop:g}) of each expert")
    elif drop > 0:
        notes.append(f"drop ratio {drop:g} rounds to no unit of an expert: nothing re-initialized")
    if reasons:
        notes.append("not exact: " + "; ".join(reasons))
        return False, notes
    why = "identical experts" if R == 1 else "whole copies of the sliced MLP are chosen"
    notes.append(f"exact: {why} and top-k weights summing to one compute the dense MLP whatever the router")
    return True, notes


def moe_config(model, fmt: MoeFormat, *, E: int, K: int, S: int, m: int, norm_topk: bool, aux: float) -> dict:
    """The MoE class's config.json: the dense config with the MoE fields set."""
    dense = model.config
    out = {k: v for k, v in dense.items() if k not in fmt.drop_config}
    out["model_type"] = fmt.model_type
    out["architectures"] = [fmt.architecture]
    if "rope_parameters" not in dense and "rope_theta" not in dense:
        out["rope_theta"] = DEFAULT_THETA
    out[fmt.experts_field] = E
    out[fmt.top_k_field] = K
    out[fmt.expert_size_field] = m
    if fmt.norm_topk_field is not None:
        out[fmt.norm_topk_field] = bool(norm_topk)
    if fmt.shared_size_field is not None:
        out[fmt.shared_size_field] = S * m
    out[fmt.aux_loss_field] = aux
    if fmt.attention_bias_field is not None:
        out[fmt.attention_bias_field] = model.layout.has("attn.q.bias", 0)
    out.update(fmt.extra_config)
    return out


def _plan(model, fmt: MoeFormat, *, E: int, R: int, S: int, m: int, n_drop: int, router: str, std: float,
          seed: int, corpus: str | None, calibration_tokens: int) -> tuple[Plan, dict]:
    ckpt = model.checkpoint
    layout = model.layout
    hidden = model.dims.hidden
    mlp_names: dict[str, tuple[int, str]] = {}
    for layer in range(model.dims.layers):
        for role in MLP_ROLES:
            mlp_names[layout.name(role, layer)] = (layer, role)
    centroids = None
    if router == "kmeans":
        from warmstart.ops.upcycle_router import KMeansRouter

        centroids = KMeansRouter(model, corpus, copies=E // R, seed=seed, max_tokens=calibration_tokens)
    steps: list[Step] = []
    done: set[int] = set()
    expert_of: dict[str, tuple[int, int]] = {}
    for name in ckpt.names():
        if name not in mlp_names:
            info = ckpt.info(name)
            steps.append(Step(name, tuple(info.shape), info.dtype, (Ref(0, name),)))
            continue
        layer, _ = mlp_names[name]
        if layer in done:
            continue
        done.add(layer)
        refs = {r: Ref(0, layout.name(r, layer)) for r in MLP_ROLES}
        infos = {r: ckpt.info(layout.name(r, layer)) for r in MLP_ROLES}
        dtype = infos["mlp.gate.weight"].dtype
        rows = (lambda c=centroids, i=layer: c.rows(i)) if centroids is not None else None
        steps.append(Step(fmt.router_name(layer), (E, hidden), dtype, (),
                          RouterInit(router, E, R, hidden, std, ("router", seed, layer), dtype, rows),
                          note=f"router ({router})"))
        for e in range(E):
            start = (S + e % R) * m
            drop = (("drop", seed, layer, e), n_drop) if n_drop else None
            for role in MLP_ROLES:
                axis = 1 if role == "mlp.down.weight" else 0
                scale = float(R) if role == "mlp.down.weight" else 1.0
                shape = list(infos[role].shape)
                shape[axis] = m
                out = fmt.expert_name(role, layer, e)
                if start == 0 and m == infos[role].shape[axis] and drop is None and scale == 1.0:
                    fn = identity  # a whole copy: the executor moves bytes
                else:
                    fn = ExpertTensor(axis, start, start + m, scale, drop, role)
                steps.append(Step(out, tuple(shape), infos[role].dtype, (refs[role],), fn,
                                  note=f"expert {e} of copy {e // R}"))
                expert_of[out] = (layer, e)
        if fmt.has_shared:
            for role in MLP_ROLES:
                axis = 1 if role == "mlp.down.weight" else 0
                scale = 2.0 if role == "mlp.down.weight" else 1.0  # sigmoid(0) = 1/2 in front of it
                shape = list(infos[role].shape)
                shape[axis] = S * m
                steps.append(Step(fmt.shared[role].format(i=layer), tuple(shape), infos[role].dtype,
                                  (refs[role],), ExpertTensor(axis, 0, S * m, scale, None, role),
                                  note="shared expert"))
            steps.append(Step(fmt.shared_gate.format(i=layer), (1, hidden), dtype, (), Zeros((1, hidden), dtype),
                              note="shared expert gate (sigmoid(0) = 1/2)"))
    maps = {"experts": expert_of, "copies": E // R, "slice_units": m, "routed_slices": R, "shared_slices": S}
    return Plan([ckpt], steps), maps
