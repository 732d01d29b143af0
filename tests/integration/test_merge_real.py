"""`warmstart merge` on the real SmolLM2-135M: the mean of a model with itself is the model, bit for bit."""

from __future__ import annotations

import pytest
import torch

from warmstart.checkpoint.reader import Checkpoint
from warmstart.cli import main


@pytest.mark.integration
def test_mean_of_real_model_with_itself_is_bitwise_the_model(smollm2_dir, tmp_path):
    out = tmp_path / "merged"
    assert main(["merge", str(smollm2_dir), str(smollm2_dir), str(out), "--quiet"]) == 0
    a, b = Checkpoint(out), Checkpoint(smollm2_dir)
    assert a.names() == b.names()
    for n in b.names():
        x, y = a.get(n), b.get(n)
        assert x.dtype == y.dtype and torch.equal(x, y), n
    # The tokenizer travels along unchanged.
    assert (out / "tokenizer.json").read_bytes() == (smollm2_dir / "tokenizer.json").read_bytes()
