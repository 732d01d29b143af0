"""Vocabulary transplant: give a pretrained model a new tokenizer, its rows computed from what it knows.

- :mod:`~warmstart.vocab.match`: canonical token forms and the old/new token match
- :mod:`~warmstart.vocab.methods`: the registered methods (copy, fvt, multivariate, focus, omp, wechsel, random)
- :mod:`~warmstart.vocab.aux_embeddings`: FastText vectors trained on the target corpus, cached
- :mod:`~warmstart.vocab.transplant`: the streaming plan that writes the new model
"""

from warmstart.vocab.methods import METHODS, Init, get_method
from warmstart.vocab.transplant import TransplantReport, transplant

__all__ = ["METHODS", "Init", "TransplantReport", "get_method", "transplant"]
