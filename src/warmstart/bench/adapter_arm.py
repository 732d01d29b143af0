"""Bench arms of kind ``adapter``: a LoRA adapter, initialized by a registered method, fine-tuned on the bench.

::

    arms:
      - name: default                     # the reference: PEFT's default initialization
        checkpoint: "asset:smollm2"
        adapter: {method: default, rank: 8, targets: [q_proj, v_proj]}
      - name: pissa
        checkpoint: "asset:smollm2"
        adapter: {method: pissa, rank: 8, alpha: 8, targets: [q_proj, v_proj]}
    target: {arm: default}                # steps/tokens to the default's final held-out loss

The adapter is made by the adapter library itself (:func:`warmstart.adapter.writer.validate`
and :func:`~warmstart.adapter.writer.attach`, what ``warmstart adapter`` runs), on the
checkpoint loaded in float32; data-driven methods (EVA, CorDA, LoRA-GA, LoRA-SB)
calibrate on ``calib_batches`` batches drawn from the bench's training split.
The bench's :class:`~warmstart.bench.train.Trainer` then trains it like any arm
(same batches, schedule, evaluation, log and resume), with only the adapter's
factors trainable.

FLOPs of a LoRA step, per token, with N the base's 6ND parameters and n the
adapter's:

- forward: 2 (N + n) (the LoRA branch x A B adds 2 n);
- backward: 2 N for the activations' gradients through the frozen base (its
  weights get no gradient: the 2 N of weight gradients of full fine-tuning are
  not spent), plus 4 n for the adapter (activations' and weights' gradients);

so 4 N + 6 n per training token (full fine-tuning: 6 (N + n)). The
initialization's own passes are the arm's one-time extra cost, counted like a
source's pretraining: every forward over calibration tokens costs 2 N per token,
and a forward run with gradients enabled (LoRA-GA, LoRA-SB) is followed by a
backward of 2 N (activations) + 2 T (T: the adapted base matrices, whose full
gradients these methods read). The decompositions (SVD, QR) are left out of the
FLOPs; their time is in the arm's initialization seconds.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from warmstart.errors import WarmstartError

START_META = "warmstart_adapter.json"
CALIBRATION_SEED = 30_000  # data seed of the calibration batches: seed + this, so they are not the first training batches


class AdapterArm(BaseModel):
    """The ``adapter:`` field of a recipe arm: how the LoRA adapter is initialized."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(min_length=1)  # a registered adapter method (warmstart adapter --method)
    rank: int = Field(default=8, gt=0)
    alpha: float | None = Field(default=None, gt=0)  # default: the rank (scaling 1)
    targets: list[str] | None = Field(default=None, min_length=1)  # default: PEFT's for the family
    calib_batches: int = Field(default=4, gt=0)  # data-driven methods: batches from the training split
    calib_batch_size: int | None = Field(default=None, gt=0)  # default: train.batch_size
    sb_lr: float | None = Field(default=None, gt=0)  # lora-sb options, as in `warmstart adapter`
    sb_rule: Literal["adam", "sgd"] | None = None
    nlora_oversample: int | None = Field(default=None, ge=0)
    corda_mode: Literal["ipm", "kpm"] | None = None

    @field_validator("method")
    @classmethod
    def _registered(cls, v: str) -> str:
        from warmstart.adapter.methods import get

        try:
            get(v)
        except WarmstartError as err:
            raise ValueError(err.message) from None
        return v


def adapter_spec(a: AdapterArm, *, seed: int, seq_len: int, batch_size: int, corpus=()):
    """The adapter library's request for this arm (its seed draws random factors and sketches)."""
    from warmstart.adapter.config import AdapterSpec

    options = {"nlora_oversample": a.nlora_oversample, "sb_lr": a.sb_lr, "sb_rule": a.sb_rule,
               "corda_mode": a.corda_mode}
    return AdapterSpec(method=a.method, rank=a.rank, alpha=a.alpha, target_modules=a.targets,
                       corpus=[Path(f) for f in corpus], batches=a.calib_batches,
                       batch_size=a.calib_batch_size or batch_size, seq_len=seq_len, seed=seed, options=options)


def check(checkpoint: Path, a: AdapterArm, *, seq_len: int, batch_size: int, corpus, tokenizer_dir: Path) -> None:
    """The adapter library's checks on the checkpoint's headers (rank, targets, precision), and its tokenizer.

    Raises WarmstartError with the library's message; the caller adds the field path.
    """
    from warmstart.adapter.writer import validate

    validate(checkpoint, adapter_spec(a, seed=0, seq_len=seq_len, batch_size=batch_size, corpus=corpus))
    if _vocabulary(checkpoint) != _vocabulary(tokenizer_dir):
        raise WarmstartError("the checkpoint's tokenizer differs from the recipe's (set tokenizer.path to the "
                             "checkpoint): the adapter fine-tunes the checkpoint on its own token ids")


def _vocabulary(folder: Path) -> dict | None:
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab(with_added_tokens=True)
    if not any((folder / n).is_file() for n in ("tokenizer_config.json", "tokenizer.model", "vocab.json")):
        raise WarmstartError("the checkpoint has no tokenizer; an adapter arm trains on the checkpoint's token ids",
                             folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder)).get_vocab()


class _PassCounter:
    """Counts the tokens of every forward of a model, and of those run with gradients (a backward follows)."""

    def __init__(self, model):
        import torch

        self.forward = self.gradient = 0

        def hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            n = int(ids.numel()) if ids is not None else 0
            self.forward += n
            if torch.is_grad_enabled():
                self.gradient += n

        self.handle = model.register_forward_pre_hook(hook, with_kwargs=True)

    def remove(self) -> None:
        self.handle.remove()


@dataclass
class Start:
    """An arm's initialized adapter, in memory, ready for the Trainer."""

    model: object  # the PEFT model; the Trainer trains it in place
    method: object  # the registered Method
    flops_per_token: float  # 4 N + 6 n
    base_params: int  # N (6ND convention: no input embedding table)
    adapter_params: int  # n, the only trainable parameters
    meta: dict  # what START_META holds
    start_dir: Path


def calibration_batches(train_tokens, *, batches: int, batch_size: int, seq_len: int, seed: int) -> list[dict]:
    """`batches` batches of random windows of the training split (deterministic in the seed)."""
    import torch

    from warmstart.bench.data import windows
    from warmstart.bench.train import batch_offsets

    out = []
    for j in range(batches):
        x, _ = windows(train_tokens, batch_offsets(len(train_tokens), seq_len, batch_size, CALIBRATION_SEED + seed, j),
                       seq_len)
        out.append({"input_ids": x, "attention_mask": torch.ones_like(x)})
    return out


def only_adapter_trainable(model) -> int:
    """requires_grad on the LoRA factors alone (every base weight frozen); returns their parameter count."""
    n = 0
    for name, p in model.named_parameters():
        mine = "lora_" in name
        p.requires_grad_(mine)
        n += p.numel() if mine else 0
    if n == 0:
        raise WarmstartError("the adapter has no trainable parameters")
    return n


def build(checkpoint: Path, a: AdapterArm, *, train_tokens, seq_len: int, batch_size: int, seed: int, corpus,
          start_dir: Path, accelerator) -> Start:
    """Initialize the arm's adapter on `checkpoint` (float32) with the adapter library; record it in `start_dir`.

    `start_dir` gets the initial adapter in PEFT's layout and ``warmstart_adapter.json``
    (the same record as ``warmstart adapter``, plus the calibration's tokens and FLOPs).
    The residual base of a method that moves weights is not written (it is the
    checkpoint minus scaling x B0 A0 of this initial adapter).
    """
    import torch
    import transformers as tf

    from warmstart.adapter import writer
    from warmstart.bench.train import _quiet, flops_params

    checkpoint = Path(checkpoint)
    spec = adapter_spec(a, seed=seed, seq_len=seq_len, batch_size=batch_size, corpus=corpus)
    ckpt, method, keys, targets = writer.validate(checkpoint, spec)
    with _quiet():
        model = tf.AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    model.eval()
    n_base = flops_params(model)
    n_targets = sum(math.prod(t.shape) for t in targets)
    batches = None
    if method.needs_corpus:
        batches = calibration_batches(train_tokens, batches=spec.batches, batch_size=spec.batch_size,
                                      seq_len=seq_len, seed=seed)
    counter = _PassCounter(model)
    t0 = time.perf_counter()
    try:
        peft_model, ctx = writer.attach(model, spec, keys, batches, where=checkpoint)
    finally:
        counter.remove()
    init_s = time.perf_counter() - t0
    error = writer.check_factors(ckpt, peft_model, spec, method)
    for p in peft_model.parameters():
        p.grad = None  # gradient-based methods leave the base weights' gradients behind
    n_adapter = only_adapter_trainable(peft_model)
    calib_flops = 2.0 * n_base * counter.forward + (2.0 * n_base + 2.0 * n_targets) * counter.gradient
    calibration = None
    if batches:
        calibration = {"from": "the bench's training split", "batches": len(batches), "batch_size": spec.batch_size,
                       "seq_len": seq_len, "data_seed": CALIBRATION_SEED + seed}
    meta = writer.metadata(ckpt, checkpoint, spec, method, keys, targets, calibration,
                           {"init_s": init_s, **ctx.timings}, error)
    meta["layout"] = {"adapter": "adapter", "base": None}
    meta["bench"] = {"forward_tokens": counter.forward, "gradient_tokens": counter.gradient,
                     "init_flops": calib_flops, "init_s": init_s, "base_params": n_base, "adapter_params": n_adapter,
                     "adapted_params": n_targets, "flops_per_token": 4.0 * n_base + 6.0 * n_adapter,
                     "residual_base": ("not written: the checkpoint minus scaling x B0 A0 of adapter/"
                                       if method.moves_base else None)}
    if accelerator.is_main_process:
        from warmstart.checkpoint.atomic import replacing_directory

        with replacing_directory(start_dir) as tmp:
            writer.save_adapter(peft_model, tmp / "adapter")
            (tmp / START_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    else:
        writer.reset_init_config(peft_model)
    accelerator.wait_for_everyone()
    return Start(peft_model, method, 4.0 * n_base + 6.0 * n_adapter, n_base, n_adapter, meta, start_dir)


def finish(start: Start, final_dir: Path, checkpoint: Path, extra_files, accelerator) -> None:
    """Make the trained adapter in `final_dir` a LoRA against the untouched checkpoint.

    For a method that moved weights (PiSSA, OLoRA, NLoRA, CorDA, LoRA-GA) the
    trained factors sit on the residual base; PEFT's documented conversion
    (``save_pretrained(path_initial_model_for_weight_conversion=...)``, the
    same as ``warmstart adapter --export lora``) rewrites them as a rank-2r
    LoRA on the checkpoint itself, so every arm's final adapter loads on the
    same base and stays switchable.
    """
    from warmstart.adapter.writer import set_base_path
    from warmstart.checkpoint.atomic import replacing_directory

    if accelerator.is_main_process and final_dir.is_dir():
        if start.method.moves_base:
            with tempfile.TemporaryDirectory(prefix="warmstart-bench-adapter-") as scratch:
                initial = Path(scratch) / "initial"
                shutil.copytree(start.start_dir / "adapter", initial)  # PEFT rewrites its config
                with replacing_directory(final_dir) as tmp:
                    accelerator.unwrap_model(start.model).save_pretrained(
                        str(tmp), path_initial_model_for_weight_conversion=str(initial))
                    for f in extra_files:
                        if Path(f).is_file():
                            shutil.copy2(f, tmp / Path(f).name)
        set_base_path(final_dir, str(Path(checkpoint).resolve()))
    accelerator.wait_for_everyone()


def init_cost(start_dir: Path) -> dict | None:
    """The arm's one-time cost before step 1: calibration tokens, their FLOPs, the initialization's seconds."""
    path = Path(start_dir) / START_META
    if not path.is_file():
        return None
    b = json.loads(path.read_text(encoding="utf-8")).get("bench") or {}
    return {"tokens": float(b.get("forward_tokens", math.nan)), "flops": float(b.get("init_flops", math.nan)),
            "time": float(b.get("init_s", math.nan))}


def describe(a: AdapterArm, origin: str) -> str:
    """The arm's start in words, for report.md and the figure."""
    alpha = a.alpha if a.alpha is not None else a.rank
    targets = " ".join(a.targets) if a.targets else "PEFT's default targets"
    calib = ""
    try:
        from warmstart.adapter.methods import get

        if get(a.method).needs_corpus:
            calib = f", calibrated on {a.calib_batches} training batch{'es' if a.calib_batches != 1 else ''}"
    except WarmstartError:
        pass
    return f"LoRA `{a.method}` (rank {a.rank}, alpha {alpha:g}, {targets}{calib}) on {origin}"


# -- the report ------------------------------------------------------------------------------
def _num(x, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "never"
    return format(x, fmt)


def _times(x) -> str:
    text = _num(x, ".2f")
    return text + "x" if text[0].isdigit() else text


def report_lines(recipe, results: dict) -> list[str]:
    """report.md's section for adapter arms: steps and tokens to the reference's final held-out loss."""
    names = [a.name for a in recipe.arms if a.adapter is not None]
    if not names:
        return []
    s = results["summary"]
    per_seed = results.get("per_seed") or []
    tps = recipe.tokens_per_step
    ref = s["arms"].get(recipe.target.arm) if recipe.target.loss is None else None
    ref_name = recipe.target.arm if ref is not None else None
    what = (f"`{ref_name}`'s final held-out loss" if ref_name else "the fixed target loss")
    lines = [f"## Adapter arms: steps to {what}", ""]
    lines.append(f"| arm | method | trainable params | init (s) | init FLOPs | eval loss at step 0 | final eval loss "
                 f"| steps to {what} (median; per seed) | speedup in steps | speedup in FLOPs incl. init | flags |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        a = s["arms"][name]
        arm = recipe.arm(name)
        per = [p["arms"][name]["to_target"]["tokens"] for p in per_seed]
        per_steps = ", ".join(_num(t / tps if isinstance(t, (int, float)) else t, ".3g") for t in per)
        steps = a["to_target"]["tokens"]
        steps = steps / tps if isinstance(steps, (int, float)) and not math.isnan(steps) else steps
        src = a["source_cost"]
        params = results["per_seed"][0]["arms"][name].get("trainable_params") if per_seed else None
        if name == ref_name:
            speed = speed_f = "reference"
        elif isinstance(steps, float) and math.isinf(steps):
            speed = speed_f = "never reaches it"
        else:
            speed, speed_f = _times(a["speedup"]["tokens"]), _times(a["speedup_with_source"]["flops"])
        lines.append(f"| {name} | {arm.adapter.method} | {_num(params, ',')} | {_num(src.get('time'), '.2f')} "
                     f"| {_num(src.get('flops'), '.3g')} | {_num(a['first_eval_loss'], '.4f')} "
                     f"| {_num(a['final_eval_loss'], '.4f')} | {_num(steps, '.3g')} ({per_steps}) | {speed} "
                     f"| {speed_f} | {', '.join(a['flags'])} |")
    lines.append("")
    lines.append(f"Steps are tokens / {tps} (batch_size x seq_len), interpolated linearly between evaluations "
                 f"(every {recipe.train.eval_every} steps). The reference's own entry is where its curve first "
                 "reaches its final value (its budget or less). Speedup in steps = the reference's steps over the "
                 "arm's. Training FLOPs per token are 4 N + 6 n (N: the base's parameters without the input "
                 "embedding table, n: the adapter's; the frozen base's weight gradients are not computed); "
                 "\"init\" is the one-time cost of the initialization: seconds of the method (decompositions and "
                 "calibration passes) and the FLOPs of its calibration forwards (2 N per token) and backwards "
                 "(2 N + 2 x adapted matrices per token), added to the arm's FLOPs for the last speedup.")
    lines.append("")
    return lines
