"""warmstart: start training from checkpoints that already exist.

The data flow is one-way: checkpoint reader -> architecture spec (tensor name
-> role) -> operations (pure functions on role-tagged tensors) -> plan (which
output tensor comes from which inputs) -> streaming writer.

Importing this package is cheap on purpose: torch and transformers are only
imported by the modules that compute with them.
"""

__version__ = "0.1.0"

API = ("convert", "import_gguf", "chain", "grow", "shrink", "run", "merge", "vocab", "tokenizer_train", "inspect",
       "verify", "compare", "bench", "upcycle", "adapter", "export_lora", "prune")


def __getattr__(name: str):
    """``warmstart.grow(...)`` and the rest of :mod:`warmstart.api`, imported on first use (importing warmstart
    stays cheap)."""
    if name in API:
        from warmstart import api

        return getattr(api, name)
    raise AttributeError(f"module 'warmstart' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *API])
