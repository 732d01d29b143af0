"""Initializations of freshly created parameters, registered by name.

An operation that creates parameters (today: the residual-output projections
of ``expand``'s inserted blocks) asks this registry for a plan function by
name. Each is a small class with no inputs, so plans stay picklable and are
computed one tensor at a time.

- ``zero``: zeros (LLaMA Pro; the new block adds nothing: exact);
- ``idinit``: the zero-preserving part of "IDInit: A Universal and Stable
  Initialization Method for Neural Network Training" (IDIZ_eps): the last layer
  of a residual branch gets an identity-like matrix (ones where
  i = j mod min(out, in), so a non-square matrix keeps full rank) scaled by a
  small eps (1e-6 by default) instead of exact zeros, so gradients reach every
  neuron of the branch from the first step. Not exact: the new block adds
  eps-scaled outputs. Biases stay zero.

LSUV ("All you need is a good init") needs activations on a calibration batch,
which a plan (a function of checkpoint tensors only) does not have; it is not
offered here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from warmstart.checkpoint.dtypes import code_to_torch
from warmstart.errors import ParamError, WarmstartError
from warmstart.registry import Registry

FRESH: Registry = Registry("initialization of new parameters")


@dataclass(frozen=True)
class FreshInit:
    name: str
    make: Callable[..., object]  # (shape, dtype, **params) -> plan function
    exact: bool
    summary: str


class Zeros:
    """A plan function with no inputs: a zero tensor of a fixed shape and dtype."""

    def __init__(self, shape: tuple[int, ...], dtype: str):
        self.shape = tuple(shape)
        self.dtype = dtype

    def __call__(self):
        import torch

        return torch.zeros(self.shape, dtype=code_to_torch(self.dtype))

    def __repr__(self) -> str:
        return f"Zeros({self.shape}, {self.dtype})"



def register(name: str, exact: bool, summary: str):
    return FRESH.decorator(name, lambda fn: FreshInit(name, fn, exact, summary))


def get(name: str, source=None) -> FreshInit:
    try:
        return FRESH.get(name)
    except WarmstartError as err:
        raise ParamError("new_block_init", err.message, source) from None


class IdentityLike:
    """eps * M with M[i, j] = 1 where i = j mod min(out, in) (a 1-D tensor: zeros)."""

    def __init__(self, shape: tuple[int, ...], dtype: str, eps: float):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.eps = float(eps)

    def __call__(self):
        import torch

        from warmstart.checkpoint.dtypes import code_to_torch

        out = torch.zeros(self.shape, dtype=torch.float32)
        if len(self.shape) == 2:
            rows, cols = self.shape
            k = min(rows, cols)
            i = torch.arange(max(rows, cols))
            if rows >= cols:
                out[i, i % k] = self.eps
            else:
                out[i % k, i] = self.eps
        return out.to(code_to_torch(self.dtype))

    def __repr__(self) -> str:
        return f"IdentityLike({self.shape}, {self.dtype}, eps={self.eps:g})"


@register("zero", exact=True, summary="zeros: the new block adds nothing (LLaMA Pro, exact)")
def zero_init(shape, dtype, **_):

    return Zeros(shape, dtype)


@register("idinit", exact=False, summary="IDInit's zero-preserving IDIZ_eps: eps-scaled identity-like matrix (not exact)")
def idinit(shape, dtype, eps: float = 1e-6, **_):
    return IdentityLike(shape, dtype, eps)
