"""Depth operators on tiny models: layer maps, byte copies, exactness of expand, chains."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers
from safetensors import safe_open

from tests.conftest import build_tiny
from warmstart.arch import open_model
from warmstart.errors import ParamError
from warmstart.ops import registry
from warmstart.ops.depth import drop_map, expand_map, interleave_map, parse_layer_map
from warmstart.plan import execute

CLASSES = {"llama": transformers.LlamaForCausalLM, "gpt2": transformers.GPT2LMHeadModel,
           "bert": transformers.BertModel}
BLOCKS = {"llama": "model.layers.", "gpt2": "transformer.h.", "bert": "encoder.layer."}


def tensors(path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                out[k] = h.get_tensor(k)
    return out


def split(name: str, family: str) -> tuple[int | None, str]:
    head = BLOCKS[family]
    if not name.startswith(head):
        return None, name
    idx, rest = name[len(head):].split(".", 1)
    return int(idx), rest


def check_layer_map(src, out, family: str, layer_map: list[int], zero_blocks=()) -> None:
    """Every output tensor is the source tensor the map names (zeros for residual outputs of new blocks)."""
    a, b = tensors(src), tensors(out)
    by_block: dict[tuple[int, str], torch.Tensor] = {}
    for name, t in a.items():
        i, rest = split(name, family)
        if i is not None:
            by_block[(i, rest)] = t
    expected_names = {n for n in a if split(n, family)[0] is None}
    rests = {rest for (_, rest) in by_block}
    expected_names |= {f"{BLOCKS[family]}{j}.{rest}" for j in range(len(layer_map)) for rest in rests}
    assert set(b) == expected_names
    for name, t in b.items():
        j, rest = split(name, family)
        if j is None:
            assert torch.equal(t, a[name]), name
            continue
        want = by_block[(layer_map[j], rest)]
        zeroed = j in zero_blocks and any(k in rest for k in ("o_proj", "down_proj", "attn.c_proj", "mlp.c_proj"))
        if zeroed:
            assert torch.count_nonzero(t) == 0 and t.shape == want.shape, name
        else:
            assert torch.equal(t, want), name


# -- layer maps, checked against hand computation ---------------------------------------

def test_interleave_map_by_hand():
    # round(i * 2 / 3): 0, 0.67 -> 1, 1.33 -> 1
    assert interleave_map(2, 3) == [0, 1, 1]
    # round(i * 3 / 4): 0, 0.75, 1.5, 2.25 -> 0, 1, 2, 2 (halves round up)
    assert interleave_map(3, 4) == [0, 1, 2, 2]
    m = interleave_map(30, 40)
    assert len(m) == 40 and m == sorted(m) and set(m) == set(range(30))


def test_expand_map_by_hand():
    # 6 -> 8: groups of 3, a copy of block 2 after block 2 and of block 5 after block 5
    assert expand_map(6, 8) == ([0, 1, 2, 2, 3, 4, 5, 5], {3, 7})
    m, new = expand_map(30, 40)
    assert len(m) == 40 and len(new) == 10 and all(m[j] == m[j - 1] for j in new)


def test_drop_map_by_hand():
    assert drop_map(10, 4, "even") == [0, 3, 6, 9]
    # 29 * i / 3 = 0, 9.67, 19.33, 29 -> 0, 10, 19, 29
    assert drop_map(30, 4, "even") == [0, 10, 19, 29]
    assert drop_map(10, 3, "first") == [0, 1, 2]
    assert drop_map(5, 1, "even") == [0]


def test_parse_layer_map():
    assert parse_layer_map("0-2, 1 ,3-1", 4) == [0, 1, 2, 1, 3, 2, 1]
    assert parse_layer_map([1, 0], 2) == [1, 0]
    for bad in ("0-2,,1", "a", "1-", "-1", "0.5", ""):
        with pytest.raises(ParamError, match="malformed"):
            parse_layer_map(bad, 4)
    with pytest.raises(ParamError, match="layer 4"):
        parse_layer_map("0-4", 4)
    with pytest.raises(ParamError, match="empty"):
        parse_layer_map([], 4)


# -- operators on every family ---------------------------------------------------------

CASES = [
    ("stack", {"layers": 6}, [0, 1, 2, 0, 1, 2, 0, 1, 2][:6], ()),
    ("interleave", {"layers": 5}, [0, 1, 1, 2, 2], ()),  # round(i*3/5): 0, .6, 1.2, 1.8, 2.4
    ("dus", {"overlap": 1}, [0, 1, 1, 2], ()),
    ("dus", {"layers": 4}, [0, 1, 1, 2], ()),
    ("layer_map", {"spec": "2,0-1,1"}, [2, 0, 1, 1], ()),
    ("drop", {"layers": 2}, [0, 2], ()),
    ("drop", {"layers": 2, "keep": "first"}, [0, 1], ()),
]


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("op,params,layer_map,zero", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_remap_ops(family, op, params, layer_map, zero, tmp_path):
    src = build_tiny(family, tmp_path / "src", **{("n_layer" if family == "gpt2" else "num_hidden_layers"): 3})
    model = open_model(src)
    t = registry.apply(model, op, **params)
    assert t.maps["layers"] == layer_map
    # layer maps never compute: every step is an identity copy, so the writer moves bytes
    assert all(s.is_copy for s in t.plan.steps)
    report = execute(t.plan, tmp_path / "out", config=t.config)
    assert report.computed_bytes == 0 and report.copied_bytes == report.total_bytes
    check_layer_map(src, tmp_path / "out", family, layer_map)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    key = "n_layer" if family == "gpt2" else "num_hidden_layers"
    assert cfg[key] == len(layer_map)
    loaded = CLASSES[family].from_pretrained(str(tmp_path / "out"))
    assert loaded.config.num_hidden_layers == len(layer_map)
    with torch.no_grad():
        out = loaded(input_ids=torch.tensor([[1, 2, 3, 4]]))
    assert torch.isfinite(out[0]).all()


def _logits(path, family, ids):
    m = CLASSES[family].from_pretrained(str(path)).eval()
    with torch.no_grad():
        return m(input_ids=ids)[0]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_expand_is_exact_and_matches_a_second_implementation(family, tmp_path):
    src = build_tiny(family, tmp_path / "src", num_hidden_layers=4) if family == "llama" else \
        build_tiny(family, tmp_path / "src", n_layer=4)
    t = registry.apply(open_model(src), "expand", layers=6)
    assert t.exact is True
    report = execute(t.plan, tmp_path / "out", config=t.config)
    layer_map, new = expand_map(4, 6)
    assert layer_map == [0, 1, 1, 2, 3, 3] and new == {2, 5}
    check_layer_map(src, tmp_path / "out", family, layer_map, zero_blocks=new)
    assert 0 < report.computed_bytes < report.total_bytes  # only the zeros are computed

    # Second implementation: grow the module list of the transformers model by hand.
    ref = CLASSES[family].from_pretrained(str(src)).eval()
    blocks = ref.model.layers if family == "llama" else ref.transformer.h
    grown = []
    for i, blk in enumerate(blocks):
        grown.append(blk)
        if i % 2 == 1:
            extra = copy.deepcopy(blk)
            with torch.no_grad():
                if family == "llama":
                    extra.self_attn.o_proj.weight.zero_()
                    extra.mlp.down_proj.weight.zero_()
                else:
                    for lin in (extra.attn.c_proj, extra.mlp.c_proj):
                        lin.weight.zero_()
                        lin.bias.zero_()
            grown.append(extra)
    ids = torch.tensor([[5, 17, 3, 99, 42, 7, 1, 64]])
    with torch.no_grad():
        before = ref(input_ids=ids)[0]
    if family == "llama":
        for i, blk in enumerate(grown):
            blk.self_attn.layer_idx = i
        ref.model.layers = torch.nn.ModuleList(grown)
        ref.config.num_hidden_layers = 6
    else:
        ref.transformer.h = torch.nn.ModuleList(grown)
        ref.config.n_layer = 6
    theirs = {k: v for k, v in ref.state_dict().items() if k != "lm_head.weight"}  # tied: not stored
    ours = tensors(tmp_path / "out")
    assert set(theirs) == set(ours)
    for k, v in theirs.items():
        assert torch.equal(ours[k], v), k
    after = _logits(tmp_path / "out", family, ids)
    rel = (after - before).abs().max() / before.abs().max()
    assert rel < 1e-5
    # and stacking is not function-preserving: the same comparison can fail
    s = registry.apply(open_model(src), "stack", layers=8)
    execute(s.plan, tmp_path / "stacked", config=s.config)
    stacked = _logits(tmp_path / "stacked", family, ids)
    assert (stacked - before).abs().max() / before.abs().max() > 1e-3


def test_expand_refuses_post_norm(tiny_bert):
    with pytest.raises(ParamError, match="post-norm"):
        registry.apply(open_model(tiny_bert), "expand", layers=3)


@pytest.mark.parametrize("op,params,match", [
    ("stack", {"layers": 5}, "multiple of 2"),
    ("stack", {"layers": 2}, "must exceed"),
    ("interleave", {"layers": 1}, "must exceed"),
    ("expand", {"layers": 5}, "does not divide"),  # 2 -> 5 adds 3
    ("dus", {"overlap": 2}, "too large"),
    ("dus", {"layers": 3}, "even"),
    ("dus", {"layers": 4, "overlap": 1}, "gives 2 \\* \\(2 - 1\\) = 2"),
    ("dus", {}, "needs"),
    ("layer_map", {"spec": "0-2"}, "layer 2"),
    ("layer_map", {"spec": "0,1", "layers": 3}, "2 entries"),
    ("drop", {"layers": 2}, "fewer"),
    ("drop", {"layers": 1, "keep": "last"}, "'even'"),
    ("stack", {"layers": "4"}, "whole number"),
])
def test_bad_parameters(tiny_llama, op, params, match):
    with pytest.raises(ParamError, match=match):
        registry.apply(open_model(tiny_llama), op, **params)


def test_chain_equals_two_passes(tiny_llama, tmp_path):
    """stack then expand in one streaming pass == writing the stack, then expanding it."""
    model = open_model(tiny_llama)
    chained = registry.chain(model, [("stack", {"layers": 4}), ("expand", {"layers": 6})])
    execute(chained.plan, tmp_path / "one", config=chained.config)
    s = registry.apply(model, "stack", layers=4)
    execute(s.plan, tmp_path / "mid", config=s.config)
    e = registry.apply(open_model(tmp_path / "mid"), "expand", layers=6)
    execute(e.plan, tmp_path / "two", config=e.config)
    one, two = tensors(tmp_path / "one"), tensors(tmp_path / "two")
    assert set(one) == set(two)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert chained.exact is False  # stack is not exact, so the chain is not either
    assert chained.config == e.config


def test_per_layer_config_follows_the_map(tmp_path):
    src = build_tiny("llama", tmp_path / "src", num_hidden_layers=3)
    cfg = json.loads((src / "config.json").read_text())
    cfg["layer_types"] = ["full_attention", "sliding_attention", "full_attention"]
    (src / "config.json").write_text(json.dumps(cfg))
    t = registry.apply(open_model(src), "layer_map", spec="1,1,0,2")
    assert t.config["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention", "full_attention"]
    assert t.config["num_hidden_layers"] == 4
