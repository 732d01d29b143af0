"""Fresh-parameter initialization of expand's new blocks: zero (exact) and IDInit's IDIZ_eps (not exact)."""

from __future__ import annotations

import numpy as np
import pytest
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


# -- LSUV: orthogonal output projections scaled on a calibration corpus -------------------------------------------
LSUV_TEXT = " ".join(f"the {w} of line {i} is {w[::-1]} and {i * 7 % 13}." for i in range(300)
                     for w in ("king", "queen", "ghost", "sword"))
SEQ, BATCH, BATCHES = 24, 2, 3


def _tiny_with_tokenizer(tmp_path):
    from tests.conftest import make_bpe

    src = build_tiny("llama", tmp_path / "tiny", vocab_size=320, num_hidden_layers=4)
    make_bpe(src, LSUV_TEXT[:15000], 300, {"eos": "<eos>"})
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(LSUV_TEXT[15000:30000])
    return src, corpus


def _tokens(model_dir, text, start):
    """The test's own reading of the corpus: the tokenizer's ids, end-of-text appended, consecutive windows."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
    need = BATCHES * BATCH * SEQ
    return torch.tensor(ids[start:start + need]).reshape(BATCHES, BATCH, SEQ)


def _branch_ratios(path, tokens, blocks):
    """Typical token RMS of each new branch's output over that of the residual stream it reads, from hooks:
    the median over tokens of each token's RMS over channels."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    seen = {}

    def keep(key, pre):
        def hook(mod, *a):
            x = (a[0][0] if pre else a[1]).detach().double()
            seen.setdefault(key, []).append(x.reshape(-1, x.shape[-1]))
        return hook

    hs = []
    for j in blocks:
        layer = lm.model.layers[j]
        hs += [layer.input_layernorm.register_forward_pre_hook(keep((j, "attn", "stream"), True)),
               layer.self_attn.o_proj.register_forward_hook(keep((j, "attn", "out"), False)),
               layer.post_attention_layernorm.register_forward_pre_hook(keep((j, "mlp", "stream"), True)),
               layer.mlp.down_proj.register_forward_hook(keep((j, "mlp", "out"), False))]
    with torch.no_grad():
        for batch in tokens:
            lm(input_ids=batch)
    for h in hs:
        h.remove()
    scale = {k: float(np.median(torch.cat(v).norm(dim=-1).numpy() / v[0].shape[-1] ** 0.5)) for k, v in seen.items()}
    return {(j, b): scale[j, b, "out"] / scale[j, b, "stream"] for j in blocks for b in ("attn", "mlp")}


def test_lsuv_sets_each_new_branch_to_the_target_std(tmp_path):
    src, corpus = _tiny_with_tokenizer(tmp_path)
    flags = ["--corpus", str(corpus), "--batches", str(BATCHES), "--batch-size", str(BATCH), "--seq-len", str(SEQ)]
    grow = lambda out, *extra: main(["grow", str(src), str(out), "--layers", "6", "--depth-method", "expand",
                                     "--quiet", *extra])
    assert grow(tmp_path / "lsuv", "--new-block-init", "lsuv", "--lsuv-target", "0.1", *flags) == 0
    assert grow(tmp_path / "zero") == 0
    # expand 4 -> 6 inserts new blocks at 2 and 5
    ratios = _branch_ratios(tmp_path / "lsuv", _tokens(src, LSUV_TEXT[15000:30000], 0), (2, 5))
    for key, r in ratios.items():
        assert abs(r - 0.1) < 1e-3 * 0.1, (key, r)  # the calibration data: exact up to float rounding
    held_out = _branch_ratios(tmp_path / "lsuv", _tokens(src, LSUV_TEXT[30000:], 0), (2, 5))
    for key, r in held_out.items():
        assert 0.05 < r < 0.2, (key, r)  # other text of the same kind: near the target
    lsuv, zero = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("lsuv", "zero"))
    for j in (2, 5):  # a scaled orthogonal matrix: W W^T = s^2 I (rows <= columns)
        for name in (f"model.layers.{j}.self_attn.o_proj.weight", f"model.layers.{j}.mlp.down_proj.weight"):
            w = lsuv[name].double()
            gram = w @ w.t()
            s2 = float(gram.diagonal().mean())
            assert s2 > 0 and torch.allclose(gram, s2 * torch.eye(w.shape[0], dtype=torch.float64), atol=1e-5 * s2)
    for name, t in zero.items():  # everything else is expand's
        if not (name.endswith(("o_proj.weight", "down_proj.weight")) and name.startswith(("model.layers.2.",
                                                                                         "model.layers.5."))):
            assert torch.equal(lsuv[name], t), name
    # the seed picks the matrices; the scales follow
    assert grow(tmp_path / "seed1", "--new-block-init", "lsuv", "--lsuv-target", "0.1", "--seed", "1", *flags) == 0
    other = load_file(str(tmp_path / "seed1" / "model.safetensors"))
    assert not torch.allclose(other["model.layers.2.mlp.down_proj.weight"], lsuv["model.layers.2.mlp.down_proj.weight"])


@pytest.mark.parametrize("extra, message", [
    ([], "needs a calibration corpus"),
    (["--corpus", "CORPUS", "--width-method", "hyperclone", "--width-mult", "2"], "runs alone"),
    (["--corpus", "CORPUS", "--batches", "500"], "fewer than"),
    (["--corpus", "CORPUS", "--lsuv-target", "-1"], "lsuv-target"),
])
def test_lsuv_bad_input(tmp_path, capsys, extra, message):
    src, corpus = _tiny_with_tokenizer(tmp_path)
    extra = [str(corpus) if e == "CORPUS" else e for e in extra]
    code = main(["grow", str(src), str(tmp_path / "out"), "--layers", "6", "--depth-method", "expand",
                 "--new-block-init", "lsuv", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_corpus_without_lsuv_is_refused(tmp_path, capsys):
    src, corpus = _tiny_with_tokenizer(tmp_path)
    code = main(["grow", str(src), str(tmp_path / "out"), "--layers", "6", "--depth-method", "expand",
                 "--corpus", str(corpus)])
    assert code == 2 and "lsuv" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("init", ["idinit", "lsuv"])
def test_scaled_inits_refused_where_a_norm_follows_the_projection(tmp_path, capsys, init):
    from warmstart.tiny_families import build

    src = build("olmo2", tmp_path / "olmo2")  # a norm behind o_proj and down_proj: it would undo any scale
    code = main(["grow", str(src), str(tmp_path / "out"), "--layers", "8", "--depth-method", "expand",
                 "--new-block-init", init])
    assert code == 2 and "undoes it" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["grow", str(src), str(tmp_path / "zero"), "--layers", "8", "--depth-method", "expand",
                 "--quiet"]) == 0
