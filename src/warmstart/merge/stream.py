"""The streaming merge: N checkpoints in, one out, one tensor at a time.

Every output tensor combines the tensor of the same name across all inputs.
The merge is a :class:`warmstart.plan.Plan` whose sources are the N inputs
(and, for ``fisher``, their N Fisher files); each step reads all of them and
the writer streams the result into an atomic output directory.

Memory: a plan source here hands out *readers* (functions) instead of
tensors, so a step pulls one input into memory at a time while it
accumulates (see :mod:`warmstart.merge.combine`). Tensors are read with
plain positioned reads into a fresh buffer rather than through a memory map:
pages of a mapped file count in the process's resident set until unmapped,
so mapping three 500 MB inputs would show 1.5 GB resident whatever the
merge itself holds.

Checks before anything is written: at least two inputs; the same model type,
configuration (up to dtype and bookkeeping fields), tensor names and shapes;
the same tokenizer. While streaming: NaN or Inf in any input tensor, and
integer tensors that differ. Any of these is a :class:`MergeError` naming the
checkpoint and the tensor, and the atomic writer leaves no output behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from warmstart.checkpoint.dtypes import parse_user_dtype
from warmstart.checkpoint.reader import Checkpoint
from warmstart.checkpoint.safetensors_format import FLOAT_CODES
from warmstart.checkpoint.tensor_file import TensorFile, checkpoint_tensor_file
from warmstart.checkpoint.writer import check_output, write_json
from warmstart.inputs import check_threads
from warmstart.merge import combine
from warmstart.merge.combine import all_finite
from warmstart.merge.distinct import check_distinct
from warmstart.merge.methods import Coefficients, MergeError, resolve
from warmstart.plan import Plan, Ref, Step, execute

# Config fields that may differ between checkpoints of one architecture.
CONFIG_BOOKKEEPING = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache",
                      "_commit_hash", "_attn_implementation_autoset"}


class ReaderSource:
    """A plan source whose ``get(name)`` returns a function that reads and checks the tensor.

    The plan's executor holds these functions (not tensors) for a step, so the
    combiner decides when each input is in memory.
    """

    def __init__(self, tensors: TensorFile, label: Path, what: str = "checkpoint"):
        self.tensors = tensors
        self.label = label
        self.what = what

    def get(self, name: str):
        def read():
            import torch

            t = self.tensors.read(name)
            if t.is_floating_point() and not all_finite(t):
                bad = "NaN" if bool(torch.isnan(t).any()) else "Inf"
                raise MergeError(f"tensor {name!r} holds {bad} values", self.label)
            if self.what == "fisher" and t.numel() and float(t.min()) < 0:
                raise MergeError(f"Fisher tensor {name!r} has negative values", self.label)
            return t

        return read


# --- input checks -------------------------------------------------------------


def _config_mismatch(first: Checkpoint, other: Checkpoint, model_type_only: bool = False) -> str | None:
    a, b = first.config, other.config
    if a.get("model_type") != b.get("model_type"):
        return (f"different architecture: model_type {b.get('model_type')!r} here, "
                f"{a.get('model_type')!r} in {first.path}")
    if model_type_only:
        return None
    for key in sorted((set(a) | set(b)) - CONFIG_BOOKKEEPING):
        if a.get(key) != b.get(key):
            return f"different architecture: config {key!r} is {b.get(key)!r} here, {a.get(key)!r} in {first.path}"
    return None


def _vocab_of(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, list):  # unigram: [[piece, score], ...]
        vocab = {p[0]: i for i, p in enumerate(vocab) if isinstance(p, list) and p}
    if not isinstance(vocab, dict):
        return None
    vocab = dict(vocab)
    for tok in data.get("added_tokens") or []:
        if isinstance(tok, dict) and "content" in tok and "id" in tok:
            vocab[tok["content"]] = tok["id"]
    return vocab


def _tokenizer_mismatch(first: Checkpoint, other: Checkpoint) -> str | None:
    """Same tokenizer: identical tokenizer.json bytes or, failing that, the same vocabulary."""
    ta, tb = first.path / "tokenizer.json", other.path / "tokenizer.json"
    if ta.is_file() and tb.is_file():
        if ta.read_bytes() == tb.read_bytes():
            return None
        va, vb = _vocab_of(ta), _vocab_of(tb)
        if va is None or vb is None:
            return f"tokenizer.json differs from {ta} and its vocabulary cannot be read"
        if va != vb:
            ida, idb = {i: t for t, i in va.items()}, {i: t for t, i in vb.items()}
            i = min(k for k in set(ida) | set(idb) if ida.get(k) != idb.get(k))
            return (f"different tokenizer: {len(vb)} tokens here, {len(va)} in {first.path} "
                    f"(first difference: id {i} is {idb.get(i)!r} here, {ida.get(i)!r} there)")
        return None
    for name in ("vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model"):
        fa, fb = first.path / name, other.path / name
        if fa.is_file() and fb.is_file() and fa.read_bytes() != fb.read_bytes():
            return f"different tokenizer: {name} differs from {fa}"
    return None


def check_inputs(ckpts: Sequence[Checkpoint]) -> None:
    """Same architecture, tensors and tokenizer across all inputs; raise naming the first offender."""
    if len(ckpts) < 2:
        where = ckpts[0].path if ckpts else None
        raise MergeError("merging needs at least two checkpoints, got one", where)
    first = ckpts[0]
    for other in ckpts[1:]:
        # model type, then tensors (so that a shape error names the tensor), then the rest of the config
        problem = _config_mismatch(first, other, model_type_only=True)
        if problem:
            raise MergeError(problem, other.path / "config.json")
        missing = [n for n in first.names() if n not in other]
        if missing:
            raise MergeError(f"has no tensor {missing[0]!r}, which {first.path} has", other.path)
        extra = [n for n in other.names() if n not in first]
        if extra:
            raise MergeError(f"has tensor {extra[0]!r}, which {first.path} does not", other.path)
        for name in first.names():
            ia, ib = first.info(name), other.info(name)
            if tuple(ia.shape) != tuple(ib.shape):
                raise MergeError(f"tensor {name!r} has shape {list(ib.shape)} here, {list(ia.shape)} in {first.path}",
                                 other.path)
            if (ia.dtype in FLOAT_CODES) != (ib.dtype in FLOAT_CODES) or (
                    ia.dtype not in FLOAT_CODES and ia.dtype != ib.dtype):
                raise MergeError(f"tensor {name!r} is {ib.dtype} here, {ia.dtype} in {first.path}", other.path)
        problem = _config_mismatch(first, other)
        if problem:
            raise MergeError(problem, other.path / "config.json")
        problem = _tokenizer_mismatch(first, other)
        if problem:
            raise MergeError(problem, other.path)


# --- the merge ------------------------------------------------------------------


@dataclass
class MergeReport:
    path: Path
    method: str
    coefficients: list[float]
    inputs: list[Path]
    notes: list[str] = field(default_factory=list)
    total_bytes: int = 0
    fisher_files: list[Path] = field(default_factory=list)
    write: Any = None  # the writer's report (a dry run's says what would be written)

    def lines(self) -> list[str]:
        coeffs = ", ".join(f"{c:.6g}" for c in self.coefficients)
        label = "lambdas" if self.method == "fisher" else "coefficients"
        out = [f"merged {len(self.inputs)} checkpoints with {self.method} ({label} {coeffs}"
               + (f"; {'; '.join(self.notes)}" if self.notes else "") + ")"]
        out += [f"  Fisher: {path}" for path in self.fisher_files]
        verb = "would write" if self.write is not None and self.write.dry_run else "wrote"
        out.append(f"{verb} {self.path} ({self.total_bytes / 1e6:.1f} MB)")
        return out

    def as_dict(self) -> dict:
        return {"path": str(self.path), "method": self.method, "coefficients": self.coefficients,
                "inputs": [str(p) for p in self.inputs], "notes": self.notes, "total_bytes": self.total_bytes,
                "fisher_files": [str(p) for p in self.fisher_files],
                "write": self.write.as_dict() if self.write is not None else None}


def merge_checkpoints(
    out: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    method: str = "mean",
    *,
    weights: Sequence[float] | None = None,
    normalize: bool = True,
    ema_decay: float | None = None,
    ema_half_life: float | None = None,
    steps: Sequence[int] | None = None,
    wsm_shape: str | None = None,
    wsm_end: float | None = None,
    fisher_data: str | os.PathLike | None = None,
    fisher_batches: int | None = None,
    fisher_options: dict[str, Any] | None = None,
    dtype: str | None = None,
    force: bool = False,
    max_shard_bytes: int | None = None,
    progress: bool = False,
    threads: int | None = 1,
    dry_run: bool = False,
) -> MergeReport:
    """Merge the checkpoint directories `inputs` (oldest first for ema/wsm) into `out`.

    `dtype` ('fp32', 'fp16', 'bf16') casts floating outputs; by default each
    tensor keeps the first input's dtype. Sums are accumulated in fp32.
    `threads`: torch's intra-op threads during the merge (restored after;
    None keeps torch's setting). The arithmetic is a few elementwise passes
    per tensor, bound by memory and reads, so one thread is the default: on
    a loaded 2-core machine torch's default threads made the same merge
    about twice as slow (docs/merge.md).
    """
    code = parse_user_dtype(dtype)
    check_threads(threads)
    out = check_output(out, force, [*inputs, fisher_data])
    if len(inputs) < 2:
        raise MergeError("merging needs at least two checkpoints, got one", inputs[0] if inputs else None)
    params = dict(weights=weights, ema_decay=ema_decay, ema_half_life=ema_half_life, steps=steps,
                  wsm_shape=wsm_shape, wsm_end=wsm_end)
    if method == "weighted" and not normalize:
        params["normalize"] = False
    elif not normalize:
        raise MergeError(f"--no-normalize applies to method 'weighted' only, not {method!r}")
    if method != "fisher" and (fisher_data is not None or fisher_batches is not None):
        raise MergeError(f"--fisher-data and --fisher-batches apply to method 'fisher' only, not {method!r}")
    coeffs: Coefficients = resolve(method, len(inputs), **params)

    ckpts = [Checkpoint(p) for p in inputs]
    check_inputs(ckpts)
    check_distinct(ckpts, MergeError)
    n = len(ckpts)
    files = [checkpoint_tensor_file(c) for c in ckpts]
    sources: list[Any] = [ReaderSource(f, c.path) for f, c in zip(files, ckpts)]
    fisher_paths: list[Path] = []
    fisher_names: set[str] = set()
    if coeffs.fisher:
        from warmstart.merge.fisher import FisherFile, ensure_fisher

        opts = dict(fisher_options or {})
        opts.setdefault("progress", progress)
        fisher_paths = [ensure_fisher(c.path, fisher_data, fisher_batches, **opts) for c in ckpts]
        ffiles = [FisherFile(p) for p in fisher_paths]
        for ff, c in zip(ffiles, ckpts):
            ff.check_against(c)
        fisher_names = set(ffiles[0].infos)
        for ff in ffiles[1:]:
            fisher_names &= set(ff.infos)
        files += [ff.tensors for ff in ffiles]
        sources += [ReaderSource(ff.tensors, ff.path, what="fisher") for ff in ffiles]

    values = list(coeffs.values)
    plain = values
    if coeffs.fisher:  # tensors without a Fisher (buffers): the lambda-weighted mean
        plain = [v / coeffs.total for v in values]

    first = ckpts[0]
    # Norms computing x_hat * (offset + w) (Gemma): the effective weights are what the coefficients combine,
    # so coefficients summing to s != 1 store sum c_i w_i + (s - 1) * offset.
    from warmstart.arch.spec import offset_norm_tensors

    offset, offset_names = offset_norm_tensors(first)
    shift = offset * (sum(plain) - 1.0)
    if offset_names and abs(shift) > 1e-12:
        coeffs.notes.append(f"norm weights stored as w in x_hat * ({offset:g} + w): coefficients summing to "
                            f"{sum(plain):.6g} combine the effective weights ({offset:g} + w), so {shift:+.6g} "
                            "is added to the stored ones")
    steps_: list[Step] = []
    for name in first.names():
        info = first.info(name)
        refs = tuple(Ref(i, name) for i in range(n))
        if info.dtype not in FLOAT_CODES:
            def fn(*readers, _name=name):
                return combine.combine_equal(readers, lambda i: MergeError(
                    f"integer tensor {_name!r} differs from {first.path}'s (integer tensors are not averaged)",
                    ckpts[i].path))
        elif coeffs.fisher and name in fisher_names:
            refs = refs + tuple(Ref(n + i, name) for i in range(n))

            def fn(*readers):
                return combine.combine_fisher(readers[:n], readers[n:], values)
        elif name in offset_names and abs(shift) > 1e-12:
            def fn(*readers):
                return combine.combine_linear(readers, plain).add_(shift)
        else:
            def fn(*readers):
                return combine.combine_linear(readers, plain)
        steps_.append(Step(name, tuple(info.shape), info.dtype, refs, fn, note=method))
    plan = Plan(sources, steps_)
    config = dict(first.config)
    copy_files = next((c.extra_files() for c in ckpts if c.extra_files()), [])
    record = {
        "method": method,
        "inputs": [str(c.path) for c in ckpts],
        "coefficients": values,
        "notes": coeffs.notes,
    }
    if fisher_paths:
        record["fisher"] = [str(p) for p in fisher_paths]

    def finish(tmp: Path) -> None:
        write_json(tmp / "merge.json", record)

    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        report = execute(plan, out, config=config, copy_files=copy_files, force=force, dtype=code,
                         max_shard_bytes=max_shard_bytes, progress=progress, desc=f"merging ({method})",
                         finish=finish, dry_run=dry_run, record={"command": "merge", "method": method})
    finally:
        torch.set_num_threads(before)
        for f in files:
            f.close()
    return MergeReport(Path(out), method, values, [c.path for c in ckpts], list(coeffs.notes),
                       report.total_bytes, fisher_paths, report)
