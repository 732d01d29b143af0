"""Architecture specs: tensor name -> role, config -> shapes. One file per family."""

from warmstart.arch.spec import Dims, Family, Layout, Model, describe, families, family_for_config
from warmstart.checkpoint.reader import Checkpoint

__all__ = ["Dims", "Family", "Layout", "Model", "describe", "families", "family_for_config", "open_model"]


def open_model(path) -> Model:
    """Open a model directory lazily and classify its tensors."""
    return describe(Checkpoint(path))
