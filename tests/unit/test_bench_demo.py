"""The demo's embedded recipe: valid, the same as recipes/demo.yaml, honest in its shapes."""

from __future__ import annotations

from pathlib import Path

import yaml

from warmstart.bench import recipe as R
from warmstart.bench.demo import demo_recipe
from warmstart.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_demo_recipe_matches_the_shipped_yaml():
    assert yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text()) == demo_recipe()


def test_demo_recipe_is_valid_and_compares_like_with_like():
    r = R.parse(demo_recipe())
    scratch, grown = r.arms
    assert scratch.kind == "scratch" and grown.kind == "grow"
    # The same budget for both arms; each has its best peak and schedule from the same grid, and
    # scratch's is the recipe's default (a full cosine at 3e-3), not something weakened.
    for field in ("steps", "tokens", "lr", "schedule"):
        assert getattr(scratch, field) is None
    assert grown.steps is None and grown.tokens is None
    assert r.train.lr == 3.0e-3 and r.train.schedule.startswith("cosine(")
    assert grown.lr == r.train.lr / 2
    # The grown model has the target's exact shape (checked by the recipe's dry run of the chain).
    R.check_arm_shape(r, 1)


def test_demo_scales_with_flags():
    d = demo_recipe(steps=1000, source_steps=300)
    assert d["train"]["steps"] == 1000 and d["sources"]["small"]["steps"] == 300
    assert d["train"]["schedule"] == "cosine(warmup=50, min_ratio=0.1)"
    assert d["sources"]["small"]["schedule"] == "cosine(warmup=15, min_ratio=0.1)"
    # The warm arm's decay ends at 56.25% of its steps: 562 of 1000 (50 of warmup, then 512).
    assert d["arms"][1]["schedule"] == "warmup:linear:50 > decay:cosine:512:0.1"
    assert demo_recipe()["arms"][1]["schedule"] == "warmup:linear:40 > decay:cosine:410:0.1"


def test_demo_bad_flags_exit_2(capsys):
    assert main(["demo", "--steps", "0", "--skip-inspect"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
