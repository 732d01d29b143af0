"""`warmstart schedule show|plot` and `warmstart predict`, run in-process."""

from __future__ import annotations

import json
import math

import pytest

from warmstart.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def test_show_prints_the_table(capsys):
    assert main(["schedule", "show", "peak=1e-3; warmup:linear:4 > decay:linear:4", "--every", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "# peak=0.001; warmup:linear:4 > decay:linear:4"
    rows = [line.split() for line in out[2:]]
    assert [int(r[0]) for r in rows] == [0, 2, 4, 6, 7]  # every 2nd step and always the last
    assert [float(r[1]) for r in rows] == [0.25, 0.75, 0.75, 0.25, 0.0]
    assert [float(r[2]) for r in rows] == [2.5e-4, 7.5e-4, 7.5e-4, 2.5e-4, 0.0]


def test_show_preset_with_steps_and_peak(capsys):
    assert main(["schedule", "show", "cosine(warmup=2)", "--steps", "6", "--peak", "0.5"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [int(r[0]) for r in rows] == list(range(6))
    assert float(rows[2][1]) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)), abs=1e-6)
    assert float(rows[5][2]) == 0.0


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["schedule", "show", "warmup:linear:100 > decay:quad:5"], "unknown decay shape 'quad'"),
        (["schedule", "show", "warmup:linear:0"], "at least 1 step"),
        (["schedule", "show", "cosine"], "needs a total"),
        (["schedule", "show", "stable:4", "--every", "0"], "--every"),
        (["schedule", "show", "stable:4", "--peak", "-1"], "--peak"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("warmstart: error: ") and needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_plot_writes_a_png_atomically_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "plot.png"
    argv = ["schedule", "plot", "peak=3e-4; cosine(warmup=10)", "peak=3e-4; wsd(warmup=10)", "d2z",
            "--steps", "100", "--out", str(out)]
    assert main(argv) == 0
    assert out.read_bytes()[:8] == PNG
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temporary left behind
    before = out.stat().st_mtime_ns
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err and out.stat().st_mtime_ns == before
    assert main(argv + ["--force"]) == 0


def test_plot_bad_spec_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "plot.png"
    assert main(["schedule", "plot", "stable:10", "stable:0", "--out", str(out)]) == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert "column 8" in capsys.readouterr().err


def write_log(path, peak=3e-4, n=600, warmup=50):
    """A run on cosine(600, warmup=50) whose loss follows the annealing law (written out by hand)."""
    lrs = []
    for s in range(n):
        if s < warmup:
            lrs.append(peak * (s + 1) / warmup)
        else:
            lrs.append(peak * 0.5 * (1 + math.cos(math.pi * (s - warmup + 1) / (n - warmup))))
    rows, s1, s2, m = [], 0.0, 0.0, 0.0
    for i, lr in enumerate(lrs):
        e = lr / peak
        m = 0.999 * m + ((lrs[i - 1] / peak - e) if i >= warmup else 0.0)
        s1 += e
        s2 += m
        step = i + 1
        if step % 10 == 0:
            loss = 2.5 + 3.0 * s1 ** -0.4 - 4e-4 * s2
            rows.append({"step": step, "tokens": step * 1024, "flops": 1.0, "time": 0.1, "lr": lr,
                         "train_loss": loss + 0.05, "eval_loss": loss})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_predict_prints_final_loss_and_plots(tmp_path, capsys):
    log = write_log(tmp_path / "run.jsonl")
    out = tmp_path / "pred.png"
    code = main(["predict", str(log), "--fit-schedule", "peak=3e-4; cosine(warmup=50)",
                 "--schedule", "wsd(warmup=50, decay_frac=0.2)", "--steps", "600", "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "predicted final loss after 600 steps" in text and "annealing" in text and "multi-power" in text
    final = float(text.split("predicted final loss after 600 steps of ")[1].split(": ")[1].split()[0])
    assert 2.5 < final < 3.0
    assert out.read_bytes()[:8] == PNG


def test_predict_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 10, "lr": 0.1, "eval_loss": 3.0}\n{"step": 20, "lr": 0.1, "eval_loss": NaN}\n')
    assert main(["predict", str(bad), "--fit-schedule", "stable:20", "--schedule", "stable:20"]) == 2
    err = capsys.readouterr().err
    assert f"warmstart: error: {bad}: line 2: eval_loss is nan" in err and err.count("\n") == 1

    nocol = tmp_path / "nocol.csv"
    nocol.write_text("step,loss\n10,3.0\n")
    assert main(["predict", str(nocol), "--fit-schedule", "stable:20", "--schedule", "stable:20"]) == 2
    assert f"{nocol}: no 'lr' column" in capsys.readouterr().err

    assert main(["predict", str(tmp_path / "missing.jsonl"), "--fit-schedule", "stable:2", "--schedule", "stable:2"]) == 2
    assert "cannot read log" in capsys.readouterr().err
