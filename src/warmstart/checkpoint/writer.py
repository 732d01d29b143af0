"""Streaming, atomic writer of Hugging Face model directories.

The writer is told every output tensor's name, dtype and shape before the
first byte is written, so it can assign shards and lay out each safetensors
header up front; then it asks for one tensor at a time, writes it, and drops
it. Peak memory is one tensor (plus what the caller needs to compute it),
whatever the model's size.

Tensors whose bytes already exist in a source file with the right dtype are
copied file to file (``os.copy_file_range``) without ever being decoded.

Everything is written into a temporary sibling directory that is renamed
into place only once complete, so a failed or interrupted run never leaves a
directory that looks like a model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from warmstart.checkpoint.atomic import atomic_directory, check_output  # noqa: F401  (re-exported)
from warmstart.checkpoint.dtypes import code_to_torch
from warmstart.checkpoint.safetensors_format import encode_header, nbytes_of
from warmstart.errors import CheckpointError

DEFAULT_MAX_SHARD_BYTES = 2 * 1000**3  # "2GB", as transformers counts it
COPY_CHUNK = 64 * 1024 * 1024


@dataclass
class OutputTensor:
    """One tensor of the output: where its bytes come from.

    Exactly one of ``copy_from`` (file, offset, nbytes: raw bytes already in
    the output dtype) and ``compute`` (a function returning a torch tensor) is
    set. A computed tensor of another floating dtype is cast on write.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    copy_from: tuple[Path, int, int] | None = None
    compute: Callable[[], Any] | None = None

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.dtype, self.shape)


@dataclass
class WriteReport:
    path: Path
    files: list[str] = field(default_factory=list)
    total_bytes: int = 0
    copied_bytes: int = 0
    computed_bytes: int = 0
    dry_run: bool = False  # nothing was written: the figures say what would be
    parameters: int = 0
    tensors: list[dict] = field(default_factory=list)  # dry runs: name, shape, dtype, how each tensor is made

    def line(self) -> str:
        verb = "would write" if self.dry_run else "wrote"
        return (f"{verb} {self.path} ({len(self.files)} files, {self.total_bytes / 1e6:.1f} MB: "
                f"{self.copied_bytes / 1e6:.1f} MB copied as bytes, {self.computed_bytes / 1e6:.1f} MB computed)")

    def as_dict(self) -> dict:
        return {"path": str(self.path), "files": self.files, "total_bytes": self.total_bytes,
                "copied_bytes": self.copied_bytes, "computed_bytes": self.computed_bytes, "dry_run": self.dry_run,
                "parameters": self.parameters, **({"tensors": self.tensors} if self.dry_run else {})}


def dry_run_report(out: Path, tensors: Sequence[OutputTensor], max_shard_bytes: int,
                   describe: Callable[[OutputTensor], str] | None = None) -> WriteReport:
    """What write_model would write, computed from the tensors' names, shapes and sources alone."""
    shards = plan_shards(tensors, max_shard_bytes)
    names = shard_names(len(shards)) + (["model.safetensors.index.json"] if len(shards) > 1 else [])
    report = WriteReport(Path(out), files=names, dry_run=True)
    for t in tensors:
        report.total_bytes += t.nbytes
        if t.copy_from is not None:
            report.copied_bytes += t.nbytes
        else:
            report.computed_bytes += t.nbytes
        report.parameters += math.prod(t.shape)
        how = describe(t) if describe else ("byte copy" if t.copy_from is not None else "computed")
        report.tensors.append({"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "from": how})
    return report


def plan_shards(tensors: Sequence[OutputTensor], max_shard_bytes: int) -> list[list[OutputTensor]]:
    """Greedy, order-preserving split; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def _copy_bytes(src: Path, offset: int, nbytes: int, dst) -> None:
    with open(src, "rb") as f:
        remaining = nbytes
        pos = offset
        try:
            while remaining:
                n = os.copy_file_range(f.fileno(), dst.fileno(), min(remaining, COPY_CHUNK), pos)
                if n == 0:
                    raise CheckpointError(f"unexpected end of file while copying {nbytes} bytes at {offset}", src)
                pos += n
                remaining -= n
        except (AttributeError, OSError):
            # No copy_file_range (or not across these file systems): plain reads.
            f.seek(pos)
            while remaining:
                chunk = f.read(min(remaining, COPY_CHUNK))
                if not chunk:
                    raise CheckpointError(f"unexpected end of file while copying {nbytes} bytes at {offset}", src)
                dst.write(chunk)
                remaining -= len(chunk)
    # copy_file_range advanced the destination's offset behind Python's back.
    dst.seek(0, os.SEEK_END)


def _write_computed(t: OutputTensor, dst) -> None:
    import torch

    value = t.compute()
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"compute for {t.name} returned {type(value).__name__}, not a tensor")
    if tuple(value.shape) != tuple(t.shape):
        raise ValueError(f"computed {t.name} has shape {tuple(value.shape)}, the plan says {t.shape}")
    want = code_to_torch(t.dtype)
    if value.dtype != want:
        value = value.to(want)
    data = value.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    dst.write(memoryview(data))


def write_shard(path: Path, tensors: Sequence[OutputTensor], progress=None) -> tuple[int, int]:
    """Write one safetensors file, one tensor at a time. Returns (copied, computed) bytes."""
    header = encode_header([(t.name, t.dtype, t.shape) for t in tensors], {"format": "pt"})
    copied = computed = 0
    with open(path, "wb") as dst:
        dst.write(header)
        dst.flush()
        for t in tensors:
            start = dst.tell()
            if t.copy_from is not None:
                src, offset, nbytes = t.copy_from
                if nbytes != t.nbytes:
                    raise ValueError(f"byte source of {t.name} holds {nbytes} bytes, the plan needs {t.nbytes}")
                dst.flush()
                _copy_bytes(src, offset, nbytes, dst)
                copied += nbytes
            else:
                _write_computed(t, dst)
                dst.flush()
                computed += t.nbytes
            written = dst.tell() - start
            if written != t.nbytes:
                raise RuntimeError(f"wrote {written} bytes for {t.name}, expected {t.nbytes}")
            if progress is not None:
                progress.update(t.nbytes)
    return copied, computed


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def write_weights(directory: Path, tensors: Sequence[OutputTensor], *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                  progress: bool = False, desc: str = "writing") -> WriteReport:
    """Write all tensors as (sharded) safetensors plus index into an existing directory."""
    seen = set()
    for t in tensors:
        if t.name in seen:
            raise ValueError(f"duplicate output tensor {t.name}")
        seen.add(t.name)
    shards = plan_shards(tensors, max_shard_bytes)
    names = shard_names(len(shards))
    report = WriteReport(directory, files=list(names))
    total = sum(t.nbytes for t in tensors)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)
    try:
        for name, shard in zip(names, shards):
            c, k = write_shard(directory / name, shard, bar)
            report.copied_bytes += c
            report.computed_bytes += k
    finally:
        if bar is not None:
            bar.close()
    report.total_bytes = total
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": total},
            "weight_map": {t.name: name for name, shard in zip(names, shards) for t in shard},
        }
        write_json(directory / "model.safetensors.index.json", index)
        report.files.append("model.safetensors.index.json")
    return report


def write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def generates(config: dict) -> bool:
    """A model that generates text (and so has a generation_config.json); an encoder does not."""
    archs = config.get("architectures") or []
    if archs:
        return any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in archs)
    return config.get("model_type") not in ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet")


def copy_extra_files(files: Sequence[Path], directory: Path) -> None:
    """Copy tokenizer and other side files into `directory`, keeping their place below the model folder."""
    if not files:
        return
    base = Path(os.path.commonpath([str(Path(p).parent) for p in files]))
    for src in map(Path, files):
        dst = directory / src.relative_to(base)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def sentence_transformers_follow(directory: Path, config: dict) -> None:
    """Keep a sentence-transformers model whole: module folders exist, pooling knows the new width."""
    try:
        modules = json.loads((directory / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    hidden = config.get("hidden_size", config.get("n_embd", config.get("d_model")))
    for m in modules if isinstance(modules, list) else []:
        if not isinstance(m, dict) or not isinstance(m.get("path"), str) or not m["path"]:
            continue
        folder = directory / m["path"]
        if not folder.resolve().is_relative_to(directory.resolve()):
            continue
        folder.mkdir(parents=True, exist_ok=True)  # Normalize has no files: sentence-transformers still wants it
        pooling = folder / "config.json"
        if str(m.get("type", "")).endswith("Pooling") and pooling.is_file() and hidden:
            cfg = json.loads(pooling.read_text(encoding="utf-8"))
            if cfg.get("word_embedding_dimension") != hidden:
                cfg["word_embedding_dimension"] = hidden
                write_json(pooling, cfg)


def generation_config_for(config: dict) -> dict | None:
    """A minimal generation config for a causal LM whose source had none."""
    keys = ("bos_token_id", "eos_token_id", "pad_token_id")
    found = {k: config[k] for k in keys if config.get(k) is not None}
    if not found:
        return None
    return {"_from_model_config": True, **found}


def write_model(out: str | Path, tensors: Sequence[OutputTensor], *, config: dict,
                copy_files: Sequence[Path] = (), generation_config: dict | None = None,
                finish: Callable[[Path], None] | None = None, force: bool = False,
                max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, progress: bool = False,
                desc: str = "writing", inputs: Sequence = (), record: dict | None = None, dry_run: bool = False,
                describe: Callable[[OutputTensor], str] | None = None) -> WriteReport:
    """Write a complete model directory atomically.

    `copy_files` (tokenizer files, generation_config.json) are copied as they
    are; `finish`, if given, may add files (e.g. a tokenizer's save_pretrained)
    to the temporary directory before it is renamed into place. The output
    may not overlap `inputs` nor any directory a tensor or file is copied
    from; `record` is the provenance kept in ``warmstart.json``. With
    `dry_run`, the output is checked as for a real run but nothing is
    written: the report says what would be (`describe` names each tensor's
    origin).
    """
    sources = {Path(f).parent for f in copy_files} | {t.copy_from[0].parent for t in tensors if t.copy_from}
    if dry_run:
        check_output(out, force, [*inputs, *sorted(sources)])
        return dry_run_report(out, tensors, max_shard_bytes, describe)
    with atomic_directory(out, force, [*inputs, *sorted(sources)], record) as tmp:
        report = write_weights(tmp, tensors, max_shard_bytes=max_shard_bytes, progress=progress, desc=desc)
        write_json(tmp / "config.json", config)
        copy_extra_files(copy_files, tmp)
        if not (tmp / "generation_config.json").exists() and generates(config):
            gen = generation_config if generation_config is not None else generation_config_for(config)
            if gen is not None:
                write_json(tmp / "generation_config.json", gen)
        sentence_transformers_follow(tmp, config)
        if finish is not None:
            finish(tmp)
    report.path = Path(out)
    return report
