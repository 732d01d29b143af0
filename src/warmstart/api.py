"""The Python API: one call per command, with the command's options as keyword arguments.

Each call returns a result object with ``lines()`` (what the command prints)
and ``as_dict()`` (what ``--json`` prints); the CLI calls exactly these
functions. Every call that writes a model takes ``dry_run=True`` to plan
without writing, and raises :class:`warmstart.errors.WarmstartError` on bad
input, before anything is written::

    import warmstart
    r = warmstart.grow("SmolLM2-135M", "SmolLM2-grown", width_mult=2, layers=40, depth_method="expand")
    print("\\n".join(r.lines()))
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from warmstart.checkpoint.atomic import RECORD
from warmstart.checkpoint.dtypes import parse_user_dtype
from warmstart.errors import WarmstartError
from warmstart.inputs import check_text_file, read_bytes
from warmstart.ops import registry
from warmstart.ops.chain import ChainResult, apply_chain, load_recipe

_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}
WIDTH_KEYS = ("hidden", "intermediate", "heads", "kv_heads")


def parse_size(text: str | int | None) -> int | None:
    """'2GB', '500MB', '1.5GiB' or a byte count -> bytes."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise WarmstartError(f"cannot read size {text!r} (examples: 2GB, 500MB, 1GiB)")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise WarmstartError(f"size must be positive, got {text!r}")
    return value


# --- results of the commands that have no report of their own -----------------------------------------------------

@dataclass
class WriteResult:
    """convert, import, tokenizer train: what was (or would be) written."""

    what: str
    report: Any  # checkpoint.writer.WriteReport
    extra: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [f"{self.what}: {self.report.line()}"]

    def as_dict(self) -> dict:
        return {"command": self.what, **self.extra, "write": self.report.as_dict()}


@dataclass
class InspectResult:
    summary: dict

    def lines(self) -> list[str]:
        from warmstart.arch.summary import format_summary

        out = format_summary(self.summary).splitlines()
        rec = self.summary.get("provenance")
        w = max(out[0].find(str(self.summary.get("path"))), 12)  # the column where the values start
        if rec:
            how = " ".join(rec["command"]) if rec.get("command") else (
                " -> ".join(s["op"] for s in rec.get("chain", [])) or "warmstart")
            out.append(f"{'made by':<{w}}warmstart {rec.get('warmstart', '?')}: {how}")
            for src in rec.get("sources", []):
                out.append(f"{'from':<{w}}{src['path']} ({src['fingerprint'][:19]}...)")
            if rec.get("exact") is not None:
                out.append(f"{'exact':<{w}}{'yes' if rec['exact'] else 'no (a warm start)'}")
        return out

    def as_dict(self) -> dict:
        return self.summary


# --- model-writing commands ---------------------------------------------------------------------------------------

def convert(model, out, *, dtype: str | None = None, max_shard_size: str | int | None = "2GB", force: bool = False,
            dry_run: bool = False, progress: bool = False) -> WriteResult:
    """Rewrite a model directory tensor by tensor (dtype, shard size), byte copies where nothing changes."""
    from warmstart.plan import copy_model

    report = copy_model(model, out, dtype=dtype, force=force, max_shard_bytes=parse_size(max_shard_size),
                        progress=progress, dry_run=dry_run)
    return WriteResult("convert", report, {"source": str(model)})


def import_gguf(gguf, out, *, dtype: str = "fp32", max_shard_size: str | int | None = "2GB", force: bool = False,
                dry_run: bool = False, progress: bool = False) -> WriteResult:
    """A GGUF file, dequantized, as a Hugging Face safetensors directory with its tokenizer."""
    from warmstart.checkpoint.gguf import import_gguf as _import

    report = _import(gguf, out, dtype=parse_user_dtype(dtype), force=force, max_shard_bytes=parse_size(max_shard_size),
                     progress=progress, dry_run=dry_run)
    return WriteResult("import", report, {"source": str(gguf)})


def chain(model, out, steps: Sequence[tuple[str, dict] | dict], *, optimizer_state=None, dtype: str | None = None,
          max_shard_size: str | int | None = "2GB", force: bool = False, dry_run: bool = False,
          progress: bool = False, verify: bool = False) -> ChainResult:
    """Any chain of registered operations, as ``[{"op": "hyperclone", "mult": 2}, {"op": "expand", ...}]``."""
    from warmstart.ops.chain import parse_steps

    items = [s if isinstance(s, dict) else {"op": s[0], **s[1]} for s in steps]
    result = apply_chain(model, out, parse_steps(items), dtype=dtype, force=force,
                         max_shard_bytes=parse_size(max_shard_size), progress=progress,
                         optimizer_state=optimizer_state, dry_run=dry_run)
    if verify and not dry_run:
        result.verify = compare(model, out)
    return result


def grow_steps(*, layers: int | None = None, depth_method: str | None = None, layer_map: str | None = None,
               dus_overlap: int | None = None, width_method: str | None = None, hidden: int | None = None,
               intermediate: int | None = None, heads: int | None = None, kv_heads: int | None = None,
               width_mult: float | None = None, noise_snr_db: float | None = None, seed: int = 0,
               new_block_init: str | None = None) -> list[tuple[str, dict]]:
    """The chain `grow`'s options make: width first, then depth."""
    steps = []
    given: dict[str, Any] = {k: v for k, v in dict(hidden=hidden, intermediate=intermediate, heads=heads,
                                                   kv_heads=kv_heads).items() if v is not None}
    if width_mult is not None:
        given["mult"] = int(width_mult) if float(width_mult).is_integer() else width_mult
    if noise_snr_db is not None:
        given["noise_snr_db"] = noise_snr_db
    widths = registry.names("width")
    if width_method is None:
        if given:
            flags = ", ".join("--" + k.replace("_", "-").replace("mult", "width-mult") for k in given)
            raise WarmstartError(f"{flags} given without --width-method (one of {', '.join(widths)})")
    else:
        registry.get(width_method, "width")  # a clear error for an unknown width method
        if not any(k in given for k in (*WIDTH_KEYS, "mult")):
            raise WarmstartError(f"--width-method {width_method} needs target sizes (--hidden, --intermediate, "
                                 "--heads, --kv-heads) or --width-mult")
        steps.append((width_method, {**given, "seed": seed}))
    depths = [n for n in registry.names("depth") if n != "layer_map"]
    if layer_map is not None:
        if depth_method is not None:
            raise WarmstartError("give either --layer-map or --depth-method, not both")
        steps.append(("layer_map", {"spec": layer_map, **({"layers": layers} if layers is not None else {})}))
    elif dus_overlap is not None and depth_method != "dus":
        raise WarmstartError("--dus-overlap is for --depth-method dus")
    elif depth_method is None:
        if layers is not None:
            raise WarmstartError(f"--layers needs --depth-method ({', '.join(depths)}) or --layer-map")
    elif depth_method == "dus":
        steps.append(("dus", {"layers": layers, "overlap": dus_overlap}))
    elif layers is None:
        raise WarmstartError(f"--depth-method {depth_method} needs --layers N")
    else:
        registry.get(depth_method, "depth")
        steps.append((depth_method, {"layers": layers}))
    if new_block_init is not None:
        if depth_method != "expand":
            raise WarmstartError("--new-block-init is for --depth-method expand")
        steps[-1][1]["new_block_init"] = new_block_init
        if new_block_init == "lsuv":
            steps[-1][1]["seed"] = seed
    if not steps:
        raise WarmstartError("nothing to do: give --layers with --depth-method, --layer-map, or --width-method")
    return steps


def grow(model, out, *, optimizer_state=None, dtype: str | None = None, max_shard_size: str | int | None = "2GB",
         force: bool = False, dry_run: bool = False, progress: bool = False, verify: bool = False,
         corpus: Sequence | None = None, batches: int = 8, batch_size: int = 4, seq_len: int = 256,
         lsuv_target: float | None = None, **options) -> ChainResult:
    """Grow in width (hyperclone, net2net, aki) and/or depth (stack, interleave, dus, expand, layer_map).

    `options` are :func:`grow_steps`'s: ``layers``, ``depth_method``, ``layer_map``, ``dus_overlap``,
    ``width_method``, ``hidden``, ``intermediate``, ``heads``, ``kv_heads``, ``width_mult``,
    ``noise_snr_db``, ``seed``, ``new_block_init``. A ``new_block_init`` that needs data (``lsuv``) is
    measured first on `corpus` (`batches` of `batch_size` x `seq_len` tokens; ``lsuv_target``: each new
    branch's typical token RMS over the residual stream's, default 0.02).
    """
    from warmstart.ops.fresh import FRESH

    steps = grow_steps(**options)
    init = options.get("new_block_init")
    measured = None
    if init is not None and FRESH.get(init).needs_data:
        from warmstart.checkpoint.atomic import check_output
        from warmstart.ops import lsuv
        from warmstart.ops.prune import corpus_paths

        check_output(out, force, [model, optimizer_state])
        steps, measured = lsuv.calibrate_grow(
            model, steps, corpus=corpus_paths(corpus) if corpus else None, batches=batches, batch_size=batch_size,
            seq_len=seq_len, target=lsuv.DEFAULT_TARGET if lsuv_target is None else lsuv_target)
    elif corpus or lsuv_target is not None:
        raise WarmstartError("--corpus and --lsuv-target are for --new-block-init lsuv")
    result = chain(model, out, steps, optimizer_state=optimizer_state, dtype=dtype, max_shard_size=max_shard_size,
                   force=force, dry_run=dry_run, progress=progress, verify=verify)
    if measured is not None:
        result.transform.notes.extend(measured.notes)
    return result


def upcycle(model, out, *, before: Sequence[tuple[str, dict] | dict] | None = (), dtype: str | None = None,
            max_shard_size: str | int | None = "2GB", force: bool = False, dry_run: bool = False,
            progress: bool = False, verify: bool = False, **params) -> ChainResult:
    """Dense -> Mixture-of-Experts (`params`: experts, top_k, shared_experts, granularity, drop_ratio, router ...).

    `before` grows the model first in the same pass (AquilaMoE's scale-up then scale-out), e.g.
    ``before=[("hyperclone", {"mult": 2})]``.
    """
    return chain(model, out, [*(before or ()), ("upcycle", params)], dtype=dtype, max_shard_size=max_shard_size, force=force,
                 dry_run=dry_run, progress=progress, verify=verify)


def prune(model, out, *, corpus: Sequence | None = None, importance: str = "activation", layers: int | None = None,
          depth_importance: str | None = None, hidden: int | None = None, intermediate: int | None = None,
          heads: int | None = None, kv_heads: int | None = None, batches: int = 16, batch_size: int = 4,
          seq_len: int = 256, dtype: str | None = None, max_shard_size: str | int | None = "2GB", force: bool = False,
          dry_run: bool = False, progress: bool = False):
    """A smaller model keeping the units and blocks that matter most on `corpus` (Minitron's activation importance,
    ShortGPT's block influence), or by magnitude / Weight Selection without data. Not exact: train or distill after."""
    from warmstart.ops.prune import corpus_paths, prune_model

    return prune_model(model, out, corpus=corpus_paths(corpus) if corpus else None, importance=importance,
                       layers=layers, depth_importance=depth_importance, hidden=hidden, intermediate=intermediate,
                       heads=heads, kv_heads=kv_heads, batches=batches, batch_size=batch_size, seq_len=seq_len,
                       dtype=dtype, force=force, max_shard_bytes=parse_size(max_shard_size), progress=progress,
                       dry_run=dry_run)


def shrink_steps(*, layers: int | None = None, depth_method: str = "drop", hidden: int | None = None,
                 intermediate: int | None = None, heads: int | None = None, kv_heads: int | None = None,
                 seed: int = 0) -> list[tuple[str, dict]]:
    """The chain `shrink`'s options make: Weight Selection of the widths, then fewer layers."""
    steps = []
    width = {k: v for k, v in dict(hidden=hidden, intermediate=intermediate, heads=heads, kv_heads=kv_heads).items()
             if v is not None}
    if width:
        steps.append(("select", {**width, "seed": seed}))
    if depth_method not in ("drop", "select"):
        raise WarmstartError(f"unknown depth method {depth_method!r} for shrink; available: drop, select")
    if layers is not None:
        steps.append(("drop", {"layers": layers, "keep": "first" if depth_method == "select" else "even"}))
    if not steps:
        raise WarmstartError("nothing to do: give --layers and/or --hidden, --intermediate, --heads, --kv-heads")
    return steps


def shrink(model, out, *, optimizer_state=None, dtype: str | None = None, max_shard_size: str | int | None = "2GB",
           force: bool = False, dry_run: bool = False, progress: bool = False, verify: bool = False,
           **options) -> ChainResult:
    """Keep N layers (evenly spaced, or the first N with depth_method='select') and/or select units of each width."""
    return chain(model, out, shrink_steps(**options), optimizer_state=optimizer_state, dtype=dtype,
                 max_shard_size=max_shard_size, force=force, dry_run=dry_run, progress=progress, verify=verify)


def run(recipe, *, model=None, out=None, dtype: str | None = None, max_shard_size: str | int | None = "2GB",
        force: bool = False, dry_run: bool = False, progress: bool = False, verify: bool = False) -> ChainResult:
    """A YAML recipe: model, out and a chain of steps (paths relative to the recipe)."""
    r, steps = load_recipe(recipe)
    model = model or r.model
    out = out or r.out
    result = apply_chain(model, out, steps, dtype=dtype or r.dtype, force=force,
                         max_shard_bytes=parse_size(max_shard_size), progress=progress,
                         optimizer_state=r.optimizer_state, path=recipe, dry_run=dry_run)
    if verify and not dry_run:
        result.verify = compare(model, out)
    return result


def merge(checkpoints: Sequence, out, *, method: str = "mean", weights: Sequence[float] | None = None,
          normalize: bool = True, ema_decay: float | None = None, ema_half_life: float | None = None,
          input_steps: Sequence[int] | None = None, wsm_shape: str | None = None, wsm_end: float | None = None,
          fisher_data=None, fisher_batches: int | None = None, fisher_batch_size: int = 4, fisher_seq_len: int = 128,
          dtype: str | None = None, max_shard_size: str | int | None = "2GB", force: bool = False,
          dry_run: bool = False, progress: bool = False, threads: int | None = 1):
    """Average checkpoints tensor by tensor (mean, weighted, ema, wsm, fisher ...); `input_steps` are their steps."""
    from warmstart.merge.stream import merge_checkpoints

    return merge_checkpoints(
        out, checkpoints, method, weights=weights, normalize=normalize, ema_decay=ema_decay,
        ema_half_life=ema_half_life, steps=input_steps, wsm_shape=wsm_shape, wsm_end=wsm_end,
        fisher_data=fisher_data, fisher_batches=fisher_batches,
        fisher_options={"batch_size": fisher_batch_size, "seq_len": fisher_seq_len}, dtype=dtype, force=force,
        max_shard_bytes=parse_size(max_shard_size), progress=progress, threads=threads, dry_run=dry_run)


def vocab(model, out, tokenizer, *, method: str = "fvt", mode: str = "replace", corpus: Sequence = (), donor=None,
          aligned_embeddings: tuple | None = None, k: int | None = None, temperature: float | None = None,
          aux_dim: int | None = None, aux_epochs: int | None = None, seed: int = 0, dtype: str | None = None,
          max_shard_size: str | int | None = "2GB", force: bool = False, dry_run: bool = False,
          progress: bool = False, fill: str | None = None):
    """Give a model a new tokenizer; new embedding rows made by `method` from the old ones. `fill` (mean,
    multivariate, random, zero) replaces the method's choice for the rows it makes from nothing."""
    from warmstart.vocab.transplant import transplant

    options = {"k": k, "temperature": temperature, "aux_dim": aux_dim, "aux_epochs": aux_epochs}
    return transplant(model, out, tokenizer, method, mode=mode, corpus=corpus, donor=donor,
                      aligned=aligned_embeddings, options=options, seed=seed, force=force, dtype=dtype,
                      max_shard_bytes=parse_size(max_shard_size), progress=progress, dry_run=dry_run, fill=fill)


def tokenizer_train(corpus: Sequence, out, *, vocab_size: int, like=None, force: bool = False,
                    progress: bool = False):
    """Train a tokenizer on text files (of the same kind as `like`'s, else byte-level BPE)."""
    from warmstart.vocab.tokenizer_train import train_tokenizer

    tok = train_tokenizer(corpus, out, vocab_size, like=like, force=force, progress=progress)
    return TokenizerResult(Path(out), len(tok))


@dataclass
class TokenizerResult:
    path: Path
    tokens: int

    def lines(self) -> list[str]:
        return [f"wrote {self.path}: {self.tokens} tokens"]

    def as_dict(self) -> dict:
        return {"path": str(self.path), "tokens": self.tokens}


def adapter(model, out, *, method: str = "default", rank: int = 8, alpha: float | None = None,
            target_modules: Sequence[str] | None = None, corpus: Sequence = (), batches: int = 8, batch_size: int = 4,
            seq_len: int = 128, seed: int = 0, force: bool = False, dtype: str | None = None, **options):
    """A LoRA adapter initialized by `method` (PEFT's, or NLoRA / LoRA-SB / init-b), and the residual base if the
    method moves weights into the adapter. `options`: nlora_oversample, sb_lr, sb_rule, corda_mode."""
    from warmstart.adapter import AdapterSpec, initialize

    spec = AdapterSpec(method=method, rank=rank, alpha=alpha, target_modules=target_modules,
                       corpus=[Path(c) for c in corpus], batches=batches, batch_size=batch_size, seq_len=seq_len,
                       seed=seed, options={k: options.get(k) for k in ("nlora_oversample", "sb_lr", "sb_rule",
                                                                       "corda_mode")})
    unknown = sorted(set(options) - {"nlora_oversample", "sb_lr", "sb_rule", "corda_mode"})
    if unknown:
        raise WarmstartError(f"unknown adapter option {unknown[0]!r}")
    return initialize(model, out, spec, force=force, dtype=dtype)


@dataclass
class LinesResult:
    lines_: list[str]

    def lines(self) -> list[str]:
        return self.lines_

    def as_dict(self) -> dict:
        return {"lines": self.lines_}


def export_lora(model, initial, out, *, trained=None, force: bool = False) -> LinesResult:
    """The plain LoRA against the untouched `model` equal to `trained` (default: `initial`'s adapter) on the
    residual base that `initial` (an earlier :func:`adapter` output) wrote."""
    from warmstart.adapter import export_lora as _export

    return LinesResult(_export(model, initial, out, trained=trained, force=force))


# --- commands that read ------------------------------------------------------------------------------------------

def inspect(model) -> InspectResult:
    """Family, shapes, parameters, dtypes, and the provenance of a warmstart output."""
    from warmstart.arch.summary import summarize

    summary = summarize(model)
    try:
        record = Path(model) / RECORD
        if not record.is_file():  # absent, or a FIFO/device that must not be read
            raise FileNotFoundError(record)
        rec = json.loads(read_bytes(record, RECORD).decode("utf-8"))
        summary["provenance"] = {k: v for k, v in rec.items() if k != "files"} if isinstance(rec, dict) else None
    except (OSError, ValueError, RecursionError, WarmstartError):
        summary["provenance"] = None
    return InspectResult(summary)


def compare(source, derived, *, text: str | None = None, max_tokens: int = 128):
    """Run both models on real text (`text`: a file, 'hamlet', or None for the built-in paragraph)."""
    from warmstart.verify import compare as _compare
    from warmstart.verify import hamlet_text

    name = "built-in paragraph"
    body = None
    if text == "hamlet" and not Path(text).exists():
        body, name = hamlet_text(), "Hamlet passage"
    elif text is not None:
        # a regular UTF-8 text file (never a FIFO or device, never random bytes)
        check_text_file(Path(text), "text file")
        body = read_bytes(Path(text), "text file", 64 * 1024 * 1024).decode("utf-8", errors="replace")
        name = f"text in {text}"
    return _compare(source, derived, text=body, max_tokens=max_tokens, text_name=name)


verify = compare


def bench(recipe, out, *, seeds: int | None = None, resume: bool = False, force: bool = False,
          device: str = "auto", cache: bool = True, jobs: int = 1, progress: bool = False,
          figure_formats: Sequence[str] = (), overrides=()) -> dict:
    """Train a recipe's warm-started and scratch arms side by side; returns results.json's content.

    `figure_formats` ("pdf", "svg") adds vector copies of curves.png. `overrides` scale the recipe file
    before it is validated, as ``--set`` does: ``["train.tokens=4194304", "arms.prune.lr=1e-3"]`` or
    ``{"train.tokens": 4194304, "seeds": 5}`` (see :mod:`warmstart.bench.overrides`).
    """
    from warmstart.bench import recipe as R
    from warmstart.bench.run import run_bench

    if seeds is not None and seeds < 1:
        raise WarmstartError(f"--seeds must be at least 1, got {seeds}")
    cpu = {"auto": None, "cpu": True, "gpu": False}[device]
    return run_bench(R.load(recipe, overrides), out, seeds=seeds, resume=resume, force=force, progress=progress, cpu=cpu,
                     source_cache=cache, jobs=jobs, figure_formats=figure_formats)
