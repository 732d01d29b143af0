"""`warmstart grow / shrink / verify / run` in-process on tiny models: output, bad input, optimizer state."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from tests.conftest import build_tiny
from tests.unit.test_depth import check_layer_map, tensors
from warmstart.cli import main
from warmstart.ops import registry

WORDS = ("the a of and to in is it that was he for on are as with his they at be this from have or by one had "
         "not but what all were when we there can an your which their said if do will each about how up out them "
         "then she many some so these would other into has more her two like him see time could no make than first "
         "been its who now people my made over did down only way find use may water long little very after words "
         "called just where most know").split()


def add_tokenizer(path, vocab_size=128):
    """A word-level tokenizer over `vocab_size` ids, saved next to a tiny model."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1}
    for w in WORDS:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")
    fast.save_pretrained(str(path))
    return path


TEXT = ("the people who made the first words said that water was long and little . they will find a way to use "
        "it , and then we can see how many of them were there when she called . " * 3)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def has(op: str) -> bool:
    return op in registry.load_all()


# -- grow -----------------------------------------------------------------------------

def test_grow_expand_prints_and_copies_tokenizer(tiny_llama, tmp_path, capsys):
    add_tokenizer(tiny_llama)
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "grow", tiny_llama, out, "--layers", 4, "--depth-method", "expand", "--quiet")
    assert code == 0
    assert "expand(layers=4)" in stdout and "exact" in stdout and str(out) in stdout
    assert (out / "tokenizer.json").read_bytes() == (tiny_llama / "tokenizer.json").read_bytes()
    check_layer_map(tiny_llama, out, "llama", [0, 0, 1, 1], zero_blocks={1, 3})
    # existing output: refused without --force, replaced with it
    code, _, err = run(capsys, "grow", tiny_llama, out, "--layers", 4, "--depth-method", "stack", "--quiet")
    assert code == 2 and "already exists" in err
    check_layer_map(tiny_llama, out, "llama", [0, 0, 1, 1], zero_blocks={1, 3})
    code, _, _ = run(capsys, "grow", tiny_llama, out, "--layers", 4, "--depth-method", "stack", "--quiet", "--force")
    assert code == 0
    check_layer_map(tiny_llama, out, "llama", [0, 1, 0, 1])


def test_grow_dus_and_layer_map(tiny_gpt2, tmp_path, capsys):
    code, stdout, _ = run(capsys, "grow", tiny_gpt2, tmp_path / "d", "--depth-method", "dus", "--dus-overlap", 0,
                          "--quiet")
    assert code == 0 and "not function-preserving" in stdout
    check_layer_map(tiny_gpt2, tmp_path / "d", "gpt2", [0, 1, 0, 1])
    code, _, _ = run(capsys, "grow", tiny_gpt2, tmp_path / "m", "--layer-map", "1,0-1,1", "--quiet")
    assert code == 0
    check_layer_map(tiny_gpt2, tmp_path / "m", "gpt2", [1, 0, 1, 1])


def test_grow_dtype(tiny_llama, tmp_path, capsys):
    code, _, _ = run(capsys, "grow", tiny_llama, tmp_path / "o", "--layers", 4, "--depth-method", "interleave",
                     "--dtype", "bf16", "--quiet")
    assert code == 0
    out = tensors(tmp_path / "o")
    src = tensors(tiny_llama)
    assert all(t.dtype == torch.bfloat16 for t in out.values())
    assert torch.equal(out["model.layers.3.mlp.up_proj.weight"], src["model.layers.1.mlp.up_proj.weight"].bfloat16())
    assert json.loads((tmp_path / "o" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def _unsupported(tiny_llama):
    cfg = json.loads((tiny_llama / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (tiny_llama / "config.json").write_text(json.dumps(cfg))
    return tiny_llama


BAD = [
    (["--layers", 5, "--depth-method", "stack"], "multiple of 2"),
    (["--layer-map", "0-2"], "layer 2"),
    (["--layer-map", "0-1,x"], "malformed layer map"),
    (["--layer-map", "0,1", "--depth-method", "stack"], "either --layer-map or --depth-method"),
    (["--depth-method", "dus", "--dus-overlap", 2], "too large"),
    (["--depth-method", "dus", "--layers", 5], "even"),
    (["--layers", 3, "--depth-method", "expand"], None),  # 2 -> 3 is fine: the control case
    (["--layers", 5, "--depth-method", "expand"], "does not divide"),
    (["--layers", 4], "needs --depth-method"),
    (["--width-mult", 2], "without --width-method"),
    (["--width-method", "hyperclone"], "needs target sizes"),
    (["--width-method", "nosuch", "--width-mult", 2], "unknown width method"),
    ([], "nothing to do"),
    (["--layers", 4, "--depth-method", "stack", "--optimizer-state", "missing.safetensors"], "no such optimizer"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_grow_bad_input(tiny_llama, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    code, _, err = run(capsys, "grow", tiny_llama, out, *flags, "--quiet")
    if message is None:
        assert code == 0 and out.is_dir()
        return
    assert code == 2, err
    assert message in err and err.startswith("warmstart: error:") and err.count("\n") == 1
    assert not out.exists()
    assert not list(tmp_path.glob(".out*"))  # no temporary directory left either


def test_expand_refused_on_bert(tiny_bert, tmp_path, capsys):
    code, _, err = run(capsys, "grow", tiny_bert, tmp_path / "o", "--layers", 4, "--depth-method", "expand")
    assert code == 2 and "post-norm" in err and str(tiny_bert) in err
    assert not (tmp_path / "o").exists()


def test_unsupported_family(tiny_llama, tmp_path, capsys):
    code, _, err = run(capsys, "grow", _unsupported(tiny_llama), tmp_path / "o", "--layers", 4, "--depth-method",
                       "stack")
    assert code == 2 and "mamba" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not has("hyperclone"), reason="hyperclone not registered")
def test_hyperclone_non_integer_multiplier(tiny_llama, tmp_path, capsys):
    code, _, err = run(capsys, "grow", tiny_llama, tmp_path / "o", "--width-method", "hyperclone", "--width-mult",
                       1.5, "--quiet")
    assert code == 2 and err.startswith("warmstart: error:")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not has("hyperclone"), reason="hyperclone not registered")
def test_width_then_depth_chain_is_exact_and_equals_two_passes(tiny_llama, tmp_path, capsys):
    add_tokenizer(tiny_llama)
    code, stdout, _ = run(capsys, "grow", tiny_llama, tmp_path / "one", "--width-method", "hyperclone",
                          "--width-mult", 2, "--layers", 4, "--depth-method", "expand", "--quiet", "--verify")
    assert code == 0
    assert "hyperclone(mult=2, seed=0) -> expand(layers=4)" in stdout
    assert "top-1 agreement: 100.00%" in stdout
    assert run(capsys, "grow", tiny_llama, tmp_path / "mid", "--width-method", "hyperclone", "--width-mult", 2,
               "--quiet")[0] == 0
    assert run(capsys, "grow", tmp_path / "mid", tmp_path / "two", "--layers", 4, "--depth-method", "expand",
               "--quiet")[0] == 0
    one, two = tensors(tmp_path / "one"), tensors(tmp_path / "two")
    assert set(one) == set(two) and all(torch.equal(one[k], two[k]) for k in one)
    from warmstart.verify import compare

    r = compare(tiny_llama, tmp_path / "one", text=TEXT)
    assert r.max_rel < 1e-4 and r.top1_agreement == 1.0 and r.tokens > 50


# -- verify -----------------------------------------------------------------------------

def test_verify_exact_and_not(tiny_llama, tmp_path, capsys):
    add_tokenizer(tiny_llama)
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    run(capsys, "grow", tiny_llama, tmp_path / "e", "--layers", 4, "--depth-method", "expand", "--quiet")
    run(capsys, "grow", tiny_llama, tmp_path / "s", "--layers", 4, "--depth-method", "stack", "--quiet")
    code, stdout, _ = run(capsys, "verify", tiny_llama, tmp_path / "e", "--text", text, "--expect-exact", "--json")
    assert code == 0
    r = json.loads(stdout[:stdout.rindex("}") + 1])
    assert r["max_rel"] < 1e-5 and r["top1_agreement"] == 1.0 and r["passed"]
    assert abs(r["loss_source"] - r["loss_grown"]) < 1e-4
    # loss checked against a direct computation with transformers
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_llama))
    # 128 tokens asked for, capped at the tiny model's 64 positions
    ids = tok(TEXT, return_tensors="pt", truncation=True, max_length=64)["input_ids"]
    m = transformers.LlamaForCausalLM.from_pretrained(str(tiny_llama))
    with torch.no_grad():
        loss = m(input_ids=ids, labels=ids).loss.item()
    assert r["loss_source"] == pytest.approx(loss, rel=1e-5) and r["tokens"] == ids.shape[1]
    code, stdout, _ = run(capsys, "verify", tiny_llama, tmp_path / "s", "--text", text, "--expect-exact")
    assert code == 1 and "verification failed" in stdout
    code, _, err = run(capsys, "verify", tiny_llama, tmp_path / "nothing")
    assert code == 2 and "nothing" in err
    code, _, err = run(capsys, "verify", tiny_llama, tmp_path / "e", "--text", tmp_path / "none.txt")
    assert code == 2 and "none.txt" in err


def test_verify_encoder_similarity(tiny_bert, tmp_path, capsys):
    """Encoders: hidden states and the sentence-similarity matrix; a stacked BERT is caught."""
    add_tokenizer(tiny_bert)
    from warmstart.verify import compare, reduce_copies

    run(capsys, "grow", tiny_bert, tmp_path / "s", "--layers", 4, "--depth-method", "stack", "--quiet")
    same = compare(tiny_bert, tiny_bert, text=TEXT)
    assert same.max_abs == 0 and same.similarity_max_diff < 1e-6 and same.passed() and same.sentences >= 3
    r = compare(tiny_bert, tmp_path / "s", text=TEXT)
    assert r.similarity_max_diff > 1e-3 and not r.passed()
    # copy layouts: averaging recovers the source under either layout
    h = torch.randn(5, 4)
    tiled, layout = reduce_copies(h, torch.cat([h, h, h], -1))
    assert layout == "tiled x3" and torch.allclose(tiled, h)
    inter, layout = reduce_copies(h, h.repeat_interleave(2, -1))
    assert layout == "interleaved x2" and torch.allclose(inter, h)
    assert reduce_copies(h, torch.randn(5, 6))[0] is None


@pytest.mark.skipif(not has("hyperclone"), reason="hyperclone not registered")
def test_verify_encoder_hyperclone(tiny_bert, tmp_path, capsys):
    add_tokenizer(tiny_bert)
    from warmstart.verify import compare

    assert run(capsys, "grow", tiny_bert, tmp_path / "w", "--width-method", "hyperclone", "--width-mult", 2,
               "--quiet")[0] == 0
    r = compare(tiny_bert, tmp_path / "w", text=TEXT)
    assert r.hidden_layout == "tiled x2" and r.max_rel < 1e-4 and r.similarity_max_diff < 1e-4 and r.passed()


# -- shrink ----------------------------------------------------------------------------

def test_shrink_layers(tmp_path, capsys):
    src = build_tiny("llama", tmp_path / "src", num_hidden_layers=5)
    code, stdout, _ = run(capsys, "shrink", src, tmp_path / "e", "--layers", 3, "--quiet")
    assert code == 0 and "evenly spaced" in stdout
    check_layer_map(src, tmp_path / "e", "llama", [0, 2, 4])
    code, _, _ = run(capsys, "shrink", src, tmp_path / "f", "--layers", 2, "--layer-method", "select", "--quiet")
    assert code == 0
    check_layer_map(src, tmp_path / "f", "llama", [0, 1])
    code, _, err = run(capsys, "shrink", src, tmp_path / "g", "--layers", 6, "--quiet")
    assert code == 2 and "fewer" in err and not (tmp_path / "g").exists()
    code, _, err = run(capsys, "shrink", src, tmp_path / "g", "--quiet")
    assert code == 2 and "nothing to do" in err


@pytest.mark.skipif(not has("select"), reason="width select not registered")
def test_shrink_width_and_depth(tmp_path, capsys):
    src = build_tiny("llama", tmp_path / "src", num_hidden_layers=3)
    code, stdout, _ = run(capsys, "shrink", src, tmp_path / "o", "--layers", 2, "--hidden", 16, "--heads", 2,
                          "--kv-heads", 1, "--intermediate", 32, "--quiet")
    assert code == 0, stdout
    m = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "o"))
    c = m.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size) == (2, 16, 2, 1, 32)
    with torch.no_grad():
        assert torch.isfinite(m(input_ids=torch.tensor([[1, 2, 3]])).logits).all()


# -- run RECIPE.yaml -------------------------------------------------------------------------

def test_run_recipe(tiny_llama, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_llama}\nout: grown\nsteps:\n  - op: stack\n    layers: 4\n"
                      "  - {op: expand, layers: 6}\n")
    code, stdout, _ = run(capsys, "run", recipe, "--quiet")
    assert code == 0 and "stack(layers=4) -> expand(layers=6)" in stdout
    # the same as planning the chain by hand: stack [0,1,0,1], then expand 4 -> 6 (groups of 2)
    check_layer_map(tiny_llama, tmp_path / "grown", "llama", [0, 1, 1, 0, 1, 1], zero_blocks={2, 5})
    code, _, err = run(capsys, "run", recipe, "--quiet")
    assert code == 2 and "already exists" in err


RECIPE_ERRORS = [
    ("steps:\n  - {op: stack, layers: four}\n", "steps[0].layers: Input should be a valid integer"),
    ("steps:\n  - {op: stack, layers: 4}\n  - {op: expand, layers: 7}\n", "steps[1].layers: expand inserts"),
    ("steps:\n  - {op: stack, layers: 4, times: 2}\n", "steps[0].times: stack has no parameter 'times' (accepted: layers)"),
    ("steps:\n  - {op: expand}\n", "steps[0].layers: required"),
    ("steps:\n  - {op: grow, layers: 4}\n", "steps[0].op: unknown method 'grow'"),
    ("steps:\n  - {layers: 4}\n", "steps[0].op: Field required"),
    ("steps: []\n", "steps: List should have at least 1 item"),
    ("steps:\n  - {op: layer_map, spec: '0-9'}\n", "steps[0].spec: layer map refers to layer 2"),
    ("steps: [\n", "not valid YAML"),
    ("steps:\n  - {op: stack, layers: 4}\nextra: 1\n", "extra: Extra inputs are not permitted"),
]


@pytest.mark.parametrize("body,message", RECIPE_ERRORS, ids=[str(i) for i in range(len(RECIPE_ERRORS))])
def test_run_recipe_errors(tiny_llama, tmp_path, capsys, body, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_llama}\nout: grown\n{body}")
    code, _, err = run(capsys, "run", recipe, "--quiet")
    assert code == 2 and message in err and str(recipe) in err, err
    assert not (tmp_path / "grown").exists()


def test_run_recipe_expand_on_bert(tiny_bert, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_bert}\nout: o\nsteps:\n  - {{op: expand, layers: 4}}\n")
    code, _, err = run(capsys, "run", recipe)
    assert code == 2 and "steps[0].layers: expand is refused for bert" in err
    assert not (tmp_path / "o").exists()


# -- optimizer state ----------------------------------------------------------------------------

def adamw_state(path, steps=2):
    """A real AdamW state of the tiny model after a few steps, as {name: state}."""
    model = transformers.LlamaForCausalLM.from_pretrained(str(path))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.tensor([[3, 9, 27, 81, 5, 15]])
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return {name: {k: v.clone() for k, v in opt.state[p].items()} for name, p in model.named_parameters()}


def test_optimizer_state_through_expand(tiny_llama, tmp_path, capsys):
    state = adamw_state(tiny_llama)
    torch.save(state, tmp_path / "opt.pt")
    code, stdout, _ = run(capsys, "grow", tiny_llama, tmp_path / "o", "--layers", 4, "--depth-method", "expand",
                          "--optimizer-state", tmp_path / "opt.pt", "--quiet")
    assert code == 0
    per_layer = len([n for n in state if n.startswith("model.layers.0.")])
    n_global = len(state) - 2 * per_layer
    assert f"moments of {n_global + 2 * per_layer} parameters copied, {2 * per_layer} new" in stdout
    carried = load_file(str(tmp_path / "o" / "optimizer_state.safetensors"))
    # expand 2 -> 4: blocks [0, 0*, 1, 1*]; new blocks (*) start from zero moments at step 0
    for name, s in state.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            if not name.startswith("model.layers."):
                assert torch.equal(carried[f"{name}.{key}"], s[key])
                continue
            i, rest = name[len("model.layers."):].split(".", 1)
            old, new = {"0": (0, 1), "1": (2, 3)}[i]
            assert torch.equal(carried[f"model.layers.{old}.{rest}.{key}"], s[key])
            assert torch.count_nonzero(carried[f"model.layers.{new}.{rest}.{key}"]) == 0
    assert len(carried) == 3 * (n_global + 4 * per_layer)
    # the carried state loads into AdamW for the grown model, and a step runs
    grown = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "o"))
    from warmstart.ops.optimizer_carry import read_output

    loaded = read_output(tmp_path / "o" / "optimizer_state.safetensors")
    opt = torch.optim.AdamW(grown.parameters(), lr=1e-3)
    params = dict(grown.named_parameters())
    assert set(loaded) == set(params)
    for name, p in params.items():
        opt.state[p] = loaded[name]
    ids = torch.tensor([[3, 9, 27, 81]])
    grown(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in grown.parameters())
    assert opt.state[params["model.layers.1.mlp.up_proj.weight"]]["step"].item() == 1  # fresh: 0 + 1
    assert opt.state[params["model.layers.0.mlp.up_proj.weight"]]["step"].item() == 3  # carried: 2 + 1


def test_optimizer_state_safetensors_through_recipe(tiny_llama, tmp_path, capsys):
    state = adamw_state(tiny_llama, steps=1)
    flat = {f"{n}.{k}": v.contiguous() for n, s in state.items() for k, v in s.items()}
    save_file(flat, str(tmp_path / "opt.safetensors"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_llama}\nout: o\noptimizer_state: opt.safetensors\n"
                      "steps:\n  - {op: dus, overlap: 0}\n  - {op: layer_map, spec: '3,2,1'}\n")
    code, stdout, _ = run(capsys, "run", recipe, "--quiet")
    assert code == 0 and "optimizer state carried over" in stdout
    carried = load_file(str(tmp_path / "o" / "optimizer_state.safetensors"))
    # dus overlap 0 on 2 layers: [0, 1, 0, 1]; then blocks 3, 2, 1 of that: [1, 0, 1]
    assert len([k for k in carried if k.endswith("q_proj.weight.step")]) == 3
    for j, i in enumerate([1, 0, 1]):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(carried[f"model.layers.{j}.self_attn.q_proj.weight.{key}"],
                               flat[f"model.layers.{i}.self_attn.q_proj.weight.{key}"])


def test_optimizer_state_bad_input(tiny_llama, tmp_path, capsys):
    model = transformers.LlamaForCausalLM.from_pretrained(str(tiny_llama))
    opt = torch.optim.AdamW(model.parameters())
    model(input_ids=torch.tensor([[1, 2]]), labels=torch.tensor([[1, 2]])).loss.backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "sd.pt")
    save_file({"model.norm.weight.exp_avg": torch.zeros(3), "model.norm.weight.exp_avg_sq": torch.zeros(3),
               "model.norm.weight.step": torch.zeros(())}, str(tmp_path / "shape.safetensors"))
    save_file({"nosuch.exp_avg": torch.zeros(3), "nosuch.exp_avg_sq": torch.zeros(3),
               "nosuch.step": torch.zeros(())}, str(tmp_path / "names.safetensors"))
    save_file({"model.norm.weight.momentum": torch.zeros(32)}, str(tmp_path / "keys.safetensors"))
    cases = [("sd.pt", "optimizer.state_dict()"), ("shape.safetensors", "has shape [3]"),
             ("names.safetensors", "names 'nosuch'"), ("keys.safetensors", "PARAM.exp_avg")]
    for file, message in cases:
        code, _, err = run(capsys, "grow", tiny_llama, tmp_path / "o", "--layers", 4, "--depth-method", "stack",
                           "--optimizer-state", tmp_path / file, "--quiet")
        assert code == 2 and message in err and file in err, err
        assert not (tmp_path / "o").exists()
    if has("hyperclone"):
        torch.save(adamw_state(tiny_llama, steps=1), tmp_path / "ok.pt")
        code, _, err = run(capsys, "grow", tiny_llama, tmp_path / "o", "--width-method", "hyperclone",
                           "--width-mult", 2, "--optimizer-state", tmp_path / "ok.pt", "--quiet")
        assert code == 2 and "changes the widths" in err
        assert not (tmp_path / "o").exists()
