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

- ``lsuv``: "All you need is a good init" (LSUV), adapted to a residual
  branch: the output projection starts as a random orthogonal matrix (seeded
  by the block and role, so the calibration and the write build the same one)
  times a scale measured beforehand on a calibration corpus
  (:mod:`warmstart.ops.lsuv`), so that the branch's output scale (a typical
  token's RMS) is a chosen fraction of the residual stream's at that depth. The plan receives the
  measured scales as a parameter, as importance pruning receives its kept
  indices. Not exact.

A choice with ``needs_data`` gets its statistics from a calibration pass
before planning (``warmstart.api.grow`` runs it).
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
    needs_data: bool = False  # statistics from a calibration pass (see warmstart.ops.lsuv)


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



def register(name: str, exact: bool, summary: str, needs_data: bool = False):
    return FRESH.decorator(name, lambda fn: FreshInit(name, fn, exact, summary, needs_data))


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


def orthogonal(shape: tuple[int, ...], seed: int):
    """A float32 random (semi-)orthogonal matrix: QR of a seeded Gaussian, signs fixed by R's diagonal."""
    import torch

    rows, cols = shape
    g = torch.Generator().manual_seed(int(seed))
    a = torch.randn(max(rows, cols), min(rows, cols), generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    sign = torch.sign(torch.diagonal(r))
    q = q * torch.where(sign == 0, 1.0, sign)
    return (q if rows >= cols else q.t()).float().contiguous()


def lsuv_seed(seed: int, layer: int, role: str) -> int:
    """The seed of one new output projection: different per block and role, fixed by the user's seed."""
    return (int(seed) * 1_000_003 + int(layer) * 2 + (0 if role.startswith("attn.") else 1)) % (2**63)


class ScaledOrthogonal:
    """scale * a seeded random orthogonal matrix (a 1-D tensor, i.e. a bias: zeros)."""

    def __init__(self, shape: tuple[int, ...], dtype: str, seed: int, scale: float):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.seed = int(seed)
        self.scale = float(scale)

    def __call__(self):
        import torch

        if len(self.shape) != 2:
            return torch.zeros(self.shape, dtype=code_to_torch(self.dtype))
        return (orthogonal(self.shape, self.seed) * self.scale).to(code_to_torch(self.dtype))

    def __repr__(self) -> str:
        return f"ScaledOrthogonal({self.shape}, {self.dtype}, seed={self.seed}, scale={self.scale:g})"


LSUV_ROLES = ("attn.o.weight", "mlp.down.weight")


@register("lsuv", exact=False, needs_data=True,
          summary="LSUV for a residual branch: random orthogonal output projections scaled on a calibration corpus "
                  "so each branch's typical token RMS is a set fraction of the residual stream's (not exact)")
def lsuv(shape, dtype, *, layer: int | None = None, role: str | None = None, scales: dict | None = None,
         seed: int = 0, **_):
    if len(shape) != 2 or role not in LSUV_ROLES:  # biases and norm biases of the branch stay zero
        return Zeros(shape, dtype)
    if scales is None or layer not in scales:
        raise WarmstartError(f"lsuv: no measured scale for new block {layer} (lsuv needs a calibration pass: "
                             "give --corpus)")
    return ScaledOrthogonal(shape, dtype, lsuv_seed(seed, layer, role), scales[layer][LSUV_ROLES.index(role)])
