"""Combining one tensor across N models, reading one input at a time.

Shared by the streaming merge (tensors read from checkpoint files) and the
in-memory API (tensors of state dicts). Each input is a *reader*: a function
returning a fresh tensor that the combiner owns and may overwrite, so no
input is ever held longer than needed and no temporary the size of the
tensor is made beyond the ones listed below.

Sums are accumulated in fp32 (fp64 when the first input is fp64).

Linear methods compute ``s * x_1 + sum_(i>1) c_i (x_i - x_1)`` with
``s = sum_i c_i``, which is ``sum_i c_i x_i`` rearranged around the first
input. In fp32 this is both more accurate when the inputs are close (the
differences are small and mostly exact) and exact when they are equal: the
mean of identical checkpoints is the checkpoint, bit for bit, whatever N.
Peak memory per output tensor: x_1, the running sum of differences and one
input (three fp32 tensors of its size, plus the input in its own dtype when
that is not fp32).

The Fisher average is ``x_1 + sum_i w_i (x_i - x_1) / sum_i w_i`` with
``w_i = lambda_i (F_i + floor)``: x_1, the two sums, one input and its
Fisher (four fp32 tensors with two inputs, where the first difference
becomes the running sum, five with more).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Reader = Callable[[], torch.Tensor]

# Added to every Fisher element: where all models' Fisher is zero (for
# example an embedding row no token of the Fisher data uses), the weights
# become equal and the merge falls back to the plain (lambda-weighted) mean.
FISHER_FLOOR = 1e-10


def all_finite(t: torch.Tensor) -> bool:
    """Whether a floating tensor holds no NaN and no Inf.

    Its sum is NaN or Inf whenever any element is, and a sum is one fast
    read-only pass (``torch.isfinite`` is much slower on CPU).
    Only a non-finite sum, which finite values can also give by overflowing,
    is checked element by element.
    """
    s = t.sum(dtype=torch.float32) if t.dtype in (torch.float16, torch.bfloat16) else t.sum()
    if bool(torch.isfinite(s)):
        return True
    return bool(torch.isfinite(t).all())


def owned_acc(t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """An fp32 tensor (fp64 for fp64 inputs) the caller may overwrite; the reader's own buffer when possible.

    With `like`, the dtype of `like` (the accumulator's).
    """
    if like is not None:
        want = like.dtype
    else:
        want = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t if t.dtype == want else t.to(want)


def combine_linear(readers: Sequence[Reader], coeffs: Sequence[float]) -> torch.Tensor:
    """``sum_i coeffs[i] * input_i`` in fp32, one input in memory at a time."""
    if len(readers) != len(coeffs) or not readers:
        raise ValueError("one coefficient per input is needed")
    base = owned_acc(readers[0]())
    total = sum(coeffs)
    delta = None
    for read, c in zip(readers[1:], coeffs[1:]):
        x = owned_acc(read(), base)
        x.sub_(base)
        if delta is None:
            delta = x.mul_(c)
        else:
            delta.add_(x, alpha=c)
        del x
    if abs(total - 1.0) > 1e-12:
        base.mul_(total)
    if delta is not None:
        base.add_(delta)
    return base


def combine_fisher(readers: Sequence[Reader], fisher_readers: Sequence[Reader], lambdas: Sequence[float],
                   floor: float = FISHER_FLOOR) -> torch.Tensor:
    """``sum_i lambda_i F_i x_i / sum_i lambda_i F_i`` (elementwise) in fp32, streaming the inputs."""
    if not (len(readers) == len(fisher_readers) == len(lambdas)) or not readers:
        raise ValueError("one Fisher reader and one lambda per input are needed")
    base = owned_acc(readers[0]())
    den = owned_acc(fisher_readers[0](), base).add_(floor).mul_(lambdas[0])
    delta = None
    for read, read_f, lam in zip(readers[1:], fisher_readers[1:], lambdas[1:]):
        f = owned_acc(read_f(), base).add_(floor).mul_(lam)
        den.add_(f)
        x = owned_acc(read(), base)
        x.sub_(base).mul_(f)
        del f
        if delta is None:
            delta = x
        else:
            delta.add_(x)
        del x
    if delta is not None:
        delta.div_(den)
        base.add_(delta)
    return base


def combine_equal(readers: Sequence[Reader], mismatch: Callable[[int], Exception]) -> torch.Tensor:
    """Non-floating tensors (integer buffers) are not averaged: they must agree, and the first is kept.

    ``mismatch(i)`` builds the error raised when input ``i`` differs from the first.
    """
    first = readers[0]()
    for i, read in enumerate(readers[1:], start=1):
        if not torch.equal(first, read()):
            raise mismatch(i)
    return first
