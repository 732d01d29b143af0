"""LoRA adapter initializations, each a registered function.

A method takes a :class:`Context` (the loaded model, the request, the
calibration batches) and returns a PEFT model whose ``default`` adapter holds
the initial factors and whose base layers hold what the adapter is added to.

Delegated to PEFT (never re-implemented here): ``default`` and ``gaussian``
(A random, B zero), ``pissa`` and ``pissa_niter_N`` (principal singular
vectors; fast randomized SVD), ``olora`` (QR), ``eva`` (SVD of layer
inputs), ``corda`` (context-oriented decomposition), ``lora-ga`` (gradient
approximation) and ``loftq`` (quantization-aware; PEFT 0.21 computes it with
bitsandbytes on a CUDA/XPU device only).

Added here, because PEFT has them not:

- ``init-b``: the other order of "The Impact of Initialization on LoRA
  Finetuning Dynamics": A zero, B random (PEFT's default is B zero, A random);
- ``nlora``: NLoRA's Nyström initialization, "NLoRA: Nyström-Initiated
  Low-Rank Adaptation for Large Language Models";
- ``lora-sb``: the r x r core fitted to the first full fine-tuning step,
  "Initialization using Update Approximation is a Silver Bullet for Extremely
  Efficient Low-Rank Fine-Tuning".

Methods whose initial adapter is not zero either take its product out of the
base (``moves_base``: the base written next to the adapter is the residual)
or start from a different function on purpose (``lora-sb``).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from warmstart.adapter.config import AdapterSpec
from warmstart.errors import WarmstartError
from warmstart.registry import Registry
from warmstart.registry import summary as first_line


@dataclass
class Context:
    model: Any  # a transformers model, loaded in the checkpoint's dtype
    spec: AdapterSpec
    target_modules: list[str]
    batches: list[dict] | None = None  # {"input_ids", "attention_mask"} tensors, when the method needs data
    task_type: str = "CAUSAL_LM"  # PEFT's task type: FEATURE_EXTRACTION for an encoder without an LM head
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def option(self, name: str, default):
        value = self.spec.options.get(name)
        return default if value is None else value


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[[Context], Any]
    needs_corpus: bool  # data-driven: statistics from --corpus
    moves_base: bool  # the initial adapter's product is taken out of the base weights
    full_precision: bool  # needs unquantized weights (SVD, QR, gradients of the weights)
    by: str  # "peft" or "warmstart"
    exact: bool  # residual base + adapter == source at initialization
    summary: str
    needs_loss: bool = False  # gradients of the weights: a language-model head to compute a loss with


METHODS: Registry[Method] = Registry("adapter method")
NITER = re.compile(r"pissa_niter_(\d+)$")


def register(name: str, *, needs_corpus: bool = False, moves_base: bool = False, full_precision: bool = False,
             by: str = "peft", exact: bool = True, summary: str = "", needs_loss: bool = False):
    """Decorator: make `fn(ctx) -> PeftModel` available as adapter method `name`."""

    return METHODS.decorator(name, lambda fn: Method(name, fn, needs_corpus, moves_base, full_precision, by, exact,
                                                     first_line(fn, summary), needs_loss))


def get(name: str) -> Method:
    """The method called `name`; ``pissa_niter_N`` is PiSSA with N subspace iterations."""
    if NITER.match(name):
        return METHODS.get("pissa_niter_N")
    if name == "pissa_niter_N":
        raise WarmstartError("pissa_niter_N takes a number of subspace iterations: pissa_niter_4, pissa_niter_16 ...")
    return METHODS.get(name)


# -- helpers -----------------------------------------------------------------------
def lora_config(ctx: Context, init, **extra):
    from peft import LoraConfig

    from warmstart.adapter.config import peft_targets

    return LoraConfig(r=ctx.spec.rank, lora_alpha=ctx.spec.lora_alpha, lora_dropout=0.0,
                      target_modules=peft_targets(ctx.target_modules), init_lora_weights=init,
                      task_type=ctx.task_type, **extra)


def peft_model(ctx: Context, config):
    import torch
    from peft import get_peft_model

    torch.manual_seed(ctx.spec.seed)  # PEFT draws random factors from the global generator
    return get_peft_model(ctx.model, config)


def lora_layers(model):
    """(module name without PEFT's prefix, LoraLayer) for every adapted layer."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield (name[len(prefix):] if name.startswith(prefix) else name), module


def _weight_fp64(layer):
    """The base weight as (out, in) float64, whatever the layer's storage convention."""
    w = layer.get_base_layer().weight.detach().double()
    return w.T if getattr(layer, "fan_in_fan_out", False) else w


def _set_factors(layer, b, a, subtract: bool) -> None:
    """Store B (out x r) and A (r x in); optionally take scaling * B @ A out of the base weight."""
    import torch

    base = layer.get_base_layer()
    s = layer.scaling["default"]
    la, lb = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        la.copy_(a.to(la.dtype))
        lb.copy_(b.to(lb.dtype))
        if subtract:
            delta = s * (b.double() @ a.double())
            if getattr(layer, "fan_in_fan_out", False):
                delta = delta.T
            base.weight.copy_((base.weight.double() - delta).to(base.weight.dtype))


def unreached(method: str) -> WarmstartError:
    return WarmstartError(f"{method}: some target modules never receive input from the text corpus (a vision "
                          "tower?); name the language model's modules, e.g. --target-modules '.*language_model.*(q|v)_proj'")


def _data_time(ctx: Context, what: str, t0: float) -> None:
    ctx.timings["statistics_s"] = time.perf_counter() - t0
    ctx.notes.append(f"statistics ({what}) took {ctx.timings['statistics_s']:.2f} s on {len(ctx.batches or [])} batches")


# -- delegated to PEFT -------------------------------------------------------------
@register("default")
def default_method(ctx: Context):
    """PEFT's default: A Kaiming-uniform, B zero (Init[A] in "The Impact of Initialization on LoRA Finetuning Dynamics")."""
    return peft_model(ctx, lora_config(ctx, True))


@register("gaussian")
def gaussian_method(ctx: Context):
    """PEFT's gaussian: A ~ N(0, 1/r), B zero."""
    return peft_model(ctx, lora_config(ctx, "gaussian"))


@register("pissa", moves_base=True, full_precision=True)
def pissa_method(ctx: Context):
    """PiSSA: the adapter holds the top-r singular triplets of W, the base the rest (exact SVD, PEFT)."""
    return peft_model(ctx, lora_config(ctx, "pissa"))


@register("pissa_niter_N", moves_base=True, full_precision=True)
def pissa_niter_method(ctx: Context):
    """PiSSA with a randomized SVD of N subspace iterations (PEFT's fast variant, pissa_niter_N)."""
    return peft_model(ctx, lora_config(ctx, ctx.spec.method))


@register("olora", moves_base=True, full_precision=True)
def olora_method(ctx: Context):
    """OLoRA: the adapter holds the first r columns of W's QR decomposition, the base the rest (PEFT)."""
    return peft_model(ctx, lora_config(ctx, "olora"))


class EvaLimit:
    """PEFT's EVA cycles over the calibration batches until every layer's components converge, with no bound:
    with few batches and many layers some components oscillate for hundreds of passes (all-linear on SmolLM2,
    two batches: 13 layers still moving after 200 forwards). After `limit` forwards the remaining layers are
    declared converged, which makes PEFT keep their current estimate and stop."""

    def __init__(self, limit: int):
        self.limit = limit
        self.calls = 0
        self.stopped = 0

    def __call__(self, model, inputs):
        from peft.tuners.lora.eva import _Hook

        if self.calls > self.limit:  # the first call is PEFT's pass that hashes the layers' inputs
            hooks = [h for m in model.modules() for h in m._forward_hooks.values() if isinstance(h, _Hook)]
            moving = [h for h in hooks if hasattr(h, "converged") and not bool(h.converged.all())]
            self.stopped = max(self.stopped, len(moving))
            for h in moving:
                h.converged[:] = True
            return None
        self.calls += 1
        return model(**inputs)


@register("eva", needs_corpus=True)
def eva_method(ctx: Context):
    """EVA: A from the right singular vectors of each layer's inputs on the corpus, B zero (PEFT)."""
    import torch
    from peft.tuners.lora.config import EvaConfig
    from peft.tuners.lora.eva import get_eva_state_dict, initialize_lora_eva_weights

    # rho=1: every layer keeps rank r, so methods compare at the same budget (PEFT's default 2 redistributes).
    config = lora_config(ctx, "eva", eva_config=EvaConfig(rho=float(ctx.option("eva_rho", 1.0))))
    model = peft_model(ctx, config)
    t0 = time.perf_counter()
    limit = EvaLimit(int(ctx.option("eva_max_forwards", 0)) or max(400, 50 * len(ctx.batches)))
    try:
        with torch.inference_mode():
            state = get_eva_state_dict(model, dataloader=ctx.batches, forward_fn=limit, show_progress_bar=False)
    except IndexError:  # PEFT's hook found a target layer that no batch reached
        raise unreached("eva") from None
    ctx.timings["eva_forwards"] = float(max(0, limit.calls - 1))
    if limit.stopped:
        ctx.notes.append(f"eva: {limit.stopped} of the adapted layers had not converged after {limit.calls - 1} "
                         "forward passes; they keep the components estimated so far (more --batches converge "
                         "faster)")
    state = {k: v.clone() for k, v in state.items()}  # out of inference mode, so the factors can be trained
    initialize_lora_eva_weights(model, eva_state_dict=state, show_progress_bar=False)
    _data_time(ctx, "EVA layer-input SVD", t0)
    return model


@register("corda", needs_corpus=True, moves_base=True, full_precision=True)
def corda_method(ctx: Context):
    """CorDA: decomposition of W times the corpus' input covariance; instruction-previewed (ipm) by default (PEFT)."""
    import torch
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda

    config = lora_config(ctx, "corda", corda_config=CordaConfig(corda_method=ctx.option("corda_mode", "ipm")))

    def run_model():  # PEFT's covariance hook takes one sequence per forward
        for batch in ctx.batches:
            for i in range(batch["input_ids"].shape[0]):
                ctx.model(**{k: v[i:i + 1] for k, v in batch.items()})

    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            preprocess_corda(ctx.model, config, run_model=run_model)
    except ZeroDivisionError:  # a target layer's covariance saw no sample
        raise unreached("corda") from None
    _data_time(ctx, "CorDA covariance and decomposition", t0)
    return peft_model(ctx, config)


@register("lora-ga", needs_corpus=True, moves_base=True, full_precision=True, needs_loss=True)
def lora_ga_method(ctx: Context):
    """LoRA-GA: factors from the SVD of the averaged full-weight gradient on the corpus (PEFT)."""
    from peft.tuners.lora.config import LoraGAConfig
    from peft.tuners.lora.loraga import preprocess_loraga

    config = lora_config(ctx, "lora_ga", lora_ga_config=LoraGAConfig())

    def train_step():
        for batch in ctx.batches:
            out = ctx.model(**batch, labels=batch["input_ids"])
            out.loss.backward()

    t0 = time.perf_counter()
    preprocess_loraga(ctx.model, config, train_step)  # needs gradients: no inference mode here
    _data_time(ctx, "LoRA-GA gradient estimate", t0)
    return peft_model(ctx, config)


@register("loftq", moves_base=True, full_precision=True, exact=False)
def loftq_method(ctx: Context):
    """LoftQ: base quantized, adapter fitted to the quantization error (PEFT; needs bitsandbytes on CUDA/XPU)."""
    from peft import LoftQConfig

    return peft_model(ctx, lora_config(ctx, "loftq", loftq_config=LoftQConfig(loftq_bits=int(ctx.option("loftq_bits", 4)))))


def loftq_unavailable() -> str | None:
    """Why LoftQ cannot run here (PEFT 0.21 computes it with bitsandbytes on a CUDA or XPU device)."""
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        return "loftq needs bitsandbytes (PEFT computes LoftQ with it), which is not installed"
    if not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return "loftq needs a CUDA or XPU device (PEFT 0.21 quantizes there); none is available"
    return None


# -- added here --------------------------------------------------------------------
@register("init-b", by="warmstart")
def init_b_method(ctx: Context):
    """Init[B] of "The Impact of Initialization on LoRA Finetuning Dynamics": A zero, B Kaiming-uniform."""
    import torch

    model = peft_model(ctx, lora_config(ctx, True))
    gen = torch.Generator().manual_seed(ctx.spec.seed)
    for _, layer in lora_layers(model):
        b = layer.lora_B["default"].weight
        bound = 1.0 / math.sqrt(b.shape[1])  # kaiming_uniform(a=sqrt(5)) of an r -> out linear layer
        with torch.no_grad():
            b.copy_((torch.rand(b.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
            layer.lora_A["default"].weight.zero_()
    return model


def nystrom_factors(weight, rank: int, scaling: float, generator, oversample: int = 0):
    """NLoRA's Nyström initialization of one (out x in) matrix W, folded into PEFT's two factors.

    Sketches, drawn in this order from `generator` in float64, standard
    normal: Omega (in x r), then Psi (out x (r + oversample)). The adapter's
    product is the generalized Nyström approximation

        scaling * B @ A = (W Omega) pinv(Psi^T W Omega) (Psi^T W),

    NLoRA's three factors C = W Omega, N = pinv(Psi^T W Omega), R = Psi^T W.
    PEFT has no three-factor layer, so the product is split in two, balanced
    by an SVD: with W Omega = Q T (QR), the product is Q M, M = pinv(Psi^T Q)
    Psi^T W = U S V^T, B = Q U S^1/2 / sqrt(scaling), A = S^1/2 V^T /
    sqrt(scaling). oversample = 0 is the plain form; a few extra columns of
    Psi keep pinv well conditioned, so the product (and the residual base,
    stored in the checkpoint's dtype) stays near W's scale.
    """
    import torch

    w = weight.double()
    out_dim, in_dim = w.shape
    omega = torch.randn(in_dim, rank, generator=generator, dtype=torch.float64)
    psi = torch.randn(out_dim, rank + oversample, generator=generator, dtype=torch.float64)
    q, _ = torch.linalg.qr(w @ omega)
    m = torch.linalg.pinv(psi.T @ q) @ (psi.T @ w)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    root = s.sqrt() / math.sqrt(scaling)
    return (q @ u) * root, root[:, None] * vh


@register("nlora", moves_base=True, full_precision=True, by="warmstart")
def nlora_method(ctx: Context):
    """NLoRA: adapter = generalized Nyström approximation of W from Gaussian sketches, base = the rest."""
    import torch

    model = peft_model(ctx, lora_config(ctx, True))
    gen = torch.Generator().manual_seed(ctx.spec.seed)
    for _, layer in lora_layers(model):
        b, a = nystrom_factors(_weight_fp64(layer), ctx.spec.rank, layer.scaling["default"], gen,
                               oversample=int(ctx.option("nlora_oversample", ctx.spec.rank)))
        _set_factors(layer, b, a, subtract=True)
    return model


def first_step_update(grad, lr: float, rule: str):
    """The first full fine-tuning step from the mean gradient: Adam's is -lr * sign(g), SGD's -lr * g."""
    if rule == "adam":
        return -lr * grad.sign()
    if rule == "sgd":
        return -lr * grad
    raise WarmstartError(f"unknown first-step rule {rule!r} (adam or sgd)")


def silver_bullet_factors(update, rank: int, scaling: float):
    """LoRA-SB: B = U_r, R = S_r / scaling, A = V_r^T from the truncated SVD of the first update.

    Returns (B, R, A). With B and A fixed and orthonormal, R is the
    least-squares fit of the update in their span (R = B^T dW A^T), and
    scaling * B R A is the best rank-r approximation of dW (Eckart-Young).
    """
    import torch

    u, s, vh = torch.linalg.svd(update.double(), full_matrices=False)
    return u[:, :rank], torch.diag(s[:rank] / scaling), vh[:rank]


@register("lora-sb", needs_corpus=True, full_precision=True, by="warmstart", exact=False, needs_loss=True)
def lora_sb_method(ctx: Context):
    """LoRA-SB: the adapter starts at the best rank-r approximation of the first full fine-tuning step."""

    model = peft_model(ctx, lora_config(ctx, True))
    layers = list(lora_layers(model))
    lr = float(ctx.option("sb_lr", 1e-4))
    rule = str(ctx.option("sb_rule", "adam"))
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    weights = [layer.get_base_layer().weight for _, layer in layers]
    for w in weights:
        w.requires_grad_(True)
        w.grad = None
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()  # no dropout: the gradient of the model as it is
    with model.disable_adapter():
        for batch in ctx.batches:
            out = model(**batch, labels=batch["input_ids"])
            (out.loss / len(ctx.batches)).backward()
    model.train(was_training)
    _data_time(ctx, "LoRA-SB first-step gradient", t0)
    untouched = []
    for (name, layer), w in zip(layers, weights):
        if w.grad is None:  # the text never reaches it (a vision tower): no first step to approximate
            untouched.append(name)
            continue
        grad = w.grad.detach().double()
        if getattr(layer, "fan_in_fan_out", False):
            grad = grad.T
        w.grad = None
        b, core, a = silver_bullet_factors(first_step_update(grad, lr, rule), ctx.spec.rank, layer.scaling["default"])
        _set_factors(layer, b, core @ a, subtract=False)  # R folded into A: PEFT trains two factors
    for n, p in model.named_parameters():
        p.requires_grad_(saved.get(n, False))
    ctx.notes.append(f"lora-sb: first step {rule}, lr {lr:g}; the model starts one approximate step in (not exact)")
    if untouched:
        ctx.notes.append(f"lora-sb: {len(untouched)} adapted layers get no gradient from the corpus (e.g. "
                         f"{untouched[0]}) and keep PEFT's default initialization (B = 0)")
    return model
