"""Corpora named by the user: files, folders, or the built-in names ("shakespeare", "stdlib").

Shared by everything that reads text (calibration for pruning and adapters,
the bench's training data), so a corpus means the same everywhere and random
bytes are refused the same way.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from warmstart import assets
from warmstart.errors import WarmstartError
from warmstart.inputs import check_text_file


class CorpusError(WarmstartError):
    """A corpus that is missing, empty or unreadable."""


STDLIB_SKIP = {"test", "tests", "idlelib", "lib2to3", "site-packages", "__pycache__"}


def stdlib_files() -> list[Path]:
    """The standard library's ``*.py`` files, without its test suites and bundled packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not (STDLIB_SKIP & set(p.relative_to(root).parts[:-1])))


def corpus_files(corpus, base: Path | None = None) -> list[Path]:
    """Resolve a corpus name or a list of files/folders to the list of document files."""
    if corpus in (None, "shakespeare"):
        return list(assets.shakespeare_files())
    if corpus in ("stdlib", "python-stdlib"):
        return stdlib_files()
    if isinstance(corpus, (str, os.PathLike)):
        corpus = [corpus]
    files: list[Path] = []
    for item in corpus:
        p = Path(item)
        if base is not None and not p.is_absolute():
            p = base / p
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            if not found:
                raise CorpusError("corpus folder holds no files", p)
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif p.exists():
            raise CorpusError("corpus file is not a regular file (a FIFO or device?)", p)
        else:
            raise CorpusError("corpus file does not exist", p)
    for f in files:  # random bytes or a binary are not a corpus
        check_text_file(f, "corpus file", CorpusError)
    return files
