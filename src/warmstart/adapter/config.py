"""What an adapter initialization is asked to do, and the checks made before anything is loaded.

Every check here reads only config.json and the safetensors headers (no
tensor data, no torch model), so bad input is refused in well under a second
and before any output exists: a rank above a target matrix's smallest
dimension, target modules that match nothing, a data-driven method without a
corpus, a quantized checkpoint where the method needs full precision.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warmstart.errors import WarmstartError

# Leaf names never adapted by default: embeddings and the output head (PEFT's "all-linear" leaves them out too).
NOT_LINEAR = re.compile(r"(^|\.)(embed_\w+|\w*embeddings?|wte|wpe|lm_head|shared)$")


@dataclass
class AdapterSpec:
    """The user's request: method, rank, scaling, which modules, which data."""

    method: str = "default"
    rank: int = 8
    alpha: float | None = None  # None: alpha = rank, so the LoRA scaling alpha/r is 1
    target_modules: list[str] | None = None  # None: PEFT's default for the family
    corpus: list[Path] = field(default_factory=list)
    batches: int = 8
    batch_size: int = 4
    seq_len: int = 128
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.rank


@dataclass
class Target:
    """One matrix the adapter attaches to: its module name, tensor name and (out, in) shape as stored."""

    module: str
    tensor: str
    shape: tuple[int, ...]
    dtype: str


def linear_modules(checkpoint) -> dict[str, Target]:
    """Module name -> Target for every 2-D weight that is not an embedding or the head."""
    found = {}
    for name, info in checkpoint.tensors.items():
        if not name.endswith(".weight") or len(info.shape) != 2:
            continue
        module = name[: -len(".weight")]
        if NOT_LINEAR.search(module):
            continue
        found[module] = Target(module, name, tuple(info.shape), info.dtype)
    return found


def default_targets(model_type: str) -> list[str] | None:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    found = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    return list(found) if found else None


def _matches(module: str, key: str) -> bool:
    """PEFT's rule for a list of target names: the module's name is the key, or ends with '.' + key."""
    return module == key or module.endswith("." + key)


def resolve_targets(checkpoint, spec: AdapterSpec) -> tuple[list[str], list[Target]]:
    """(target names to hand PEFT, matched matrices); refuses names that match nothing."""
    modules = linear_modules(checkpoint)
    keys = spec.target_modules
    if keys is None:
        keys = default_targets(str(checkpoint.config.get("model_type")))
        if keys is None:
            raise WarmstartError(f"no default target modules for model_type {checkpoint.config.get('model_type')!r}; "
                                 f"give --target-modules (available: {', '.join(_leaves(modules))})",
                                 checkpoint.path / "config.json")
    if keys == ["all-linear"]:
        keys = _leaves(modules)
    matched: list[Target] = []
    names: list[str] = []
    for key in keys:
        pattern = _regex(key)
        if pattern is None:
            hits = [t for m, t in modules.items() if _matches(m, key)]
        else:
            hits = [t for m, t in modules.items() if pattern.fullmatch(m)]
        if not hits:
            raise WarmstartError(f"target module {key!r} matches no linear layer; available: "
                                 f"{', '.join(_leaves(modules))}", checkpoint.path)
        names.append(key)
        matched += [t for t in hits if t not in matched]
    if any(_regex(k) is not None for k in names):
        # PEFT takes one pattern (a string) or a list of plain names: the plain names become "(.*\.)?name". The
        # pattern is matched against the loaded model's names, which transformers may have renamed from the
        # checkpoint's (Gemma 3), so it is passed on rather than the checkpoint names it matched here.
        names = ["|".join(f"(?:{k})" if _regex(k) is not None else f"(?:.*\\.)?{re.escape(k)}" for k in names)]
    return names, matched


def peft_targets(keys: list[str]):
    """What PEFT's ``target_modules`` takes: the list of names, or the one pattern a regular expression made."""
    return keys[0] if len(keys) == 1 and _regex(keys[0]) is not None else list(keys)


def _regex(key: str):
    """A target given as a regular expression over full module names (``.*language_model.*(q|v)_proj``, as PEFT
    takes a string), or None for a plain name, matched as PEFT matches a list: the name or its last parts."""
    if not re.search(r"[*+?\[\](){}|^$\\]", key):
        return None
    try:
        return re.compile(key)
    except re.error as err:
        raise WarmstartError(f"target module pattern {key!r} is not a regular expression: {err}") from None


def _leaves(modules: dict[str, Target]) -> list[str]:
    return sorted({m.rsplit(".", 1)[-1] for m in modules})


def is_quantized(checkpoint, targets: list[Target]) -> str | None:
    """Why the checkpoint counts as quantized (None when every target is a float matrix)."""
    q = checkpoint.config.get("quantization_config")
    if q:
        method = q.get("quant_method", "unknown") if isinstance(q, dict) else "unknown"
        return f"config.json has a quantization_config ({method})"
    for t in targets:
        if t.dtype not in ("F32", "F16", "BF16", "F64"):
            return f"{t.tensor} is stored as {t.dtype}"
    return None


def check_rank(spec: AdapterSpec, targets: list[Target], path: Path) -> None:
    """The rank fits every target matrix; alpha and the numeric method options are usable numbers."""
    if spec.rank < 1:
        raise WarmstartError(f"--rank must be at least 1, got {spec.rank}")
    if spec.alpha is not None and not (math.isfinite(spec.alpha) and spec.alpha > 0):
        raise WarmstartError(f"--alpha must be a positive number, got {spec.alpha}")  # 0 would make a dead adapter
    sb_lr = spec.options.get("sb_lr")
    if sb_lr is not None and not (math.isfinite(sb_lr) and sb_lr > 0):
        raise WarmstartError(f"--sb-lr must be a positive number, got {sb_lr}")
    oversample = spec.options.get("nlora_oversample")
    if oversample is not None and oversample < 0:
        raise WarmstartError(f"--nlora-oversample must be 0 or more, got {oversample}")
    for name in ("batches", "batch_size", "seq_len"):
        if getattr(spec, name) < 1:
            raise WarmstartError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(spec, name)}")
    for t in targets:
        if spec.rank > min(t.shape):
            raise WarmstartError(f"rank {spec.rank} is above the smallest dimension of {t.tensor} {list(t.shape)} "
                                 f"(at most {min(t.shape)})", path)
