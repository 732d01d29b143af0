"""A tiny recipe end to end through the CLI: outputs, FLOPs by hand, interruption and --resume, bad corpora."""

from __future__ import annotations

import json

import pytest
import yaml

from warmstart.cli import main

# Tiny Llamas: target hidden 16 x 2 layers; sources 16 x 1 (stacked to 2) and 16 x 2 (continued).
TARGET = {"hidden": 16, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 32, "seq_len": 16,
          "tie_embeddings": False}
SOURCE = {k: v for k, v in TARGET.items() if k != "seq_len"}  # sources train on the target's windows
STEPS, BATCH, SEQ = 12, 4, 16


def recipe(corpus) -> dict:
    return {
        "name": "tiny",
        "corpus": [str(corpus)],
        "tokenizer": {"vocab_size": 300},
        "heldout": 0.1,
        "model": TARGET,
        "train": {"steps": STEPS, "batch_size": BATCH, "lr": 1.0e-2, "eval_every": 4, "eval_batches": 2,
                  "checkpoint_every": 3, "schedule": "cosine(warmup=2, min_ratio=0.1)"},
        "sources": {
            "one": {"model": {**SOURCE, "layers": 1}, "steps": 8},
            "same": {"model": SOURCE, "steps": 8},
        },
        "arms": [
            {"name": "scratch"},
            {"name": "stacked", "source": "one", "grow": {"op": "stack", "layers": 2}},
            {"name": "cont", "source": "same", "schedule": "constant", "lr": 3.0e-3},
            {"name": "ckpt", "checkpoint": "ckpt", "checkpoint_flops": 1.0e9},
        ],
    }


@pytest.fixture
def setup(tmp_path, monkeypatch):
    from tests.conftest import bench_checkpoint, word_corpus

    monkeypatch.setenv("WARMSTART_CACHE", str(tmp_path / "cache"))
    corpus = word_corpus(tmp_path / "corpus")

    # An existing checkpoint of the target's shape and the recipe's vocabulary (300), relative to the recipe.
    bench_checkpoint(tmp_path / "ckpt")
    data = recipe(corpus)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return tmp_path, path


def n_flops(hidden, layers, heads, kv, inter, vocab):
    """6ND's N by hand: blocks, final norm and the untied head (the input embedding left out)."""
    hd = hidden // heads
    block = hidden * hidden * 2 + 2 * hidden * kv * hd + 3 * hidden * inter + 2 * hidden
    return layers * block + hidden + vocab * hidden


def test_tiny_recipe_interrupted_then_resumed(setup, monkeypatch, capsys):
    tmp, path = setup
    out = tmp / "out"
    import warmstart.bench.train as T

    real_train = T.train

    def interrupting(*args, **kw):
        if kw.get("desc", "").startswith("stacked"):
            def stop(row):
                if row["step"] == 7:
                    raise KeyboardInterrupt
            kw["on_step"] = stop
        return real_train(*args, **kw)

    monkeypatch.setattr(T, "train", interrupting)
    assert main(["bench", str(path), "--out", str(out), "--quiet"]) == 130
    partial = tmp / ".out.partial"
    assert partial.is_dir() and not out.exists()
    scratch_log = partial / "seed-0" / "arms" / "scratch" / "log.jsonl"
    stamp = scratch_log.stat().st_mtime_ns

    # Without --resume the interrupted run is neither clobbered nor ignored.
    monkeypatch.setattr(T, "train", real_train)
    capsys.readouterr()
    assert main(["bench", str(path), "--out", str(out), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err

    calls = []

    def spying(*args, **kw):
        result = real_train(*args, **kw)
        calls.append((kw["desc"], result.resumed_from))
        return result

    monkeypatch.setattr(T, "train", spying)
    assert main(["bench", str(path), "--out", str(out), "--quiet", "--resume"]) == 0
    assert not partial.exists() and out.is_dir()
    assert (out / "seed-0" / "arms" / "scratch" / "log.jsonl").stat().st_mtime_ns == stamp  # finished: untouched
    resumed = dict(calls)
    assert resumed["stacked s0"] == 6  # its last resume state (every 3 steps) before the stop at 7
    stacked = [json.loads(x) for x in (out / "seed-0" / "arms" / "stacked" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in stacked] == list(range(STEPS + 1))

    # Outputs.
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| stacked |" in report and "| cont |" in report and "Source `one`" in report
    res = json.loads((out / "results.json").read_text())
    seed = res["per_seed"][0]
    vocab = res["data"]["vocab_size"]
    assert vocab == 300
    tokens = STEPS * BATCH * SEQ
    n = n_flops(16, 2, 2, 1, 32, vocab)
    assert seed["arms"]["scratch"]["total_flops"] == pytest.approx(6 * n * tokens)
    assert seed["sources"]["one"]["flops"] == pytest.approx(6 * n_flops(16, 1, 2, 1, 32, vocab) * 8 * BATCH * SEQ)
    # The target is scratch's last eval loss, read back from its log.
    scratch_rows = [json.loads(x) for x in (out / "seed-0" / "arms" / "scratch" / "log.jsonl").read_text().splitlines()]
    assert seed["target"] == scratch_rows[-1]["eval_loss"]
    st = seed["arms"]["stacked"]
    if st["to_target"]["flops"] != "inf":
        ref = seed["reference_cost"]["flops"]
        assert st["fraction_with_source"]["flops"] == pytest.approx(
            (st["to_target"]["flops"] + seed["sources"]["one"]["flops"]) / ref)
    # The continued arm starts from the source's own final model: same first eval loss.
    assert seed["arms"]["cont"]["first_eval_loss"] == pytest.approx(seed["sources"]["same"]["final_eval_loss"],
                                                                     abs=1e-5)

    # The checkpoint arm: its stated cost is counted, its first eval is the checkpoint's own.
    ck = seed["arms"]["ckpt"]
    assert ck["kind"] == "continue" and ck["source_cost"]["flops"] == 1.0e9

    # An existing output is refused without --force.
    assert main(["bench", str(path), "--out", str(out), "--quiet"]) == 2


def test_missing_and_empty_corpus(setup, capsys):
    tmp, path = setup
    data = yaml.safe_load(path.read_text())
    data["corpus"] = [str(tmp / "no-such-file.txt")]
    bad = tmp / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["bench", str(bad), "--out", str(tmp / "o1"), "--quiet"]) == 2
    assert "corpus file does not exist" in capsys.readouterr().err
    (tmp / "blank.txt").write_text("\n \n")
    data["corpus"] = [str(tmp / "blank.txt")]
    bad.write_text(yaml.safe_dump(data))
    assert main(["bench", str(bad), "--out", str(tmp / "o2"), "--quiet"]) == 2
    assert "is empty" in capsys.readouterr().err
    assert not (tmp / "o1").exists() and not (tmp / "o2").exists()
    assert not list(tmp.glob(".o*"))


def test_resume_may_add_arms_and_sources_but_not_change_them(tmp_path):
    from warmstart.bench.run import _compatible, _merged
    from warmstart.errors import WarmstartError

    old = {"name": "a", "model": {"hidden": 8}, "sources": {"s": {"steps": 4}},
           "arms": [{"name": "scratch"}, {"name": "g", "source": "s"}]}
    more = {**old, "sources": {"s": {"steps": 4}, "t": {"steps": 2}},
            "arms": [{"name": "scratch"}, {"name": "h", "source": "t"}]}
    _compatible(old, more, tmp_path)  # new arm and source: fine
    stored = tmp_path / "recipe.json"
    stored.write_text(json.dumps(old))
    merged = _merged(stored, more)
    assert [a["name"] for a in merged["arms"]] == ["scratch", "h", "g"]  # trained arms stay on record
    assert set(merged["sources"]) == {"s", "t"}
    with pytest.raises(WarmstartError, match=r"arms\[1\] \(g\) differs"):
        _compatible(old, {**old, "arms": [{"name": "scratch"}, {"name": "g", "source": "s", "lr": 0.1}]}, tmp_path)
    with pytest.raises(WarmstartError, match="sources.s differs"):
        _compatible(old, {**old, "sources": {"s": {"steps": 5}}}, tmp_path)
    with pytest.raises(WarmstartError, match="model differ"):
        _compatible(old, {**old, "model": {"hidden": 16}}, tmp_path)


def test_checkpoint_with_another_vocabulary_is_refused(setup, capsys):
    tmp, path = setup
    from tests.conftest import build_tiny

    build_tiny("llama", tmp / "other", vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    data = yaml.safe_load(path.read_text())
    data["arms"] = [{"name": "scratch"}, {"name": "other", "checkpoint": str(tmp / "other")}]
    bad = tmp / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["bench", str(bad), "--out", str(tmp / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "arms[1].checkpoint: its vocabulary has 128 tokens, the recipe's tokenizer 300" in err
    assert not (tmp / "o").exists() and not (tmp / ".o.partial").exists()


def test_jobs_train_the_same_runs_side_by_side(setup, capsys):
    """--jobs 2 trains sources and arms in worker processes; every log equals the sequential run's."""
    import torch

    tmp, path = setup
    torch.set_num_threads(1)  # the workers use 1 thread each on a 2-core machine; compare like with like
    assert main(["bench", str(path), "--out", str(tmp / "seq"), "--quiet", "--no-cache", "--threads", "1"]) == 0
    assert main(["bench", str(path), "--out", str(tmp / "par"), "--quiet", "--no-cache", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "training 2 runs at a time" in out
    for arm in ("scratch", "stacked", "cont", "ckpt"):
        seq = [json.loads(line) for line in (tmp / "seq" / "seed-0" / "arms" / arm / "log.jsonl").read_text().splitlines()]
        par = [json.loads(line) for line in (tmp / "par" / "seed-0" / "arms" / arm / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in par] == [r["step"] for r in seq]
        for a, b in zip(seq, par):
            if "train_loss" in a:
                assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
            if "eval_loss" in a:
                assert b["eval_loss"] == pytest.approx(a["eval_loss"], abs=1e-5)
    seq_res = json.loads((tmp / "seq" / "results.json").read_text())["summary"]
    par_res = json.loads((tmp / "par" / "results.json").read_text())["summary"]
    assert par_res.keys() == seq_res.keys()


def test_jobs_must_be_positive(setup, capsys):
    tmp, path = setup
    assert main(["bench", str(path), "--out", str(tmp / "bad"), "--jobs", "0"]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err
    assert not (tmp / "bad").exists() and not (tmp / ".bad.partial").exists()


def test_report_says_why_there_is_no_best_arm(setup):
    """With no best warm arm, the report tells 'never reached' apart from 'started below the target'."""
    from warmstart.bench import recipe as R
    from warmstart.bench.report import markdown

    tmp, path = setup
    assert main(["bench", str(path), "--out", str(tmp / "out"), "--quiet", "--threads", "1"]) == 0
    results = json.loads((tmp / "out" / "results.json").read_text())
    recipe = R.load(path)
    results["best"]["arm"] = None
    warm = [a for a in results["summary"]["arms"].values() if a["kind"] != "scratch"]
    assert warm
    for a in warm:
        a["flags"] = [f for f in a["flags"] if f != "starts_below"]
    assert "No warm arm reaches the target within its budget." in markdown(recipe, results)
    for a in warm:
        a["flags"].append("starts_below")
    assert "Every warm arm starts at or below the target" in markdown(recipe, results)
