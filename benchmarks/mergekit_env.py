"""mergekit in a virtual environment of its own, and process timing, for the side-by-side benchmarks.

Shared by depth_vs_mergekit.py and merge_vs_mergekit.py. mergekit is
installed by package name into ``<warmstart cache>/mergekit-venv``: torch
first, pinned to the CPU build (an unpinned resolve pulls a multi-GB CUDA
build), then mergekit. The environment is built in a temporary sibling and
renamed into place under a lock, and reused while it imports.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TORCH_PIN = "torch==2.13.0"
TIME = Path("/usr/bin/time")


def venv_dir() -> Path:
    from warmstart import assets

    return assets.cache_dir() / "mergekit-venv"


def venv_works(venv: Path) -> bool:
    python = venv / "bin" / "python"
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "import mergekit, torch"], capture_output=True, text=True)
    return probe.returncode == 0


def ensure_mergekit() -> Path:
    """The mergekit virtual environment, created once and reused."""
    venv = venv_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / "mergekit-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if venv_works(venv):
            return venv
        tmp = Path(tempfile.mkdtemp(prefix=".mergekit-venv.partial-", dir=venv.parent))
        try:
            print("installing mergekit into its own virtual environment ...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True)
            pip = [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q"]
            for args in ([TORCH_PIN], ["mergekit", TORCH_PIN]):
                if subprocess.run(pip + args).returncode != 0:
                    raise SystemExit(f"pip install {' '.join(args)} failed in the mergekit environment")
            if not venv_works(tmp):
                raise SystemExit("mergekit installed but does not import")
            if venv.exists():
                shutil.rmtree(venv)
            os.rename(tmp, venv)  # console scripts' shebangs name the old path: run `python -c` instead
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return venv


def mergekit_command(venv: Path) -> list[str]:
    """mergekit's YAML entry point, run through the venv's interpreter."""
    return [str(venv / "bin" / "python"), "-c",
            "import sys; from mergekit.scripts.run_yaml import main; sys.argv[0] = 'mergekit-yaml'; main()"]


def require_time() -> None:
    if not TIME.exists():
        raise SystemExit("/usr/bin/time is missing: install Debian's 'time' package (apt-get install time)")


def timed(cmd: list[str], log: Path) -> tuple[float, int, float]:
    """Run `cmd` under /usr/bin/time -v; return (wall seconds, peak RSS in bytes, CPU seconds)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "w") as err:
        proc = subprocess.run([str(TIME), "-v"] + cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-25:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    system = re.search(r"System time \(seconds\): ([\d.]+)", text)
    if not (wall and rss and user and system):
        raise SystemExit(f"cannot read /usr/bin/time -v output in {log}")
    h, m, s = wall.groups()
    cpu = float(user.group(1)) + float(system.group(1))
    return int(h or 0) * 3600 + int(m) * 60 + float(s), int(rss.group(1)) * 1024, cpu
