"""Merging and averaging checkpoints: mean, weighted, EMA, WSM's decay emulation, Fisher-weighted.

- :func:`merge_checkpoints`: N model directories in, one out, streamed tensor by tensor.
- :func:`merge_state_dicts`, :func:`merge_modules`: the same on models in memory.
- :class:`RunningAverage`: an EMA or last-k window average kept during training.
- :mod:`.methods`: the registered methods and their coefficients; :mod:`.fisher`:
  the diagonal Fisher, estimated once and stored beside the model.

Names are imported on first use, so that ``import warmstart.merge.methods``
(the CLI's parser) does not import torch. See docs/merge.md.
"""

from importlib import import_module

_WHERE = {
    "merge_checkpoints": "stream", "MergeReport": "stream",
    "merge_state_dicts": "memory", "merge_modules": "memory",
    "RunningAverage": "running",
    "METHODS": "methods", "Coefficients": "methods", "MergeError": "methods", "resolve": "methods",
    "wsm_coefficients": "methods",
    "estimate_fisher": "fisher", "ensure_fisher": "fisher",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(f"warmstart.merge.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'warmstart.merge' has no attribute {name!r}")
