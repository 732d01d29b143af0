"""A training-loop hook that keeps a running average of the weights: EMA or a last-k window.

The average lives on the CPU in fp32 (``device="cpu"``, the default), so
training on an accelerator never holds a second full copy of the model
there: each update copies the parameters to the host one tensor at a time.
Passing an accelerator device keeps the average there instead (faster,
one more model's worth of accelerator memory).

- ``ema_decay=d`` (per training step) or ``ema_half_life=h`` (in steps):
  updated every ``every`` steps with decay ``d ** every`` or
  ``0.5 ** (every / h)``, so the same average results whatever ``every``
  when the weights change slowly. The average starts at the first update's
  weights (no zero start and hence no bias correction).
- ``window=k``: the last ``k`` snapshots taken every ``every`` steps, kept as
  ``k`` fp32 copies on ``device``; ``average()`` combines them uniformly or
  with ``weights`` (oldest first, e.g. :func:`warmstart.merge.methods.wsm_coefficients`
  to emulate a decay over the window, as WSM does).

Usage::

    avg = RunningAverage(model, ema_half_life=200)
    for step in range(steps):
        ...; optimizer.step()
        avg.update()
    with avg.swapped(model):   # evaluate the averaged weights
        evaluate(model)
    avg.save("averaged")       # a model directory (Hugging Face models)
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from typing import Sequence

from warmstart.checkpoint.writer import atomic_directory
from warmstart.merge import combine
from warmstart.merge.methods import MergeError


class RunningAverage:
    def __init__(self, model, *, ema_decay: float | None = None, ema_half_life: float | None = None,
                 window: int | None = None, weights: Sequence[float] | None = None, every: int = 1,
                 device: str = "cpu"):
        chosen = [x is not None for x in (ema_decay, ema_half_life, window)]
        if sum(chosen) != 1:
            raise MergeError("RunningAverage needs exactly one of ema_decay, ema_half_life and window")
        if int(every) < 1:
            raise MergeError(f"every must be at least 1, got {every}")
        self.every = int(every)
        self.device = device
        self.model = model
        self.decay = None
        if ema_decay is not None:
            if not 0.0 < ema_decay < 1.0:
                raise MergeError(f"ema_decay must lie strictly between 0 and 1, got {ema_decay}")
            self.decay = float(ema_decay) ** self.every
        elif ema_half_life is not None:
            if ema_half_life <= 0:
                raise MergeError(f"ema_half_life must be positive, got {ema_half_life}")
            self.decay = 0.5 ** (self.every / float(ema_half_life))
        self.window = None if window is None else int(window)
        if self.window is not None and self.window < 1:
            raise MergeError(f"window must be at least 1, got {window}")
        if weights is not None:
            if self.window is None or len(weights) != self.window:
                raise MergeError("weights go with window=k and need k values (oldest first)")
            self.weights = [float(w) for w in weights]
        else:
            self.weights = None
        self.steps = 0  # update() calls seen
        self.updates = 0  # snapshots taken
        self.ema: dict | None = None
        self.snapshots: deque = deque(maxlen=self.window or 1)

    def _params(self):
        return [(n, p) for n, p in self.model.named_parameters()]

    def _host_copy(self, p):
        import torch

        return p.detach().to(device=self.device, dtype=torch.float32, copy=True)

    def update(self) -> bool:
        """Call after each optimizer step; returns whether a snapshot was taken."""
        import torch

        self.steps += 1
        if self.steps % self.every:
            return False
        with torch.no_grad():
            if self.decay is not None:
                if self.ema is None:
                    self.ema = {n: self._host_copy(p) for n, p in self._params()}
                else:
                    for n, p in self._params():
                        self.ema[n].lerp_(self._host_copy(p), 1.0 - self.decay)
            else:
                self.snapshots.append({n: self._host_copy(p) for n, p in self._params()})
        self.updates += 1
        return True

    def average(self) -> dict:
        """The averaged parameters (fp32, on ``device``), by parameter name."""
        if self.updates == 0:
            raise MergeError("no update() yet: nothing to average")
        if self.decay is not None:
            return self.ema

        snaps = list(self.snapshots)
        if self.weights is None:
            coeffs = [1.0 / len(snaps)] * len(snaps)
        else:  # fewer snapshots than the window so far: the newest weights, renormalized
            w = self.weights[-len(snaps):]
            total = sum(w)
            if total <= 0:
                raise MergeError("the window's weights for the snapshots taken so far sum to 0")
            coeffs = [x / total for x in w]
        return {n: combine.combine_linear([lambda s=s, n=n: s[n].clone() for s in snaps], coeffs)
                for n in snaps[0]}

    def copy_to(self, model=None) -> None:
        """Load the average into `model` (default: the tracked one), one tensor at a time."""
        import torch

        model = self.model if model is None else model
        avg = self.average()
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(avg[n].to(device=p.device, dtype=p.dtype))

    @contextmanager
    def swapped(self, model=None):
        """Evaluate with the averaged weights inside the block; the training weights come back after.

        The training weights wait on the CPU meanwhile.
        """
        import torch

        model = self.model if model is None else model
        saved = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(saved[n].to(p.device))

    def save(self, out, *, force: bool = False) -> None:
        """Write the averaged model as a model directory (atomic; a Hugging Face model's save_pretrained)."""
        if not hasattr(self.model, "save_pretrained"):
            raise MergeError("save() needs a Hugging Face model; use average() for other modules")
        avg = self.average()
        canonical: dict[int, str] = {}
        alias = {}  # every name of a parameter (tied ones have several) -> the name averaged
        for n, p in self.model.named_parameters(remove_duplicate=False):
            alias[n] = canonical.setdefault(id(p), n)
        state = {}
        for n, t in self.model.state_dict().items():
            a = alias.get(n)
            state[n] = avg[a].to(t.dtype).cpu() if a in avg else t.detach().cpu()
        with atomic_directory(out, force) as tmp:
            self.model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "updates": self.updates, "ema": self.ema, "snapshots": list(self.snapshots)}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.updates = int(state["updates"])
        self.ema = state["ema"]
        self.snapshots = deque(state["snapshots"], maxlen=self.window or 1)
