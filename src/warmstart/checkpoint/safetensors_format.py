"""The safetensors container format: header parsing, validation and layout.

The safetensors library reads and writes whole files, but it has no way to
write a file one tensor at a time, and its reader reports a malformed header
without naming what is wrong. This module is the small hand-written part:
it parses and checks headers (so errors name the tensor and the byte count),
and it lays out a file's header before any tensor is computed, so that the
writer can stream. Reading tensor data itself goes through the safetensors
library.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from warmstart.errors import CheckpointError
from warmstart.inputs import open_regular

# safetensors dtype codes and their item sizes in bytes.
ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "U16": 2, "U32": 4, "U64": 8,
    "F8_E4M3": 1, "F8_E5M2": 1,
}
FLOAT_CODES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}

# Headers over this size are refused: no honest checkpoint needs one, and a
# corrupt length field must not make us allocate gigabytes.
MAX_HEADER_BYTES = 100 * 1024 * 1024
ALIGN = 8


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, dtype code, shape and absolute byte range."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute offset of the first data byte in `file`
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _no_duplicates(pairs):
    """json object hook: refuse a key given twice (json.loads would keep the last silently)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    pass


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_header(raw: bytes, path: Path, data_len: int) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Validate a header's JSON bytes against the safetensors format.

    Returns the tensors (offsets relative to the data section), the metadata,
    and nothing else is trusted: every dtype is a known code, every shape a list
    of non-negative integers, every byte range matches its shape and dtype, and
    the ranges, sorted, tile the data section exactly (no gap, no overlap, no
    trailing bytes), as the safetensors library itself requires.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(f"corrupt safetensors header: not valid UTF-8 (byte {err.start})", path) from None
    if not text.startswith("{"):
        raise CheckpointError("corrupt safetensors header: does not start with '{'", path)
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _DuplicateKey as err:
        raise CheckpointError(f"corrupt safetensors header: key {err.args[0]!r} appears twice", path) from None
    except (json.JSONDecodeError, ValueError, RecursionError) as err:
        detail = f"{err.msg} at byte {err.pos}" if isinstance(err, json.JSONDecodeError) else str(err)
        raise CheckpointError(f"corrupt safetensors header: not valid JSON ({detail})", path) from None
    if not isinstance(header, dict):
        raise CheckpointError("corrupt safetensors header: not a JSON object", path)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("corrupt safetensors header: __metadata__ must map strings to strings", path)
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        def bad(problem: str) -> CheckpointError:
            return CheckpointError(f"corrupt safetensors header: tensor {name!r}: {problem}", path)

        if not isinstance(entry, dict):
            raise bad("entry is not a JSON object")
        extra = set(entry) - {"dtype", "shape", "data_offsets"}
        if extra:
            raise bad(f"unknown field {sorted(extra)[0]!r}")
        for key in ("dtype", "shape", "data_offsets"):
            if key not in entry:
                raise bad(f"no {key}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str):
            raise bad(f"dtype must be a string, not {type(dtype).__name__}")
        if dtype not in ITEMSIZE:
            raise CheckpointError(f"tensor {name!r} has unsupported dtype {dtype!r}", path)
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            raise bad(f"shape must be a list of integers, got {shape!r}"[:200])
        if any(d < 0 for d in shape):
            raise bad(f"shape {shape} has a negative dimension")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(x) for x in offsets):
            raise bad(f"data_offsets must be two integers, got {offsets!r}"[:200])
        begin, end = offsets
        if begin < 0 or end < begin:
            raise bad(f"data_offsets [{begin}, {end}] do not form a byte range (need 0 <= begin <= end)")
        expected = math.prod(shape) * ITEMSIZE[dtype]
        if end - begin != expected:
            raise CheckpointError(
                f"header size mismatch for tensor {name!r}: shape {list(shape)} {dtype} needs "
                f"{expected} bytes but the header gives {end - begin}",
                path,
            )
        if end > data_len:
            raise CheckpointError(
                f"header size mismatch for tensor {name!r}: it ends at data byte {end} "
                f"but the file holds only {data_len} data bytes (truncated?)",
                path,
            )
        infos[name] = TensorInfo(name, path, dtype, tuple(shape), begin, end - begin)
    # Sorted by range, the tensors must tile [0, data_len) exactly.
    covered = 0
    previous = None
    for info in sorted(infos.values(), key=lambda i: (i.offset, i.offset + i.nbytes)):
        if info.offset < covered:
            raise CheckpointError(
                f"corrupt safetensors header: tensor {info.name!r} overlaps tensor {previous!r} "
                f"(its data starts at byte {info.offset}, before {covered})", path)
        if info.offset > covered:
            raise CheckpointError(
                f"corrupt safetensors header: tensor {info.name!r} starts at data byte {info.offset}, "
                f"leaving bytes {covered}..{info.offset} covered by no tensor", path)
        covered = info.offset + info.nbytes
        previous = info.name
    if covered != data_len:
        raise CheckpointError(
            f"header size mismatch: tensors cover {covered} data bytes but the file holds {data_len}", path
        )
    return infos, metadata, data_len


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header; return tensor infos and metadata.

    The file must be a regular file (never a FIFO or device, which would block),
    its header length must fit the file, and the header must pass
    :func:`parse_header`. Offsets in the returned infos are absolute.
    """
    path = Path(path)
    with open_regular(path, "safetensors file", CheckpointError) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError("not a safetensors file (shorter than 8 bytes)", path)
            (n,) = struct.unpack("<Q", head)
            if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(
                    f"corrupt safetensors header: header length {n} does not fit a file of {size} bytes", path
                )
            raw = f.read(n)
        except OSError as err:
            raise CheckpointError(f"cannot read: {err.strerror}", path) from err
    if len(raw) != n:
        raise CheckpointError("corrupt safetensors header: file changed while reading", path)
    data_start = 8 + n
    infos, metadata, _ = parse_header(raw, path, size - data_start)
    absolute = {name: TensorInfo(name, path, i.dtype, i.shape, data_start + i.offset, i.nbytes)
                for name, i in infos.items()}
    return absolute, metadata


def encode_header(entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None) -> bytes:
    """Lay out a safetensors header for tensors written back to back in this order.

    Returns the complete prefix (length field plus JSON padded with spaces to
    8-byte alignment); the data of each tensor must then follow in order.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape in entries:
        nbytes = math.prod(shape) * ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((-len(raw)) % ALIGN)
    return struct.pack("<Q", len(raw)) + raw


def nbytes_of(dtype: str, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * ITEMSIZE[dtype]


def safe_join(root: Path, relative: str, referrer: Path) -> Path:
    """Resolve `relative` inside `root`, refusing anything that escapes it."""
    if os.path.isabs(relative):
        raise CheckpointError(f"shard path {relative!r} is absolute; shards must lie inside the model directory", referrer)
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root.resolve()):
        raise CheckpointError(f"shard path {relative!r} leaves the model directory", referrer)
    return candidate
