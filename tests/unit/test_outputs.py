"""What warmstart promises about its outputs (issue 17): --force never deletes what it did not write, outputs never
overlap inputs, a lock against concurrent runs, no temp directory left by kill -9 (after the next run), SIGTERM,
full and read-only disks, the umask, and a closed pipe."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import build_tiny
from tests.unit.test_vocab import pair  # noqa: F401  (fixture: model with its tokenizer, new tokenizer, corpus)
from warmstart.checkpoint import atomic
from warmstart.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("Writing", "copying"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and (".partial" in p.name or
                                                                                ".old-" in p.name or
                                                                                p.name.endswith(".lock")))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- --force and overlapping inputs -------------------------------------------------------------------------------

def test_force_on_a_folder_holding_the_source_deletes_nothing(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    model = build_tiny("llama", home / "model")
    (home / "notes.txt").write_text("unrelated")
    before = _tree(home)
    code, err = _run(capsys, "convert", model, home, "--force", "--quiet")
    assert code == 2
    assert "contains the input" in _one_line(err) and str(home) in err
    assert _tree(home) == before
    assert _litter(tmp_path) == [] and _litter(home) == []


def test_force_on_the_working_directory_is_refused(tmp_path, capsys, monkeypatch):
    model = build_tiny("llama", tmp_path / "elsewhere" / "model")
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "paper.tex").write_text("mine")
    monkeypatch.chdir(cwd)
    code, err = _run(capsys, "convert", model, ".", "--force", "--quiet")
    assert code == 2
    assert "paper.tex" in _one_line(err)  # names the file it will not delete
    assert sorted(os.listdir(cwd)) == ["paper.tex"] and _litter(tmp_path) == []
    # The same with the source inside the working directory: refused because it contains the input.
    inner = build_tiny("llama", cwd / "model")
    before = _tree(cwd)
    code, err = _run(capsys, "convert", "model", ".", "--force", "--quiet")
    assert code == 2 and "contains the input" in _one_line(err)
    assert _tree(cwd) == before and inner.exists()


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_that_is_or_lies_inside_the_input(tiny_llama, capsys, where):
    before = _tree(tiny_llama)
    out = tiny_llama if where == "same" else tiny_llama / "sub"
    code, err = _run(capsys, "convert", tiny_llama, out, "--force", "--quiet")
    assert code == 2
    line = _one_line(err)
    assert ("is the input" if where == "same" else "lies inside the input") in line
    assert _tree(tiny_llama) == before


def test_force_replaces_only_what_warmstart_wrote(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(capsys, "convert", tiny_llama, out, "--quiet")[0] == 0
    assert (out / atomic.RECORD).is_file()
    assert _run(capsys, "convert", tiny_llama, out, "--force", "--quiet")[0] == 0  # our own output: replaced
    (out / "my-eval.json").write_text("{}")  # the user adds a file: now the folder is no longer ours alone
    code, err = _run(capsys, "convert", tiny_llama, out, "--force", "--quiet")
    assert code == 2 and "my-eval.json" in _one_line(err)
    assert (out / "my-eval.json").read_text() == "{}"


def test_force_replaces_an_empty_folder_and_refuses_a_file(tiny_llama, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(capsys, "convert", tiny_llama, empty, "--force", "--quiet")[0] == 0
    assert (empty / "model.safetensors").is_file()
    afile = tmp_path / "afile"
    afile.write_text("data")
    code, err = _run(capsys, "convert", tiny_llama, afile, "--force", "--quiet")
    assert code == 2 and "not a directory" in _one_line(err)
    assert afile.read_text() == "data"


# --- locking and stale temporaries ------------------------------------------------------------------------------

def test_a_second_run_into_a_locked_output_exits_2(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    lock = atomic._Lock(out)
    lock.acquire(out)  # what a concurrent run holds while it writes
    try:
        code, err = _run(capsys, "convert", tiny_llama, out, "--quiet")
        assert code == 2 and "another warmstart run" in _one_line(err) and str(os.getpid()) in err
        assert not out.exists()
    finally:
        lock.release()
    assert _run(capsys, "convert", tiny_llama, out, "--quiet")[0] == 0
    assert _litter(tmp_path) == []


def test_stale_temporaries_are_removed_but_never_a_live_ones(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}-abcd"
    legacy = tmp_path / ".out.partial-x1y2z3"  # named by an older warmstart, without a pid
    other = tmp_path / ".other.partial-1-abcd"  # another output's: not ours to judge
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = tmp_path / f".out.partial-{live_proc.pid}-efgh"
    try:
        for d in (stale, legacy, other, live):
            d.mkdir()
            (d / "model.safetensors").write_bytes(b"x" * 1000)
        assert _run(capsys, "convert", tiny_llama, out, "--quiet")[0] == 0
        assert not stale.exists() and not legacy.exists()
        assert other.exists() and live.exists()
    finally:
        live_proc.kill()
        live_proc.wait()


_KILL_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {src!r})
    import warmstart.checkpoint.writer as w
    real = w.write_weights
    def write_then_die(*a, **k):
        report = real(*a, **k)  # the weights are in the temporary folder: now die
        os.kill(os.getpid(), signal.{sig})
        return report
    w.write_weights = write_then_die
    from warmstart.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _killed_run(argv, sig="SIGKILL") -> subprocess.CompletedProcess:
    code = _KILL_DURING_WRITE.format(src=SRC, sig=sig)
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_five_kill9_runs_then_one_clean_run_leave_no_temporary(pair, tmp_path, capsys):  # noqa: F811
    model, new_tok, corpus = pair
    second = tmp_path / "second"
    # a distinct model to merge with (merge refuses a byte-identical copy of an input, so cast it)
    assert _run(capsys, "convert", model, second, "--dtype", "bf16", "--quiet")[0] == 0
    runs = {
        "convert": (["convert", model, tmp_path / "c", "--quiet"], tmp_path / "c"),
        "merge": (["merge", model, second, tmp_path / "m", "--quiet"], tmp_path / "m"),
        "vocab": (["vocab", model, tmp_path / "v", "--tokenizer", new_tok, "--method", "fvt", "--quiet"], tmp_path / "v"),
    }
    for name, (argv, out) in runs.items():
        for _ in range(5):
            proc = _killed_run(argv)
            assert proc.returncode == -signal.SIGKILL, (name, proc.stderr[-500:])
            assert not out.exists()
        assert any(p.name.startswith(f".{out.name}.partial-") for p in tmp_path.iterdir())  # kill -9 left litter
        assert _run(capsys, *argv)[0] == 0, name
        assert out.is_dir()
    assert _litter(tmp_path) == []


def test_sigterm_removes_the_temporary_and_exits_143(tiny_llama, tmp_path):
    out = tmp_path / "out"
    proc = _killed_run(["convert", tiny_llama, out, "--quiet"], sig="SIGTERM")
    assert proc.returncode == 143, proc.stderr[-500:]
    assert "Traceback" not in proc.stderr and "terminated" in proc.stderr
    assert not out.exists() and _litter(tmp_path) == []


# --- faults of the file system -----------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if sys.platform != "linux":
        pytest.skip("tmpfs mounts need Linux")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'mount failed'})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, small_disk, capsys):
    model = build_tiny("llama", tmp_path / "model", hidden_size=64, intermediate_size=128)  # ~0.3 MB > 64 kB
    code, err = _run(capsys, "convert", model, small_disk / "out", "--quiet")
    assert code == 2
    line = _one_line(err)
    assert str(small_disk / "out") in line and "No space left" in line
    assert os.listdir(small_disk) == []


def test_read_only_location_is_one_line(tiny_llama, small_disk, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    code, err = _run(capsys, "convert", tiny_llama, small_disk / "out", "--quiet")
    assert code == 2
    line = _one_line(err)
    assert str(small_disk / "out") in line and "Read-only" in line
    assert os.listdir(small_disk) == []


# --- modes and formats -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_follow_the_umask(tiny_llama, tmp_path, capsys, mask):
    old = os.umask(mask)
    try:
        assert _run(capsys, "convert", tiny_llama, tmp_path / "m", "--quiet")[0] == 0
        assert _run(capsys, "schedule", "plot", "cosine", "--steps", "100",
                    "--out", tmp_path / "s.png")[0] == 0
    finally:
        os.umask(old)
    want_file, want_dir = 0o666 & ~mask, 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == want_dir
    for f in (tmp_path / "m").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == want_file, f.name
    assert stat.S_IMODE((tmp_path / "s.png").stat().st_mode) == want_file


@pytest.mark.parametrize("ext,magic", [("png", b"\x89PNG"), ("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_figure_format_follows_the_extension(tmp_path, capsys, ext, magic):
    out = tmp_path / f"s.{ext}"
    assert _run(capsys, "schedule", "plot", "cosine", "--steps", "50", "--out", out)[0] == 0
    assert out.read_bytes().startswith(magic)


def test_unknown_figure_extension_is_refused(tmp_path, capsys):
    code, err = _run(capsys, "schedule", "plot", "cosine", "--steps", "50", "--out", tmp_path / "s.jpgx")
    assert code == 2 and ".jpgx" in _one_line(err)
    assert not (tmp_path / "s.jpgx").exists()


def test_closed_pipe_is_not_a_traceback():
    cmd = f"{sys.executable} -m warmstart.cli schedule show cosine --steps 100000 | head -1"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert proc.stdout.strip() and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
