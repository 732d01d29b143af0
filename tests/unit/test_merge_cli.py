"""`warmstart merge` end to end on tiny models: results checked in fp64, bad input through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import build_tiny
from warmstart.checkpoint.reader import Checkpoint
from warmstart.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster on a shared machine


def _tensors(path: Path) -> dict:
    ck = Checkpoint(path)
    return {n: ck.get(n) for n in ck.names()}


@pytest.fixture
def three(tmp_path) -> list[Path]:
    return [build_tiny("llama", tmp_path / f"m{i}", seed=i) for i in range(3)]


def _no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_mean_of_identical_checkpoints_is_the_checkpoint_bitwise(tmp_path, tiny_model):
    # Merging a checkpoint with itself is refused, so the copies differ in one
    # tensor only; every other tensor of the mean must equal the source bit for bit.
    out = tmp_path / "out"
    copies = []
    for i in range(3):
        copy = shutil.copytree(tiny_model, tmp_path / f"copy{i}")
        state = load_file(str(copy / "model.safetensors"))
        changed = sorted(state)[0]
        state[changed] = state[changed] + i
        save_file(state, str(copy / "model.safetensors"), metadata={"format": "pt"})
        copies.append(copy)
    threads = torch.get_num_threads()
    assert main(["merge", *map(str, copies), str(out), "--quiet", "--threads", "2"]) == 0
    assert torch.get_num_threads() == threads  # the merge's thread setting is undone
    a, b = _tensors(out), _tensors(tiny_model)
    assert a.keys() == b.keys()
    for n in a:
        if n != changed:
            assert a[n].dtype == b[n].dtype and torch.equal(a[n], b[n]), n
    record = json.loads((out / "merge.json").read_text())
    assert record["method"] == "mean" and record["coefficients"] == [1 / 3] * 3


def test_mean_matches_float64_average(tmp_path, three):
    out = tmp_path / "out"
    assert main(["merge", *map(str, three), str(out), "--quiet"]) == 0
    got, ins = _tensors(out), [_tensors(p) for p in three]
    for n, t in got.items():
        ref = sum(x[n].double() for x in ins) / 3
        scale = max(float(x[n].abs().max()) for x in ins)
        assert (t.double() - ref).abs().max() <= 4 * 2.0**-24 * scale, n
    # The merged model loads and runs in transformers.
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(str(out))
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


def test_weighted_refuses_weights_not_summing_to_one(tmp_path, three, capsys):
    out = tmp_path / "out"
    rc = main(["merge", *map(str, three), str(out), "--method", "weighted", "--weights", "0.5,0.3,0.3", "--quiet"])
    assert rc == 2
    assert "sum to 1.1, not 1" in capsys.readouterr().err
    _no_leftovers(out)
    rc = main(["merge", *map(str, three), str(out), "--method", "weighted", "--weights", "0.5,0.3,0.3",
               "--no-normalize", "--quiet"])
    assert rc == 0
    got, ins = _tensors(out), [_tensors(p) for p in three]
    n = "model.layers.0.mlp.up_proj.weight"
    ref = 0.5 * ins[0][n].double() + 0.3 * ins[1][n].double() + 0.3 * ins[2][n].double()
    assert torch.allclose(got[n].double(), ref, atol=1e-6)


def test_ema_and_wsm_apply_their_coefficients(tmp_path, three):
    ins = [_tensors(p) for p in three]
    n = "model.embed_tokens.weight"
    out = tmp_path / "ema"
    assert main(["merge", *map(str, three), str(out), "--method", "ema", "--ema-decay", "0.5", "--quiet"]) == 0
    # EMA by hand: e = x0; e = .5 e + .5 x1; e = .5 e + .5 x2  ->  .25 x0 + .25 x1 + .5 x2
    ref = 0.25 * ins[0][n].double() + 0.25 * ins[1][n].double() + 0.5 * ins[2][n].double()
    assert torch.allclose(_tensors(out)[n].double(), ref, atol=1e-6)
    out = tmp_path / "wsm"
    assert main(["merge", *map(str, three), str(out), "--method", "wsm", "--input-steps", "100,102,104", "--quiet"]) == 0
    # linear decay over 4 updates, checkpoints 2 apart: c = [3/8, 1/2, 1/8] (see test_merge_methods)
    ref = 3 / 8 * ins[0][n].double() + 1 / 2 * ins[1][n].double() + 1 / 8 * ins[2][n].double()
    assert torch.allclose(_tensors(out)[n].double(), ref, atol=1e-6)


def test_mixed_dtypes_accumulate_in_fp32_and_keep_the_first_dtype(tmp_path, three):
    bf = tmp_path / "bf16"
    assert main(["convert", str(three[1]), str(bf), "--dtype", "bf16", "--quiet"]) == 0
    out = tmp_path / "out"
    assert main(["merge", str(three[0]), str(bf), str(out), "--quiet"]) == 0
    a, b, got = _tensors(three[0]), _tensors(bf), _tensors(out)
    for n, t in got.items():
        assert t.dtype == torch.float32
        assert torch.allclose(t.double(), (a[n].double() + b[n].double()) / 2, atol=1e-6)
    out2 = tmp_path / "out2"
    assert main(["merge", str(three[0]), str(three[1]), str(out2), "--dtype", "bf16", "--quiet"]) == 0
    c = _tensors(three[1])
    for n, t in _tensors(out2).items():
        assert t.dtype == torch.bfloat16
        assert torch.equal(t, ((a[n] + c[n]) / 2).to(torch.bfloat16)) or torch.allclose(
            t.float(), (a[n] + c[n]) / 2, rtol=2**-8)
    assert json.loads((out2 / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_existing_output_refused_unless_force(tmp_path, three):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["merge", *map(str, three[:2]), str(out), "--quiet"]) == 2
    assert main(["merge", *map(str, three[:2]), str(out), "--quiet", "--force"]) == 0
    assert (out / "model.safetensors").is_file()


# --- bad input: exit code 2, a message naming checkpoint and tensor, no output --------------


def _bad(args, out: Path, capsys, *expected: str) -> str:
    args = [str(a) for a in args]
    k = next((i for i, a in enumerate(args) if a.startswith("--")), len(args))  # CKPT... OUT, then the flags
    rc = main(["merge", *args[:k], str(out), *args[k:], "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (earlier lines: the test's own model builds)
    assert rc == 2, err
    assert err.startswith("warmstart: error: "), err
    for e in expected:
        assert e in err, err
    _no_leftovers(out)
    return err


def test_single_input_refused(tmp_path, three, capsys):
    _bad([three[0]], tmp_path / "out", capsys, "at least two checkpoints")


def test_different_architectures_refused(tmp_path, three, tiny_gpt2, capsys):
    _bad([three[0], tiny_gpt2], tmp_path / "out", capsys, str(tiny_gpt2), "model_type 'gpt2'")


def test_different_shapes_refused(tmp_path, three, capsys):
    wide = build_tiny("llama", tmp_path / "wide", intermediate_size=96)
    _bad([three[0], wide], tmp_path / "out", capsys, str(wide), "model.layers.0.mlp.down_proj.weight",
         "[32, 96]")


def test_different_config_refused(tmp_path, three, capsys):
    other = build_tiny("llama", tmp_path / "theta", rope_theta=1234.0)
    _bad([three[0], other], tmp_path / "out", capsys, str(other), "rope")


def test_missing_tensor_refused(tmp_path, three, capsys):
    cut = tmp_path / "cut"
    shutil.copytree(three[1], cut)
    state = load_file(cut / "model.safetensors")
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, cut / "model.safetensors", metadata={"format": "pt"})
    _bad([three[0], cut], tmp_path / "out", capsys, str(cut), "model.layers.1.mlp.down_proj.weight")


def _with_tokenizer(path: Path, chars: str) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=chars[0]))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.save(str(path / "tokenizer.json"))
    return path


def test_different_tokenizers_refused(tmp_path, three, capsys):
    _with_tokenizer(three[0], "?abcdefgh ")
    _with_tokenizer(three[1], "?abcdefgx ")
    _bad([three[0], three[1]], tmp_path / "out", capsys, str(three[1]), "different tokenizer",
         "id 8 is 'x' here, 'h' there")
    # The same vocabulary with other settings is accepted, and the first one's tokenizer travels along.
    _with_tokenizer(three[1], "?abcdefgh ")
    data = json.loads((three[1] / "tokenizer.json").read_text())
    data["normalizer"] = {"type": "Lowercase"}
    (three[1] / "tokenizer.json").write_text(json.dumps(data, indent=4))
    out = tmp_path / "ok"
    assert main(["merge", str(three[0]), str(three[1]), str(out), "--quiet"]) == 0
    assert (out / "tokenizer.json").read_bytes() == (three[0] / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("value,word", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_nan_or_inf_in_an_input_refused(tmp_path, three, capsys, value, word):
    bad = tmp_path / "bad"
    shutil.copytree(three[2], bad)
    state = load_file(bad / "model.safetensors")
    name = "model.layers.1.self_attn.v_proj.weight"
    state[name][3, 4] = value
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    _bad([three[0], three[1], bad], tmp_path / "out", capsys, str(bad), name, word)


def test_parameters_of_other_methods_refused(tmp_path, three, capsys):
    _bad([three[0], three[1], "--weights", "0.5,0.5"], tmp_path / "out", capsys, "does not take --weights")
    _bad([three[0], three[1], "--method", "ema"], tmp_path / "out", capsys, "--ema-decay")
    _bad([three[0], three[1], "--method", "ema", "--ema-half-life", "10"], tmp_path / "out", capsys, "--input-steps")
    _bad([three[0], three[1], "--method", "wsm", "--wsm-shape", "zigzag"], tmp_path / "out", capsys, "zigzag")
    _bad([three[0], three[1], "--method", "weighted", "--weights", "0.5,x"], tmp_path / "out", capsys, "'x'")
    _bad([three[0], three[1], "--fisher-data", "x.txt"], tmp_path / "out", capsys, "'fisher' only")
