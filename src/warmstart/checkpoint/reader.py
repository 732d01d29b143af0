"""Lazy reader of Hugging Face model directories.

Opening a checkpoint reads only config.json and the safetensors headers;
tensor data is read one tensor at a time, on demand, through the safetensors
library's memory map. So listing names, shapes and dtypes (``inspect``) costs
no tensor reads and needs no torch import, and a 70B checkpoint can be
processed on a small machine.

Supported layouts: ``model.safetensors``; sharded safetensors with
``model.safetensors.index.json``; and pickled ``pytorch_model.bin`` (sharded
or not), read only with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from warmstart.checkpoint.dtypes import torch_to_code
from warmstart.checkpoint.safetensors_format import TensorInfo, read_header, safe_join
from warmstart.errors import CheckpointError
from warmstart.inputs import MAX_TEXT_BYTES, check_json_file, open_regular, require_regular_file

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"

# Files copied along with the weights when a model is written back out.
def fingerprint(model_dir: str | Path) -> str:
    """A hash that changes when the model's content does, without reading its weights.

    It covers config.json and, for every weight file, its name, size and
    safetensors header (names, dtypes, shapes and byte offsets of every
    tensor); other weight files count by name and size. Cheap on a 70B
    checkpoint, where a full content hash would read every byte.
    """
    h = hashlib.sha256()
    root = Path(model_dir)
    files = [root / "config.json", *root.glob("*.safetensors"), *root.glob("*.bin"), *root.glob("*.index.json")]
    for f in sorted(set(files)):
        if not f.is_file():
            continue
        h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            if f.suffix == ".safetensors":
                head = fh.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else 0
                h.update(head + fh.read(min(n, 100_000_000)))
            elif f.suffix == ".json":
                h.update(fh.read(10_000_000))
    return "sha256:" + h.hexdigest()


SENTENCE_TRANSFORMERS_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
    "spiece.model", "sentencepiece.bpe.model",
)


def load_json(path: Path, what: str, *, strict: bool = False) -> Any:
    """A JSON file from a model directory: a regular file, UTF-8, at most 16 MB.

    `strict` also refuses a key given twice and NaN/Infinity (for files whose
    every value is trusted to name or size something, like a shard index).
    """
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"missing {what}", path)
    with open_regular(path, what, CheckpointError) as f:
        try:
            raw = f.read(MAX_TEXT_BYTES + 1)
        except OSError as err:
            raise CheckpointError(f"cannot read {what}: {err.strerror}", path) from err
    if len(raw) > MAX_TEXT_BYTES:
        raise CheckpointError(f"{what} is larger than {MAX_TEXT_BYTES} bytes", path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(f"corrupt {what}: not valid UTF-8 (byte {err.start})", path) from None
    try:
        if strict:
            return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"corrupt {what}: {err.msg} at line {err.lineno} column {err.colno}", path) from err
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"corrupt {what}: {err}", path) from None


def _unique_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _no_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _is_plain_file_name(name: str) -> bool:
    return bool(name) and "\x00" not in name and name not in (".", "..")


class Checkpoint:
    """A model directory opened lazily: config, tensor table, per-tensor reads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._side_files_checked = False
        if not self.path.exists():
            raise CheckpointError("no such model directory", self.path)
        if not self.path.is_dir():
            raise CheckpointError("not a model directory (expected a folder with config.json)", self.path)
        self.config: dict[str, Any] = load_json(self.path / "config.json", "config.json")
        if not isinstance(self.config, dict):
            raise CheckpointError("corrupt config.json: not a JSON object", self.path / "config.json")
        self._bin_cache: dict[Path, dict[str, Any]] = {}
        self.format, self.tensors = self._scan()
        if not self.tensors:
            raise CheckpointError("the weights hold no tensors", self.path)

    # -- discovery ---------------------------------------------------------
    def _scan(self) -> tuple[str, dict[str, TensorInfo]]:
        root = self.path
        if (root / SAFETENSORS_INDEX).exists():
            return "safetensors", self._scan_index(root / SAFETENSORS_INDEX, safetensors=True)
        if (root / SAFETENSORS_SINGLE).exists():
            infos, _ = read_header(root / SAFETENSORS_SINGLE)
            return "safetensors", infos
        if (root / BIN_INDEX).exists():
            return "bin", self._scan_index(root / BIN_INDEX, safetensors=False)
        if (root / BIN_SINGLE).exists():
            return "bin", self._scan_bin(root / BIN_SINGLE, None)
        raise CheckpointError(
            f"no weights found (expected {SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX} or {BIN_SINGLE})", root
        )

    def _scan_index(self, index_path: Path, safetensors: bool) -> dict[str, TensorInfo]:
        index = load_json(index_path, "shard index", strict=True)
        if not isinstance(index, dict):
            raise CheckpointError("corrupt shard index: not a JSON object", index_path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError("corrupt shard index: no weight_map", index_path)
        metadata = index.get("metadata", {})
        if metadata is not None and not isinstance(metadata, dict):
            raise CheckpointError("corrupt shard index: metadata is not a JSON object", index_path)
        total = (metadata or {}).get("total_size")
        if total is not None and (isinstance(total, bool) or not isinstance(total, (int, float)) or total < 0):
            raise CheckpointError(f"corrupt shard index: metadata.total_size {total!r} is not a byte count", index_path)
        shards: dict[str, Path] = {}
        for tensor, shard in weight_map.items():
            if not isinstance(shard, str):
                raise CheckpointError(
                    f"corrupt shard index: tensor {tensor!r} maps to {shard!r}, not a file name", index_path)
            if shard in shards:
                continue
            if not _is_plain_file_name(shard):
                raise CheckpointError(f"corrupt shard index: tensor {tensor!r} maps to {shard!r}, not a file name",
                                      index_path)
            file = safe_join(self.path, shard, index_path)
            if not file.exists():
                raise CheckpointError(f"shard index names a missing shard {shard!r} (for tensor {tensor!r})",
                                      index_path)
            if file == index_path.resolve():
                raise CheckpointError(f"shard index names itself as shard {shard!r}", index_path)
            require_regular_file(file, f"shard {shard!r}", CheckpointError)
            shards[shard] = file
        infos: dict[str, TensorInfo] = {}
        for shard, file in shards.items():
            if safetensors:
                found, _ = read_header(file)
            else:
                found = self._scan_bin(file, index_path)
            for name, info in found.items():
                if weight_map.get(name) != shard:
                    continue  # tolerate extra tensors the index does not claim
                infos[name] = info
        missing = [n for n in weight_map if n not in infos]
        if missing:
            raise CheckpointError(
                f"shard index lists tensor {missing[0]!r} in {weight_map[missing[0]]!r}, which does not hold it",
                index_path,
            )
        return infos

    def _scan_bin(self, file: Path, referrer: Path | None) -> dict[str, TensorInfo]:
        state = self._load_bin(file)

        infos = {}
        for name, t in state.items():
            try:
                code = torch_to_code(t.dtype)
            except KeyError:
                raise CheckpointError(f"tensor {name!r} has unsupported dtype {t.dtype}", file) from None
            infos[name] = TensorInfo(name, file, code, tuple(t.shape), -1, t.numel() * t.element_size())
        return infos

    def _load_bin(self, file: Path) -> dict[str, Any]:
        """Read a pickled checkpoint safely: weights only, memory-mapped."""
        if file in self._bin_cache:
            return self._bin_cache[file]
        import torch

        # Zip-format checkpoints (torch >= 1.6) are memory-mapped; the legacy
        # pre-zip format cannot be, and is read whole, still weights_only.
        with open_regular(file, "pickled checkpoint", CheckpointError) as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
        except Exception as err:  # torch raises many types for bad pickles
            raise CheckpointError(f"cannot read pickled checkpoint safely (weights_only): {err}".splitlines()[0], file) from err
        if not isinstance(state, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise CheckpointError("pickled checkpoint is not a state dict (names to tensors)", file)
        self._bin_cache[file] = state
        return state

    # -- access ------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"no tensor named {name!r}", self.path) from None

    def get(self, name: str):
        """Read one tensor into memory (a torch.Tensor)."""
        info = self.info(name)
        if self.format == "bin":
            return self._load_bin(info.file)[name].contiguous()
        from safetensors import safe_open

        # A handle per read, on purpose: safetensors returns views of a memory
        # map, and pages touched through a long-lived map stay resident, so a
        # cast of every tensor of a 1 GB file peaked at 1.38 GB RSS with one
        # shared handle and 0.51 GB with a handle per read (the map then lives
        # only as long as the returned tensor).
        try:
            with safe_open(str(info.file), framework="pt", device="cpu") as handle:
                return handle.get_tensor(name)
        except Exception as err:
            raise CheckpointError(f"cannot read tensor {name!r}: {err}", info.file) from err

    def byte_range(self, name: str) -> tuple[Path, int, int] | None:
        """(file, offset, nbytes) of a tensor's raw data, when it can be copied as bytes."""
        info = self.info(name)
        if self.format != "safetensors":
            return None
        return info.file, info.offset, info.nbytes

    def extra_files(self) -> list[Path]:
        """Tokenizer, generation and sentence-transformers files that travel with the weights.

        A sentence-transformers model keeps its pooling and normalization in
        module folders named by ``modules.json`` (``1_Pooling/config.json``);
        without them ``SentenceTransformer`` loads the weights with default
        pooling and no normalization. Paths are relative to the model folder
        and never leave it.
        """
        names = [*TOKENIZER_FILES, "generation_config.json", *SENTENCE_TRANSFORMERS_FILES]
        files = [self.path / n for n in names if (self.path / n).is_file()]
        if not self._side_files_checked:  # a corrupt tokenizer.json is refused, never copied into an output
            for f in files:
                if f.suffix == ".json":
                    check_json_file(f, f.name, CheckpointError)
            self._side_files_checked = True
        for module in self._sentence_transformer_modules():
            folder = safe_join(self.path, module, self.path / "modules.json")
            if folder.is_dir():
                root = self.path.resolve()
                files += sorted(self.path / p.relative_to(root) for p in folder.rglob("*")
                                if p.is_file() and not p.is_symlink())
        return files

    def _sentence_transformer_modules(self) -> list[str]:
        path = self.path / "modules.json"
        if not path.is_file():  # absent, or a FIFO/device that must not be read
            return []
        try:
            modules = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return []
        if not isinstance(modules, list):
            return []
        return [m["path"] for m in modules if isinstance(m, dict) and isinstance(m.get("path"), str) and m["path"]]

    def close(self) -> None:
        self._bin_cache.clear()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, {len(self.tensors)} tensors)"
