"""The training loop of the bench, on Hugging Face Accelerate, usable on its own.

::

    from warmstart.bench.train import train

    result = train(
        "runs/grown",                      # HF model dir, a config dict, or a built model
        train_tokens, eval_tokens,         # 1-D integer arrays (e.g. warmstart.bench.data memmaps)
        out_dir="runs/grown-train",
        steps=1000, batch_size=16, seq_len=128,
        lr=1e-3, schedule="cosine(warmup=50, min_ratio=0.1)",
        eval_every=50, save_every=250,     # HF directories under checkpoints/ every 250 steps
    )
    result.final_eval_loss, result.log_path  # log: one JSON object per line

Why these choices:

- **Data order is a function of (seed, step)**: the batch of step ``s`` is
  ``batch_size`` windows of ``seq_len + 1`` tokens at offsets drawn from
  ``numpy.random.default_rng([data_seed, s])``. Resuming, changing the number
  of processes or the gradient accumulation leaves every step's global batch
  unchanged; each process takes its share ``rank::world`` of it.
- **The learning rate is a closed form of the step** (a
  :mod:`warmstart.schedules` spec, ``peak * multiplier(step)``), set on the
  optimizer before every update, so the step is the scheduler's whole state.
- **Evaluation batches are fixed**: ``eval_batches * batch_size`` windows
  evenly spaced over the held-out tokens, the same for every run given the
  same arrays, so arms compare on identical text. The eval loss is the mean
  next-token cross-entropy over all of their tokens.
- **FLOPs are 6 x N x tokens** ("Scaling Laws for Neural Language Models"),
  with N every parameter that takes part in a matrix product or norm: all
  parameters except the input embedding table, with the output projection
  counted (for tied embeddings the shared matrix is counted once, as the
  head). Attention-score FLOPs are left out, as in the 6ND rule. In a
  Mixture-of-Experts N is the active parameters: the router and the top-k
  experts a token uses, not all experts (:mod:`warmstart.bench.moe`); its
  load-balancing loss is added to the training loss. A caller that trains
  part of the model (a LoRA adapter on a frozen base) gives its own
  ``flops_per_token`` (:mod:`warmstart.bench.adapter_arm`: 4 N + 6 n).
- **Only what requires gradients is optimized**: frozen parameters (a LoRA
  arm's base, PERP's non-norm weights) are left out of the optimizer.
- **Resumable**: every ``checkpoint_every`` steps the model, optimizer and RNG
  states go to ``state/`` with ``Accelerator.save_state`` (replaced
  atomically), with the step and elapsed time; ``resume=True`` continues from
  there and drops log lines written after it. A finished run (``result.json``
  present) is returned as is.

Multi-process: run the calling script under ``torchrun`` or ``accelerate
launch``; Accelerate sets up DDP (gloo on CPU, NCCL on GPUs) and gradients are
averaged across processes, so one process and N processes follow the same
curve for the same global ``batch_size``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from warmstart.bench.data import windows
from warmstart.bench.moe import inactive_expert_params
from warmstart.checkpoint.atomic import replacing_directory, swap_in, write_text
from warmstart.errors import OutputExists, WarmstartError
from warmstart.schedules.spec import ScheduleSpecError, resolve

LOG_NAME = "log.jsonl"
RESULT_NAME = "result.json"


@dataclass
class TrainSettings:
    steps: int
    batch_size: int = 16  # global sequences per optimizer update
    seq_len: int = 128
    lr: float = 1e-3  # peak learning rate (the schedule's multiplier 1.0)
    schedule: Any = None  # a warmstart.schedules spec (total = steps); None: cosine, 5% warmup, to 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    grad_accum: int = 1
    eval_every: int = 50
    eval_batches: int = 4
    checkpoint_every: int = 0  # resume state every K steps (0: only at the end of nothing)
    save_every: int = 0  # HF model directories under checkpoints/ every K steps (0: none)
    seed: int = 0  # model initialisation (when built from a config)
    data_seed: int | None = None  # batch order; defaults to seed
    mixed_precision: str = "no"  # "no" (fp32) or "bf16"
    cpu: bool | None = None  # None: use an accelerator if one is present


@dataclass
class TrainResult:
    out_dir: Path
    log_path: Path
    final_dir: Path | None
    steps: int
    tokens: int
    flops: float
    time: float
    params: int
    flops_params: int
    final_eval_loss: float | None
    first_eval_loss: float | None
    resumed_from: int | None = None
    saved: list[str] = field(default_factory=list)
    teacher_flops: float = 0.0  # distillation: the teacher's forwards (2 x its parameters x tokens)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("out_dir", "log_path", "final_dir"):
            d[k] = None if d[k] is None else str(d[k])
        return d


def default_schedule(steps: int) -> str:
    """The schedule of a run that names none: 5% warmup, cosine to a tenth of the peak."""
    return f"cosine(warmup={max(1, steps // 20) if steps > 1 else 0}, min_ratio=0.1)"


def lr_function(schedule, steps: int, peak: float) -> Callable[[int], float]:
    """Learning rate of the update with 0-based index ``step``."""
    if schedule is None:
        schedule = default_schedule(steps)
    try:
        sched = resolve(schedule, total=steps)
    except ScheduleSpecError as err:
        raise WarmstartError(f"schedule: {err.line()}") from None
    if sched.num_steps > steps and sched.total is not None and sched.total != steps:
        raise WarmstartError(f"schedule: its total {sched.total} differs from the run's {steps} steps")
    p = sched.peak if sched.peak is not None else peak
    return lambda step: p * sched.multiplier(step)


def flops_params(model) -> int:
    """N of the 6ND rule: every parameter but the input embedding table; the head counted."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    n = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n += p.numel()
    tied = head is not None and head.weight is emb
    if not tied:
        n -= emb.numel()
    return int(n - inactive_expert_params(model))  # a Mixture-of-Experts: only the experts a token uses count


def count_params(model) -> int:
    return int(sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()))


def build_model(model, seed: int):
    """An HF causal LM from a directory, a config (dict or PretrainedConfig), or as given."""
    import torch
    import transformers as tf

    if isinstance(model, torch.nn.Module):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not (path / "config.json").is_file():
            raise WarmstartError("not a model directory (no config.json)", path)
        with _quiet():
            return tf.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if isinstance(model, dict):
        cfg = dict(model)
        model_type = cfg.pop("model_type", "llama")
        config = tf.AutoConfig.for_model(model_type, **cfg)
    elif isinstance(model, tf.PretrainedConfig):
        config = model
    else:
        raise TypeError(f"cannot build a model from {type(model).__name__}")
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def batch_offsets(n_tokens: int, seq_len: int, batch_size: int, data_seed: int, step: int) -> np.ndarray:
    """Start offsets of the global batch of update ``step`` (deterministic in seed and step)."""
    high = n_tokens - seq_len - 1
    rng = np.random.default_rng([int(data_seed), int(step)])
    return rng.integers(0, high + 1, size=batch_size)


def eval_offsets(n_tokens: int, seq_len: int, count: int) -> np.ndarray:
    """``count`` window offsets evenly spaced over the held-out tokens (windows may not overlap
    when the split is large enough)."""
    high = n_tokens - seq_len - 1
    if count <= 1:
        return np.zeros(1, dtype=np.int64)
    return np.linspace(0, high, count).round().astype(np.int64)


def check_tokens(name: str, tokens, seq_len: int) -> None:
    if tokens is None or len(tokens) < seq_len + 2:
        n = 0 if tokens is None else len(tokens)
        raise WarmstartError(f"{name} has {n} tokens, fewer than one sequence of {seq_len + 1} (+1)")


def _accelerator(settings: TrainSettings, accelerator=None):
    if accelerator is not None:
        return accelerator
    from accelerate import Accelerator

    cpu = settings.cpu
    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    mp = "bf16" if settings.mixed_precision == "bf16" else "no"
    try:
        return Accelerator(cpu=cpu, mixed_precision=mp)
    except ValueError:
        # The process-wide Accelerate state was set up with other settings by an earlier run.
        from accelerate.state import AcceleratorState

        if AcceleratorState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(cpu=cpu, mixed_precision=mp)


def _loss(model, x, y):
    import torch.nn.functional as F

    out = model(input_ids=x)
    logits = out.logits
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
    aux = getattr(out, "aux_loss", None)
    if aux is not None and model.training:  # a Mixture-of-Experts: the router's load-balancing loss joins training
        config = getattr(model, "module", model).config
        loss = loss + float(getattr(config, "router_aux_loss_coef", 0.0)) * aux.float()
    return loss


def evaluate(model, eval_tokens, offsets, seq_len: int, batch_size: int, accelerator) -> float:
    """Mean next-token cross-entropy over the fixed eval windows (shared across processes)."""
    import torch

    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(offsets)[rank::world]
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(mine), batch_size):
            x, y = windows(eval_tokens, mine[i:i + batch_size], seq_len)
            x, y = x.to(accelerator.device), y.to(accelerator.device)
            with accelerator.autocast():
                loss = _loss(model, x, y)
            total[0] += loss.double() * y.numel()
            total[1] += y.numel()
    if world > 1:
        total = accelerator.reduce(total, reduction="sum")
    model.train(was_training)
    return float(total[0] / total[1])


class _quiet:
    """Silence the libraries' own progress bars and notes while saving."""

    def __enter__(self):
        import logging

        from transformers.utils import logging as hf_logging

        self.bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        self.logger = logging.getLogger("accelerate")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        if self.bars:
            hf_logging.enable_progress_bar()
        self.logger.setLevel(self.level)
        return False


def _save_hf(model, accelerator, path: Path, extra_files: Sequence = ()) -> None:
    """An HF model directory, written to a temporary sibling and renamed (main process only)."""
    if accelerator.is_main_process:
        with replacing_directory(path) as tmp:
            with _quiet():
                accelerator.unwrap_model(model).save_pretrained(str(tmp), safe_serialization=True)
            for f in extra_files:
                f = Path(f)
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
    accelerator.wait_for_everyone()


def _save_state(accelerator, out_dir: Path, meta: dict) -> None:
    state = out_dir / "state"
    tmp = out_dir / ".state.partial"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    with _quiet():
        accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        (tmp / "trainer.json").write_text(json.dumps(meta))
        swap_in(tmp, state)
    accelerator.wait_for_everyone()


def _truncate_log(log_path: Path, step: int) -> None:
    if not log_path.exists():
        return
    keep = []
    for line in log_path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut short by the interruption
        if row.get("step", 0) > step:
            break
        keep.append(line)
    log_path.write_text("".join(k + "\n" for k in keep))


def read_log(path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def train(
    model,
    train_tokens,
    eval_tokens=None,
    *,
    out_dir,
    steps: int,
    log_path=None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    desc: str = "train",
    init_fn: Callable | None = None,
    extra_files: Sequence = (),
    save_final: bool = True,
    accelerator=None,
    on_step: Callable[[dict], None] | None = None,
    distill=None,
    flops_per_token: float | None = None,
    **settings_kw,
) -> TrainResult:
    """Train a causal LM on packed tokens; log JSONL; save HF directories; resumable.

    ``model``: an HF model directory (loaded with ``from_pretrained``), a config
    dict (``model_type`` defaults to ``llama``; built with ``from_config`` after
    ``torch.manual_seed(seed)``), a ``PretrainedConfig``, or a built module.
    ``train_tokens``/``eval_tokens``: 1-D integer arrays (memmaps are fine).
    ``init_fn(model)``: applied once, before the first evaluation of a fresh
    run (e.g. shrink-and-perturb). ``extra_files``: copied into every saved
    HF directory (tokenizer files). ``on_step(row)`` is called after each
    logged step (e.g. to stop early). ``distill``: a
    :class:`warmstart.bench.distill.Distiller` (teacher targets, loss, teacher
    FLOPs in the log's ``teacher_flops``). ``flops_per_token``: training FLOPs
    per token when not 6 x N (a LoRA adapter on a frozen base). Other keywords are :class:`TrainSettings`
    fields. The log goes to ``log_path`` (default ``out_dir/log.jsonl``).
    """
    s = TrainSettings(steps=steps, **settings_kw)
    t = Trainer(s, train_tokens, eval_tokens, out_dir=Path(out_dir), log_path=log_path, desc=desc,
                extra_files=extra_files, accelerator=accelerator, progress=progress, distill=distill,
                flops_per_token=flops_per_token)
    finished = t.finished(resume, force)
    if finished is not None:
        return finished
    t.setup(model, resume, init_fn)
    try:
        for step in range(t.start, s.steps):
            row = t.train_step(step)
            if on_step is not None:
                on_step(row)
            t.checkpoint(step + 1)
        return t.finish(save_final)
    finally:
        t.release()


class Trainer:
    """One training run, in the order it happens: setup, train_step (repeated), checkpoint, finish.

    Everything a step needs is set up once; a step is a pure function of the
    state and the step index (the batch is drawn from (data_seed, step)), so
    a resumed run continues exactly where the stopped one was.
    """

    def __init__(self, s: TrainSettings, train_tokens, eval_tokens, *, out_dir: Path, log_path, desc: str,
                 extra_files: Sequence, accelerator, progress: bool = True, distill=None,
                 flops_per_token: float | None = None):
        for name in ("steps", "batch_size", "seq_len", "grad_accum", "eval_batches"):
            if getattr(s, name) < 1:
                raise WarmstartError(f"{name} must be at least 1, got {getattr(s, name)}")
        check_tokens("training tokens", train_tokens, s.seq_len)
        if eval_tokens is not None:
            check_tokens("held-out tokens", eval_tokens, s.seq_len)
        self.s = s
        self.schedule = s.schedule if s.schedule is not None else default_schedule(s.steps)
        self.lr_at = lr_function(self.schedule, s.steps, s.lr)
        self.train_tokens, self.eval_tokens = train_tokens, eval_tokens
        self.data_seed = s.seed if s.data_seed is None else s.data_seed
        self.out_dir = out_dir
        self.log_path = Path(log_path) if log_path else out_dir / LOG_NAME
        self.desc, self.extra_files, self.progress = desc, extra_files, progress
        self.distill = distill  # bench.distill.Distiller: teacher targets, the loss, the teacher's FLOPs
        self.flops_per_token = flops_per_token  # None: 6 x N
        self.acc = _accelerator(s, accelerator)
        self.world = self.acc.num_processes
        if s.batch_size % (self.world * s.grad_accum):
            raise WarmstartError(f"batch_size {s.batch_size} is not divisible by processes x grad_accum = "
                                 f"{self.world} x {s.grad_accum}")
        self.micro = s.batch_size // (self.world * s.grad_accum)
        self.tokens_per_step = s.batch_size * s.seq_len
        self.ev_offsets = None if eval_tokens is None else eval_offsets(len(eval_tokens), s.seq_len,
                                                                          s.eval_batches * s.batch_size)
        self.done = out_dir / RESULT_NAME
        self.start, self.elapsed, self.resumed_from = 0, 0.0, None
        self.first_eval = self.last_eval = None
        self.saved: list[str] = []

    # -- setup ----------------------------------------------------------------
    def finished(self, resume: bool, force: bool) -> TrainResult | None:
        """The result of a finished run being resumed; otherwise prepare the output folder."""
        acc, out_dir = self.acc, self.out_dir
        if out_dir.exists() and any(out_dir.iterdir()):
            if resume and self.done.exists():
                r = json.loads(self.done.read_text())
                for k in ("out_dir", "log_path", "final_dir"):
                    r[k] = None if r[k] is None else Path(r[k])
                return TrainResult(**r)
            if not resume:
                if not force:
                    raise OutputExists("training output already exists (use --force or --resume)", out_dir)
                if acc.is_main_process:
                    shutil.rmtree(out_dir)
        acc.wait_for_everyone()
        if acc.is_main_process:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        return None

    def setup(self, model, resume: bool, init_fn: Callable | None) -> None:
        """Model, optimizer, resumed state, the log, and the first evaluation."""
        import torch
        from tqdm.auto import tqdm

        s, acc = self.s, self.acc
        net = build_model(model, s.seed)
        if self.distill is not None:
            self.distill.check(self.train_tokens, s.seq_len, getattr(getattr(net, "config", None), "vocab_size", None))
            self.distill.prepare(net)
        resuming = resume and (self.out_dir / "state" / "trainer.json").exists()
        if init_fn is not None and not resuming:
            init_fn(net)
        self.n_params, self.n_flops = count_params(net), flops_params(net)
        self.per_token = float(self.flops_per_token) if self.flops_per_token is not None else 6.0 * self.n_flops
        trained = [p for p in net.parameters() if p.requires_grad]
        decay = [p for p in trained if p.dim() >= 2]
        no_decay = [p for p in trained if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr_at(0), betas=tuple(s.betas), fused=False, foreach=False,
        )
        self.net, self.opt = acc.prepare(net, opt)
        self.net.train()
        if resuming:
            acc.load_state(str(self.out_dir / "state"))
            meta = json.loads((self.out_dir / "state" / "trainer.json").read_text())
            self.start, self.elapsed, self.resumed_from = int(meta["step"]), float(meta["time"]), int(meta["step"])
            if acc.is_main_process:
                _truncate_log(self.log_path, self.start)
        elif acc.is_main_process:
            self.log_path.write_text("")
            (self.out_dir / "settings.json").write_text(json.dumps(
                {**asdict(s), "schedule": str(self.schedule), "params": self.n_params, "flops_params": self.n_flops,
                 "flops_per_token": self.per_token, "trainable_params": sum(p.numel() for p in trained),
                 "processes": self.world}, indent=2))
        if self.start == 0 and self.ev_offsets is not None:
            self.first_eval = self.evaluate()
            self.log({"step": 0, "tokens": 0, "flops": 0.0, "time": 0.0, "lr": self.lr_at(0), "train_loss": None,
                      "eval_loss": self.first_eval,
                      **({} if self.distill is None else {"teacher_flops": 0.0, "flops_with_teacher": 0.0})})
        self.bar = tqdm(total=s.steps, initial=self.start, desc=self.desc, dynamic_ncols=True, leave=False,
                        disable=not self.progress or not acc.is_local_main_process)

    # -- one step -------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        """One optimizer update (gradient accumulation over micro-batches), logged; returns the log row."""
        import torch

        s, acc, net = self.s, self.acc, self.net
        t0 = time.perf_counter()
        lr = self.lr_at(step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        draw = batch_offsets if self.distill is None else self.distill.offsets  # aligned with the teacher cache
        offsets = draw(len(self.train_tokens), s.seq_len, s.batch_size, self.data_seed,
                       step)[acc.process_index::self.world]
        total = torch.zeros((), dtype=torch.float64, device=acc.device)
        for k in range(s.grad_accum):
            x, y = windows(self.train_tokens, offsets[k * self.micro:(k + 1) * self.micro], s.seq_len)
            x, y = x.to(acc.device), y.to(acc.device)
            with acc.no_sync(net) if k + 1 < s.grad_accum else nullcontext():
                with acc.autocast():
                    loss = (_loss(net, x, y) if self.distill is None
                            else self.distill.loss(net, x, y, offsets[k * self.micro:(k + 1) * self.micro]))
                acc.backward(loss / s.grad_accum)
            total += loss.detach().double() / s.grad_accum
        if s.grad_clip and s.grad_clip > 0:
            acc.clip_grad_norm_(net.parameters(), s.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.world > 1:
            total = acc.reduce(total, reduction="mean")
        train_loss = float(total)
        self.elapsed += time.perf_counter() - t0
        n = step + 1
        if not math.isfinite(train_loss):
            raise WarmstartError(f"training diverged at step {n} (loss {train_loss}); lower the learning rate",
                                 self.out_dir)
        row = {"step": n, "tokens": n * self.tokens_per_step, "flops": self.per_token * n * self.tokens_per_step,
               "time": round(self.elapsed, 4), "lr": lr, "train_loss": train_loss}
        if self.distill is not None:
            row["teacher_flops"] = self.distill.flops(n * self.tokens_per_step)
            row["flops_with_teacher"] = row["flops"] + row["teacher_flops"]
        if self.ev_offsets is not None and (n % s.eval_every == 0 or n == s.steps):
            self.last_eval = self.evaluate()
            row["eval_loss"] = self.last_eval
            self.bar.set_postfix(eval=f"{self.last_eval:.3f}", refresh=False)
        self.log(row)
        self.bar.update(1)
        return row

    def evaluate(self) -> float:
        return evaluate(self.net, self.eval_tokens, self.ev_offsets, self.s.seq_len, self.s.batch_size, self.acc)

    def log(self, row: dict) -> None:
        if self.acc.is_main_process:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    # -- checkpoints ----------------------------------------------------------
    def checkpoint(self, n: int) -> None:
        """After update `n`: an HF snapshot every save_every, a resumable state every checkpoint_every."""
        s = self.s
        if s.save_every and n % s.save_every == 0 and n < s.steps:
            path = self.out_dir / "checkpoints" / f"step-{n:06d}"
            _save_hf(self.net, self.acc, path, self.extra_files)
            self.saved.append(str(path))
        if s.checkpoint_every and n % s.checkpoint_every == 0 and n < s.steps:
            _save_state(self.acc, self.out_dir, {"step": n, "time": self.elapsed})

    def release(self) -> None:
        """Forget this run's model and optimizer in the (shared) Accelerator.

        Accelerate keeps every prepared object and ``save_state``/``load_state``
        handle all of them by index: without this, a bench process training
        one arm after another would hold every earlier arm's model in memory,
        write them all into each later arm's resume state, and resume an arm
        from the wrong file.
        """
        acc = self.acc
        for attr, obj in (("_models", getattr(self, "net", None)), ("_optimizers", getattr(self, "opt", None))):
            kept = getattr(acc, attr, None)
            if isinstance(kept, list) and obj is not None:
                kept[:] = [o for o in kept if o is not obj]

    # -- finish ---------------------------------------------------------------
    def finish(self, save_final: bool) -> TrainResult:
        """The final model, the result record; the resumable state is no longer needed."""
        self.bar.close()
        s, acc = self.s, self.acc
        final_dir = None
        if save_final:
            final_dir = self.out_dir / "final"
            _save_hf(self.net, acc, final_dir, self.extra_files)
        first_eval = self.first_eval
        if self.resumed_from is not None and first_eval is None:
            rows = read_log(self.log_path) if acc.is_main_process and self.log_path.exists() else []
            first_eval = next((r["eval_loss"] for r in rows if r.get("eval_loss") is not None), None)
        result = TrainResult(
            out_dir=self.out_dir, log_path=self.log_path, final_dir=final_dir, steps=s.steps,
            tokens=s.steps * self.tokens_per_step, flops=self.per_token * s.steps * self.tokens_per_step,
            time=self.elapsed, params=self.n_params, flops_params=self.n_flops, final_eval_loss=self.last_eval,
            first_eval_loss=first_eval, resumed_from=self.resumed_from, saved=self.saved,
            teacher_flops=0.0 if self.distill is None else self.distill.flops(s.steps * self.tokens_per_step),
        )
        if acc.is_main_process:
            write_text(self.done, json.dumps(result.to_dict(), indent=2))
            shutil.rmtree(self.out_dir / "state", ignore_errors=True)
        acc.wait_for_everyone()
        return result
