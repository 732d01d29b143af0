"""`warmstart merge` on the real SmolLM2-135M: the mean of a model with itself is the model, bit for bit."""

from __future__ import annotations

import shutil

import pytest
import torch

from warmstart.checkpoint.reader import Checkpoint
from warmstart.cli import main


@pytest.mark.integration
def test_mean_of_real_model_with_itself_is_bitwise_the_model(smollm2_dir, tmp_path, capsys):
    out = tmp_path / "merged"
    # Merging a model with itself (or a byte-identical copy) is refused ...
    assert main(["merge", str(smollm2_dir), str(smollm2_dir), str(out), "--quiet"]) == 2
    assert "given twice" in capsys.readouterr().err and not out.exists()
    # ... so the copy differs in one tensor, patched in place: every other tensor of the mean is the model's.
    copy = shutil.copytree(smollm2_dir, tmp_path / "copy")
    changed = "model.norm.weight"
    src = Checkpoint(smollm2_dir)
    file, offset, nbytes = Checkpoint(copy).byte_range(changed)
    bumped = (src.get(changed).float() + 1).to(src.get(changed).dtype)
    with open(file, "r+b") as f:
        f.seek(offset)
        f.write(bumped.contiguous().view(torch.uint8).numpy().tobytes())
    assert main(["merge", str(smollm2_dir), str(copy), str(out), "--quiet"]) == 0
    a = Checkpoint(out)
    assert a.names() == src.names()
    for n in src.names():
        x, y = a.get(n), src.get(n)
        if n == changed:
            expected = ((y.double() + bumped.double()) / 2).to(y.dtype)
            assert torch.allclose(x.float(), expected.float(), rtol=0, atol=float(y.abs().max()) * 2**-7), n
        else:
            assert x.dtype == y.dtype and torch.equal(x, y), n
    # The tokenizer travels along unchanged.
    assert (out / "tokenizer.json").read_bytes() == (smollm2_dir / "tokenizer.json").read_bytes()
