"""The bench recipe: a YAML file validated with pydantic, errors named by field path.

A recipe says what to compare and on what::

    name: demo
    corpus: shakespeare            # or stdlib, or a list of files / folders
    tokenizer: {vocab_size: 2048}  # a BPE trained on the training split
    model: {hidden: 128, layers: 4, heads: 4, kv_heads: 2, intermediate: 384, seq_len: 128}
    train: {steps: 600, batch_size: 16, lr: 2.0e-3, schedule: "cosine(warmup=30, min_ratio=0.1)"}
    sources:
      small:                       # pretrained by the bench itself, cached, shared by the arms
        model: {hidden: 64, layers: 2, heads: 2, kv_heads: 1, intermediate: 192}
        steps: 600
    arms:
      - name: scratch
      - name: grown
        source: small
        grow: [{op: hyperclone, mult: 2, noise_snr_db: 10}, {op: stack, layers: 4}]

An arm without ``source`` or ``checkpoint`` trains the target from scratch.
An arm with a ``source`` (a bench-trained source) or a ``checkpoint`` (an
existing Hugging Face directory) starts from it, after the ``grow`` chain of
registered operations if one is given; without ``grow`` it continues the
source as is (continued pretraining). Every arm may override ``lr``,
``schedule`` and the training ``steps``/``tokens``, and may shrink and perturb
its start (``shrink_perturb: {shrink: 0.5, noise: 0.01}``). ``prune`` cuts a
checkpoint to the target shape by importance, and ``distill`` trains on a
teacher's soft targets (docs/prune.md); model paths may be ``asset:smollm2``.
``adapter: {method: pissa, rank: 8, targets: [q_proj, v_proj]}`` fine-tunes a
LoRA adapter of a registered initialization on the checkpoint (or source), the
base frozen (:mod:`warmstart.bench.adapter_arm`); such arms are measured against
a reference adapter arm, ``target: {arm: default}``.

Errors read ``arms[2].grow.layers: stack repeats all 6 layers, ...``: the
path of the field, then the problem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from warmstart.arch.spec import describe
from warmstart.bench.adapter_arm import AdapterArm
from warmstart.errors import SpecError, WarmstartError
from warmstart.inputs import MAX_VOCAB, check_elements
from warmstart.ops import registry
from warmstart.ops.chain import parse_steps
from warmstart.plan import Plan, PlannedCheckpoint, Step
from warmstart.safe_yaml import load_yaml


class RecipeError(SpecError):
    """A recipe that does not parse or validate; the message starts with the field path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """A Llama-family decoder: the sizes that matter for the bench."""

    hidden: int = Field(gt=0)
    layers: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int | None = Field(default=None, gt=0)
    intermediate: int | None = Field(default=None, gt=0)
    seq_len: int | None = Field(default=None, gt=1)
    tie_embeddings: bool = True
    rope_theta: float = Field(default=10000.0, gt=0)

    @model_validator(mode="after")
    def _shapes(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        kv = self.kv_heads or self.heads
        if self.heads % kv:
            raise ValueError(f"heads {self.heads} is not a multiple of kv_heads {kv}")
        return self

    def hf_config(self, vocab_size: int, seq_len: int) -> dict:
        return {
            "model_type": "llama",
            "vocab_size": int(vocab_size),
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate or 3 * self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads or self.heads,
            "max_position_embeddings": int(seq_len),
            "tie_word_embeddings": self.tie_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": 1e-5,
            "attention_dropout": 0.0,
        }


class TokenizerSpec(_Strict):
    vocab_size: int = Field(default=2048, ge=260, le=2**31)
    path: str | None = None  # an existing tokenizer.json or a folder holding one (then vocab_size is ignored)


class Budget(_Strict):
    """Steps, or tokens (converted to whole steps of batch_size x seq_len tokens)."""

    steps: int | None = Field(default=None, gt=0)
    tokens: int | None = Field(default=None, gt=0)
    lr: float | None = Field(default=None, gt=0)
    schedule: str | dict | None = None


class TrainSpec(Budget):
    batch_size: int = Field(default=16, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(default=1.0, ge=0)
    eval_every: int = Field(default=50, gt=0)
    eval_batches: int = Field(default=8, gt=0)
    checkpoint_every: int = Field(default=100, ge=0)
    precision: Literal["fp32", "bf16"] = "fp32"

    @model_validator(mode="after")
    def _budget(self):
        if (self.steps is None) == (self.tokens is None):
            raise ValueError("give exactly one of steps and tokens")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")
        return self


class SourceSpec(Budget):
    """A smaller model the bench pretrains itself, then grows (its cost is counted)."""

    model: ModelSpec
    corpus: str | list[str] | None = None  # default: the recipe's corpus

    @model_validator(mode="after")
    def _budget(self):
        if (self.steps is None) == (self.tokens is None):
            raise ValueError("give exactly one of steps and tokens")
        return self


PeakLR = Annotated[float, Field(gt=0)]
MAX_GRID = 64  # peak learning rates per arm


def _lr_list(v, what: str):
    if v is None:
        return v
    if len(set(v)) != len(v):
        raise ValueError(f"{what} lists a learning rate twice: {v}")
    if len(v) > MAX_GRID:
        raise ValueError(f"{what} has {len(v)} learning rates, more than the limit of {MAX_GRID}")
    return sorted(v)


class ShrinkPerturb(_Strict):
    """"On Warm-Starting Neural Network Training": theta <- shrink * theta + noise * theta_fresh_init."""

    shrink: float = Field(gt=0, le=1)
    noise: float = Field(default=0.0, ge=0)


class PruneSpec(_Strict):
    """Importance pruning of the arm's start to the target shape (see :mod:`warmstart.ops.prune`)."""

    importance: Literal["activation", "magnitude", "select"] = "activation"
    depth_importance: Literal["block-influence", "loss", "even", "first"] | None = None
    batches: int = Field(default=8, gt=0)  # calibration windows: batches x batch_size, from the training split
    batch_size: int = Field(default=4, gt=0)


class DistillSpec(_Strict):
    """Train on alpha * CE + (1 - alpha) * T^2 * KL to a teacher (see :mod:`warmstart.bench.distill`)."""

    teacher: str | None = None  # a model directory; default: the arm's checkpoint
    alpha: float = Field(default=0.5, ge=0, le=1)
    temperature: float = Field(default=1.0, gt=0)
    top_k: int = Field(default=64, gt=0)  # cached top-k logits per position
    live: bool = False  # run the teacher at every step instead of reading its cache
    windows: int | None = Field(default=None, gt=0)  # cached windows (default: the whole training split)
    norms_only: bool = False  # PERP: train only norm weights and biases


class ArmSpec(Budget):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.+-]+$")
    source: str | None = None
    checkpoint: str | None = None
    checkpoint_flops: float | None = Field(default=None, ge=0)  # what the checkpoint cost, if known
    grow: list[dict[str, Any]] | None = None
    prune: PruneSpec | None = None
    distill: DistillSpec | None = None
    shrink_perturb: ShrinkPerturb | None = None
    adapter: AdapterArm | None = None  # a LoRA adapter on the checkpoint, the only weights trained
    lrs: list[PeakLR] | None = Field(default=None, min_length=1)  # this arm's own grid of peak learning rates
    init: Literal["default", "lsuv"] = "default"  # scratch arms: transformers' init, or LSUV (bench/scratch_init.py)
    grow_single: bool = Field(default=False, exclude=True)  # grow was written as one mapping

    @model_validator(mode="before")
    @classmethod
    def _one_grow(cls, data):
        if isinstance(data, dict) and isinstance(data.get("grow"), dict):
            data = {**data, "grow": [data["grow"]], "grow_single": True}
        return data

    @field_validator("lrs")
    @classmethod
    def _lrs(cls, v):
        return _lr_list(v, "lrs")

    @model_validator(mode="after")
    def _kind(self):
        if self.lr is not None and self.lrs is not None:
            raise ValueError("give lr (one peak learning rate) or lrs (a grid), not both")
        if self.source and self.checkpoint:
            raise ValueError("give source or checkpoint, not both")
        if self.grow is not None and not (self.source or self.checkpoint) and self.init != "default":
            raise ValueError(f"init {self.init} applies to the recipe's model, not to a grown random start")
        if self.prune is not None and not (self.source or self.checkpoint):
            raise ValueError("prune needs a source or a checkpoint to prune")
        if self.prune is not None and self.grow is not None:
            raise ValueError("give grow or prune, not both")
        if self.init != "default" and (self.source or self.checkpoint):
            raise ValueError(f"init {self.init} is for scratch arms (no source or checkpoint)")
        if self.distill is not None and self.distill.teacher is None and not self.checkpoint:
            raise ValueError("distill needs a teacher (distill.teacher) when the arm has no checkpoint")
        if self.adapter is not None:
            if not (self.checkpoint or self.source):
                raise ValueError("adapter needs a checkpoint or a source (the base model the adapter fine-tunes)")
            other = next((f for f in ("grow", "prune", "distill", "shrink_perturb") if getattr(self, f) is not None),
                         None)
            if other:
                raise ValueError(f"an adapter arm trains the adapter alone on the checkpoint: leave out {other}")
        return self

    @property
    def kind(self) -> str:
        if self.adapter is not None:
            return "adapter"
        if self.prune is not None:
            return "prune"
        if self.source or self.checkpoint:
            return "grow" if self.grow else "continue"
        return "scratch"

    def grow_path(self, index: int, i: int, param: str | None = None) -> str:
        where = f"arms[{index}].grow" + ("" if self.grow_single else f"[{i}]")
        return where + (f".{param}" if param else "")


class TargetSpec(_Strict):
    arm: str = "scratch"  # the reference arm: its final eval loss is the target
    loss: float | None = Field(default=None, gt=0)  # a fixed target instead


class Recipe(_Strict):
    name: str = "bench"
    corpus: str | list[str] = "shakespeare"
    max_corpus_bytes: int | None = Field(default=None, gt=0)
    heldout: float = Field(default=0.05, gt=0, lt=0.5)
    tokenizer: TokenizerSpec = TokenizerSpec()
    model: ModelSpec
    train: TrainSpec
    sources: dict[str, SourceSpec] = {}
    arms: list[ArmSpec] = Field(min_length=1)
    target: TargetSpec = TargetSpec()
    seeds: int = Field(default=1, gt=0)
    lr_grid: list[PeakLR] | None = Field(default=None, min_length=1)  # every arm without lr/lrs tries each
    honesty_margin: float = Field(default=0.05, ge=0)  # nats: "clearly below" the source
    _base: Path | None = PrivateAttr(default=None)
    _overrides: tuple[str, ...] = PrivateAttr(default=())  # the --set flags applied to the file, for the report

    @field_validator("lr_grid")
    @classmethod
    def _grid(cls, v):
        return _lr_list(v, "lr_grid")

    @field_validator("corpus")
    @classmethod
    def _corpus(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("the corpus list is empty")
        return v

    @model_validator(mode="after")
    def _defaults(self):
        if self.model.seq_len is None:
            self.model.seq_len = 128
        return self

    # --- derived

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.model.seq_len

    def steps_of(self, budget: Budget, where: str, default: int | None = None) -> int:
        if budget.steps is not None:
            return budget.steps
        if budget.tokens is not None:
            n = budget.tokens // self.tokens_per_step
            if n < 1:
                raise RecipeError(
                    f"{where}.tokens: {budget.tokens} tokens is smaller than one batch "
                    f"({self.train.batch_size} x {self.model.seq_len} = {self.tokens_per_step} tokens)")
            return n
        if default is None:
            raise RecipeError(f"{where}: give steps or tokens")
        return default

    @property
    def steps(self) -> int:
        return self.steps_of(self.train, "train")

    def arm(self, name: str) -> ArmSpec:
        return next(a for a in self.arms if a.name == name)

    def to_dict(self) -> dict:
        return json.loads(self.model_dump_json(exclude_none=True))


def _loc(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _pydantic_error(err: ValidationError) -> str:
    errors = err.errors()
    first = errors[0]
    loc = _loc(first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "missing":
        msg = "required field is missing"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def parse(data: Any, path: str | os.PathLike | None = None) -> Recipe:
    """Validate a recipe's mapping (as loaded from YAML)."""
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe is a mapping of fields, got {type(data).__name__}", path)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(_pydantic_error(err), path) from None
    try:
        check(recipe)
    except RecipeError as err:
        raise RecipeError(err.message, path) from None
    return recipe


def load(path: str | os.PathLike, overrides=()) -> Recipe:
    """Read, override (``--set KEY=VALUE``, :mod:`warmstart.bench.overrides`) and validate a recipe file."""
    from warmstart.bench import overrides as O

    p = Path(path)
    sets = O.parse_overrides(overrides)
    data = load_yaml(p, "recipe file", RecipeError)
    touched = []
    if sets:
        if not isinstance(data, dict):
            raise RecipeError(f"a recipe is a mapping of fields, got {type(data).__name__}", p)
        try:
            data, touched = O.apply(data, sets)
        except O.OverrideError as err:
            raise O.OverrideError(err.message, p) from None
    try:
        recipe = parse(data, p)
    except RecipeError as err:
        if not touched:
            raise
        raise O.OverrideError(O.blame(err.message, touched), p) from None
    recipe._base = p.parent  # relative corpus and checkpoint paths are read from the recipe's folder
    recipe._overrides = tuple(o.text for o in sets)
    return recipe


def base_dir(recipe: Recipe) -> Path:
    return recipe._base or Path.cwd()


# A bench is a measurement on a small model: a billion steps or a thousand
# seeds is a typo, and each step keeps a row of the curves in memory.
MAX_STEPS = 10**9
MAX_SEEDS = 1000


def model_elements(model: ModelSpec, vocab_size: int) -> int:
    """Parameters of a recipe's Llama model (embeddings, attention, MLP), from its sizes alone."""
    h, inter = model.hidden, model.intermediate or 3 * model.hidden
    kv = (model.kv_heads or model.heads) * (h // model.heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h
    return vocab_size * h * (1 if model.tie_embeddings else 2) + model.layers * per_layer + h


def check_sizes(recipe: Recipe) -> None:
    """Refuse models and batches far beyond any machine before anything is allocated."""
    if recipe.tokenizer.vocab_size > MAX_VOCAB:
        raise RecipeError(f"tokenizer.vocab_size: {recipe.tokenizer.vocab_size} is larger than the limit of "
                          f"{MAX_VOCAB}")
    if recipe.seeds > MAX_SEEDS:
        raise RecipeError(f"seeds: {recipe.seeds} is larger than the limit of {MAX_SEEDS}")
    budgets = [("train", recipe.train)] + [(f"sources.{k}", s) for k, s in recipe.sources.items()] + \
        [(f"arms[{i}]", a) for i, a in enumerate(recipe.arms)]
    for where, budget in budgets:
        if budget.steps is None and budget.tokens is None:
            continue
        steps = recipe.steps_of(budget, where)
        if steps > MAX_STEPS:
            field = "steps" if budget.steps is not None else "tokens"
            raise RecipeError(f"{where}.{field}: {steps} steps is more than the limit of {MAX_STEPS}")
    vocab = recipe.tokenizer.vocab_size
    seq = recipe.model.seq_len or 128
    for where, model in [("model", recipe.model)] + [(f"sources.{k}.model", s.model)
                                                      for k, s in recipe.sources.items()]:
        try:
            check_elements(model_elements(model, vocab), f"{where}: a model of hidden {model.hidden}, "
                                                         f"{model.layers} layers")
            check_elements(recipe.train.batch_size * seq * max(model.hidden, model.intermediate or 0) * 4,
                           f"{where}: activations of batch_size {recipe.train.batch_size} x seq_len {seq}")
        except WarmstartError as err:
            raise RecipeError(err.message) from None


def check(recipe: Recipe) -> None:
    """Cross-field checks, each raising with the offending field's path."""
    recipe.steps_of(recipe.train, "train")
    names = [a.name for a in recipe.arms]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise RecipeError(f"arms[{i}].name: {name!r} is used by arms[{names.index(name)}] too")
    if recipe.target.loss is None and recipe.target.arm not in names:
        raise RecipeError(f"target.arm: no arm named {recipe.target.arm!r} (arms: {', '.join(names)})")
    check_adapter_reference(recipe)
    check_sizes(recipe)
    for key, src in recipe.sources.items():
        if src.model.seq_len not in (None, recipe.model.seq_len):
            raise RecipeError(f"sources.{key}.model.seq_len: sources train on the target's windows "
                              f"(seq_len {recipe.model.seq_len}); leave it out")
        recipe.steps_of(src, f"sources.{key}")
    for i, arm in enumerate(recipe.arms):
        where = f"arms[{i}]"
        recipe.steps_of(arm, where, default=recipe.steps)
        if arm.source is not None and arm.source not in recipe.sources:
            known = ", ".join(recipe.sources) or "none defined"
            raise RecipeError(f"{where}.source: unknown source {arm.source!r} (sources: {known})")
        if arm.grow is not None:
            parse_steps(arm.grow, where=lambda j, _i=i, _a=arm: _a.grow_path(_i, j), error=RecipeError)
        if arm.source is not None:
            check_arm_shape(recipe, i)
            if arm.adapter is not None:
                check_adapter_on_source(recipe, i)


def check_adapter_reference(recipe: Recipe) -> None:
    """Adapter arms are measured against an arm fine-tuning the same checkpoint (e.g. the PEFT default adapter)."""
    adapters = [a for a in recipe.arms if a.adapter is not None]
    if not adapters or recipe.target.loss is not None:
        return
    ref = recipe.arm(recipe.target.arm)
    if ref.kind not in ("adapter", "continue"):
        raise RecipeError(f"target.arm: adapter arms are measured against an adapter arm (e.g. PEFT's default: "
                          f"target: {{arm: {adapters[0].name}}}) or a full fine-tuning of their checkpoint, not the "
                          f"{ref.kind} arm {ref.name!r}")
    for a in adapters:
        if (a.checkpoint, a.source) != (ref.checkpoint, ref.source):
            i = recipe.arms.index(a)
            field, mine, theirs = (("checkpoint", a.checkpoint, ref.checkpoint) if a.checkpoint else
                                   ("source", a.source, ref.source or ref.checkpoint))
            raise RecipeError(f"arms[{i}].{field}: {mine!r} is not the base of the reference arm {ref.name!r} "
                              f"({theirs!r}): steps to its loss compare fine-tunings of one model")


def check_adapter_on_source(recipe: Recipe, index: int, vocab_size: int = 2048) -> None:
    """An adapter on a bench-trained source: the adapter library's rank and target checks on its planned shapes."""
    from warmstart.adapter import config as adapter_config
    from warmstart.bench.adapter_arm import adapter_spec

    arm = recipe.arms[index]
    src = recipe.sources[arm.source]
    model = _planned_model(src.model.hf_config(vocab_size, recipe.model.seq_len), f"<source {arm.source}>")
    spec = adapter_spec(arm.adapter, seed=0, seq_len=recipe.model.seq_len, batch_size=recipe.train.batch_size)
    try:
        _, targets = adapter_config.resolve_targets(model.checkpoint, spec)
        adapter_config.check_rank(spec, targets, model.checkpoint.path)
    except WarmstartError as err:
        raise RecipeError(f"arms[{index}].adapter: {err.message}") from None


def _planned_model(config: dict, label: str):
    """A Model with the config's tensor names and shapes and no data: growth chains plan against it."""
    import torch
    import transformers as tf

    cfg = dict(config)
    model_type = cfg.pop("model_type")
    hf = tf.AutoConfig.for_model(model_type, **cfg)
    with torch.device("meta"):
        net = tf.AutoModelForCausalLM.from_config(hf)
    steps = []
    for name, t in net.state_dict(keep_vars=True).items():
        if name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue
        steps.append(Step(name, tuple(t.shape), "F32", ()))
    return describe(PlannedCheckpoint(Plan([], steps), dict(config), label))


DIM_KEYS = {"hidden_size": "hidden", "num_hidden_layers": "layers", "num_attention_heads": "heads",
            "num_key_value_heads": "kv_heads", "intermediate_size": "intermediate"}


def grow_chain(arm: ArmSpec) -> list[tuple[str, dict]]:
    return [(s["op"], {k: v for k, v in s.items() if k != "op"}) for s in (arm.grow or [])]


def plan_chain(model, arm: ArmSpec, index: int):
    """Plan the arm's chain on `model` (the one chain of :mod:`warmstart.ops.registry`), errors naming the field."""
    at = lambda j: arm.grow_path(index, j)  # noqa: E731
    steps = parse_steps(arm.grow, where=at, error=RecipeError)
    return registry.chain(model, steps, where=at, error=RecipeError)


def check_arm_shape(recipe: Recipe, index: int, vocab_size: int = 2048) -> None:
    """Dry-run the arm's growth on the source's shapes; the result must be the target model."""
    arm = recipe.arms[index]
    src = recipe.sources[arm.source]
    seq = recipe.model.seq_len
    model = _planned_model(src.model.hf_config(vocab_size, seq), f"<source {arm.source}>")
    config = plan_chain(model, arm, index).config if arm.grow else model.config
    want = recipe.model.hf_config(vocab_size, seq)
    diffs = [f"{DIM_KEYS[k]} {config.get(k)} (target {want[k]})" for k in DIM_KEYS if config.get(k) != want[k]]
    if config.get("tie_word_embeddings", False) != want["tie_word_embeddings"]:
        diffs.append(f"tie_embeddings {config.get('tie_word_embeddings')} (target {want['tie_word_embeddings']})")
    if diffs:
        what = "its grow chain makes" if arm.grow else "without grow, the source has"
        raise RecipeError(f"arms[{index}].{'grow' if arm.grow else 'source'}: {what} {', '.join(diffs)}")
