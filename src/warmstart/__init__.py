"""warmstart: start training from checkpoints that already exist.

The data flow is one-way: checkpoint reader -> architecture spec (tensor name
-> role) -> operations (pure functions on role-tagged tensors) -> plan (which
output tensor comes from which inputs) -> streaming writer.

Importing this package is cheap on purpose: torch and transformers are only
imported by the modules that compute with them.
"""

__version__ = "0.1.0"
