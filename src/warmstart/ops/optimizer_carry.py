"""Carry an AdamW optimizer state through the same layer maps as the weights.

When a model grows, the optimizer state of the source need not be thrown
away. Following "Masked Structural Growth for 2x Faster Language Model
Pre-training" (MSG), the moments of copied parameters are copied and the
moments of new parameters start at zero. Here:

- a tensor copied from a source tensor (every block of ``stack``,
  ``interleave``, ``dus``, ``layer_map`` and ``drop``, and the original blocks
  of ``expand``) gets that tensor's ``exp_avg``, ``exp_avg_sq`` and ``step``;
- a tensor of a new block (LLaMA Pro's inserted blocks, copied weights and
  zeroed projections alike) gets zero moments and ``step`` 0, so that AdamW's
  bias correction treats it as a fresh parameter.

Width operations change the parameters' coordinates; carrying moments
through them is not supported (the command refuses with a clear error).

File format
-----------
A safetensors file with, for every parameter ``P`` (the checkpoint's tensor
name), three tensors: ``P.exp_avg`` and ``P.exp_avg_sq`` (the shape of ``P``)
and ``P.step`` (a scalar). Or a torch file holding
``{P: {"exp_avg": tensor, "exp_avg_sq": tensor, "step": tensor or number}}``,
read only with ``torch.load(weights_only=True)``; it is what
``{name: optimizer.state[p] for name, p in model.named_parameters()}`` gives
for a ``torch.optim.AdamW``. The output is always the safetensors form,
written as ``optimizer_state.safetensors`` inside the output model directory.
Moments stored in safetensors are copied as bytes, never decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from warmstart.checkpoint.dtypes import torch_to_code
from warmstart.checkpoint.safetensors_format import read_header
from warmstart.checkpoint.writer import OutputTensor, write_shard
from warmstart.errors import WarmstartError
from warmstart.ops.depth import Zeros

STATE_KEYS = ("exp_avg", "exp_avg_sq", "step")
OUTPUT_NAME = "optimizer_state.safetensors"


@dataclass
class _Entry:
    """One stored tensor: bytes in a safetensors file, or an in-memory tensor."""

    dtype: str
    shape: tuple[int, ...]
    copy_from: tuple[Path, int, int] | None = None
    tensor: Any = None


@dataclass
class OptimizerState:
    """A source optimizer state: {param: {"exp_avg"|"exp_avg_sq"|"step": _Entry}}."""

    path: Path
    params: dict[str, dict[str, _Entry]] = field(default_factory=dict)


def load_state(path: str | Path) -> OptimizerState:
    """Read the tensor table of an optimizer-state file (safetensors lazily; torch files safely)."""
    path = Path(path)
    if not path.is_file():
        raise WarmstartError("no such optimizer state file", path)
    with open(path, "rb") as f:
        head = f.read(9)
    is_safetensors = path.suffix == ".safetensors" or (len(head) > 8 and head[8:9] == b"{")
    state = _load_safetensors(path) if is_safetensors else _load_torch(path)
    if not state.params:
        raise WarmstartError("optimizer state holds no parameters", path)
    return state


def _load_safetensors(path: Path) -> OptimizerState:
    infos, _ = read_header(path)
    state = OptimizerState(path)
    for name, info in infos.items():
        param, _, key = name.rpartition(".")
        if key not in STATE_KEYS or not param:
            raise WarmstartError(f"tensor {name!r} is not named PARAM.exp_avg, PARAM.exp_avg_sq or PARAM.step", path)
        state.params.setdefault(param, {})[key] = _Entry(info.dtype, tuple(info.shape),
                                                         copy_from=(info.file, info.offset, info.nbytes))
    _check_complete(state)
    return state


def _load_torch(path: Path) -> OptimizerState:
    import torch


    try:
        try:  # memory-mapped where the file format allows, so moments are read on demand
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad or unsafe pickles
        raise WarmstartError(f"cannot read optimizer state safely (weights_only): {err}".splitlines()[0], path) from err
    if not isinstance(raw, dict):
        raise WarmstartError("optimizer state is not a dict {param name: {exp_avg, exp_avg_sq, step}}", path)
    if "state" in raw and "param_groups" in raw:
        raise WarmstartError("this is optimizer.state_dict(), which names parameters by number; save "
                             "{name: optimizer.state[p] for name, p in model.named_parameters()} instead", path)
    state = OptimizerState(path)
    for param, moments in raw.items():
        if not isinstance(param, str) or not isinstance(moments, dict):
            raise WarmstartError(f"entry {param!r} is not 'param name: {{exp_avg, exp_avg_sq, step}}'", path)
        for key in STATE_KEYS:
            if key not in moments:
                continue
            t = moments[key]
            if key == "step" and not isinstance(t, torch.Tensor):
                t = torch.tensor(float(t), dtype=torch.float32)
            if not isinstance(t, torch.Tensor):
                raise WarmstartError(f"{param}.{key} is not a tensor", path)
            t = t.detach().contiguous()
            state.params.setdefault(param, {})[key] = _Entry(torch_to_code(t.dtype), tuple(t.shape), tensor=t)
        if param not in state.params:
            raise WarmstartError(f"{param!r} has none of exp_avg, exp_avg_sq, step", path)
    _check_complete(state)
    return state


def _check_complete(state: OptimizerState) -> None:
    for param, moments in state.params.items():
        missing = [k for k in STATE_KEYS if k not in moments]
        if missing:
            raise WarmstartError(f"parameter {param!r} has no {missing[0]} in the optimizer state", state.path)


@dataclass
class CarryPlan:
    tensors: list  # OutputTensor for the output file
    copied: int = 0  # parameters whose moments were copied
    fresh: int = 0  # parameters of new blocks: zero moments, step 0


def plan_carry(model, transform, state: OptimizerState, ops: Sequence[str] = ()) -> CarryPlan:
    """Which moment goes where, read off the chain's plan provenance; checks every name and shape first.

    `transform` is the whole chain (:func:`warmstart.ops.registry.chain`):
    a tensor copied from a source tensor gets that tensor's moments, a fresh
    one zero moments; a computed one (a width operation) has no counterpart.
    """
    ckpt = model.checkpoint
    names = set(ckpt.names())
    for param, moments in state.params.items():
        if param not in names:
            raise WarmstartError(f"optimizer state names {param!r}, which {ckpt.path} does not have "
                                 "(keys must be the checkpoint's tensor names)", state.path)
        shape = tuple(ckpt.info(param).shape)
        for key in ("exp_avg", "exp_avg_sq"):
            if moments[key].shape != shape:
                raise WarmstartError(f"{param}.{key} has shape {list(moments[key].shape)}, the parameter has "
                                     f"{list(shape)}", state.path)
    plan = CarryPlan([])
    for step in transform.plan.steps:
        origin = step.provenance
        if origin.kind == "transform":
            raise WarmstartError(
                "--optimizer-state: AdamW moments can be carried through layer maps (depth operations and drop) "
                f"only; {' -> '.join(ops) or 'this chain'} changes the widths ({step.name} is computed), whose "
                "moments have no exact counterpart")
        if origin.ref is None:
            continue  # a fresh tensor with no counterpart in the source: the optimizer starts it from zero anyway
        moments = state.params.get(origin.ref.name)
        if moments is None:
            continue  # a buffer or a parameter the optimizer did not train
        new = origin.kind == "fresh"
        for key in STATE_KEYS:
            e = moments[key]
            name = f"{step.name}.{key}"
            if new:
                plan.tensors.append(OutputTensor(name, e.dtype, e.shape, compute=Zeros(e.shape, e.dtype)))
            elif e.copy_from is not None:
                plan.tensors.append(OutputTensor(name, e.dtype, e.shape, copy_from=e.copy_from))
            else:
                plan.tensors.append(OutputTensor(name, e.dtype, e.shape, compute=lambda _t=e.tensor: _t))
        if new:
            plan.fresh += 1
        else:
            plan.copied += 1
    if not plan.tensors:
        raise WarmstartError("no tensor of the model has a state in this file", state.path)
    return plan


def write_carry(directory: Path, plan: CarryPlan, progress: bool = False) -> Path:
    """Write the carried state as OUTPUT_NAME into `directory` (streaming, one tensor at a time)."""
    path = Path(directory) / OUTPUT_NAME
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(t.nbytes for t in plan.tensors), unit="B", unit_scale=True, desc="optimizer state",
                   leave=False)
    try:
        write_shard(path, plan.tensors, bar)
    finally:
        if bar is not None:
            bar.close()
    return path


def read_output(path: str | Path) -> dict[str, dict[str, Any]]:
    """Load an optimizer_state.safetensors back as {param: {exp_avg, exp_avg_sq, step}} (for resuming)."""
    from safetensors.torch import load_file

    out: dict[str, dict[str, Any]] = {}
    for name, t in load_file(str(path)).items():
        param, _, key = name.rpartition(".")
        out.setdefault(param, {})[key] = t
    return out
