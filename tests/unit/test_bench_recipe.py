"""Bench recipes: validation with field paths, budgets, CLI exit codes for bad recipes."""

from __future__ import annotations

import copy

import pytest
import yaml

from warmstart.bench import recipe as R
from warmstart.cli import main

BASE = {
    "model": {"hidden": 64, "layers": 6, "heads": 4, "kv_heads": 2, "intermediate": 128, "seq_len": 32},
    "train": {"steps": 20, "batch_size": 4},
    "sources": {"small": {"model": {"hidden": 64, "layers": 3, "heads": 4, "kv_heads": 2, "intermediate": 128},
                          "steps": 10},
                "six": {"model": {"hidden": 64, "layers": 6, "heads": 4, "kv_heads": 2, "intermediate": 128},
                        "steps": 10}},
    "arms": [{"name": "scratch"}, {"name": "stacked", "source": "small", "grow": {"op": "stack", "layers": 6}}],
}


def parse(mod=None):
    d = copy.deepcopy(BASE)
    if mod:
        mod(d)
    return R.parse(d, "r.yaml")


def error(mod) -> str:
    with pytest.raises(R.RecipeError) as info:
        parse(mod)
    return info.value.line()


def test_valid_recipe_and_kinds():
    r = parse(lambda d: d["arms"].append({"name": "cont", "source": "six"}))
    assert [a.kind for a in r.arms] == ["scratch", "grow", "continue"]
    assert r.steps == 20 and r.tokens_per_step == 4 * 32


def test_tokens_become_whole_steps():
    r = parse(lambda d: d["train"].update(steps=None, tokens=1000))
    assert r.steps == 1000 // (4 * 32) == 7


def test_budget_smaller_than_one_batch():
    msg = error(lambda d: d["train"].update(steps=None, tokens=100))
    assert msg == "r.yaml: train.tokens: 100 tokens is smaller than one batch (4 x 32 = 128 tokens)"
    msg = error(lambda d: d["arms"][1].update(tokens=5))
    assert msg.startswith("r.yaml: arms[1].tokens: 5 tokens is smaller than one batch")


def test_grow_parameter_error_names_the_field():
    # The example: a stack over a 6-layer source to a depth that is not a multiple of 6.
    def mod(d):
        d["model"]["layers"] = 12
        d["arms"][1]["grow"]["layers"] = 12
        d["arms"].append({"name": "bad", "source": "six", "grow": {"op": "stack", "layers": 8}})
    msg = error(mod)
    assert msg.startswith("r.yaml: arms[2].grow.layers: ")
    assert "multiple of 6" in msg


def test_grow_list_paths_and_unknowns():
    def unknown_op(d):
        d["arms"][1]["grow"] = [{"op": "stack", "layers": 6}, {"op": "stak", "layers": 6}]
    assert error(unknown_op).startswith("r.yaml: arms[1].grow[1].op: unknown")

    def unknown_param(d):
        d["arms"][1]["grow"] = [{"op": "stack", "layerz": 6}]
    assert error(unknown_param) == "r.yaml: arms[1].grow[0].layerz: stack has no parameter 'layerz' (accepted: layers)"

    def no_op(d):
        d["arms"][1]["grow"] = {"layers": 6}
    assert error(no_op).startswith("r.yaml: arms[1].grow.op: ")


def test_grown_shape_must_be_the_target():
    def mod(d):
        d["arms"][1]["grow"] = {"op": "stack", "layers": 9}
    msg = error(mod)
    assert msg == "r.yaml: arms[1].grow: its grow chain makes layers 9 (target 6)"
    msg = error(lambda d: d["arms"].append({"name": "c", "source": "small"}))
    assert msg == "r.yaml: arms[2].source: without grow, the source has layers 3 (target 6)"


def test_pydantic_errors_carry_paths():
    assert error(lambda d: d["sources"]["small"]["model"].update(hidden=0)).startswith(
        "r.yaml: sources.small.model.hidden: ")
    assert error(lambda d: d["arms"][1].update(colour="red")) == "r.yaml: arms[1].colour: unknown field"
    assert error(lambda d: d.pop("model")) == "r.yaml: model: required field is missing"
    assert error(lambda d: d["arms"][0].update(name="a b")).startswith("r.yaml: arms[0].name: ")
    assert "not divisible by heads" in error(lambda d: d["model"].update(heads=5))


def test_cross_field_errors():
    assert error(lambda d: d["arms"][1].update(source="smal")) == \
        "r.yaml: arms[1].source: unknown source 'smal' (sources: small, six)"
    assert error(lambda d: d["arms"].append({"name": "scratch"})) == \
        "r.yaml: arms[2].name: 'scratch' is used by arms[0] too"
    assert error(lambda d: d["arms"].pop(0)) == "r.yaml: target.arm: no arm named 'scratch' (arms: stacked)"
    assert "give exactly one of steps and tokens" in error(lambda d: d["train"].update(tokens=1000))


def test_cli_bad_recipe_exit_2_and_nothing_written(tmp_path, capsys):
    d = copy.deepcopy(BASE)
    d["arms"][1]["grow"] = {"op": "stack", "layers": 5}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d))
    out = tmp_path / "out"
    assert main(["bench", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warmstart: error: {path}: arms[1].grow.layers: ")
    assert list(tmp_path.iterdir()) == [path]


def test_cli_not_yaml(tmp_path, capsys):
    path = tmp_path / "x.yaml"
    path.write_text("model: [unclosed\n")
    assert main(["bench", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read recipe" in capsys.readouterr().err
