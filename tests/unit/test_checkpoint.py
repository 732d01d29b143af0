"""The checkpoint engine on tiny models: lazy reads, streaming writes, atomicity, sharding."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from warmstart.checkpoint.reader import Checkpoint
from warmstart.checkpoint.safetensors_format import encode_header, read_header
from warmstart.checkpoint.writer import OutputTensor, plan_shards, write_model
from warmstart.errors import CheckpointError, OutputExists, WarmstartError
from warmstart.plan import copy_model


def _all_tensors(directory):
    ckpt = Checkpoint(directory)
    return {n: ckpt.get(n) for n in ckpt.names()}


def test_reader_is_lazy_and_matches_safetensors(tiny_model):
    ckpt = Checkpoint(tiny_model)
    reference = load_file(str(tiny_model / "model.safetensors"))
    assert set(ckpt.names()) == set(reference)
    for name, tensor in reference.items():
        info = ckpt.info(name)
        assert info.shape == tuple(tensor.shape)
        assert torch.equal(ckpt.get(name), tensor)


def test_round_trip_is_bit_identical_and_loads(tiny_model, tmp_path):
    out = tmp_path / "copy"
    report = copy_model(tiny_model, out)
    assert report.computed_bytes == 0, "an unchanged copy must not decode tensors"
    before, after = _all_tensors(tiny_model), _all_tensors(out)
    assert before.keys() == after.keys()
    for name in before:
        assert before[name].dtype == after[name].dtype
        assert torch.equal(before[name], after[name]), name
    import transformers

    cfg = json.loads((out / "config.json").read_text())
    cls = transformers.BertModel if cfg["model_type"] == "bert" else transformers.AutoModelForCausalLM
    model = cls.from_pretrained(str(out))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_sharded_write_has_index_and_reads_back(tiny_llama, tmp_path):
    out = tmp_path / "sharded"
    copy_model(tiny_llama, out, max_shard_bytes=20_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert all((out / s).is_file() for s in shards)
    total = sum(t.numel() * t.element_size() for t in _all_tensors(tiny_llama).values())
    assert index["metadata"]["total_size"] == total
    # Every shard is a valid safetensors file for the safetensors library itself.
    for s in shards:
        with safe_open(str(out / s), "pt") as f:
            assert set(f.keys()) == {n for n, sh in index["weight_map"].items() if sh == s}
    for name, t in _all_tensors(tiny_llama).items():
        assert torch.equal(Checkpoint(out).get(name), t)
    import transformers

    transformers.AutoModelForCausalLM.from_pretrained(str(out))


def test_plan_shards_respects_limit_and_order():
    ts = [OutputTensor(f"t{i}", "F32", (n,)) for i, n in enumerate([10, 10, 30, 5, 5])]
    shards = plan_shards(ts, 80)  # 40, 40, 120(alone), 20+20
    assert [[t.name for t in s] for s in shards] == [["t0", "t1"], ["t2"], ["t3", "t4"]]


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_dtype_cast_only_floats(tiny_bert, tmp_path, dtype, torch_dtype):
    out = tmp_path / "cast"
    copy_model(tiny_bert, out, dtype=dtype)
    src, dst = _all_tensors(tiny_bert), _all_tensors(out)
    for name, t in src.items():
        if t.is_floating_point():
            assert dst[name].dtype == torch_dtype
            assert torch.equal(dst[name], t.to(torch_dtype))
        else:  # position_ids stay integers
            assert dst[name].dtype == t.dtype and torch.equal(dst[name], t)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == str(torch_dtype).split(".")[1]


def test_existing_output_refused_then_forced(tiny_llama, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(OutputExists):
        copy_model(tiny_llama, out)
    assert (out / "keep.txt").read_text() == "user data"
    # --force never deletes what warmstart did not write (issue 17): a folder holding a user's file is refused ...
    with pytest.raises(WarmstartError, match="keep.txt"):
        copy_model(tiny_llama, out, force=True)
    assert (out / "keep.txt").read_text() == "user data"
    # ... while an earlier warmstart output is replaced.
    (out / "keep.txt").unlink()
    out.rmdir()
    copy_model(tiny_llama, out)
    (out / "model.safetensors").write_bytes(b"stale")
    copy_model(tiny_llama, out, force=True)
    assert (out / "model.safetensors").stat().st_size > 100


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / "never"

    def boom():
        raise RuntimeError("interrupted")

    tensors = [OutputTensor("a", "F32", (2,), compute=lambda: torch.zeros(2)), OutputTensor("b", "F32", (2,), compute=boom)]
    with pytest.raises(RuntimeError):
        write_model(out, tensors, config={"model_type": "llama"})
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "the temporary sibling must be removed too"


def test_computed_shape_mismatch_is_caught(tmp_path):
    tensors = [OutputTensor("a", "F32", (3,), compute=lambda: torch.zeros(2))]
    with pytest.raises(ValueError, match="shape"):
        write_model(tmp_path / "o", tensors, config={})
    assert not (tmp_path / "o").exists()


def test_header_layout_matches_the_format(tmp_path):
    # Written by our streaming encoder, read by the safetensors library.
    entries = [("x", "F32", (2, 3)), ("y", "BF16", (5,)), ("z", "I64", (1,))]
    path = tmp_path / "f.safetensors"
    data = {"x": torch.arange(6, dtype=torch.float32).reshape(2, 3), "y": torch.ones(5, dtype=torch.bfloat16) * 3,
            "z": torch.tensor([7])}
    with open(path, "wb") as f:
        f.write(encode_header(entries, {"format": "pt"}))
        for name, _, _ in entries:
            f.write(data[name].contiguous().view(torch.uint8).numpy().tobytes())
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert (8 + n) % 8 == 0
    loaded = load_file(str(path))
    for k, v in data.items():
        assert torch.equal(loaded[k], v)
    infos, meta = read_header(path)
    assert meta == {"format": "pt"} and infos["y"].nbytes == 10


def test_bin_checkpoint_read_with_weights_only(tmp_path, tiny_llama):
    src = _all_tensors(tiny_llama)
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((tiny_llama / "config.json").read_text())
    torch.save(src, d / "pytorch_model.bin")
    ckpt = Checkpoint(d)
    assert ckpt.format == "bin"
    for name, t in src.items():
        assert torch.equal(ckpt.get(name), t)
    out = tmp_path / "converted"
    copy_model(d, out)
    assert (out / "model.safetensors").is_file()
    for name, t in src.items():
        assert torch.equal(Checkpoint(out).get(name), t)


def test_bin_with_code_is_refused(tmp_path, tiny_llama):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    d = tmp_path / "evil"
    d.mkdir()
    (d / "config.json").write_text((tiny_llama / "config.json").read_text())
    torch.save({"w": Evil()}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        Checkpoint(d)
