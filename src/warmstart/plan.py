"""Plans: which output tensor comes from which input tensors, and how.

A plan is an ordered list of :class:`Step`: for each output tensor, its name,
shape and dtype, the input tensors it reads (by checkpoint and name) and a
pure function from those inputs to the output. A step with the identity
function on one input is a plain copy; the executor turns it into a byte copy
when the dtype is unchanged, so remapping layers never decodes a tensor.

Operations compose by composing plans (see :func:`compose`): a depth map
after a width transform only renames which inputs each output reads, so
chains stream in one pass with no intermediate checkpoint.

The executor reads each input once per use and keeps it only until its last
use in the plan, so peak memory stays a few tensors whatever the model size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from warmstart.checkpoint import atomic
from warmstart.checkpoint.dtypes import config_dtype_name, parse_user_dtype
from warmstart.checkpoint.reader import Checkpoint, fingerprint
from warmstart.checkpoint.safetensors_format import FLOAT_CODES, TensorInfo
from warmstart.checkpoint.writer import DEFAULT_MAX_SHARD_BYTES, OutputTensor, write_model


def identity(x):
    return x


@dataclass(frozen=True)
class Ref:
    """An input tensor: which checkpoint (by index in the plan's sources) and which name."""

    source: int
    name: str


@dataclass(frozen=True)
class Origin:
    """Where an output tensor comes from, kept through :func:`compose`.

    ``copy``: the bytes of source tensor `ref`; ``transform``: computed from
    source tensors (a width operation, a merge); ``fresh``: a new parameter
    (zeros, a new initialization, or a copy placed in a new block), standing
    where `ref` stood if it has a counterpart. Optimizer-state carry-over
    reads this: copied moments for a copy, zero moments for a fresh tensor.
    """

    kind: str  # "copy", "transform" or "fresh"
    ref: Ref | None = None


@dataclass
class Step:
    name: str
    shape: tuple[int, ...]
    dtype: str
    inputs: tuple[Ref, ...]
    fn: Callable[..., Any] = identity
    note: str = ""
    origin: Origin | None = None  # None: derived from inputs and fn (see `provenance`)

    @property
    def is_copy(self) -> bool:
        return self.fn is identity and len(self.inputs) == 1

    @property
    def provenance(self) -> Origin:
        if self.origin is not None:
            return self.origin
        if not self.inputs:
            return Origin("fresh")
        return Origin("copy", self.inputs[0]) if self.is_copy else Origin("transform")


@dataclass
class Plan:
    """Output tensors, in write order, over a list of source checkpoints."""

    sources: list[Any]
    steps: list[Step] = field(default_factory=list)

    def add(self, step: Step) -> None:
        self.steps.append(step)

    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def with_dtype(self, dtype: str | None) -> "Plan":
        """Cast every floating output to `dtype` (None keeps dtypes)."""
        if dtype is None:
            return self
        steps = [
            Step(s.name, s.shape, dtype if s.dtype in FLOAT_CODES else s.dtype, s.inputs, s.fn, s.note, s.origin)
            for s in self.steps
        ]
        return Plan(self.sources, steps)


def copy_step(source: int, ckpt, name: str, out_name: str | None = None) -> Step:
    info = ckpt.info(name)
    return Step(out_name or name, info.shape, info.dtype, (Ref(source, name),))


def compose(outer: Plan, inner: Plan) -> Plan:
    """Feed `inner`'s outputs into `outer`, whose only source (index 0) is `inner`'s result.

    The result reads `inner`'s sources directly: nothing is materialized
    between the two operations.
    """
    by_name = {s.name: s for s in inner.steps}
    steps = []
    for s in outer.steps:
        feeders = [by_name[r.name] for r in s.inputs]
        origin = _composed_origin(s.provenance, by_name)
        if s.is_copy:
            f = feeders[0]
            steps.append(Step(s.name, s.shape, s.dtype, f.inputs, f.fn, s.note or f.note, origin))
            continue
        inputs: list[Ref] = []
        spans = []
        for f in feeders:
            spans.append((len(inputs), len(f.inputs), f.fn))
            inputs.extend(f.inputs)

        def fn(*args, _spans=tuple(spans), _outer=s.fn):
            return _outer(*(g(*args[a:a + n]) for a, n, g in _spans))

        steps.append(Step(s.name, s.shape, s.dtype, tuple(inputs), fn, s.note, origin))
    return Plan(inner.sources, steps)


def _composed_origin(outer: Origin, inner: dict[str, Step]) -> Origin:
    """The provenance of an outer step in terms of the inner plan's sources."""
    if outer.kind == "transform" or outer.ref is None:
        return Origin(outer.kind)
    below = inner[outer.ref.name].provenance
    if outer.kind == "copy":
        return below  # a copy of a copy is a copy; a copy of something fresh is fresh
    return Origin("fresh", below.ref if below.kind != "transform" else None)


class TensorCache:
    """Input tensors kept only until their last use in the plan."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.last_use: dict[Ref, int] = {}
        for i, s in enumerate(plan.steps):
            for r in s.inputs:
                self.last_use[r] = i
        self.held: dict[Ref, Any] = {}

    def get(self, ref: Ref):
        if ref not in self.held:
            self.held[ref] = self.plan.sources[ref.source].get(ref.name)
        return self.held[ref]

    def release_after(self, index: int) -> None:
        for ref in [r for r in self.held if self.last_use[r] <= index]:
            del self.held[ref]


def output_tensors(plan: Plan) -> list[OutputTensor]:
    """Turn a plan into the writer's lazy output tensors (byte copies where possible)."""
    cache = TensorCache(plan)
    outs = []
    for i, s in enumerate(plan.steps):
        if s.is_copy:
            ref = s.inputs[0]
            ckpt = plan.sources[ref.source]
            info = ckpt.info(ref.name)
            rng = ckpt.byte_range(ref.name) if hasattr(ckpt, "byte_range") else None
            if rng is not None and info.dtype == s.dtype and tuple(info.shape) == tuple(s.shape):
                outs.append(OutputTensor(s.name, s.dtype, s.shape, copy_from=rng))
                continue

        def compute(_s=s, _i=i):
            try:
                return _s.fn(*(cache.get(r) for r in _s.inputs))
            finally:
                cache.release_after(_i)

        outs.append(OutputTensor(s.name, s.dtype, s.shape, compute=compute))
    return outs


def execute(plan: Plan, out, *, config: dict, copy_files: Sequence = (), force: bool = False,
            max_shard_bytes: int | None = None, progress: bool = False, desc: str = "writing",
            finish=None, generation_config: dict | None = None, record: dict | None = None,
            dtype: str | None = None, dry_run: bool = False):
    """Write the plan's outputs as a model directory (streaming, atomic).

    `dtype` (a safetensors code, see :func:`parse_user_dtype`) casts every
    floating tensor and says so in config.json. The output may not overlap
    any of the plan's source checkpoints.
    """
    if dtype is not None:
        plan = plan.with_dtype(dtype)
        config = {k: v for k, v in config.items() if k != "dtype"}
        config["torch_dtype"] = config_dtype_name(dtype)
    inputs = [p for p in (getattr(s, "path", None) for s in plan.sources) if p is not None and Path(p).is_dir()]
    steps = {s.name: s for s in plan.steps}
    record = {**(record or {}), "sources": [{"path": str(Path(p).resolve()), "fingerprint": fingerprint(p)}
                                            for p in dict.fromkeys(inputs)]}
    return write_model(
        out, output_tensors(plan), config=config, copy_files=copy_files, force=force,
        max_shard_bytes=max_shard_bytes or DEFAULT_MAX_SHARD_BYTES, progress=progress, desc=desc,
        finish=finish, generation_config=generation_config, inputs=inputs, record=record, dry_run=dry_run,
        describe=lambda t: describe_step(steps[t.name]),
    )


def describe_step(step: Step) -> str:
    """Where one output tensor comes from, in words (dry runs)."""
    origin = step.provenance
    if origin.kind == "copy":
        return f"copy of {origin.ref.name}"
    if origin.kind == "fresh":
        what = f"new, in place of {origin.ref.name}" if origin.ref is not None else "new"
        return f"{what} ({step.note})" if step.note else what
    inputs = ", ".join(r.name for r in step.inputs[:3]) + (", ..." if len(step.inputs) > 3 else "")
    return f"computed from {inputs}" + (f" ({step.note})" if step.note else "")


class PlannedCheckpoint:
    """A plan's output seen as a checkpoint, without writing it.

    It answers names, shapes, dtypes and config like a real
    :class:`~warmstart.checkpoint.reader.Checkpoint`, so the next operation
    of a chain can be planned against it; :func:`compose` then makes the
    chain read the original sources directly. ``get`` computes one tensor on
    demand (for tests and in-memory use).
    """

    format = "planned"

    def __init__(self, plan: Plan, config: dict, label: str = "<planned>"):
        from pathlib import Path

        self.plan = plan
        self.config = config
        self.path = Path(label)
        self._steps = {s.name: s for s in plan.steps}
        self.tensors = {
            s.name: TensorInfo(s.name, self.path, s.dtype, tuple(s.shape), -1, 0) for s in plan.steps
        }

    def names(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str):
        return self.tensors[name]

    def get(self, name: str):
        s = self._steps[name]
        return s.fn(*(self.plan.sources[r.source].get(r.name) for r in s.inputs))

    def byte_range(self, name: str):
        return None

    def extra_files(self) -> list:
        return self.plan.sources[0].extra_files() if self.plan.sources else []


def copy_model(src, out, *, dtype: str | None = None, force: bool = False, max_shard_bytes: int | None = None,
               progress: bool = False, dry_run: bool = False):
    """Read a model directory and write it again, tensor by tensor.

    Unchanged tensors are copied as bytes; `dtype` ('fp32', 'fp16', 'bf16')
    casts floating tensors. The tokenizer and generation files travel along.
    """
    code = parse_user_dtype(dtype)
    atomic.check_output(out, force, [src])
    ckpt = Checkpoint(src)
    plan = Plan([ckpt], [copy_step(0, ckpt, n) for n in ckpt.names()])
    return execute(plan, Path(out), config=dict(ckpt.config), copy_files=ckpt.extra_files(), force=force, dtype=code,
                   max_shard_bytes=max_shard_bytes, progress=progress, desc="copying", dry_run=dry_run,
                   record={"command": "convert", "dtype": dtype, "exact": dtype is None})
