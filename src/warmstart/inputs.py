"""Safe reading of user-supplied files, and limits on what an input may ask for.

Every file a command reads on the user's behalf goes through here, so that
the promises of docs/reliability.md hold in one place:

- only regular files are opened (a FIFO or a device would block forever or
  stream without end); the file is opened non-blocking and checked with
  ``fstat`` on the open descriptor, so it cannot be swapped in between;
- text files have a size cap and must be valid UTF-8;
- sizes an input asks for (layers, widths, steps, vocabularies) are checked
  against what the output would cost *before* anything is allocated
  (:func:`check_elements`), so an absurd value is one line, not a
  MemoryError, a SIGABRT or a hang.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

from warmstart.errors import WarmstartError

# The most elements (numbers) one output may hold, whatever the command:
# 2**36 ~ 6.9e10, i.e. 275 GB of fp32. A larger request is refused before any
# allocation. Override with WARMSTART_MAX_ELEMENTS for truly enormous models.
DEFAULT_MAX_ELEMENTS = 2**36
# Text inputs read whole (recipes, schedule specs, logs, JSON side files).
MAX_TEXT_BYTES = 16 * 1024 * 1024


def max_elements() -> int:
    value = os.environ.get("WARMSTART_MAX_ELEMENTS")
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            pass
    return DEFAULT_MAX_ELEMENTS


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def require_regular_file(path: str | os.PathLike, what: str = "file", error: type[WarmstartError] = WarmstartError) -> Path:
    """Refuse a missing path, or one that is not a regular file, without opening it."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"cannot read {what}: no such file", path) from None
    except OSError as err:
        raise error(f"cannot read {what}: {err.strerror}", path) from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} is {_kind(st.st_mode)}, expected a regular file", path)
    return path


def open_regular(path: str | os.PathLike, what: str = "file", error: type[WarmstartError] = WarmstartError):
    """Open a regular file for binary reading, never blocking on a FIFO or device.

    O_NONBLOCK makes the open of a FIFO return at once; the descriptor is then
    checked with fstat, so a file swapped for a FIFO after a stat is refused too.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise error(f"cannot read {what}: no such file", path) from None
    except IsADirectoryError:
        raise error(f"{what} is a directory, expected a regular file", path) from None
    except OSError as err:
        raise error(f"cannot read {what}: {err.strerror}", path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} is {_kind(st.st_mode)}, expected a regular file", path)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, what: str = "file", max_bytes: int = MAX_TEXT_BYTES,
               error: type[WarmstartError] = WarmstartError) -> bytes:
    """A regular file's bytes, refused above `max_bytes` (checked before reading)."""
    with open_regular(path, what, error) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise error(f"{what} is {size} bytes, more than the {max_bytes} allowed", path)
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{what} is more than the {max_bytes} bytes allowed", path)
    return data


def read_text(path: str | os.PathLike, what: str = "file", max_bytes: int = MAX_TEXT_BYTES,
              error: type[WarmstartError] = WarmstartError) -> str:
    """A regular UTF-8 text file, refused if binary (NUL bytes or invalid UTF-8) or too large."""
    data = read_bytes(path, what, max_bytes, error)
    return decode_text(data, path, what, error)


def decode_text(data: bytes, path, what: str = "file", error: type[WarmstartError] = WarmstartError) -> str:
    if b"\x00" in data:
        raise error(f"{what} is binary (contains NUL bytes), expected UTF-8 text", path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{what} is not valid UTF-8 text (byte {err.start})", path) from None


# A file is text when, in its first MiB, at most this share of the characters
# are undecodable bytes, NULs or control characters (a stray bad byte in a real
# text is tolerated; random bytes are about half bad).
MAX_JUNK_SHARE = 0.01
SNIFF_BYTES = 1 << 20


def check_text_file(path: str | os.PathLike, what: str = "file", error: type[WarmstartError] = WarmstartError) -> None:
    """Refuse a file that is not UTF-8 text (random bytes, a binary, another encoding), from its first MiB."""
    with open_regular(path, what, error) as f:
        head = f.read(SNIFF_BYTES)
    text = head.decode("utf-8", errors="replace")
    if len(head) == SNIFF_BYTES:
        text = text[:-4]  # a character cut at the sniff boundary is not junk
    if not text:
        return
    junk = sum(1 for c in text if c == "\ufffd" or (c < " " and c not in "\t\n\r\f\v"))
    if junk > MAX_JUNK_SHARE * len(text):
        raise error(f"{what} is not UTF-8 text ({junk} of its first {len(text)} characters are undecodable "
                    f"bytes or control characters)", path)


def check_elements(count: int | float, what: str, path=None, limit: int | None = None) -> int:
    """Refuse an allocation of `count` elements above the limit, naming what asked for it."""
    limit = max_elements() if limit is None else limit
    if not isinstance(count, int):
        if not math.isfinite(count):
            raise WarmstartError(f"{what}: size is not finite", path)
        count = math.ceil(count)
    if count > limit:
        raise WarmstartError(
            f"{what} would need {count:.3g} elements, more than the limit of {limit:.3g} "
            f"(set WARMSTART_MAX_ELEMENTS to raise it)", path)
    return count


def check_count(value: int, what: str, limit: int, path=None) -> int:
    """Refuse a count (layers, steps, vocabulary) above a limit that no real run reaches."""
    if value > limit:
        raise WarmstartError(f"{what} {value} is larger than the limit of {limit}", path)
    return value


MAX_THREADS = 1024


def check_threads(value, what: str = "--threads") -> int | None:
    """A thread count torch can use: None (torch's choice) or 1..MAX_THREADS."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
        raise WarmstartError(f"{what} must be a whole number from 1 to {MAX_THREADS}, got {value!r}")
    return value


MAX_JSON_SIDE_FILE = 512 * 1024 * 1024


def check_json_file(path: Path, what: str, error: type[WarmstartError] = WarmstartError) -> None:
    """A side file that must parse as JSON (tokenizer.json, generation_config.json ...), refused before it is copied."""
    import json

    text = read_text(path, what, MAX_JSON_SIDE_FILE, error)
    try:
        json.loads(text)
    except RecursionError:
        raise error(f"{what} nests too deeply to be JSON a loader accepts", path) from None
    except ValueError as err:
        raise error(f"{what} is not valid JSON ({err})", path) from None


def same_file_or_dir(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file or directory (symlinks and trailing slashes resolved)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


# The largest vocabulary (tokenizer training, recipes, the largest token id of
# any tokenizer read): 16.7M, 16 times the largest real ones; the tokenizers
# library aborts on sizes it cannot allocate.
MAX_VOCAB = 2**24

# Layer counts above this are refused whatever the model (every layer is a
# set of planned tensors; the deepest real models have a few hundred).
MAX_LAYERS = 100_000


def checkpoint_elements(checkpoint) -> int:
    """Elements of every tensor of a (possibly planned) checkpoint, from its header only."""
    return sum(math.prod(checkpoint.info(n).shape) for n in checkpoint.names())


def check_layers(model, layers: int, what: str) -> int:
    """Refuse a layer count whose output would be absurdly large, before any layer is planned.

    The output is estimated as the source scaled by layers / source layers (an
    upper bound for grown depth, since embeddings do not repeat).
    """
    src = model.checkpoint.path
    if layers > MAX_LAYERS:
        raise WarmstartError(f"{what}: {layers} layers is more than the limit of {MAX_LAYERS}", src)
    source_layers = max(1, model.dims.layers)
    estimate = checkpoint_elements(model.checkpoint) * layers // source_layers
    check_elements(estimate, f"{what}: {layers} layers", src)
    return layers


def check_width(model, sizes: dict[str, int], what: str) -> None:
    """Refuse target widths whose output would be absurdly large, before any map is built.

    Matrices scale with the product of two widths, so the source's elements
    times the square of the largest growth ratio bounds the output.
    """
    d = model.dims
    ratio = 1.0
    for key, new in sizes.items():
        old = getattr(d, key, None)
        if old and new:
            ratio = max(ratio, new / old)
    estimate = checkpoint_elements(model.checkpoint) * ratio * ratio
    check_elements(estimate, f"{what}: widths {', '.join(f'{k} {v:g}' for k, v in sizes.items())}",
                   model.checkpoint.path)
