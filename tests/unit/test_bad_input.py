"""Bad input: one line naming the file and the problem, exit code 2, no output left behind."""

from __future__ import annotations

import json
import struct

import pytest

from warmstart.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def _break(kind: str, model):
    """Damage a copy of a tiny model in one specific way; return (path, the file the error must name)."""
    st = model / "model.safetensors"
    if kind == "missing_config":
        (model / "config.json").unlink()
        return model / "config.json"
    if kind == "corrupt_config":
        (model / "config.json").write_text('{"model_type": "llama",')
        return model / "config.json"
    if kind == "missing_weights":
        st.unlink()
        return model
    if kind == "corrupt_safetensors":
        st.write_bytes(b"\x00\x01garbage")
        return st
    if kind == "header_size_mismatch":
        raw = st.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        name = next(k for k in header if k != "__metadata__")
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin, end + 4]
        new = json.dumps(header).encode()
        new += b" " * ((-len(new)) % 8)
        st.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
        return st
    if kind == "truncated":
        raw = st.read_bytes()
        st.write_bytes(raw[: len(raw) - 100])
        return st
    if kind in ("missing_shard", "escaping_shard"):
        from safetensors import safe_open

        with safe_open(str(st), "pt") as f:
            names = list(f.keys())
        shard = "model-00002-of-00002.safetensors" if kind == "missing_shard" else "../../etc/passwd"
        st.rename(model / "model-00001-of-00002.safetensors")
        weight_map = {n: "model-00001-of-00002.safetensors" for n in names}
        weight_map[names[-1]] = shard
        index = model / "model.safetensors.index.json"
        index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        return index
    if kind == "unsupported":
        cfg = json.loads((model / "config.json").read_text())
        cfg["model_type"] = "mamba"
        (model / "config.json").write_text(json.dumps(cfg))
        return model / "config.json"
    raise ValueError(kind)


KINDS = ["missing_config", "corrupt_config", "missing_weights", "corrupt_safetensors", "header_size_mismatch",
         "truncated", "missing_shard", "escaping_shard", "unsupported"]

MESSAGES = {
    "missing_config": "missing config.json",
    "corrupt_config": "corrupt config.json",
    "missing_weights": "no weights found",
    "corrupt_safetensors": "safetensors",
    "header_size_mismatch": "header size mismatch",
    "truncated": "header size mismatch",
    "missing_shard": "missing shard",
    "escaping_shard": "leaves the model directory",
    "unsupported": "unsupported architecture 'mamba'",
}


# convert copies any checkpoint whatever its architecture; only inspect and
# the operations need a known family.
CASES = [(k, c) for k in KINDS for c in ("inspect", "convert") if not (k == "unsupported" and c == "convert")]


@pytest.mark.parametrize("kind,command", CASES)
def test_bad_checkpoint(kind, command, tiny_llama, tmp_path, capsys):
    named = _break(kind, tiny_llama)
    out = tmp_path / "out"
    argv = [command, str(tiny_llama)] + ([str(out), "--quiet"] if command == "convert" else [])
    code, err = _run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert str(named) in lines[0], (named, lines[0])
    assert MESSAGES[kind] in lines[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")], "no temporary output left"


def test_unsupported_lists_families(tiny_llama, capsys):
    _break("unsupported", tiny_llama)
    code, err = _run(capsys, "inspect", str(tiny_llama))
    assert code == 2
    for t in ("llama", "mistral", "qwen2", "gpt2", "bert"):
        assert t in err


def test_existing_output(tiny_llama, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    code, err = _run(capsys, "convert", str(tiny_llama), str(out), "--quiet")
    assert code == 2 and "already exists" in err and str(out) in err
    assert list(out.iterdir()) == []


def test_debug_shows_traceback(tiny_llama, capsys):
    _break("corrupt_config", tiny_llama)
    from warmstart.errors import CheckpointError

    with pytest.raises(CheckpointError):
        main(["--debug", "inspect", str(tiny_llama)])


def test_bad_size_and_dtype(tiny_llama, tmp_path, capsys):
    code, err = _run(capsys, "convert", str(tiny_llama), str(tmp_path / "o"), "--max-shard-size", "lots")
    assert code == 2 and "lots" in err
    assert not (tmp_path / "o").exists()


def test_gguf_bad_file(tmp_path, capsys):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf file at all")
    code, err = _run(capsys, "import", str(bad), str(tmp_path / "o"), "--quiet")
    assert code == 2 and str(bad) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    code, err = _run(capsys, "import", str(tmp_path / "missing.gguf"), str(tmp_path / "o"))
    assert code == 2 and "no such GGUF file" in err
