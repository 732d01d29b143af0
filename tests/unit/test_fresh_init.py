"""Fresh-parameter initialization of expand's new blocks: zero (exact) and IDInit's IDIZ_eps (not exact)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from tests.conftest import build_tiny
from warmstart.cli import main


def _grow(src, out, *extra):
    return main(["grow", str(src), str(out), "--layers", "4", "--depth-method", "expand", "--quiet", *extra])


def _logits(path, ids):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)(input_ids=ids).logits.double()


def test_idinit_new_blocks_are_eps_identity_like(tmp_path):
    src = build_tiny("llama", tmp_path / "tiny")
    assert _grow(src, tmp_path / "zero") == 0
    assert _grow(src, tmp_path / "idinit", "--new-block-init", "idinit") == 0
    zero = load_file(str(tmp_path / "zero" / "model.safetensors"))
    ident = load_file(str(tmp_path / "idinit" / "model.safetensors"))
    # expand 2 -> 4 inserts new blocks at 1 and 3
    for block in (1, 3):
        o = ident[f"model.layers.{block}.self_attn.o_proj.weight"]  # 32 x 32: eps * I
        assert torch.equal(o, 1e-6 * torch.eye(32))
        down = ident[f"model.layers.{block}.mlp.down_proj.weight"]  # 32 x 64: [eps I, eps I]
        expected = torch.zeros(32, 64)
        for j in range(64):
            expected[j % 32, j] = 1e-6
        assert torch.equal(down, expected)
        assert not zero[f"model.layers.{block}.mlp.down_proj.weight"].any()
    for name, t in zero.items():  # everything else is the same in both
        if "o_proj" not in name and "down_proj" not in name or name.startswith(("model.layers.0.", "model.layers.2.")):
            assert torch.equal(ident[name], t), name
    ids = torch.arange(5, 30).view(1, -1)
    source, exact, near = _logits(src, ids), _logits(tmp_path / "zero", ids), _logits(tmp_path / "idinit", ids)
    assert float((exact - source).abs().max()) < 1e-5 * float(source.abs().max())
    diff = float((near - source).abs().max() / source.abs().max())
    assert 0 < diff < 1e-3  # not exact, but eps-close


def test_new_block_init_only_for_expand(tmp_path, capsys):
    src = build_tiny("llama", tmp_path / "tiny")
    code = main(["grow", str(src), str(tmp_path / "out"), "--layers", "4", "--depth-method", "stack",
                 "--new-block-init", "idinit"])
    assert code == 2 and "expand" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
