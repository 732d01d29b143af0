"""Atomic outputs: the one place where warmstart creates, replaces and cleans up what it writes.

Every output, a model directory or a single file, is built in a temporary
sibling (``.OUT.partial-PID-XXXX``) and renamed into place only once complete,
so an interrupted run never leaves something that looks finished. Around that:

- **Overlap**: an output that is, contains or lies inside one of the run's
  inputs is refused, with or without ``--force``.
- **--force never deletes what warmstart did not write**: a directory output
  records the files it holds in ``warmstart.json``; ``--force`` replaces an
  existing directory only if it is empty or holds exactly such a record's
  files (and the record). Anything else is refused with the first foreign
  file named. A file output replaces an existing regular file.
- **Locking**: an exclusive lock (``.OUT.lock``, with the owner's pid) is held
  while the output is written; a second run into the same output exits with
  one line instead of racing.
- **Cleanup**: on any exception, and on SIGTERM/SIGINT (see
  :func:`install_signal_handlers`), the temporary sibling is removed. A run
  killed with ``kill -9`` cannot clean up, so the next run into the same
  output, once it holds the lock, removes the temporary siblings whose owner
  process is gone.
- **Faults**: a full disk, a read-only location or a permission problem
  becomes one line naming the output and the cause.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from warmstart import __version__
from warmstart.errors import OutputExists, WarmstartError

RECORD = "warmstart.json"  # the provenance record every output directory carries
COMMAND: list[str] | None = None  # the command line, when run from the CLI: recorded in every output's RECORD
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every cleanup path runs."""


def install_signal_handlers() -> None:
    """Turn SIGTERM into an exception in the main thread, so temporary outputs are removed."""

    def on_term(signum, frame):
        raise Terminated()

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave signals alone
        pass


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output(out: str | os.PathLike, force: bool, inputs: Iterable[str | os.PathLike] = (),
                 kind: str = "directory") -> Path:
    """Refuse an output that cannot be written; called before any work starts.

    Returns the output as an absolute path (so ``.`` or ``dir/..`` have a
    real name and a real parent).
    """
    out = Path(os.path.abspath(os.fspath(out)))
    real = _real(out)
    for inp in inputs:
        if inp is None or not os.path.lexists(inp):
            continue
        src = _real(inp)
        if _within(src, real):
            what = "is" if src == real else "contains"
            raise WarmstartError(f"the output {what} the input {os.fspath(inp)}; choose another output", out)
        if _within(real, src):
            raise WarmstartError(f"the output lies inside the input {os.fspath(inp)}; choose another output", out)
    if real.parent == real:
        raise WarmstartError("cannot write an output at the root of the file system", out)
    if os.path.lexists(out):
        if not force:
            raise OutputExists("output already exists (use --force to replace it)", out)
        replaceable(out, kind)
    parent = out.parent
    if not parent.exists():
        raise WarmstartError("parent directory of the output does not exist", parent)
    if not parent.is_dir():
        raise WarmstartError("parent of the output is not a directory", parent)
    return out


def replaceable(out: Path, kind: str) -> None:
    """Raise unless `--force` may remove what is at `out` (see the module docstring)."""
    if out.is_symlink():
        raise WarmstartError("output is a symbolic link; remove it or choose another output", out)
    if kind == "file":
        if not out.is_file():
            raise WarmstartError("output exists and is not a regular file; --force replaces files only", out)
        return
    if not out.is_dir():
        raise WarmstartError("output exists and is not a directory; --force replaces only directories warmstart wrote",
                             out)
    written: set[str] | None = None
    try:
        rec = json.loads((out / RECORD).read_text())
        written = set(rec.get("files", [])) | {RECORD}
    except (OSError, ValueError, AttributeError, TypeError):
        written = None
    # Walk lazily and stop at the first file warmstart did not write (`--force` on a home directory must not
    # list the whole home first).
    for root, dirs, files in os.walk(out):
        dirs.sort()
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), out)
            if written is None or rel not in written:
                raise WarmstartError(f"output exists and holds files warmstart did not write ({rel}); --force only "
                                     "replaces earlier warmstart outputs, so remove it yourself or choose another "
                                     "output", out)


# ---------------------------------------------------------------------------
# lock and stale temporaries

class _Lock:
    """An exclusive lock on `out`, held through a sibling file that records the owner's pid."""

    def __init__(self, out: Path):
        self.path = out.parent / f".{out.name}.lock"
        self.fd: int | None = None

    def acquire(self, out: Path) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~umask())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise WarmstartError(f"another warmstart run (pid {owner or '?'}) is writing this output; "
                                     "wait for it or choose another output", out) from None
            # The file may have been removed by the previous owner after we opened it: then retry on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self.fd)
            self.fd = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(out: Path) -> list[Path]:
    """Remove temporary siblings of `out` left by runs that are gone (call with the lock held)."""
    removed = []
    pattern = re.compile(r"\.%s\.(?:partial|old)-(?:(\d+)-)?.*" % re.escape(out.name))
    for p in out.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if not m:
            continue
        pid = int(m.group(1)) if m.group(1) else None
        if pid is not None and (pid == os.getpid() or _alive(pid)):
            continue  # a live run's (should not happen under the lock, but never touch it)
        _remove(p)
        removed.append(p)
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    lock = _Lock(out)
    lock.acquire(out)
    try:
        remove_stale(out)
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------------------
# the two forms

def _files_of(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@contextmanager
def _writing(out: Path) -> Iterator[None]:
    """The lock on `out` held throughout, and file-system faults turned into one line naming `out`."""
    try:
        with output_lock(out):
            yield
    except OSError as err:
        if err.errno in _WRITE_ERRNOS:
            raise WarmstartError(f"cannot write the output: {err.strerror or err}", out) from err
        raise


@contextmanager
def atomic_directory(out: str | os.PathLike, force: bool = False, inputs: Iterable[str | os.PathLike] = (),
                     record: dict | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of `out` to fill; it becomes `out` on success only.

    `record` (provenance: command, sources, exactness ...) is written into
    ``warmstart.json`` together with the list of files, which is what lets a
    later ``--force`` know the directory is warmstart's to replace.
    """
    out = check_output(out, force, inputs)
    with _writing(out), _temporary(out, directory=True) as tmp:
        yield tmp
        _finish_directory(tmp, out, force, record)


@contextmanager
def _temporary(path: Path, directory: bool) -> Iterator[Path]:
    """A temporary sibling of `path` named after it and this process; removed unless it was renamed."""
    prefix = f".{path.name}.partial-{os.getpid()}-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise


def _finish_directory(tmp: Path, out: Path, force: bool, record: dict | None) -> None:
    files = _files_of(tmp)
    rec = {"warmstart": __version__, **({"command": COMMAND} if COMMAND else {}), **(record or {}),
           "files": [f for f in files if f != RECORD]}
    (tmp / RECORD).write_text(json.dumps(rec, indent=2, default=str) + "\n")
    follow_umask(tmp)
    if os.path.lexists(out):
        if not force:
            raise OutputExists("output appeared while writing (use --force to replace it)", out)
        replaceable(out, "directory")
    swap_in(tmp, out)


def follow_umask(root: Path) -> None:
    """Give every file and folder under `root` the modes the user's umask asks for.

    Some writers (tempfile, some libraries' savers) create files readable by
    their owner alone; an output is not private unless the umask says so.
    """
    mask = umask()
    os.chmod(root, 0o777 & ~mask)
    for p in root.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`, replacing what is there (old one aside first, then removed)."""
    old = None
    if os.path.lexists(out):
        old = out.parent / f".{out.name}.old-{os.getpid()}-{os.urandom(3).hex()}"
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        _remove(old)


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling file that replaces `path` on success.

    For the files a command keeps for itself (caches, logs, a run's state),
    not for outputs the user names: no lock and no --force rules.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(path, directory=False) as tmp:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)


@contextmanager
def replacing_directory(path: str | os.PathLike, *, keep_existing: bool = False) -> Iterator[Path]:
    """A temporary sibling directory that becomes `path` on success (internal directories and caches).

    With `keep_existing`, a `path` that appeared meanwhile (another process
    filled the same cache) is kept and the new one dropped: both are as good.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _temporary(path, directory=True) as tmp:
        yield tmp
        follow_umask(tmp)
        if keep_existing and path.exists():
            _remove(tmp)
        else:
            swap_in(tmp, path)


def write_text(path: str | os.PathLike, text: str | bytes) -> None:
    """Replace one internal file (a log, a state record) atomically."""
    with replacing(path) as tmp:
        if isinstance(text, bytes):
            tmp.write_bytes(text)
        else:
            tmp.write_text(text)


@contextmanager
def atomic_file(out: str | os.PathLike, force: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary sibling path of file `out`; it replaces `out` on success only."""
    out = check_output(out, force, inputs, kind="file")
    with _writing(out), _temporary(out, directory=False) as tmp:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it private; an output is not
        if os.path.lexists(out) and not force:
            raise OutputExists("output appeared while writing (use --force to replace it)", out)
        os.replace(tmp, out)
