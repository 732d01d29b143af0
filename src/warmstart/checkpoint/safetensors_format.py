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


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header; return tensor infos and metadata.

    Checks that the header length fits the file, that every tensor's byte range
    matches its shape and dtype and lies inside the file, and that the data
    region has no bytes beyond the last tensor's end.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError("not a safetensors file (shorter than 8 bytes)", path)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(
                    f"corrupt safetensors header: header length {n} does not fit a file of {size} bytes", path
                )
            raw = f.read(n)
    except OSError as err:
        raise CheckpointError(f"cannot read: {err.strerror}", path) from err
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"corrupt safetensors header: not valid JSON ({err})", path) from err
    if not isinstance(header, dict):
        raise CheckpointError("corrupt safetensors header: not a JSON object", path)
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    data_len = size - data_start
    infos: dict[str, TensorInfo] = {}
    end_max = 0
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"corrupt safetensors header: bad entry for tensor {name!r}", path) from err
        if dtype not in ITEMSIZE:
            raise CheckpointError(f"tensor {name!r} has unsupported dtype {dtype!r}", path)
        expected = math.prod(shape) * ITEMSIZE[dtype]
        if end - begin != expected:
            raise CheckpointError(
                f"header size mismatch for tensor {name!r}: shape {list(shape)} {dtype} needs "
                f"{expected} bytes but the header gives {end - begin}",
                path,
            )
        if begin < 0 or end > data_len:
            raise CheckpointError(
                f"header size mismatch for tensor {name!r}: it ends at data byte {end} "
                f"but the file holds only {data_len} data bytes (truncated?)",
                path,
            )
        end_max = max(end_max, end)
        infos[name] = TensorInfo(name, path, dtype, shape, data_start + begin, end - begin)
    if end_max != data_len:
        raise CheckpointError(
            f"header size mismatch: tensors cover {end_max} data bytes but the file holds {data_len}", path
        )
    return infos, metadata


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
