"""warmstart adapter: PEFT-delegated and added LoRA initializations, residual bases, export to plain LoRA.

Exactness is checked against independent computations: the source model's
logits from transformers, explicit SVD / pseudo-inverse / least squares in
numpy float64, and autograd gradients of a freshly loaded model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import build_tiny
from tests.unit.test_grow_cli import TEXT, add_tokenizer
from warmstart.cli import main

MOVING = ["pissa", "pissa_niter_4", "olora", "nlora", "corda", "lora-ga"]
DATA = {"eva", "corda", "lora-ga", "lora-sb"}
ALL = ["default", "gaussian", "init-b", "pissa", "pissa_niter_4", "olora", "nlora", "eva", "corda", "lora-ga", "lora-sb"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter")
    model = build_tiny("llama", root / "tiny")
    add_tokenizer(model)
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT * 20)
    return model, corpus, root


def digest(folder: Path) -> dict[str, str]:
    """Hashes of a folder's files; warmstart's provenance record (warmstart.json) says how, not what, so it is left out."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != "warmstart.json"}


def init(setup, method, out, *extra, rank=4):
    model, corpus, _ = setup
    argv = ["adapter", str(model), str(out), "--method", method, "--rank", str(rank), "--quiet",
            "--target-modules", "all-linear", *extra]
    if method in DATA:
        argv += ["--corpus", str(corpus), "--batches", "3", "--batch-size", "2", "--seq-len", "16"]
    assert main(argv) == 0
    return out


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def token_ids(model_dir: Path) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return torch.tensor([tok(TEXT)["input_ids"][:40]])


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.double()


def rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def peft_on(base_dir: Path, adapter_dir: Path, trainable: bool = False):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)


# -- residual base + adapter == source ---------------------------------------------
@pytest.mark.parametrize("method", MOVING)
def test_residual_base_plus_adapter_reproduces_source(setup, method, tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir = setup[0]
    before = digest(model_dir)
    out = init(setup, method, tmp_path / "out")
    assert digest(model_dir) == before, "the source was modified"
    meta = json.loads((out / "warmstart_adapter.json").read_text())
    assert meta["moves_base"] and meta["layout"]["base"] == "base"
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["init_lora_weights"] is True
    assert Path(adapter_config["base_model_name_or_path"]) == (out / "base").resolve()

    source = load_tensors(model_dir / "model.safetensors")
    residual = load_tensors(out / "base" / "model.safetensors")
    adapter = load_tensors(out / "adapter" / "adapter_model.safetensors")
    scaling = meta["lora_alpha"] / meta["rank"]
    moved = 0
    for name, w in source.items():
        module = name[: -len(".weight")]
        key_a = f"base_model.model.{module}.lora_A.weight"
        if key_a not in adapter:
            assert torch.equal(residual[name], w), f"{name} is not adapted and must be copied bit for bit"
            continue
        moved += 1
        b, a = adapter[f"base_model.model.{module}.lora_B.weight"].double(), adapter[key_a].double()
        rebuilt = residual[name].double() + scaling * b @ a
        assert rel(rebuilt, w.double()) < 1e-5, name
        assert not torch.allclose(residual[name], w), f"{method} should have moved part of {name} into the adapter"
    assert moved == len(meta["adapted_tensors"]) == 14  # 2 layers x (q, k, v, o, gate, up, down)

    ids = token_ids(model_dir)
    reference = logits_of(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32), ids)
    rebuilt = logits_of(peft_on(out / "base", out / "adapter"), ids)
    assert rel(rebuilt, reference) < 1e-4


@pytest.mark.parametrize("method", ["pissa", "olora", "nlora", "corda"])
def test_export_lora_matches_trained_model(setup, method, tmp_path):
    """Train the adapter on the residual base a few steps; the exported LoRA on the untouched base is the same model."""
    model_dir = setup[0]
    out = init(setup, method, tmp_path / "init")
    initial = digest(out / "adapter")
    model = peft_on(out / "base", out / "adapter", trainable=True)
    ids = token_ids(model_dir)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(4):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    trained = tmp_path / "trained"
    model.save_pretrained(str(trained))
    expected = logits_of(model, ids)

    assert main(["adapter", str(model_dir), str(tmp_path / "lora"), "--export", "lora", "--initial", str(out),
                 "--trained", str(trained), "--quiet"]) == 0
    assert digest(out / "adapter") == initial, "the initial adapter must not be rewritten by the export"
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["init_lora_weights"] is True
    exported = logits_of(peft_on(model_dir, tmp_path / "lora"), ids)
    assert rel(exported, expected) < 1e-4
    # and it really is a change from the source: training moved the model
    from transformers import AutoModelForCausalLM

    source = logits_of(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32), ids)
    assert rel(source, expected) > 1e-3


def test_export_at_initialization_is_the_source(setup, tmp_path):
    model_dir = setup[0]
    out = init(setup, "pissa", tmp_path / "init")
    assert main(["adapter", str(model_dir), str(tmp_path / "lora"), "--export", "lora", "--initial", str(out),
                 "--quiet"]) == 0
    from transformers import AutoModelForCausalLM

    ids = token_ids(model_dir)
    source = logits_of(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32), ids)
    assert rel(logits_of(peft_on(model_dir, tmp_path / "lora"), ids), source) < 1e-5


def test_export_of_a_method_that_moves_nothing_is_the_adapter(setup, tmp_path):
    model_dir = setup[0]
    out = init(setup, "gaussian", tmp_path / "init")
    assert main(["adapter", str(model_dir), str(tmp_path / "lora"), "--export", "lora", "--initial", str(out),
                 "--quiet"]) == 0
    assert digest(tmp_path / "lora") == digest(out / "adapter")


def test_export_needs_an_initialization(setup, tmp_path, capsys):
    model_dir = setup[0]
    assert main(["adapter", str(model_dir), str(tmp_path / "lora"), "--export", "lora"]) == 2
    assert "--initial" in capsys.readouterr().err
    assert main(["adapter", str(model_dir), str(tmp_path / "lora"), "--export", "lora", "--initial",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "warmstart_adapter.json" in err
    assert not (tmp_path / "lora").exists()


# -- NLoRA and LoRA-SB against their papers' definitions ----------------------------
@pytest.mark.parametrize("oversample", [0, 2])
def test_nystrom_factors_match_the_definition(oversample):
    from warmstart.adapter.methods import nystrom_factors

    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 9))
    rank, scaling = 3, 2.0
    b, a = nystrom_factors(torch.from_numpy(w), rank, scaling, torch.Generator().manual_seed(5), oversample)
    # the same sketches, drawn in the documented order, and the Nyström formula in numpy
    g = torch.Generator().manual_seed(5)
    omega = torch.randn(9, rank, generator=g, dtype=torch.float64).numpy()
    psi = torch.randn(12, rank + oversample, generator=g, dtype=torch.float64).numpy()
    expected = (w @ omega) @ np.linalg.pinv(psi.T @ w @ omega) @ (psi.T @ w)
    got = scaling * (b @ a).numpy()
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-9
    assert b.shape == (12, rank) and a.shape == (rank, 9)
    # a matrix of rank r is recovered exactly, whatever the sketches
    low = rng.standard_normal((12, rank)) @ rng.standard_normal((rank, 9))
    b, a = nystrom_factors(torch.from_numpy(low), rank, 1.0, torch.Generator().manual_seed(11))
    assert np.abs((b @ a).numpy() - low).max() / np.abs(low).max() < 1e-8


def test_silver_bullet_core_is_the_least_squares_fit():
    from warmstart.adapter.methods import silver_bullet_factors

    rng = np.random.default_rng(1)
    update = rng.standard_normal((10, 8))
    rank, scaling = 3, 0.5
    b, core, a = (t.numpy() for t in silver_bullet_factors(torch.from_numpy(update), rank, scaling))
    # Eckart-Young: scaling * B R A is the truncated SVD of the update
    u, s, vh = np.linalg.svd(update)
    best = (u[:, :rank] * s[:rank]) @ vh[:rank]
    assert np.abs(scaling * b @ core @ a - best).max() < 1e-10
    # with B and A fixed, R solves min ||scaling * B R A - dW|| (least squares over vec(R))
    design = scaling * np.kron(b, a.T)  # row-major vec: vec(B R A) = (B kron A^T) vec(R)
    r_ls = np.linalg.lstsq(design, update.reshape(-1), rcond=None)[0].reshape(rank, rank)
    assert np.abs(core - r_ls).max() < 1e-10


def test_lora_sb_adapter_is_the_best_rank_r_first_step(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    from warmstart.adapter.data import calibration_batches

    model_dir, corpus, _ = setup
    lr = 1e-2
    out = init(setup, "lora-sb", tmp_path / "sb", "--sb-rule", "sgd", "--sb-lr", str(lr))
    adapter = load_tensors(out / "adapter" / "adapter_model.safetensors")
    assert not (out / "base").exists(), "lora-sb leaves the base untouched"
    # independent: autograd gradient of the mean loss over the same batches, SGD step, SVD in numpy
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    batches = calibration_batches(model_dir, [corpus], 3, 2, 16)
    loss = sum(model(**b, labels=b["input_ids"]).loss for b in batches) / len(batches)
    loss.backward()
    checked = 0
    for name, p in model.named_parameters():
        module = name[: -len(".weight")]
        key = f"base_model.model.{module}.lora_A.weight"
        if key not in adapter:
            continue
        u, s, vh = np.linalg.svd(-lr * p.grad.double().numpy())
        best = (u[:, :4] * s[:4]) @ vh[:4]
        got = (adapter[f"base_model.model.{module}.lora_B.weight"].double() @ adapter[key].double()).numpy()
        assert np.abs(got - best).max() / np.abs(best).max() < 1e-4, name
        checked += 1
    assert checked == 14


def test_init_order(setup, tmp_path):
    a_first = load_tensors(init(setup, "default", tmp_path / "a") / "adapter" / "adapter_model.safetensors")
    b_first = load_tensors(init(setup, "init-b", tmp_path / "b") / "adapter" / "adapter_model.safetensors")
    for name, t in a_first.items():
        assert bool(t.any()) == ("lora_A" in name), name  # default: A random, B zero
    for name, t in b_first.items():
        assert bool(t.any()) == ("lora_B" in name), name  # init-b: A zero, B random


# -- every method loads with PEFT and generates -------------------------------------
@pytest.mark.parametrize("method", ALL)
def test_every_method_loads_and_generates(setup, method, tmp_path):
    model_dir = setup[0]
    out = init(setup, method, tmp_path / "out")
    base = out / "base" if (out / "base").exists() else model_dir
    assert (out / "base").exists() == (method in MOVING)
    model = peft_on(base, out / "adapter")
    stored = load_tensors(out / "adapter" / "adapter_model.safetensors")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(stored) == len(loaded) == 28
    for key, value in stored.items():  # PEFT loaded the stored factors, it did not initialize new ones
        assert torch.equal(loaded[key.replace(".weight", ".default.weight")], value), key
    ids = token_ids(model_dir)[:, :6]
    gen = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 10)
    meta = json.loads((out / "warmstart_adapter.json").read_text())
    assert meta["method"] == method
    if method in DATA:
        assert meta["timings_s"]["statistics_s"] > 0


# -- bad input ----------------------------------------------------------------------
def _bad(setup, tmp_path, capsys, *argv):
    out = tmp_path / "out"
    code = main(["adapter", str(setup[0]), str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "temporary output left behind"
    return err


def test_rank_above_smallest_dimension(setup, tmp_path, capsys):
    # k_proj is 16 x 32 in the tiny model (2 key/value heads of 8)
    err = _bad(setup, tmp_path, capsys, "--rank", "20", "--target-modules", "k_proj")
    assert "rank 20" in err and "k_proj" in err and "at most 16" in err


def test_target_modules_matching_nothing_lists_what_exists(setup, tmp_path, capsys):
    err = _bad(setup, tmp_path, capsys, "--target-modules", "query_key_value")
    assert "query_key_value" in err
    for leaf in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert leaf in err


@pytest.mark.parametrize("method", sorted(DATA))
def test_data_driven_method_without_corpus(setup, tmp_path, capsys, method):
    err = _bad(setup, tmp_path, capsys, "--method", method)
    assert "--corpus" in err


def test_quantized_base_refused_for_full_precision_methods(setup, tmp_path, capsys):
    import shutil

    model = tmp_path / "quantized"
    shutil.copytree(setup[0], model)
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (model / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    code = main(["adapter", str(model), str(out), "--method", "pissa"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and not out.exists()
    assert "full-precision" in err and "bitsandbytes" in err


def test_unknown_method_and_existing_output(setup, tmp_path, capsys):
    err = _bad(setup, tmp_path, capsys, "--method", "pisa")
    assert "pissa" in err and "nlora" in err  # lists what exists
    out = tmp_path / "exists"
    out.mkdir()
    assert main(["adapter", str(setup[0]), str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_loftq_refused_where_it_cannot_run(setup, tmp_path, capsys):
    from warmstart.adapter.methods import loftq_unavailable

    if loftq_unavailable() is None:
        pytest.skip("bitsandbytes and a CUDA device are present: LoftQ can run here")
    err = _bad(setup, tmp_path, capsys, "--method", "loftq")
    assert "loftq" in err


# -- GPT-2's transposed (Conv1D) layers -----------------------------------------------
@pytest.mark.parametrize("method", ["pissa", "nlora"])
def test_conv1d_residual_gives_the_source_logits(tmp_path, method):
    from transformers import AutoModelForCausalLM

    model_dir = build_tiny("gpt2", tmp_path / "gpt2")
    out = tmp_path / "out"
    assert main(["adapter", str(model_dir), str(out), "--method", method, "--rank", "4", "--quiet",
                 "--target-modules", "c_attn", "c_fc"]) == 0
    ids = torch.arange(3, 40).view(1, -1)
    reference = logits_of(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32), ids)
    assert rel(logits_of(peft_on(out / "base", out / "adapter"), ids), reference) < 1e-4
    residual = load_tensors(out / "base" / "model.safetensors")["transformer.h.0.attn.c_attn.weight"]
    source = load_tensors(model_dir / "model.safetensors")["transformer.h.0.attn.c_attn.weight"]
    assert not torch.allclose(residual, source)


def test_olora_on_conv1d_refused_before_writing(tmp_path, capsys):
    model_dir = build_tiny("gpt2", tmp_path / "gpt2")
    out = tmp_path / "out"
    assert main(["adapter", str(model_dir), str(out), "--method", "olora", "--rank", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Conv1D" in err
    assert not out.exists()


# -- encoders: the class the family's spec declares (BERT loads as AutoModel, no LM head) -----------------------------
def bert_dir(tmp_path: Path, masked_lm: bool = False) -> Path:
    """A tiny BERT with a tokenizer; `masked_lm` saves it as BertForMaskedLM, whose tensor names carry `bert.`."""
    import transformers as tf

    path = build_tiny("bert", tmp_path / "bert")
    if masked_lm:
        torch.manual_seed(1)
        model = tf.BertForMaskedLM(tf.BertConfig.from_pretrained(str(path)))
        model.save_pretrained(str(path))
    add_tokenizer(path)
    return path


def encoder_states(model_dir: Path, adapter: Path | None = None):
    from peft import PeftModel
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.arange(2, 34).view(1, -1)).last_hidden_state.double()


@pytest.mark.parametrize("method", ["default", "pissa", "nlora", "eva", "corda"])
def test_encoder_adapter_loads_on_its_own_class(tmp_path, method):
    source = bert_dir(tmp_path)
    out = tmp_path / "out"
    argv = ["adapter", str(source), str(out), "--method", method, "--rank", "4", "--quiet"]
    if method in DATA:
        corpus = tmp_path / "corpus.txt"
        corpus.write_text(TEXT * 20)
        argv += ["--corpus", str(corpus), "--batches", "2", "--batch-size", "2", "--seq-len", "16"]
    assert main(argv) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "FEATURE_EXTRACTION"
    # PEFT's default for BERT (EVA lists the adapted modules by full name)
    assert {m.rsplit(".", 1)[-1] for m in config["target_modules"]} == {"query", "value"}
    base = out / "base" if (out / "base").is_dir() else source
    reference = encoder_states(source)
    assert rel(encoder_states(base, out / "adapter"), reference) < 1e-4
    if base != source:  # the residual alone is a different model: the adapter's factors were loaded, not re-drawn
        assert rel(encoder_states(base), reference) > 1e-3


def test_encoder_residual_keeps_the_checkpoint_names(tmp_path):
    from safetensors import safe_open

    source = bert_dir(tmp_path, masked_lm=True)
    out = tmp_path / "out"
    assert main(["adapter", str(source), str(out), "--method", "pissa", "--rank", "4", "--quiet"]) == 0
    names = {}
    for d in (source, out / "base"):
        with safe_open(str(d / "model.safetensors"), "pt") as f:
            names[d] = set(f.keys())
    assert names[source] == names[out / "base"]
    assert "bert.encoder.layer.0.attention.self.query.weight" in names[source]
    assert rel(encoder_states(out / "base", out / "adapter"), encoder_states(source)) < 1e-4


@pytest.mark.parametrize("method", ["lora-ga", "lora-sb"])
def test_gradient_methods_refused_for_an_encoder(tmp_path, capsys, method):
    source = bert_dir(tmp_path)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    out = tmp_path / "out"
    assert main(["adapter", str(source), str(out), "--method", method, "--corpus", str(corpus)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no LM head" in err and "eva and corda" in err
    assert not out.exists()


def test_calibration_windows_longer_than_the_positions(setup, tmp_path, capsys):
    err = _bad(setup, tmp_path, capsys, "--method", "eva", "--corpus", str(setup[1]), "--seq-len", "65")
    assert "--seq-len 65" in err and "64 positions" in err and "config.json" in err


# -- a multimodal checkpoint: transformers renames its keys on load, and text never reaches the vision tower -----------
@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    from warmstart import tiny_families

    root = tmp_path_factory.mktemp("gemma3")
    path = tiny_families.build("gemma3", root / "gemma3")
    add_tokenizer(path)
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT * 20)
    return path, corpus


def gemma3_logits(base: Path, adapter: Path | None = None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return logits_of(model.eval(), torch.arange(2, 30).view(1, -1))


@pytest.mark.parametrize("method", ["pissa", "lora-ga"])
def test_renamed_checkpoint_keeps_its_names(gemma3, tmp_path, method):
    """Gemma 3 loads `language_model.model.layers...` as `model.language_model.layers...`: the residual must be
    written under the checkpoint's names, or the base would load with the source's (unadapted) weights."""
    from safetensors import safe_open

    source, corpus = gemma3
    out = tmp_path / "out"
    assert main(["adapter", str(source), str(out), "--method", method, "--rank", "2", "--quiet",
                 "--target-modules", "all-linear",
                 "--corpus", str(corpus), "--batches", "2", "--batch-size", "2", "--seq-len", "16"]) == 0
    keys = []
    for d in (source, out / "base"):
        with safe_open(str(d / "model.safetensors"), "pt") as f:
            keys.append(set(f.keys()))
    assert keys[0] == keys[1]
    reference = gemma3_logits(source)
    assert rel(gemma3_logits(out / "base", out / "adapter"), reference) < 1e-4
    assert rel(gemma3_logits(out / "base"), reference) > 1e-4  # the residual alone is another model


def test_layers_the_text_never_reaches(gemma3, tmp_path, capsys):
    source, corpus = gemma3
    calib = ["--corpus", str(corpus), "--batches", "2", "--batch-size", "2", "--seq-len", "16"]
    out = tmp_path / "eva"
    assert main(["adapter", str(source), str(out), "--method", "eva", "--rank", "2", *calib,
                 "--target-modules", "q_proj", "v_proj"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "never receive input" in err and "--target-modules" in err
    assert not out.exists()
    # the same method on the language model's layers only, named by a pattern as PEFT takes one
    assert main(["adapter", str(source), str(out), "--method", "eva", "--rank", "2", "--quiet", *calib,
                 "--target-modules", ".*language_model.*(q|v)_proj"]) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] and all("language_model" in m for m in config["target_modules"])
    # LoRA-SB: layers without a gradient keep PEFT's default (B = 0) and say so
    out = tmp_path / "sb"
    assert main(["adapter", str(source), str(out), "--method", "lora-sb", "--rank", "2", *calib,
                 "--target-modules", "q_proj", "v_proj"]) == 0
    printed = capsys.readouterr().out
    assert "get no gradient from the corpus" in printed and "vision_tower" in printed
    factors = load_tensors(out / "adapter" / "adapter_model.safetensors")
    vision_b = [v for k, v in factors.items() if "vision_tower" in k and "lora_B" in k]
    text_b = [v for k, v in factors.items() if "language_model" in k and "lora_B" in k]
    assert vision_b and all(float(v.abs().max()) == 0 for v in vision_b)
    assert text_b and all(float(v.abs().max()) > 0 for v in text_b)


def test_target_patterns(setup, tmp_path, capsys):
    err = _bad(setup, tmp_path, capsys, "--target-modules", r".*\.mlp\.nothing")
    assert "matches no linear layer" in err and "available" in err
    err = _bad(setup, tmp_path, capsys, "--target-modules", "q_proj(")
    assert "not a regular expression" in err
    out = tmp_path / "mixed"
    assert main(["adapter", str(setup[0]), str(out), "--rank", "2", "--quiet",
                 "--target-modules", r".*layers\.0\..*(q|k)_proj", "down_proj"]) == 0
    adapted = {k.split(".lora_")[0] for k in load_tensors(out / "adapter" / "adapter_model.safetensors")}
    suffixes = sorted(k.split("layers.")[1] for k in adapted)
    assert suffixes == ["0.mlp.down_proj", "0.self_attn.k_proj", "0.self_attn.q_proj", "1.mlp.down_proj"]


@pytest.mark.parametrize("flags, words", [
    (["--alpha", "0"], "--alpha must be a positive number"),
    (["--alpha", "nan"], "--alpha must be a positive number"),
    (["--method", "lora-sb", "--sb-lr=-1e-4"], "--sb-lr must be a positive number"),
    (["--method", "nlora", "--nlora-oversample", "-1"], "--nlora-oversample must be 0 or more"),
    (["--method", "eva", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["--method", "eva", "--seq-len", "0"], "--seq-len must be at least 1"),
    (["--method", "eva", "--corpus", "/dev/null"], "not a regular file"),
])
def test_unusable_numbers_and_corpora(setup, tmp_path, capsys, flags, words):
    corpus = [] if "--corpus" in flags else ["--corpus", str(setup[1])]
    err = _bad(setup, tmp_path, capsys, *flags, *corpus)
    assert words in err


def test_corpus_folder_is_read_recursively(setup, tmp_path):
    folder = tmp_path / "texts" / "deeper"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text(setup[1].read_text())
    out = tmp_path / "out"
    assert main(["adapter", str(setup[0]), str(out), "--method", "eva", "--rank", "2", "--quiet",
                 "--corpus", str(tmp_path / "texts"), "--batches", "2", "--batch-size", "2", "--seq-len", "16"]) == 0
    meta = json.loads((out / "warmstart_adapter.json").read_text())
    assert meta["calibration"]["files"] == 1 and meta["calibration"]["batches"] == 2


def test_half_precision_source_gets_an_exact_fp32_residual(setup, tmp_path):
    """A bf16 residual rounds every adapted weight by ~eps(bf16) = 4e-3: by default the residual base is fp32 and
    residual + adapter is the bf16 source to fp32 rounding; --dtype bf16 gives the smaller, rounded base."""
    from safetensors import safe_open

    source = tmp_path / "bf16"
    assert main(["convert", str(setup[0]), str(source), "--dtype", "bf16", "--quiet"]) == 0
    exact, rounded = tmp_path / "exact", tmp_path / "rounded"
    assert main(["adapter", str(source), str(exact), "--method", "pissa", "--rank", "4", "--quiet"]) == 0
    assert main(["adapter", str(source), str(rounded), "--method", "pissa", "--rank", "4", "--quiet",
                 "--dtype", "bf16"]) == 0
    assert json.loads((exact / "base" / "config.json").read_text())["torch_dtype"] == "float32"
    assert json.loads((rounded / "base" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    src = load_tensors(source / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"

    def rebuilt(out):
        with safe_open(str(out / "base" / "model.safetensors"), "pt") as f:
            residual = f.get_tensor(name).double()
        factors = load_tensors(out / "adapter" / "adapter_model.safetensors")
        key = "base_model.model." + name[: -len(".weight")]
        b, a = factors[f"{key}.lora_B.weight"].double(), factors[f"{key}.lora_A.weight"].double()
        return residual + b @ a  # alpha = rank: scaling 1

    reference = src[name].double()
    assert rel(rebuilt(exact), reference) < 1e-5
    assert 1e-4 < rel(rebuilt(rounded), reference) < 2e-2
    ids = torch.arange(3, 40).view(1, -1)
    from transformers import AutoModelForCausalLM

    expected = logits_of(AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32), ids)
    assert rel(logits_of(peft_on(exact / "base", exact / "adapter"), ids), expected) < 1e-4


def test_eva_stops_after_its_forward_budget(setup):
    """PEFT's EVA loops until every layer converges, without a bound; the wrapper stops it after a budget of
    forward passes and keeps the estimate so far (here after one forward, when nothing can have converged)."""
    from transformers import AutoModelForCausalLM

    from warmstart.adapter import AdapterSpec
    from warmstart.adapter.data import calibration_batches
    from warmstart.adapter.writer import attach

    model_dir, corpus, _ = setup
    batches = calibration_batches(model_dir, [corpus], 2, 2, 16)
    spec = AdapterSpec(method="eva", rank=2, target_modules=["q_proj", "v_proj"], options={"eva_max_forwards": 1})
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    peft_model, ctx = attach(model, spec, ["q_proj", "v_proj"], batches)
    assert ctx.timings["eva_forwards"] == 1
    assert any("had not converged after 1 forward" in n for n in ctx.notes), ctx.notes
    a = [p for n, p in peft_model.named_parameters() if "lora_A" in n]
    assert len(a) == 4 and all(float(p.abs().max()) > 0 for p in a)  # A holds the estimated components
    unbounded = attach(AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32),
                       AdapterSpec(method="eva", rank=2, target_modules=["q_proj", "v_proj"]),
                       ["q_proj", "v_proj"], batches)[1]
    assert 1 < unbounded.timings["eva_forwards"] < 400 and not any("converged" in n for n in unbounded.notes)
