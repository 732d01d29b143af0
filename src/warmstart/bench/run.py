"""Run a recipe: data, sources, growth, arms, seeds, metrics and the report.

Layout of the output directory::

    DIR/recipe.json                      the validated recipe (a resumed run must match it)
    DIR/seed-K/sources/NAME/             a bench-trained source: log.jsonl, final/, result.json
    DIR/seed-K/grown/ARM/                the grown start of a grow arm (an HF directory)
    DIR/seed-K/adapters/ARM/             the initial adapter of an adapter arm (PEFT layout + warmstart_adapter.json)
    DIR/seed-K/arms/ARM/                 each arm's training: log.jsonl, final/, result.json
    DIR/seed-K/arms/ARM@lrX/             one run of an arm's learning-rate grid (bench/grid.py)
    DIR/report.md, curves.png (and .pdf/.svg if asked), results.json

The work happens in ``.DIR.partial`` next to DIR, renamed to DIR when every
arm of every seed is done, so a DIR that exists is complete. ``resume=True``
continues an interrupted ``.DIR.partial`` (or a finished DIR, e.g. with more
seeds): finished sources and arms are skipped and an interrupted arm goes on
from its last resume state.

Sources and scratch arms are also cached across runs, under
``<cache>/bench/sources`` and ``<cache>/bench/scratch`` (keyed by a hash of
the tokens, the model config, every training setting and the seed), because
the same source or scratch run recurs across recipes: training is
deterministic, so a cached run is the run. A source's cost is counted in
full whether it was trained now or earlier. ``source_cache=False`` (``--no-cache``)
trains everything.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from warmstart import assets
from warmstart.arch import open_model
from warmstart.bench import adapter_arm as AA
from warmstart.bench import data as D
from warmstart.bench import grid as G
from warmstart.bench import metrics as M
from warmstart.bench import report
from warmstart.bench import train as T
from warmstart.bench.recipe import DIM_KEYS, ArmSpec, Recipe, RecipeError, base_dir, grow_chain, plan_chain
from warmstart.checkpoint.atomic import atomic_directory, replacing_directory, swap_in, write_text
from warmstart.checkpoint.writer import copy_extra_files
from warmstart.errors import OutputExists, WarmstartError
from warmstart.ops.registry import OPERATIONS
from warmstart.plan import execute

SOURCE_FORMAT = 1


@dataclass
class Context:
    recipe: Recipe
    work: Path
    data: dict
    accelerator: object
    progress: bool
    say: object
    source_cache: Path | None


def _paths(out: Path, resume: bool, force: bool, main_process: bool = True) -> tuple[Path, Path]:
    """(work dir, final dir) for this run, refusing what must be refused."""
    out = Path(out)
    if out.parent.exists() and not out.parent.is_dir():
        raise WarmstartError("parent of the output is not a directory", out.parent)
    if main_process:
        out.parent.mkdir(parents=True, exist_ok=True)  # runs/NAME in a fresh clone
    partial = out.parent / f".{out.name}.partial"
    if resume:
        if partial.exists():
            return partial, out
        if out.exists():
            if not (out / "recipe.json").exists():
                raise OutputExists("output exists but is not a bench directory (no recipe.json)", out)
            return out, out
        return partial, out
    if partial.exists():
        if not force:
            raise OutputExists(f"an interrupted run is in {partial.name} (use --resume to continue it or --force "
                               "to start over)", out)
        if main_process:
            shutil.rmtree(partial)
    if out.exists() and not force:
        raise OutputExists("output already exists (use --force to replace it, --resume to add to it)", out)
    return partial, out


def corpora_of(recipe: Recipe) -> dict:
    base = base_dir(recipe)
    out = {"main": D.corpus_files(recipe.corpus, base)}
    for name, src in recipe.sources.items():
        if src.corpus is not None and src.corpus != recipe.corpus:
            out[f"source-{name}"] = D.corpus_files(src.corpus, base)
    return out


def _train_kwargs(recipe: Recipe, budget, where: str, default_steps: int | None, seed: int, data_seed: int) -> dict:
    t = recipe.train
    return dict(
        steps=recipe.steps_of(budget, where, default_steps),
        batch_size=t.batch_size, seq_len=recipe.model.seq_len,
        lr=budget.lr if budget.lr is not None else (t.lr if t.lr is not None else 1e-3),
        schedule=budget.schedule if budget.schedule is not None else t.schedule,
        weight_decay=t.weight_decay, betas=tuple(t.betas), grad_clip=t.grad_clip, grad_accum=t.grad_accum,
        eval_every=t.eval_every, eval_batches=t.eval_batches, checkpoint_every=t.checkpoint_every,
        seed=seed, data_seed=data_seed, mixed_precision="bf16" if t.precision == "bf16" else "no",
    )


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _seed_source(ctx: Context, name: str, seed: int) -> Path:
    """Train (or find) source `name` for `seed`; returns its training directory."""
    r = ctx.recipe
    src = r.sources[name]
    tokens = ctx.data.get(f"source-{name}", ctx.data["main"])
    config = src.model.hf_config(tokens.vocab_size, r.model.seq_len)
    kw = _train_kwargs(r, src, f"sources.{name}", None, seed, 10_000 + seed)
    target = ctx.work / f"seed-{seed}" / "sources" / name
    if (target / "result.json").exists():
        return target
    if ctx.source_cache is not None:
        key = _hash({"format": SOURCE_FORMAT, "data": str(tokens.tokenizer_dir.parent.name), "corpus": tokens.name,
                     "eval": str(ctx.data["main"].tokenizer_dir.parent.name), "config": config, "train": kw})
        cached = ctx.source_cache / f"{name}-{key}"
        if (cached / "result.json").exists():
            ctx.say(f"source {name} (seed {seed}): trained before with the same settings; reused from the cache, "
                    "its cost counted in full")
            _link(cached, target, ctx.accelerator)
            return target
        run_dir = cached
    else:
        run_dir = target
    ctx.say(f"source {name} (seed {seed}): pretraining {kw['steps']} steps at hidden {src.model.hidden}, "
            f"{src.model.layers} layers")
    T.train(config, tokens.train, ctx.data["main"].val, out_dir=run_dir, resume=True, progress=ctx.progress,
          desc=f"source {name}", extra_files=tokens.tokenizer_files(), accelerator=ctx.accelerator, **kw)
    if run_dir != target:
        _link(run_dir, target, ctx.accelerator)
    return target


def _link(src: Path, dst: Path, accelerator) -> None:
    """Copy a finished run (from the cache) into the bench directory, atomically (main process)."""
    if accelerator.is_main_process and not dst.exists():
        with replacing_directory(dst, keep_existing=True) as tmp:
            shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("state", ".*"), dirs_exist_ok=True)
    accelerator.wait_for_everyone()


def _with_seed(params: dict, op: str, seed: int) -> dict:
    if "seed" not in params and "seed" in OPERATIONS.parameters(op):
        return {**params, "seed": seed}
    return params


def _grow(ctx: Context, index: int, start: Path, seed: int) -> Path:
    """Write the grown start of arm `index` (the same operations as `warmstart grow`)."""
    arm = ctx.recipe.arms[index]
    out = ctx.work / f"seed-{seed}" / "grown" / arm.name
    if (out / "config.json").exists():
        return out
    ctx.say(f"arm {arm.name} (seed {seed}): growing {' > '.join(op for op, _ in grow_chain(arm))}")
    model = open_model(start)
    seeded = ArmSpec.model_validate({**arm.model_dump(exclude={"grow_single"}),
                                     "grow": [{"op": op, **_with_seed(p, op, seed)} for op, p in grow_chain(arm)]})
    seeded.grow_single = arm.grow_single
    transform = plan_chain(model, seeded, index)
    out.parent.mkdir(parents=True, exist_ok=True)
    if ctx.accelerator.is_main_process:
        execute(transform.plan, out, config=transform.config, copy_files=model.checkpoint.extra_files(), force=True)
    ctx.accelerator.wait_for_everyone()
    return out


def _random_start(ctx: Context, index: int, seed: int) -> Path:
    """A scratch arm with ``grow``: the recipe's model, randomly initialized (seeded as a scratch arm is),
    written once per arm and seed, for the chain to transform (e.g. ``upcycle`` with ``drop_ratio: 1.0``:
    an MoE from scratch, through the same operation as the upcycled arms)."""
    arm, main = ctx.recipe.arms[index], ctx.data["main"]
    out = ctx.work / f"seed-{seed}" / "random" / arm.name
    if (out / "config.json").exists():
        return out
    if ctx.accelerator.is_main_process:
        net = T.build_model(ctx.recipe.model.hf_config(main.vocab_size, ctx.recipe.model.seq_len), seed)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_directory(out, force=True) as tmp:
            net.save_pretrained(str(tmp))
            copy_extra_files(main.tokenizer_files(), tmp)
    ctx.accelerator.wait_for_everyone()
    return out


def _prune(ctx: Context, index: int, start: Path) -> Path:
    """Write the pruned start of arm `index` (importance from windows of the training split; shared by seeds)."""
    import torch

    from warmstart.bench.train import _quiet, eval_offsets
    from warmstart.ops import importance as I
    from warmstart.ops.prune import prune_model

    r, arm = ctx.recipe, ctx.recipe.arms[index]
    spec, main = arm.prune, ctx.data["main"]
    out = ctx.work / "pruned" / arm.name
    if (out / "config.json").exists():
        return out
    ctx.say(f"arm {arm.name}: pruning ({spec.importance} importance) to the target shape")
    seq = r.model.seq_len
    n = spec.batches * spec.batch_size
    offsets = eval_offsets(len(main.train), seq, n)
    windows = torch.tensor([list(map(int, main.train[o:o + seq])) for o in offsets], dtype=torch.long)
    depth = spec.depth_importance or "block-influence"
    measured = None
    if spec.importance == "activation" or depth in ("block-influence", "loss"):
        with _quiet():
            measured = I.activation_importance(start, windows.reshape(spec.batches, spec.batch_size, seq),
                                               block_loss=depth == "loss")
    m = r.model
    out.parent.mkdir(parents=True, exist_ok=True)
    if ctx.accelerator.is_main_process:
        prune_model(start, out, importance=spec.importance, layers=m.layers, depth_importance=depth,
                    hidden=m.hidden, heads=m.heads, kv_heads=m.kv_heads or m.heads,
                    intermediate=m.intermediate or 3 * m.hidden, measured=measured, force=True)
    ctx.accelerator.wait_for_everyone()
    return out


def _distiller(ctx: Context, index: int, start: Path | None, steps: int):
    """The arm's Distiller: the teacher's cached top-k logits (built once per teacher and corpus) or a live teacher."""
    import transformers as tf

    from warmstart.bench import distill as DL
    from warmstart.bench.train import _quiet, flops_params

    r, arm, main = ctx.recipe, ctx.recipe.arms[index], ctx.data["main"]
    spec = arm.distill
    teacher = model_path(r, spec.teacher or arm.checkpoint)
    DL.check_same_tokenizer(teacher, main.tokenizer_dir)
    with _quiet():
        lm = tf.AutoModelForCausalLM.from_pretrained(str(teacher)).eval()
    n = flops_params(lm)
    if spec.live:
        return DL.Distiller(alpha=spec.alpha, temperature=spec.temperature, teacher=lm, teacher_params=n,
                            norms_only=spec.norms_only)
    root = (ctx.source_cache.parent if ctx.source_cache is not None else ctx.work) / "distill"
    cache = DL.teacher_cache(teacher, main.train, seq_len=r.model.seq_len, k=spec.top_k, windows=spec.windows,
                             root=root, lm=lm, progress=ctx.progress)
    return DL.Distiller(alpha=spec.alpha, temperature=spec.temperature, cache=cache, teacher_params=n,
                        norms_only=spec.norms_only)


def shrink_perturb(shrink: float, noise: float, seed: int):
    """theta <- shrink * theta + noise * theta_init, theta_init a fresh initialisation of the same model
    ("On Warm-Starting Neural Network Training")."""

    def apply(model):
        import torch
        import transformers as tf

        torch.manual_seed(seed)
        fresh = tf.AutoModelForCausalLM.from_config(model.config)
        fresh_params = dict(fresh.named_parameters())
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() < 2:
                    continue  # norms keep their gains
                p.mul_(shrink).add_(fresh_params[name].to(p.dtype), alpha=noise)

    return apply


def lsuv_scratch(train_tokens, batch_size: int, seq_len: int, seed: int, cost_path: Path):
    """LSUV of a scratch model on one calibration batch of the training split (random windows, seeded);
    its forward passes' cost is written to `cost_path` (see :mod:`warmstart.bench.scratch_init`)."""

    def apply(model):
        import numpy as np
        import torch

        from warmstart.bench.scratch_init import lsuv_init

        rng = np.random.default_rng(seed)
        starts = rng.integers(0, len(train_tokens) - seq_len, size=batch_size)
        batch = torch.as_tensor(np.stack([np.asarray(train_tokens[s:s + seq_len]) for s in starts]).astype(np.int64))
        cost = lsuv_init(model, batch.to(next(model.parameters()).device), seed=seed)
        cost_path.parent.mkdir(parents=True, exist_ok=True)
        cost_path.write_text(json.dumps(cost))

    return apply


def _arm(ctx: Context, index: int, seed: int, lr: float | None = None) -> dict:
    """Train arm `index` for `seed` (at peak `lr`, one rate of its grid); returns its record (log path, result,
    source cost)."""
    r = ctx.recipe
    arm = r.arms[index]
    if arm.adapter is not None:
        return _adapter_arm(ctx, index, seed, lr)
    main = ctx.data["main"]
    source_dir, source_cost = None, {k: 0.0 for k in M.KEYS}
    if arm.source:
        source_dir = _seed_source(ctx, arm.source, seed)
        res = json.loads((source_dir / "result.json").read_text())
        source_cost = {"tokens": float(res["tokens"]), "flops": float(res["flops"]), "time": float(res["time"])}
        start = source_dir / "final"
    elif arm.checkpoint:
        start = model_path(r, arm.checkpoint)
        source_cost = None if arm.checkpoint_flops is None else {"tokens": None, "flops": arm.checkpoint_flops,
                                                                 "time": None}
        if arm.prune is not None and arm.checkpoint_flops is None:
            # Pruning the checkpoint the user already has: its pretraining is sunk, counted as zero.
            source_cost = {k: 0.0 for k in M.KEYS}
    else:
        start = None
    if start is None and arm.grow:
        model = _grow(ctx, index, _random_start(ctx, index, seed), seed)
    elif start is None:
        model = r.model.hf_config(main.vocab_size, r.model.seq_len)
    elif arm.grow:
        model = _grow(ctx, index, start, seed)
    elif arm.prune:
        model = _prune(ctx, index, start)
    else:
        model = start
    init = None
    if arm.shrink_perturb is not None:
        init = shrink_perturb(arm.shrink_perturb.shrink, arm.shrink_perturb.noise, 20_000 + seed)
    kw = _train_kwargs(r, arm, f"arms[{index}]", r.steps, seed, seed)
    if lr is not None:
        kw["lr"] = lr
    distiller = _distiller(ctx, index, start, kw["steps"]) if arm.distill is not None else None
    run_name = G.run_name(arm.name, lr)
    out = ctx.work / f"seed-{seed}" / "arms" / run_name
    if arm.init == "lsuv":
        init = lsuv_scratch(main.train, kw["batch_size"], r.model.seq_len, 30_000 + seed, out / "init_cost.json")
    run_dir = out
    if arm.kind == "scratch" and not arm.grow and init is None and distiller is None and ctx.source_cache is not None and not (out / "result.json").exists():
        key = _hash({"format": SOURCE_FORMAT, "scratch": model, "data": str(main.tokenizer_dir.parent.name),
                     "train": kw})
        cached = ctx.source_cache.parent / "scratch" / key
        if (cached / "result.json").exists():
            ctx.say(f"arm {run_name} (seed {seed}): the same scratch run was trained before; reusing it from the "
                    "cache")
            _link(cached, out, ctx.accelerator)
        else:
            run_dir = cached
    if not (out / "result.json").exists():
        ctx.say(f"arm {run_name} (seed {seed}): training {kw['steps']} steps ({arm.kind})")
    result = T.train(model, main.train, main.val, out_dir=run_dir, resume=True, progress=ctx.progress,
                   desc=f"{run_name} s{seed}", init_fn=init, extra_files=main.tokenizer_files(),
                   accelerator=ctx.accelerator, distill=distiller, **kw)
    if run_dir != out:
        _link(run_dir, out, ctx.accelerator)
    rows = T.read_log(out / "log.jsonl") if ctx.accelerator.is_main_process else []
    init_cost = out / "init_cost.json"
    if arm.init != "default" and init_cost.exists():  # LSUV's calibration forwards, counted like a source
        source_cost = {k: float(v) for k, v in json.loads(init_cost.read_text()).items() if k in M.KEYS}
    if source_cost is not None and source_cost.get("tokens") is None:
        source_cost = {"tokens": math.nan, "flops": source_cost["flops"], "time": math.nan}
    return {"name": arm.name, "kind": arm.kind, "rows": rows, "result": result.to_dict(), "source": arm.source,
            "source_cost": source_cost, "log": str(out / "log.jsonl"), "lr": kw["lr"]}


def _adapter_arm(ctx: Context, index: int, seed: int, lr: float | None = None) -> dict:
    """Fine-tune a LoRA adapter on the arm's checkpoint (see :mod:`warmstart.bench.adapter_arm`).

    The initialization's calibration passes and seconds are the arm's one-time
    cost, reported where a warm arm reports its source's pretraining; the
    checkpoint (or bench-trained source) is sunk: every adapter arm and the
    reference fine-tune the same one.
    """
    r, arm, main = ctx.recipe, ctx.recipe.arms[index], ctx.data["main"]
    if arm.source:  # a bench-trained source, shared with the reference arm: the comparison's sunk cost too
        checkpoint = _seed_source(ctx, arm.source, seed) / "final"
    else:
        checkpoint = model_path(r, arm.checkpoint)
    kw = _train_kwargs(r, arm, f"arms[{index}]", r.steps, seed, seed)
    if lr is not None:
        kw["lr"] = lr
    run_name = G.run_name(arm.name, lr)
    out = ctx.work / f"seed-{seed}" / "arms" / run_name
    start_dir = ctx.work / f"seed-{seed}" / "adapters" / run_name
    start = None
    if not (out / "result.json").exists():
        ctx.say(f"arm {run_name} (seed {seed}): initializing a rank-{arm.adapter.rank} {arm.adapter.method} adapter, "
                f"then training {kw['steps']} steps (adapter)")
        start = AA.build(checkpoint, arm.adapter, train_tokens=main.train, seq_len=r.model.seq_len,
                         batch_size=r.train.batch_size, seed=seed, corpus=corpora_of(r)["main"], start_dir=start_dir,
                         accelerator=ctx.accelerator)
    result = T.train(start.model if start is not None else checkpoint, main.train, main.val, out_dir=out,
                     resume=True, progress=ctx.progress, desc=f"{run_name} s{seed}", extra_files=main.tokenizer_files(),
                     accelerator=ctx.accelerator, flops_per_token=start.flops_per_token if start is not None else None,
                     **kw)
    if start is not None:
        base = _final_location(ctx.work, checkpoint) if arm.source else checkpoint
        AA.finish(start, out / "final", base, main.tokenizer_files(), ctx.accelerator)
    rows = T.read_log(out / "log.jsonl") if ctx.accelerator.is_main_process else []
    settings = json.loads((out / "settings.json").read_text()) if (out / "settings.json").exists() else {}
    return {"name": arm.name, "kind": arm.kind, "rows": rows, "result": result.to_dict(), "source": None,
            "source_cost": AA.init_cost(start_dir), "log": str(out / "log.jsonl"),
            "trainable_params": settings.get("trainable_params"), "lr": kw["lr"]}


def check_starts(ctx: Context) -> None:
    """Checks that need the tokenizer: existing checkpoints must match the recipe's target and vocabulary."""
    r = ctx.recipe
    vocab = ctx.data["main"].vocab_size
    for i, arm in enumerate(r.arms):
        if not arm.checkpoint:
            continue
        path = model_path(r, arm.checkpoint)
        if not (path / "config.json").is_file():
            raise RecipeError(f"arms[{i}].checkpoint: not a model directory (no config.json): {arm.checkpoint}")
        model = open_model(path)
        if arm.adapter is not None:
            _check_adapter_arm(ctx, i, path, model.config)
        config = plan_chain(model, arm, i).config if arm.grow else model.config
        found = model.family.config_value(config, "vocab")  # nested in text_config for multimodal checkpoints
        if int(found if found is not None else -1) != vocab:
            raise RecipeError(f"arms[{i}].checkpoint: its vocabulary has {found} tokens, the "
                              f"recipe's tokenizer {vocab} (set tokenizer.path to the checkpoint's tokenizer)")


def _final_location(work: Path, path: Path) -> Path:
    """Where `path`, inside the work directory ``.DIR.partial``, will be once the run is renamed to DIR."""
    name = work.name
    if name.startswith(".") and name.endswith(".partial") and Path(path).is_relative_to(work):
        return work.parent / name[1:-len(".partial")] / Path(path).relative_to(work)
    return Path(path)


def _check_adapter_arm(ctx: Context, i: int, path: Path, config: dict) -> None:
    """The adapter library's checks (rank, targets, precision, tokenizer), and the recipe's model is the base's."""
    r = ctx.recipe
    try:
        AA.check(path, r.arms[i].adapter, seq_len=r.model.seq_len, batch_size=r.train.batch_size,
                 corpus=corpora_of(r)["main"], tokenizer_dir=ctx.data["main"].tokenizer_dir)
    except WarmstartError as err:
        raise RecipeError(f"arms[{i}].adapter: {err.message}") from None
    want = r.model.hf_config(ctx.data["main"].vocab_size, r.model.seq_len)
    diffs = [f"{DIM_KEYS[k]} {config.get(k)} (recipe's model: {want[k]})" for k in DIM_KEYS
             if config.get(k) is not None and config.get(k) != want[k]]
    if diffs:
        raise RecipeError(f"arms[{i}].checkpoint: the adapter's base has {', '.join(diffs)}; give the recipe's "
                          "model: the checkpoint's shape")


def _job(recipe: Recipe, work: str, cpu: bool | None, cache: str | None, threads: int, kind: str, key, seed: int,
         lr: float | None = None):
    """One source or arm, trained in a worker process of `run_bench(jobs=...)`; its outputs go to disk.

    The worker re-opens the (cached) data and builds its own single-process
    Accelerator, so it trains exactly what the sequential loop would.
    """
    import torch
    from accelerate import Accelerator

    torch.set_num_threads(threads)
    try:
        data = D.prepare(corpora_of(recipe), vocab_size=recipe.tokenizer.vocab_size, heldout=recipe.heldout,
                         max_bytes=recipe.max_corpus_bytes, tokenizer=_tokenizer_path(recipe))
        acc = Accelerator(cpu=cpu, mixed_precision="bf16" if recipe.train.precision == "bf16" else "no")
        ctx = Context(recipe, Path(work), data, acc, False, lambda *a, **k: None, None if cache is None else Path(cache))
        if kind == "source":
            _seed_source(ctx, key, seed)
        else:
            _arm(ctx, key, seed, lr)
    except WarmstartError as err:  # exceptions with custom constructors do not survive pickling
        raise RuntimeError(err.line()) from None


def run_phases(recipe: Recipe, runs: list[tuple]) -> list[list[tuple]]:
    """Arm runs ``(kind, arm index, seed, lr)`` in phases that `--jobs` runs one after the other.

    A grown start (per arm and seed), a pruned one (per arm) and a teacher's logit cache are written by
    the first run that needs them; the runs that share one (other learning rates, other seeds, other
    distilled arms) go to a later phase, so that no run reads a start another process is still writing,
    and no teacher cache is computed twice.
    """
    built: dict[tuple, int] = {}  # what a run writes for others -> the phase of the run that writes it
    phases: list[list] = []
    for job in runs:
        arm = recipe.arms[job[1]]
        keys = set()
        if arm.prune:
            keys.add(("prune", arm.name))
        if arm.grow:
            keys.add(("grow", arm.name, job[2]))
        if arm.distill is not None and not arm.distill.live:
            d = arm.distill
            keys.add(("teacher", d.teacher or arm.checkpoint, d.top_k, d.windows))
        phase = max((built[k] + 1 for k in keys if k in built), default=0)
        for k in keys:
            built.setdefault(k, phase)
        phases += [[] for _ in range(phase + 1 - len(phases))]
        phases[phase].append(job)
    return phases


def _run_jobs(ctx: Context, seeds: int, jobs: int, cpu: bool | None) -> None:
    """Train every source, then every arm (each rate of its grid), of every seed, `jobs` at a time in worker
    processes.

    Arms depend only on their source, so once the sources exist the arms are
    independent runs: on a CPU with N cores, N single-threaded arms side by
    side finish sooner than one N-threaded arm after another (a tiny model's
    matrices are too small to keep several threads busy). Each run is the
    same deterministic run as in the sequential loop, which afterwards only
    reads the finished results.
    """
    import concurrent.futures as cf
    import multiprocessing as mp
    import time

    r = ctx.recipe
    threads = max(1, (os.cpu_count() or 1) // jobs)
    cache = None if ctx.source_cache is None else str(ctx.source_cache)
    used = {a.source for a in r.arms if a.source}

    def done(kind: str, name: str, seed: int) -> bool:
        return (ctx.work / f"seed-{seed}" / f"{kind}s" / name / "result.json").exists()

    runs = [("arm", i, seed, lr) for seed in range(seeds) for i in range(len(r.arms))
            for lr in G.runs_of(r, r.arms[i]) if not done("arm", G.run_name(r.arms[i].name, lr), seed)]
    phases = [[("source", name, seed, None) for seed in range(seeds) for name in r.sources
               if name in used and not done("source", name, seed)], *run_phases(r, runs)]
    ctx.say(f"training {jobs} runs at a time, {threads} thread(s) each")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        for phase in phases:
            started = time.perf_counter()
            futures = {pool.submit(_job, r, str(ctx.work), cpu, cache, threads, *job): job for job in phase}
            for fut in cf.as_completed(futures):
                kind, key, seed, lr = futures[fut]
                name = key if kind == "source" else G.run_name(r.arms[key].name, lr)
                try:
                    fut.result()
                except RuntimeError as err:
                    for other in futures:
                        other.cancel()
                    raise WarmstartError(f"{kind} {name} (seed {seed}): {err}") from None
                ctx.say(f"{kind} {name} (seed {seed}): done ({time.perf_counter() - started:.0f} s into this phase)")


def run_bench(recipe: Recipe, out, *, seeds: int | None = None, resume: bool = False, force: bool = False,
              progress: bool = True, cpu: bool | None = None, source_cache: bool = True, say=print,
              jobs: int = 1, figure_formats=()) -> dict:
    """Run every arm of `recipe` for each seed and write the report; returns results.json's content.

    `jobs` > 1 trains that many sources or arms at once in worker processes
    (single-process runs only; under a distributed launch the ranks already
    share every run). `figure_formats` ("pdf", "svg") add curves.pdf/.svg to curves.png.
    """
    from accelerate import Accelerator

    seeds = seeds or recipe.seeds
    if jobs < 1:
        raise WarmstartError(f"--jobs must be at least 1, got {jobs}")
    try:
        report.figure_formats_of(figure_formats)
    except ValueError as err:
        raise WarmstartError(f"--figure-format: {err}") from None
    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    acc = Accelerator(cpu=cpu, mixed_precision="bf16" if recipe.train.precision == "bf16" else "no")
    work, final = _paths(Path(out), resume, force, acc.is_main_process)
    acc.wait_for_everyone()
    quiet = (lambda *a, **k: None)
    say = say if acc.is_main_process else quiet

    stored = work / "recipe.json"
    mine = recipe.to_dict()
    if stored.exists():
        _compatible(json.loads(stored.read_text()), mine, work)

    # Data first: a corpus problem should stop the run before anything is written.
    if acc.is_main_process:
        corpora = corpora_of(recipe)
        data = D.prepare(corpora, vocab_size=recipe.tokenizer.vocab_size, heldout=recipe.heldout,
                         max_bytes=recipe.max_corpus_bytes, tokenizer=_tokenizer_path(recipe), progress=progress)
    acc.wait_for_everyone()
    if not acc.is_main_process:
        data = D.prepare(corpora_of(recipe), vocab_size=recipe.tokenizer.vocab_size, heldout=recipe.heldout,
                         max_bytes=recipe.max_corpus_bytes, tokenizer=_tokenizer_path(recipe))
    main = data["main"]
    for name, tok in data.items():
        need = recipe.model.seq_len + 2
        if len(tok.train) < need or len(tok.val) < need:
            raise D.CorpusError(f"corpus {name!r} is too small: {len(tok.train)} training and {len(tok.val)} held-out "
                                f"tokens, fewer than one sequence of {recipe.model.seq_len} tokens")
    ctx = Context(recipe, work, data, acc, progress, say,
                  (assets.cache_dir() / "bench" / "sources") if source_cache else None)
    check_starts(ctx)

    if acc.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
        write_text(stored, json.dumps({**_merged(stored, mine), "seeds": seeds}, indent=2))
    acc.wait_for_everyone()
    say(f"bench {recipe.name}: {len(recipe.arms)} arms x {seeds} seed(s), {recipe.steps} steps of "
        f"{recipe.tokens_per_step} tokens; {len(main.train):,} training / {len(main.val):,} held-out tokens "
        f"(vocab {main.vocab_size}); working in {work}")

    if jobs > 1 and acc.num_processes == 1:
        _run_jobs(ctx, seeds, jobs, cpu)

    runs: list[dict] = []
    grid_runs: list[dict] = []  # per seed: {arm: {lr: record}}, every run of every arm's grid
    for seed in range(seeds):
        by_lr = {}
        ref = recipe.target.arm if recipe.target.loss is None else None
        order = sorted(range(len(recipe.arms)), key=lambda i: recipe.arms[i].name != ref)  # the reference first
        for i in order:
            by_lr[recipe.arms[i].name] = {lr: _arm(ctx, i, seed, lr) for lr in G.runs_of(recipe, recipe.arms[i])}
        grid_runs.append(by_lr)
        sources = {}
        for name in recipe.sources:
            d = work / f"seed-{seed}" / "sources" / name
            if (d / "result.json").exists():
                res = json.loads((d / "result.json").read_text())
                sources[name] = {"final_eval_loss": res["final_eval_loss"], "flops": res["flops"],
                                 "tokens": res["tokens"], "time": res["time"], "log": str(d / "log.jsonl"),
                                 "params": res["params"]}
        runs.append({"seed": seed, "arms": None, "sources": sources})

    results = None
    if acc.is_main_process:
        # Each grid arm at the learning rate with its lowest median final loss; the target follows from it.
        choice = G.choose(recipe, grid_runs)
        for run, arms in zip(runs, G.chosen_runs(recipe, grid_runs, choice)):
            run["arms"] = arms
        results = report.write(work, recipe, runs, data_info={"train_tokens": int(len(main.train)),
                                                              "val_tokens": int(len(main.val)),
                                                              "vocab_size": main.vocab_size},
                               figure_formats=figure_formats, grid=choice)
        if work != final:
            swap_in(work, final)
        # Paths inside results now point into the final directory.
        results = json.loads((final / "results.json").read_text())
    acc.wait_for_everyone()
    return results


def _compatible(theirs: dict, mine: dict, work: Path) -> None:
    """A resumed run may add arms, sources or seeds and change the target; what was trained must be unchanged."""
    loose = ("seeds", "arms", "sources", "target", "name", "lr_grid")  # a grid's runs are named by their rate
    a = {k: v for k, v in theirs.items() if k not in loose}
    b = {k: v for k, v in mine.items() if k not in loose}
    if a != b:
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise WarmstartError(f"the recipe's {', '.join(keys)} differ from the run being resumed (use --force to start "
                             "over)", work)
    old = {arm["name"]: {k: v for k, v in arm.items() if k != "lrs"} for arm in theirs.get("arms", [])}
    for i, arm in enumerate(mine.get("arms", [])):
        if arm["name"] in old and old[arm["name"]] != {k: v for k, v in arm.items() if k != "lrs"}:
            raise WarmstartError(f"arms[{i}] ({arm['name']}) differs from the arm of that name in the run being "
                                 "resumed (rename it or use --force)", work)
    for name, src in mine.get("sources", {}).items():
        if name in theirs.get("sources", {}) and theirs["sources"][name] != src:
            raise WarmstartError(f"sources.{name} differs from the source of that name in the run being resumed "
                                 "(rename it or use --force)", work)


def _merged(stored: Path, mine: dict) -> dict:
    """This recipe plus the arms and sources trained so far: a later resume must still match all of them."""
    out = dict(mine)
    if stored.exists():
        theirs = json.loads(stored.read_text())
        names = {a["name"] for a in mine.get("arms", [])}
        out["arms"] = list(mine.get("arms", [])) + [a for a in theirs.get("arms", []) if a["name"] not in names]
        out["sources"] = {**theirs.get("sources", {}), **mine.get("sources", {})}
    return out


def _tokenizer_path(recipe: Recipe):
    if recipe.tokenizer.path is None:
        return None
    return model_path(recipe, recipe.tokenizer.path)


def model_path(recipe: Recipe, value: str) -> Path:
    """A recipe's model or tokenizer path: relative to the recipe's folder, or ``asset:NAME`` (warmstart.assets)."""
    if value.startswith("asset:"):
        from warmstart import assets

        name = value[len("asset:"):]
        if name not in assets.ASSETS:
            raise RecipeError(f"unknown asset {name!r} (assets: {', '.join(assets.ASSETS)})")
        return assets.ASSETS[name]()
    p = Path(value)
    return p if p.is_absolute() else base_dir(recipe) / p
