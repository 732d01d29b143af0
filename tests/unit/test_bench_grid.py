"""The learning-rate grid (every arm tuned the same way) and --set overrides of a recipe."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from warmstart.bench import recipe as R
from warmstart.cli import main

TARGET = {"hidden": 16, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 32, "seq_len": 16,
          "tie_embeddings": False}
GRID = [1.0e-3, 3.0e-2]
STEPS = 8


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """A corpus, an existing checkpoint of the target's shape, and a recipe with a 2-point grid and 1 seed."""
    from tests.conftest import bench_checkpoint, word_corpus

    monkeypatch.setenv("WARMSTART_CACHE", str(tmp_path / "cache"))
    corpus = word_corpus(tmp_path / "corpus")
    bench_checkpoint(tmp_path / "ckpt")
    data = {
        "name": "grid",
        "corpus": [str(corpus)],
        "tokenizer": {"vocab_size": 300},
        "heldout": 0.1,
        "model": TARGET,
        "train": {"steps": STEPS, "batch_size": 4, "eval_every": 4, "eval_batches": 2, "checkpoint_every": 4,
                  "schedule": "cosine(warmup=2, min_ratio=0.1)"},
        "lr_grid": GRID,
        "seeds": 1,
        "arms": [{"name": "scratch"}, {"name": "ckpt", "checkpoint": "ckpt", "checkpoint_flops": 1.0e9}],
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data))
    return tmp_path, path


def _log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _final(rows) -> float:
    return [r for r in rows if r.get("eval_loss") is not None][-1]["eval_loss"]


def test_grid_runs_every_rate_and_keeps_the_best_median(setup, capsys, monkeypatch, one_thread):
    tmp, path = setup
    out = tmp / "out"
    # --set raises the file's 1 seed to 2: the choice is then a median over seeds.
    assert main(["bench", str(path), "--out", str(out), "--quiet", "--threads", "1", "--set", "seeds=2"]) == 0, \
        capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["seeds"] == 2 and json.loads((out / "recipe.json").read_text())["seeds"] == 2
    assert res["overrides"] == ["seeds=2"]

    # Independently of the report: every (arm, lr, seed) run's log, its peak rate, and the median final loss.
    chosen = {}
    finals = {}
    for arm in ("scratch", "ckpt"):
        medians = {}
        for lr in GRID:
            per_seed = []
            for seed in range(2):
                rows = _log(out / f"seed-{seed}" / "arms" / f"{arm}@lr{lr:g}" / "log.jsonl")
                assert [r["step"] for r in rows] == list(range(STEPS + 1))
                lrs = [r["lr"] for r in rows if "lr" in r]
                assert max(lrs) == pytest.approx(lr, rel=1e-6)  # the run trained at this peak rate
                per_seed.append(_final(rows))
                finals[(arm, lr, seed)] = per_seed[-1]
            medians[lr] = statistics.median(per_seed)
        chosen[arm] = min(GRID, key=lambda x: medians[x])
        assert medians[GRID[0]] != medians[GRID[1]]  # the choice is not a tie broken by order
        grid = res["grid"][arm]
        assert grid["chosen"] == chosen[arm]
        assert grid["lrs"] == GRID
        for lr in GRID:
            assert grid["median_final_eval_loss"][f"{lr:g}"] == pytest.approx(medians[lr])

    # The target is scratch's final loss at scratch's best rate, seed by seed, and the median of those.
    best = chosen["scratch"]
    for seed, s in enumerate(res["per_seed"]):
        assert s["target"] == pytest.approx(finals[("scratch", best, seed)])
        for arm in ("scratch", "ckpt"):
            a = s["arms"][arm]
            assert a["lr"] == chosen[arm]
            assert a["log"] == f"seed-{seed}/arms/{arm}@lr{chosen[arm]:g}/log.jsonl"
            assert a["final_eval_loss"] == pytest.approx(finals[(arm, chosen[arm], seed)])
    assert res["summary"]["target"] == pytest.approx(statistics.median(
        [finals[("scratch", best, seed)] for seed in range(2)]))
    # Tokens to target of the warm arm are read off its chosen run's log, against that target.
    from warmstart.bench.metrics import cost_to_target

    for seed, s in enumerate(res["per_seed"]):
        rows = _log(out / f"seed-{seed}" / "arms" / f"ckpt@lr{chosen['ckpt']:g}" / "log.jsonl")
        want = cost_to_target(rows, s["target"], "tokens")
        got = s["arms"]["ckpt"]["to_target"]["tokens"]
        assert (got == "inf") if math.isinf(want) else got == pytest.approx(want)

    report = (out / "report.md").read_text()
    assert "## Learning-rate grid" in report and "Recipe grid of peak learning rates: 0.001, 0.03" in report
    row = next(line for line in report.splitlines() if line.startswith("| scratch |") and "chosen" not in line
               and line.count("|") == 5)
    assert row.endswith(f"| {chosen['scratch']:g} |")
    assert f"**{res['grid']['scratch']['median_final_eval_loss'][f'{best:g}']:.3f}**" in row
    assert f"peak lr {chosen['ckpt']:g} (the best of 0.001, 0.03)" in report
    assert "`--set seeds=2`" in report

    # Each (arm, lr, seed) run is kept like an arm: a resume that adds a rate trains only the new rate's runs.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("seed-*/arms/*/log.jsonl")}
    assert len(stamps) == 8
    import warmstart.bench.train as T

    trained = []
    real = T.train

    def spy(*args, **kw):
        if not (Path(kw["out_dir"]) / "result.json").exists():
            trained.append(kw["desc"])
        return real(*args, **kw)

    monkeypatch.setattr(T, "train", spy)
    assert main(["bench", str(path), "--out", str(out), "--quiet", "--threads", "1", "--resume",
                 "--set", "seeds=2", "--set", "lr_grid=[1e-3, 3e-2, 3e-3]"]) == 0, capsys.readouterr().err
    assert sorted(trained) == sorted(f"{arm}@lr0.003 s{seed}" for arm in ("scratch", "ckpt") for seed in range(2))
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert json.loads((out / "results.json").read_text())["grid"]["scratch"]["lrs"] == [1e-3, 3e-3, 3e-2]


def test_grid_with_jobs_trains_the_same_runs(setup, capsys, one_thread):
    """--jobs 2 trains each (arm, lr) run in a worker; the logs equal a sequential run's."""
    tmp, path = setup
    data = yaml.safe_load(path.read_text())  # plus a grown arm: its two rates share one grown start
    data["sources"] = {"one": {"model": {**{k: v for k, v in TARGET.items() if k != "seq_len"}, "layers": 1},
                               "steps": 4}}
    data["arms"].append({"name": "stacked", "source": "one", "grow": {"op": "stack", "layers": 2}})
    path.write_text(yaml.safe_dump(data))
    assert main(["bench", str(path), "--out", str(tmp / "seq"), "--quiet", "--no-cache", "--threads", "1"]) == 0
    assert main(["bench", str(path), "--out", str(tmp / "par"), "--quiet", "--no-cache", "--jobs", "2"]) == 0
    assert "training 2 runs at a time" in capsys.readouterr().out
    for arm in ("scratch", "ckpt", "stacked"):
        for lr in GRID:
            seq = _log(tmp / "seq" / "seed-0" / "arms" / f"{arm}@lr{lr:g}" / "log.jsonl")
            par = _log(tmp / "par" / "seed-0" / "arms" / f"{arm}@lr{lr:g}" / "log.jsonl")
            assert [r.get("eval_loss") for r in par] == pytest.approx([r.get("eval_loss") for r in seq], abs=1e-5)
    grids = [json.loads((tmp / d / "results.json").read_text())["grid"] for d in ("seq", "par")]
    assert {a: g["chosen"] for a, g in grids[0].items()} == {a: g["chosen"] for a, g in grids[1].items()}


def test_choose_takes_the_lowest_median_and_counts_divergence_as_worst():
    """grid.choose on hand-made logs: medians over seeds, NaN finals lose, ties go to the smaller rate."""
    from warmstart.bench import grid as G

    r = R.parse({"model": TARGET, "train": {"steps": 4, "batch_size": 4}, "lr_grid": [0.1, 0.01, 0.001],
                 "arms": [{"name": "scratch"}, {"name": "fixed", "lr": 0.5}, {"name": "own", "lrs": [0.2, 0.02]}]})
    assert [G.lrs_of(r, a) for a in r.arms] == [[0.001, 0.01, 0.1], None, [0.02, 0.2]]

    def rec(*losses):
        return {"rows": [{"step": i, "eval_loss": x} for i, x in enumerate(losses)]}

    seeds = [  # scratch: medians over 3 seeds 0.001 -> 5.0, 0.01 -> 4.0 (one seed's 9.0 is outvoted), 0.1 -> NaN
        {"scratch": {0.001: rec(9, 5.0), 0.01: rec(9, 4.0), 0.1: rec(9, math.nan)}, "fixed": {None: rec(9, 1)},
         "own": {0.02: rec(9, 3.0), 0.2: rec(9, 3.0)}},
        {"scratch": {0.001: rec(9, 5.1), 0.01: rec(9, 9.0), 0.1: rec(9, math.nan)}, "fixed": {None: rec(9, 1)},
         "own": {0.02: rec(9, 3.0), 0.2: rec(9, 3.0)}},
        {"scratch": {0.001: rec(9, 4.9), 0.01: rec(9, 3.9), 0.1: rec(9, 1.0)}, "fixed": {None: rec(9, 1)},
         "own": {0.02: rec(9, 3.0), 0.2: rec(9, 3.0)}},
    ]
    choice = G.choose(r, seeds)
    assert set(choice) == {"scratch", "own"}  # the arm with a fixed lr has no grid
    assert choice["scratch"]["chosen"] == 0.01
    assert choice["scratch"]["median"][0.001] == pytest.approx(5.0)
    assert math.isinf(choice["scratch"]["median"][0.1])  # two of three seeds diverged
    assert choice["own"]["chosen"] == 0.02  # a tie: the smaller rate
    runs = G.chosen_runs(r, seeds, choice)
    assert runs[1]["scratch"] is seeds[1]["scratch"][0.01] and runs[0]["fixed"] is seeds[0]["fixed"][None]
    lines = "\n".join(G.markdown_lines(r, G.to_json(choice), 3))
    assert "| scratch | 5.000 | **4.000** |  | diverged |  | 0.01 |" in lines
    assert "Not tuned (one learning rate each): `fixed`." in lines
    assert "unequal tuning effort" in lines and "`own`" in lines


def test_grid_fields_are_validated():
    base = {"model": TARGET, "train": {"steps": 4, "batch_size": 4}, "arms": [{"name": "scratch"}]}

    def error(**kw) -> str:
        d = json.loads(json.dumps(base))
        for k, v in kw.items():
            if k == "arm":
                d["arms"][0].update(v)
            else:
                d[k] = v
        with pytest.raises(R.RecipeError) as info:
            R.parse(d, "r.yaml")
        return info.value.line()

    assert error(lr_grid=[]).startswith("r.yaml: lr_grid: ")
    assert error(lr_grid=[1e-3, 0.0]).startswith("r.yaml: lr_grid[1]: ")
    assert error(lr_grid=[1e-3, 1e-3]) == "r.yaml: lr_grid: lr_grid lists a learning rate twice: [0.001, 0.001]"
    assert error(arm={"lr": 1e-3, "lrs": [1e-3]}) == \
        "r.yaml: arms[0]: give lr (one peak learning rate) or lrs (a grid), not both"
    assert R.parse({**base, "lr_grid": [3e-3, 1e-3]}).lr_grid == [1e-3, 3e-3]  # kept smallest first


def test_set_changes_the_recipe(setup):
    _, path = setup
    r = R.load(path, ["seeds=3", "train.tokens=256", "arms.ckpt.lr=2e-3", "arms.*.tokens=128",
                      "lr_grid=[1e-3, 1e-2]", "arms.0.lrs=[5e-4]", "arms.ckpt.checkpoint_flops=null"])
    assert r.seeds == 3
    assert r.train.tokens == 256 and r.train.steps is None  # tokens replaced the file's steps
    assert r.arm("ckpt").lr == 2e-3 and r.arm("ckpt").checkpoint_flops is None
    assert [a.tokens for a in r.arms] == [128, 128]
    assert r.lr_grid == [1e-3, 1e-2] and r.arm("scratch").lrs == [5e-4]
    # The file is untouched, and the Python API's mapping form does the same.
    assert R.load(path).seeds == 1
    r = R.load(path, {"seeds": 4, "arms.scratch.lrs": [1e-3]})
    assert r.seeds == 4 and r.arm("scratch").lrs == [1e-3] and r._overrides == ("seeds=4", "arms.scratch.lrs=[0.001]")
    assert [a.name for a in R.load(path, ["arms.ckpt=null"]).arms] == ["scratch"]  # an arm left out


@pytest.mark.parametrize("flag, message", [
    ("seeds=0", "--set seeds=0: seeds: Input should be greater than 0"),
    ("seeds", "--set seeds: give KEY=VALUE"),
    ("train.tokenz=4096", "--set train.tokenz=4096: train.tokenz: unknown field"),
    ("arms.scratc.lr=1e-3", "--set arms.scratc.lr=1e-3: no entry of arms named 'scratc' (arms: scratch, ckpt)"),
    ("arms.ckpt.lr=-1", "--set arms.ckpt.lr=-1: arms[1].lr: Input should be greater than 0"),
    ("train.tokens=8", "--set train.tokens=8: train.tokens: 8 tokens is smaller than one batch"),
    ("arms.*.distill.alpha=0.5", "--set arms.*.distill.alpha=0.5: no entry has distill, so it sets nothing"),
    ("model.hidden.x=1", "--set model.hidden.x=1: model.hidden is the value 16, not a mapping of fields"),
    ("lr_grid=[1e-3", "--set lr_grid=[1e-3: the value is not valid YAML"),
    ("arms.scratch=null", "with --set seeds=2 --set arms.scratch=null: target.arm: no arm named 'scratch'"),
])
def test_bad_set_is_one_line_exit_2_nothing_written(setup, capsys, flag, message):
    tmp, path = setup
    out = tmp / "out"
    assert main(["bench", str(path), "--out", str(out), "--quiet", "--set", "seeds=2", "--set", flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and not (tmp / ".out.partial").exists()


def test_report_describes_pruned_and_distilled_arms_and_the_kept_rate():
    from warmstart.bench.report import describe_arm

    r = R.parse({"model": TARGET, "train": {"steps": 4, "batch_size": 4, "schedule": "constant"},
                 "lr_grid": [1e-3, 1e-2],
                 "arms": [{"name": "scratch"}, {"name": "p", "checkpoint": "ck", "prune": {"importance": "magnitude"},
                                                "distill": {"top_k": 8, "alpha": 0.2}}]})
    text = describe_arm(r, r.arms[1], 1e-2)["text"]
    assert text == ("pruned from checkpoint `ck` to the target shape (magnitude importance, blocks by "
                    "block-influence); 4 steps at peak lr 0.01 (the best of 0.001, 0.01), schedule "
                    "`constant`, distilled from `ck` (alpha 0.2, T 1, top-8 cached)")


def test_jobs_phases_keep_shared_starts_apart():
    """--jobs: the run that writes a pruned or grown start, or a teacher cache, runs before those reading it."""
    from warmstart.bench.run import run_phases

    r = R.parse({"model": TARGET, "train": {"steps": 4, "batch_size": 4}, "lr_grid": [1e-3, 1e-2],
                 "sources": {"s": {"model": {**{k: v for k, v in TARGET.items() if k != "seq_len"}, "layers": 1},
                                   "steps": 2}},
                 "arms": [{"name": "scratch"},
                          {"name": "p", "checkpoint": "ck", "prune": {}},
                          {"name": "g", "source": "s", "grow": {"op": "stack", "layers": 2}},
                          {"name": "kd", "distill": {"teacher": "t"}},
                          {"name": "pkd", "checkpoint": "t", "prune": {}, "distill": {}}]})
    runs = [("arm", i, seed, lr) for seed in range(2) for i in range(5) for lr in (1e-3, 1e-2)]
    phases = [[(r.arms[i].name, seed, lr) for _, i, seed, lr in p] for p in run_phases(r, runs)]
    assert phases == [
        # every scratch run; the first run of p (prunes), of g per seed (grows), of kd (caches the teacher)
        [("scratch", 0, 1e-3), ("scratch", 0, 1e-2), ("p", 0, 1e-3), ("g", 0, 1e-3), ("kd", 0, 1e-3),
         ("scratch", 1, 1e-3), ("scratch", 1, 1e-2), ("g", 1, 1e-3)],
        # the runs reading those; pkd's first run reads kd's teacher cache and prunes its own start
        [("p", 0, 1e-2), ("g", 0, 1e-2), ("kd", 0, 1e-2), ("pkd", 0, 1e-3),
         ("p", 1, 1e-3), ("p", 1, 1e-2), ("g", 1, 1e-2), ("kd", 1, 1e-3), ("kd", 1, 1e-2)],
        [("pkd", 0, 1e-2), ("pkd", 1, 1e-3), ("pkd", 1, 1e-2)],
    ]
