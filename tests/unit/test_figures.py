"""Figures fit for a paper: the format follows the extension, the options reach the figure, and the bench's
figure and report say the target, where each arm reaches it, each arm's speedups and what each arm ran."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from warmstart.bench import recipe as R
from warmstart.bench import report
from warmstart.cli import main
from warmstart.schedules import plot as P

SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(path) -> list[str]:
    """Every text element of an SVG, its tspans joined (a log axis's "10^-3" reads "10−3")."""
    root = ET.parse(path).getroot()
    return ["".join(s.strip() for s in t.itertext()) for t in root.iter(f"{SVG}text")]


def power_of_ten_ticks(path) -> list[str]:
    """Tick labels drawn as 10 with a smaller superscript exponent: what a log axis writes."""
    root = ET.parse(path).getroot()
    out = []
    for t in root.iter(f"{SVG}text"):
        spans = list(t.iter(f"{SVG}tspan"))
        if len(spans) < 3 or [s.text for s in spans[:2]] != ["1", "0"]:
            continue
        size = [float(re.search(r"font-size: ([\d.]+)px", s.get("style")).group(1)) for s in spans]
        if all(x < size[0] for x in size[2:]):
            out.append("".join(s.text for s in spans))
    return out


@pytest.fixture
def captured(monkeypatch):
    """The matplotlib figures handed to save_figure, still open: what the options did to the axes."""
    figs = []
    real = P.save_figure

    def keep(fig, out, *a, **kw):
        figs.append(fig)
        real(fig, out, *a, **kw)

    monkeypatch.setattr(P, "save_figure", keep)
    monkeypatch.setattr(report, "save_figure", keep)
    import warmstart.schedules.loss_law as LL

    monkeypatch.setattr(LL, "save_figure", keep)
    return figs


SPECS = ["peak=3e-4; warmup:linear:100 > decay:cosine:900", "peak=3e-4; wsd(1000, warmup=100)"]


def test_schedule_plot_options_reach_the_svg(tmp_path, captured):
    out = tmp_path / "lr.svg"
    assert main(["schedule", "plot", *SPECS, "--out", str(out), "--title", "Two schedules, log scale",
                 "--label", "cosine", "--label", "WSD", "--xlabel", "update", "--ylabel", "lr (log)",
                 "--log-y", "--log-x"]) == 0
    texts = svg_texts(out)
    for want in ("Two schedules, log scale", "cosine", "WSD", "update", "lr (log)"):
        assert want in texts
    assert not any("warmup:linear" in t for t in texts)  # the labels replaced the specs in the legend
    assert len(power_of_ten_ticks(out)) >= 4  # both axes carry powers of ten
    ax = captured[-1].axes[0]
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log" and ax.get_xlim()[0] == pytest.approx(1)
    # Without the options: linear axes, the default title, the specs as legend entries.
    plain = tmp_path / "plain.svg"
    assert main(["schedule", "plot", *SPECS, "--out", str(plain)]) == 0
    texts = svg_texts(plain)
    assert "learning-rate schedules" in texts and SPECS[0] in texts and not power_of_ten_ticks(plain)


def test_formats_follow_the_extension(tmp_path):
    for ext, magic in (("pdf", b"%PDF"), ("png", b"\x89PNG"), ("svg", b"<?xml")):
        out = tmp_path / f"lr.{ext}"
        assert main(["schedule", "plot", SPECS[0], "--out", str(out)]) == 0
        assert out.read_bytes().startswith(magic)
    # Vector files carry no date: the same figure twice gives the same bytes.
    again = tmp_path / "again.svg"
    assert main(["schedule", "plot", SPECS[0], "--out", str(again)]) == 0
    assert again.read_bytes() == (tmp_path / "lr.svg").read_bytes()


def test_schedule_plot_label_count_is_checked(tmp_path, capsys):
    out = tmp_path / "lr.svg"
    assert main(["schedule", "plot", *SPECS, "--out", str(out), "--label", "only one"]) == 2
    assert "--label" in capsys.readouterr().err and not out.exists()


def test_predict_figure_options(tmp_path, captured):
    from warmstart.schedules.spec import resolve

    fit = "peak=1e-3; cosine(200, warmup=10, min_ratio=0.1)"
    sched = resolve(fit)
    log = tmp_path / "log.jsonl"
    with log.open("w") as f:
        for step in range(0, 201, 5):
            lr = sched.lr(step)
            f.write(json.dumps({"step": step, "lr": lr, "eval_loss": 3.0 + 4.0 / (1 + 0.05 * step)}) + "\n")
    out = tmp_path / "pred.pdf"
    assert main(["predict", str(log), "--fit-schedule", fit, "--schedule", "peak=1e-3; wsd(200, warmup=10)",
                 "--out", str(out), "--title", "Cosine fit, WSD predicted", "--ylabel", "held-out loss",
                 "--xlabel", "optimizer step", "--label", "WSD", "--log-y", "--log-x"]) == 0
    assert out.read_bytes()[:4] == b"%PDF"
    ax, ax_lr = captured[-1].axes
    assert ax.get_title() == "Cosine fit, WSD predicted" and ax.get_ylabel() == "held-out loss"
    assert ax_lr.get_xlabel() == "optimizer step"
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log" and ax_lr.get_yscale() == "linear"
    assert any(t.get_text().startswith("WSD, final") for t in ax.get_legend().get_texts())


# --- the bench's report and figure, from results built by hand (no training)

TARGET = {"hidden": 16, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 32, "seq_len": 16,
          "tie_embeddings": False}
SOURCE = {k: v for k, v in TARGET.items() if k != "seq_len"}
STEPS, TOKENS_PER_STEP = 12, 64


def tiny_recipe():
    return R.parse({
        "name": "tiny", "corpus": ["corpus"], "tokenizer": {"vocab_size": 300}, "model": TARGET,
        "train": {"steps": STEPS, "batch_size": 4, "lr": 1.0e-2, "eval_every": 4,
                  "schedule": "cosine(warmup=2, min_ratio=0.1)"},
        "sources": {"one": {"model": {**SOURCE, "layers": 1}, "steps": 8}},
        "arms": [{"name": "scratch"},
                 {"name": "stacked", "source": "one", "grow": {"op": "stack", "layers": 2}, "schedule": "constant",
                  "lr": 3.0e-3}],
    })


def rows(losses, flops_per_step, secs_per_step):
    """A log with an evaluation every 4 steps."""
    out = []
    for step in range(STEPS + 1):
        r = {"step": step, "tokens": step * TOKENS_PER_STEP, "flops": step * flops_per_step,
             "time": step * secs_per_step, "train_loss": None if step == 0 else 9.0}
        if step % 4 == 0:
            r["eval_loss"] = losses[step // 4]
        out.append(r)
    return out


def write_log(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in data))


@pytest.fixture
def bench_dir(tmp_path):
    """One seed: scratch ends at 3.0 (the target); `stacked` crosses 3.0 between its evals at step 4 (3.4) and
    step 8 (2.8), at step 4 + 4 * 0.4 / 0.6 = 20/3; its source cost 1000 FLOPs, 128 tokens and 2 s."""
    work = tmp_path / "bench"
    scratch = rows([8.0, 5.0, 4.0, 3.0], 100.0, 0.5)
    stacked = rows([6.0, 3.4, 2.8, 2.5], 100.0, 0.25)
    source = [{"step": s, "tokens": s * 16, "flops": s * 125.0, "time": s * 0.25, "eval_loss": 7.0 - 0.2 * s}
              for s in range(0, 9, 4)]
    for name, data in (("arms/scratch", scratch), ("arms/stacked", stacked), ("sources/one", source)):
        write_log(work / "seed-0" / name / "log.jsonl", data)
    run = {"seed": 0, "arms": {
        "scratch": {"name": "scratch", "kind": "scratch", "rows": scratch, "source": None,
                    "result": {"flops": 1200.0, "params": 1000},
                    "source_cost": {"tokens": 0.0, "flops": 0.0, "time": 0.0},
                    "log": str(work / "seed-0/arms/scratch/log.jsonl")},
        "stacked": {"name": "stacked", "kind": "grow", "rows": stacked, "source": "one",
                    "result": {"flops": 1200.0, "params": 1000},
                    "source_cost": {"tokens": 128.0, "flops": 1000.0, "time": 2.0},
                    "log": str(work / "seed-0/arms/stacked/log.jsonl")}},
        "sources": {"one": {"final_eval_loss": 5.4, "flops": 1000.0, "tokens": 128.0, "time": 2.0, "params": 500,
                            "log": str(work / "seed-0/sources/one/log.jsonl")}}}
    return work, [run]


def test_bench_report_says_target_speedups_wall_time_and_arms(bench_dir, captured):
    work, runs = bench_dir
    recipe = tiny_recipe()
    results = report.write(work, recipe, runs, {"train_tokens": 1000, "val_tokens": 100, "vocab_size": 300},
                           figure_formats=("svg", "pdf"))
    # By hand: scratch reaches 3.0 at step 12, `stacked` at step 20/3.
    cross = 20 / 3
    speed = {"tokens": 12 / cross, "flops": 1200 / (100 * cross), "time": 6.0 / (0.25 * cross)}
    speed_src = {"tokens": 12 * 64 / (64 * cross + 128), "flops": 1200 / (100 * cross + 1000),
                 "time": 6.0 / (0.25 * cross + 2.0)}
    st = results["summary"]["arms"]["stacked"]
    for k, value in speed.items():
        assert st["speedup"][k] == pytest.approx(value)
        assert st["speedup_with_source"][k] == pytest.approx(speed_src[k])

    md = (work / "report.md").read_text()
    assert "goal" not in md.lower()
    assert "the recipe's target" in md.lower() and "**3.000**" in md
    # What each arm ran.
    assert "- `scratch`: from scratch; 12 steps at peak lr 0.01, schedule `cosine(warmup=2, min_ratio=0.1)`" in md
    assert ("- `stacked`: grown from source `one` (16 wide, 1 layer, pretrained 8 steps by the bench) by "
            "stack(layers=2); 12 steps at peak lr 0.003, schedule `constant`") in md
    # Wall-time speedups in the report, without and with the source, next to tokens and FLOPs.
    row = next(line for line in md.splitlines() if line.startswith("| stacked | ") and line.count("|") == 8)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == [f"{speed[k]:.2f}x" if i == 0 else f"{speed_src[k]:.2f}x"
                         for k in ("tokens", "flops", "time") for i in (0, 1)]
    assert "wall time incl. source" in md

    # The figure: PNG always, plus the formats asked for; the same legend in each.
    assert (work / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (work / "curves.pdf").read_bytes()[:4] == b"%PDF"
    texts = " ".join(svg_texts(work / "curves.svg"))
    assert f"stacked: {speed_src['flops']:.2f}x FLOPs, {speed_src['tokens']:.2f}x tokens, source counted" in texts
    assert "stack(layers=2)" in texts and "scratch (reference)" in texts
    assert "the recipe's target: eval loss 3.000" in texts and "target 3.000" in texts
    fig = captured[-1]
    ax_tokens, ax_flops = fig.axes[:2]

    def crosses(ax):
        return sorted(c for line in ax.get_lines() if line.get_marker() == "X"
                      for c in (float(line.get_xdata()[0]), float(line.get_ydata()[0])))

    assert crosses(ax_tokens) == pytest.approx(sorted([cross * 64, 3.0, 12 * 64, 3.0]))
    # On the FLOPs panel the source's 1000 FLOPs come first.
    assert crosses(ax_flops) == pytest.approx(sorted([1000 + 100 * cross, 3.0, 1200, 3.0]))
    assert any(line.get_linestyle() == "--" and list(line.get_ydata()) == [3.0, 3.0] for line in ax_tokens.get_lines())


def test_bench_report_fixed_target_and_no_figure_format_typo(bench_dir):
    work, runs = bench_dir
    data = tiny_recipe().to_dict()
    data["target"] = {"loss": 3.2}
    recipe = R.parse(data)
    report.write(work, recipe, runs, {"train_tokens": 1000, "val_tokens": 100, "vocab_size": 300})
    md = (work / "report.md").read_text()
    assert "eval loss **3.200** (fixed in the recipe)" in md and "goal" not in md.lower()
    assert not (work / "curves.pdf").exists()
    with pytest.raises(ValueError, match="jpg"):
        report.figure_formats_of(["jpg"])


def test_bench_figure_format_flag_reaches_the_run(tmp_path, monkeypatch, capsys):
    import yaml

    import warmstart.bench.run as B  # what warmstart.api.bench (and so the command) calls

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe().to_dict()))
    seen = {}

    def fake_run(recipe, out, **kw):
        seen.update(kw)
        return None

    monkeypatch.setattr(B, "run_bench", fake_run)
    assert main(["bench", str(path), "--out", str(tmp_path / "out"), "--figure-format", "svg",
                 "--figure-format", "pdf"]) == 0
    assert list(seen["figure_formats"]) == ["svg", "pdf"]
    assert main(["bench", str(path), "--out", str(tmp_path / "out")]) == 0
    assert list(seen["figure_formats"]) == []
    with pytest.raises(SystemExit) as err:
        main(["bench", str(path), "--out", str(tmp_path / "out"), "--figure-format", "jpg"])
    assert err.value.code == 2 and "--figure-format" in capsys.readouterr().err
