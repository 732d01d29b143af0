"""Refuse merging a checkpoint with itself.

Averaging a model with itself silently returns the model (and with weights,
a rescaled one): it is always a mistake in the command line (``tiny tiny/``,
a symlink, or a copy). Two inputs are the same when their directories are
the same file system object, or when their weight files are equal byte for
byte. The byte comparison stops at the first difference, so distinct
checkpoints (which differ from their first tensor on) cost a few reads;
identical copies cost one extra pass over the weights before refusing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

CHUNK = 8 * 1024 * 1024


def _weight_files(ckpt) -> list[Path]:
    return sorted({info.file for info in ckpt.tensors.values()}, key=lambda p: p.name)


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                return False
            if not x:
                return True


def same_weights(a, b) -> bool:
    """Whether two opened checkpoints hold the same weight files, byte for byte."""
    fa, fb = _weight_files(a), _weight_files(b)
    if [f.name for f in fa] != [f.name for f in fb]:
        return False
    if [f.stat().st_size for f in fa] != [f.stat().st_size for f in fb]:
        return False
    return all(_same_bytes(x, y) for x, y in zip(fa, fb))


def check_distinct(ckpts: Sequence, error) -> None:
    """Raise `error` naming the second of two inputs that are the same checkpoint."""
    for j, b in enumerate(ckpts):
        for i, a in enumerate(ckpts[:j]):
            try:
                same_dir = os.path.samefile(a.path, b.path)
            except OSError:
                same_dir = Path(a.path).resolve() == Path(b.path).resolve()
            if same_dir:
                raise error(f"the same checkpoint is given twice (inputs {i + 1} and {j + 1}); merging a model "
                            "with itself is refused", b.path)
            if same_weights(a, b):
                raise error(f"has the same weights as input {i + 1} ({a.path}), byte for byte; merging a model "
                            "with a copy of itself is refused", b.path)
