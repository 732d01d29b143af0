"""Fuzz the safetensors header and shard index parsers through the CLI.

Random mutations of a valid header (and of a valid shard index) must either be
refused with one line, exit code 2 and nothing at the output, or, when the
mutation happens to leave a valid checkpoint, produce an output that the
safetensors library itself reads back, tensor for tensor.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from warmstart.cli import main

TENSORS = {  # name -> (dtype, shape)
    "a.weight": ("F32", [2, 3]),
    "b.bias": ("F16", [4]),
    "c.ids": ("I64", [1, 2]),
}
ITEMSIZE = {"F32": 4, "F16": 2, "I64": 8}


def _valid_header() -> dict:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape) in TENSORS.items():
        n = int(np.prod(shape)) * ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    return header


DATA = bytes(range(256))[: sum(int(np.prod(s)) * ITEMSIZE[d] for d, s in TENSORS.values())]


def _encode(header_text: str | bytes, data: bytes = DATA, length: int | None = None) -> bytes:
    raw = header_text.encode("utf-8") if isinstance(header_text, str) else header_text
    raw += b" " * ((-len(raw)) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=False), st.text(max_size=6),
    st.lists(st.integers(min_value=-3, max_value=40), max_size=4),
    st.sampled_from(["F32", "F16", "I64", "BF16", "U8", "F64", "f32", "complex", ""]),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELDS = st.sampled_from(["dtype", "shape", "data_offsets", "extra"])
NAMES = st.sampled_from(list(TENSORS) + ["__metadata__"])


@st.composite
def header_mutation(draw) -> bytes:
    """A valid file with one to three random edits of its header, JSON or bytes."""
    header = _valid_header()
    data = DATA
    length = None
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set", "delete", "rename", "offset", "data", "length", "bytes", "dup", "shape"]))
        name = draw(NAMES)
        if op == "set" and name in header and isinstance(header[name], dict):
            header[name][draw(FIELDS)] = draw(JUNK)
        elif op == "set":
            header[name] = draw(JUNK)
        elif op == "delete" and name in header:
            del header[name]
        elif op == "rename" and name in header:
            header[draw(st.text(min_size=1, max_size=5))] = header.pop(name)
        elif op == "offset" and name in TENSORS and isinstance(header.get(name), dict):
            header[name]["data_offsets"] = [draw(st.integers(-4, 80)), draw(st.integers(-4, 80))]
        elif op == "shape" and name in TENSORS and isinstance(header.get(name), dict):
            header[name]["shape"] = draw(st.lists(st.integers(-3, 8), max_size=3))
        elif op == "data":
            cut = draw(st.integers(-8, 8))
            data = data[:cut] if cut < 0 else data + b"\0" * cut
        elif op == "length":
            length = draw(st.sampled_from([0, 1, 7, 2**63, 2**64 - 1, 10**9])) if draw(st.booleans()) else None
    text = json.dumps(header)
    tail = draw(st.sampled_from(["none", "bytes", "dup", "nan", "utf8"]))
    if tail == "dup":  # the same tensor key twice
        text = text[:-1] + ', "a.weight": ' + json.dumps(_valid_header()["a.weight"]) + "}"
    elif tail == "nan":
        text = text.replace("[0,", "[NaN,", 1)
    raw = text.encode("utf-8")
    if tail == "bytes":
        pos = draw(st.integers(0, max(0, len(raw) - 1)))
        raw = raw[:pos] + bytes([draw(st.integers(0, 255))]) + raw[pos + 1:]
    elif tail == "utf8":
        raw = raw[:-1] + b'\xff"}'
    return _encode(raw, data, length)


def _convert(model: Path, out: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["convert", str(model), str(out), "--quiet"])
    return code, err.getvalue()


def _check_promise(model: Path, out: Path) -> None:
    code, err = _convert(model, out)
    event("accepted" if code == 0 else "refused")
    assert "Traceback" not in err
    if code == 0:
        from safetensors import safe_open

        files = sorted(out.glob("*.safetensors"))
        assert files, "a successful convert wrote weights"
        for file in files:
            with safe_open(str(file), "np") as f:
                for name in f.keys():
                    f.get_tensor(name)
    else:
        assert code == 2, (code, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert str(model) in lines[0], lines[0]
        assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".out")]
    assert not leftovers, leftovers


def _model_dir(root: Path) -> Path:
    model = root / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return model


def test_valid_file_converts(tmp_path):
    model = _model_dir(tmp_path)
    (model / "model.safetensors").write_bytes(_encode(json.dumps(_valid_header())))
    code, err = _convert(model, tmp_path / "out")
    assert code == 0, err
    from safetensors.numpy import load_file

    loaded = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert loaded["a.weight"].tobytes() == DATA[:24]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=header_mutation())
def test_fuzz_safetensors_header(blob):
    with tempfile.TemporaryDirectory() as tmp:
        model = _model_dir(Path(tmp))
        (model / "model.safetensors").write_bytes(blob)
        _check_promise(model, Path(tmp) / "out")


SHARD_NAMES = st.one_of(
    st.sampled_from(["model-1.safetensors", "model-2.safetensors", "../model-1.safetensors", "/etc/passwd",
                     "", ".", "..", "config.json", "model.safetensors.index.json", "sub/../model-1.safetensors",
                     "missing.safetensors", "model-1.safetensors\x00"]),
    st.text(max_size=8), st.integers(), st.none(), st.lists(st.text(max_size=3), max_size=2),
)


@st.composite
def index_mutation(draw) -> str:
    weight_map = {"a.weight": "model-1.safetensors", "b.bias": "model-1.safetensors", "c.ids": "model-2.safetensors"}
    index: dict = {"metadata": {"total_size": len(DATA)}, "weight_map": weight_map}
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["shard", "tensor", "drop", "meta", "top", "raw"]))
        if op == "shard":
            weight_map[draw(st.sampled_from(list(TENSORS)))] = draw(SHARD_NAMES)
        elif op == "tensor":
            weight_map[draw(st.text(max_size=6))] = draw(SHARD_NAMES)
        elif op == "drop" and weight_map:
            weight_map.pop(draw(st.sampled_from(sorted(weight_map))))
        elif op == "meta":
            index["metadata"] = draw(st.one_of(JUNK, st.fixed_dictionaries({"total_size": JUNK})))
        elif op == "top":
            index[draw(st.sampled_from(["weight_map", "metadata"]))] = draw(JUNK)
    text = json.dumps(index)
    if draw(st.booleans()):
        pos = draw(st.integers(0, len(text) - 1))
        text = text[:pos] + draw(st.sampled_from(['"', "{", "}", ",", "\\", "NaN", ""])) + text[pos + 1:]
    return text


def _sharded_model(root: Path) -> Path:
    model = _model_dir(root)
    header = _valid_header()
    first = {"__metadata__": header["__metadata__"], "a.weight": header["a.weight"], "b.bias": header["b.bias"]}
    end = header["b.bias"]["data_offsets"][1]
    second = {"c.ids": {**header["c.ids"], "data_offsets": [0, len(DATA) - end]}}
    (model / "model-1.safetensors").write_bytes(_encode(json.dumps(first), DATA[:end]))
    (model / "model-2.safetensors").write_bytes(_encode(json.dumps(second), DATA[end:]))
    return model


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=index_mutation())
def test_fuzz_shard_index(text):
    with tempfile.TemporaryDirectory() as tmp:
        model = _sharded_model(Path(tmp))
        (model / "model.safetensors.index.json").write_text(text)
        _check_promise(model, Path(tmp) / "out")


def test_valid_index_converts(tmp_path):
    model = _sharded_model(tmp_path)
    weight_map = {"a.weight": "model-1.safetensors", "b.bias": "model-1.safetensors", "c.ids": "model-2.safetensors"}
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    code, err = _convert(model, tmp_path / "out")
    assert code == 0, err
    shutil.rmtree(tmp_path / "out")
