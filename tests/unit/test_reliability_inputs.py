"""Hostile and meaningless input: one line naming the file and the problem, exit 2, nothing written.

Every case of docs/reliability.md ("Input validation", "Limits") is here,
built from tiny generated files. A case that used to hang (a FIFO, an alias
bomb, an enormous size) runs under an alarm, so a regression fails the test
instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny
from safetensors.torch import load_file

from warmstart.cli import main


class Hung(Exception):
    pass


@pytest.fixture(autouse=True)
def alarm():
    """Fail, never hang: every test here must finish well within 60 s."""

    def fire(signum, frame):
        raise Hung("the command did not return within 60 s (blocked on input?)")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def refused(capsys, argv, *words, out: Path | None = None, named: Path | str | None = None) -> str:
    """Run the CLI; assert exit 2, one line without a traceback holding `words`, and no output left."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warmstart: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    if named is not None:
        assert str(named) in lines[0], (named, lines[0])
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temp output left"
    return lines[0]


# -- safetensors headers ---------------------------------------------------------

def _rewrite(st: Path, edit) -> None:
    """Apply `edit(header)` to a safetensors file's header, keeping its data bytes."""
    raw = st.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    text = edit(header)
    new = (text if isinstance(text, bytes) else json.dumps(header).encode()) if text is not None \
        else json.dumps(header).encode()
    new += b" " * ((-len(new)) % 8)
    st.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def _two_names(header):
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    return names[0], names[1]


def _share_range(h):
    a, b = _two_names(h)
    if h[a]["shape"] == h[b]["shape"] and h[a]["dtype"] == h[b]["dtype"]:
        h[b]["data_offsets"] = list(h[a]["data_offsets"])
    else:  # make b a copy of a's layout over a's bytes
        h[b] = dict(h[a])


def _negative_shape(h):
    a, _ = _two_names(h)
    shape = h[a]["shape"]
    h[a]["shape"] = [-shape[0], -int(np.prod(shape[1:]))] if len(shape) > 1 else [-1, -shape[0]]


def _begin_after_end(h):
    a, _ = _two_names(h)
    begin, end = h[a]["data_offsets"]
    h[a]["data_offsets"] = [end, begin]


def _dtype_list(h):
    h[_two_names(h)[0]]["dtype"] = ["F32"]


def _gap(h):
    a, _ = _two_names(h)
    h[a]["data_offsets"][0] += 4


def _metadata_not_strings(h):
    h["__metadata__"] = {"format": 1}


def _shape_floats(h):
    a, _ = _two_names(h)
    h[a]["shape"] = [float(d) for d in h[a]["shape"]]


def _duplicate_key(h):
    a, _ = _two_names(h)
    text = json.dumps(h)
    return (text[:-1] + f', "{a}": ' + json.dumps(h[a]) + "}").encode()


def _not_utf8(h):
    return json.dumps(h).encode()[:-1] + b'\xff\xfe}'


def _nan_offset(h):
    a, _ = _two_names(h)
    return json.dumps(h).replace(json.dumps(h[a]["data_offsets"]), "[NaN, 4]", 1).encode()


HEADER_CASES = {
    "shared_range": (_share_range, "overlaps"),
    "negative_shape": (_negative_shape, "negative dimension"),
    "begin_after_end": (_begin_after_end, "begin <= end"),
    "dtype_list": (_dtype_list, "dtype must be a string"),
    "gap": (_gap, "tensor"),
    "metadata_not_strings": (_metadata_not_strings, "__metadata__"),
    "shape_floats": (_shape_floats, "list of integers"),
    "duplicate_key": (_duplicate_key, "appears twice"),
    "not_utf8": (_not_utf8, "UTF-8"),
    "nan_offset": (_nan_offset, "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_bad_header_refused(case, tiny_llama, tmp_path, capsys):
    edit, words = HEADER_CASES[case]
    st = tiny_llama / "model.safetensors"
    _rewrite(st, edit)
    out = tmp_path / "out"
    line = refused(capsys, ["convert", tiny_llama, out, "--quiet"], words, out=out, named=st)
    if case not in ("not_utf8", "nan_offset", "duplicate_key", "metadata_not_strings"):
        assert "tensor '" in line  # names the tensor
    # the independent judge agrees that the file is invalid (or, for cases its
    # parser tolerates, our refusal is the stricter reading of the format)
    from safetensors import safe_open

    if case in ("shared_range", "negative_shape", "begin_after_end", "dtype_list", "gap", "not_utf8"):
        with pytest.raises(Exception):
            with safe_open(str(st), "pt") as f:
                for n in f.keys():
                    f.get_tensor(n)


def test_header_length_beyond_file(tiny_llama, tmp_path, capsys):
    st = tiny_llama / "model.safetensors"
    raw = st.read_bytes()
    st.write_bytes(struct.pack("<Q", 2**60) + raw[8:])
    refused(capsys, ["convert", tiny_llama, tmp_path / "out", "--quiet"], "header length", named=st)


def test_valid_model_still_converts_bit_for_bit(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["convert", str(tiny_llama), str(out), "--quiet"]) == 0
    a, b = load_file(str(tiny_llama / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- shard index -------------------------------------------------------------------

def _sharded(model: Path, weight_map_edit=None, text=None) -> Path:
    st = model / "model.safetensors"
    st.rename(model / "model-00001-of-00001.safetensors")
    names = list(load_file(str(model / "model-00001-of-00001.safetensors")))
    weight_map = {n: "model-00001-of-00001.safetensors" for n in names}
    if weight_map_edit:
        weight_map_edit(weight_map, names)
    index = model / "model.safetensors.index.json"
    index.write_text(text if text is not None else json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


INDEX_CASES = {
    "absolute": (lambda m, n: m.__setitem__(n[0], "/etc/passwd"), "absolute"),
    "escaping": (lambda m, n: m.__setitem__(n[0], "../x.safetensors"), "leaves the model directory"),
    "not_a_string": (lambda m, n: m.__setitem__(n[0], ["a"]), "not a file name"),
    "nul_byte": (lambda m, n: m.__setitem__(n[0], "model\x00.safetensors"), "not a file name"),
    "dot": (lambda m, n: m.__setitem__(n[0], "."), "not a file name"),
    "missing": (lambda m, n: m.__setitem__(n[0], "model-00002-of-00002.safetensors"), "missing shard"),
    "directory": (lambda m, n: m.__setitem__(n[0], "subdir"), "directory"),
    "config_as_shard": (lambda m, n: m.__setitem__(n[0], "config.json"), "safetensors"),
}


@pytest.mark.parametrize("case", sorted(INDEX_CASES))
def test_bad_shard_index_refused(case, tiny_llama, tmp_path, capsys):
    edit, words = INDEX_CASES[case]
    (tiny_llama / "subdir").mkdir()
    _sharded(tiny_llama, edit)
    out = tmp_path / "out"
    line = refused(capsys, ["convert", tiny_llama, out, "--quiet"], words, out=out)
    assert str(tiny_llama) in line


def test_shard_index_duplicate_key_and_fifo(tiny_llama, tmp_path, capsys):
    index = _sharded(tiny_llama)
    text = index.read_text()
    name = next(iter(json.loads(text)["weight_map"]))
    index.write_text(text[:-2] + f', "{name}": "model-00001-of-00001.safetensors"' + "}}")
    refused(capsys, ["convert", tiny_llama, tmp_path / "out", "--quiet"], "appears twice", named=index)
    # a shard that is a FIFO is refused without opening it
    index.write_text(json.dumps({"weight_map": {name: "pipe.safetensors"}}))
    os.mkfifo(tiny_llama / "pipe.safetensors")
    refused(capsys, ["convert", tiny_llama, tmp_path / "out", "--quiet"], "FIFO")


# -- regular files only ----------------------------------------------------------------

def test_fifo_weights_and_config_refused(tiny_llama, tmp_path, capsys):
    st = tiny_llama / "model.safetensors"
    st.unlink()
    os.mkfifo(st)
    start = time.monotonic()
    refused(capsys, ["convert", tiny_llama, tmp_path / "out", "--quiet"], "FIFO", named=st)
    refused(capsys, ["inspect", tiny_llama], "FIFO", named=st)
    cfg = tiny_llama / "config.json"
    cfg.unlink()
    os.mkfifo(cfg)
    refused(capsys, ["inspect", tiny_llama], "FIFO", named=cfg)
    assert time.monotonic() - start < 30


def test_fifo_and_device_inputs_refused(tmp_path, capsys):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    refused(capsys, ["run", fifo], "FIFO", named=fifo)
    refused(capsys, ["bench", fifo, tmp_path / "b"], "FIFO", named=fifo)
    refused(capsys, ["schedule", "show", fifo], "FIFO", named=fifo)
    refused(capsys, ["tokenizer", "train", fifo, tmp_path / "tok", "--vocab-size", "300"], "FIFO", named=fifo)
    refused(capsys, ["predict", fifo, "--fit-schedule", "cosine", "--schedule", "cosine"], "FIFO", named=fifo)
    gguf_fifo = tmp_path / "pipe.gguf"
    os.mkfifo(gguf_fifo)
    refused(capsys, ["import", gguf_fifo, tmp_path / "o"], "FIFO", named=gguf_fifo)
    if os.path.exists("/dev/zero"):  # a device streams without end
        refused(capsys, ["tokenizer", "train", "/dev/zero", tmp_path / "tok", "--vocab-size", "300"], "device")
        refused(capsys, ["run", "/dev/zero"], "device")


# -- legacy pickles ----------------------------------------------------------------------

def test_legacy_bin_is_read(tiny_llama, tmp_path, capsys):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(tiny_llama / "config.json", legacy)
    source = load_file(str(tiny_llama / "model.safetensors"))
    torch.save(source, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert (legacy / "pytorch_model.bin").read_bytes()[:2] != b"PK"  # really the pre-zip format
    out = tmp_path / "out"
    assert main(["convert", str(legacy), str(out), "--quiet"]) == 0
    got = load_file(str(out / "model.safetensors"))
    assert got.keys() == source.keys() and all(torch.equal(got[k], source[k]) for k in got)


def test_malicious_legacy_bin_still_refused(tiny_llama, tmp_path, capsys):
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(tiny_llama / "config.json", bad)
    with open(bad / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Payload()}, f)
    refused(capsys, ["convert", bad, tmp_path / "out", "--quiet"], "weights_only")
    assert not (tmp_path / "pwned").exists()


# -- YAML --------------------------------------------------------------------------------

LAUGHS = "a: &a [" + ",".join(['"lol"'] * 9) + "]\n" + "".join(
    f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("command", ["run", "bench", "schedule"])
def test_yaml_alias_bomb_refused(command, tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(LAUGHS)
    argv = {"run": ["run", path], "bench": ["bench", path, tmp_path / "b"],
            "schedule": ["schedule", "show", path]}[command]
    start = time.monotonic()
    refused(capsys, argv, "alias", named=path)
    assert time.monotonic() - start < 10


def test_yaml_recursive_large_and_binary(tmp_path, capsys):
    rec = tmp_path / "rec.yaml"
    rec.write_text("a: &a [1, *a]\n")
    refused(capsys, ["run", rec], "recursive alias", named=rec)
    big = tmp_path / "big.yaml"
    big.write_text("x: [" + "1," * 700_000 + "1]\n")
    refused(capsys, ["run", big], "bytes", named=big)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"model: \x00\x01\xff\xfe junk")
    refused(capsys, ["bench", binary, tmp_path / "b"], "binary", named=binary)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("model: caf\u00e9\n".encode("latin-1"))
    refused(capsys, ["run", latin], "UTF-8", named=latin)


def test_safe_yaml_keeps_ordinary_aliases():
    from warmstart.safe_yaml import parse_yaml

    data = parse_yaml("base: &b {lr: 0.1, steps: 3}\nrun1: *b\nrun2: {<<: *b, steps: 5}\n")
    assert data == {"base": {"lr": 0.1, "steps": 3}, "run1": {"lr": 0.1, "steps": 3},
                    "run2": {"lr": 0.1, "steps": 5}}


# -- limits --------------------------------------------------------------------------------

def test_enormous_grow_requests(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    refused(capsys, ["grow", tiny_llama, out, "--layers", 10**12, "--depth-method", "stack"], "limit", out=out)
    refused(capsys, ["grow", tiny_llama, out, "--layer-map", "0-1000000000"], "layer map refers to layer 2", out=out)
    refused(capsys, ["grow", tiny_llama, out, "--width-method", "hyperclone", "--width-mult", 100000],
            "elements", out=out)
    refused(capsys, ["grow", tiny_llama, out, "--width-method", "net2net", "--hidden", 10**9],
            "elements", out=out)
    # many small layer-map entries are bounded too
    refused(capsys, ["grow", tiny_llama, out, "--layer-map", ",".join(["0-1"] * 60_000)], "entries", out=out)


def test_element_limit_is_checked_against_the_output(tiny_llama, tmp_path, capsys, monkeypatch):
    """The limit compares the output's size, not a fixed number of layers: lower it and a real grow is refused."""
    from warmstart.checkpoint.reader import Checkpoint
    from warmstart.inputs import checkpoint_elements

    n = checkpoint_elements(Checkpoint(tiny_llama))
    monkeypatch.setenv("WARMSTART_MAX_ELEMENTS", str(2 * n))  # room for 4 layers of the 2-layer source, not 8
    out = tmp_path / "out"
    assert main(["grow", str(tiny_llama), str(out), "--layers", "4", "--depth-method", "stack", "--quiet"]) == 0
    refused(capsys, ["grow", tiny_llama, tmp_path / "o8", "--layers", 8, "--depth-method", "stack"], "limit")


def test_enormous_schedules(tmp_path, capsys):
    spec = "warmup:linear:10 > decay:cosine:1000000000000"
    refused(capsys, ["schedule", "show", spec], "rows", "--every")
    refused(capsys, ["schedule", "show", "cosine", "--steps", 10**12], "rows")
    png = tmp_path / "s.png"
    start = time.monotonic()
    assert main(["schedule", "plot", spec, "--out", str(png)]) == 0  # sampled, not 10**12 points
    assert png.stat().st_size > 1000 and time.monotonic() - start < 30


def test_plot_sample_keeps_phase_boundaries():
    from warmstart.schedules.plot import plot_steps
    from warmstart.schedules.spec import parse

    sched = parse("warmup:linear:10 > decay:cosine:1000000000000")
    xs = plot_steps(sched, sched.num_steps)
    assert len(xs) < 30_000 and xs[0] == 0 and xs[-1] == sched.num_steps - 1
    assert {9, 10, 11} <= set(xs) and xs == sorted(set(xs))


def _log(path: Path, steps=range(0, 1000, 10)) -> Path:
    lines = [json.dumps({"step": s, "lr": 3e-4 * min(1.0, s / 100), "loss": 5 - s / 500}) for s in steps]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_enormous_predictions_and_junk_logs(tmp_path, capsys):
    log = _log(tmp_path / "log.jsonl")
    fit = "peak=3e-4; warmup:linear:100 > constant:900"
    target = "peak=3e-4; warmup:linear:100 > decay:cosine:900"
    refused(capsys, ["predict", log, "--fit-schedule", fit, "--schedule", target, "--steps", 10**12], "steps")
    far = _log(tmp_path / "far.jsonl", steps=list(range(0, 1000, 10)) + [10**12])
    refused(capsys, ["predict", far, "--fit-schedule", "constant:10", "--schedule", target], "step", named=far)
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    refused(capsys, ["predict", junk, "--fit-schedule", fit, "--schedule", target], named=junk)
    junk_csv = tmp_path / "junk.csv"
    junk_csv.write_text("step,lr,loss\n" + '"' + "x" * 200_000 + '"\n')
    refused(capsys, ["predict", junk_csv, "--fit-schedule", fit, "--schedule", target], named=junk_csv)
    nested = tmp_path / "nested.jsonl"
    nested.write_text("[" * 100_000 + "\n")
    refused(capsys, ["predict", nested, "--fit-schedule", fit, "--schedule", target], "not JSON", named=nested)


def test_enormous_vocabularies(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    out = tmp_path / "tok"
    refused(capsys, ["tokenizer", "train", corpus, out, "--vocab-size", 10**9], "--vocab-size", "limit", out=out)
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2_000_000_000}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    big = tmp_path / "big.json"
    tok.save(str(big))
    model = build_tiny("llama", tmp_path / "m")
    _word_tokenizer(model / "tokenizer.json")
    refused(capsys, ["vocab", model, tmp_path / "v", "--tokenizer", big], "2000000000", out=tmp_path / "v",
            named=big)


def _bench_recipe(tmp_path: Path, hidden: int) -> Path:
    recipe = {"model": {"hidden": hidden, "layers": 2, "heads": 4, "seq_len": 32},
              "train": {"steps": 10, "batch_size": 4}, "arms": [{"name": "scratch"}]}
    import yaml

    path = tmp_path / f"bench-{hidden}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_enormous_bench_recipe(tmp_path, capsys):
    path = _bench_recipe(tmp_path, 10**9)
    refused(capsys, ["bench", path, tmp_path / "b"], "model", "elements", named=path)
    from warmstart.bench import recipe as R

    R.load(_bench_recipe(tmp_path, 64))  # a normal one passes the same check


def test_enormous_wsm_window(tmp_path, capsys):
    a, b = build_tiny("llama", tmp_path / "a", seed=0), build_tiny("llama", tmp_path / "b", seed=1)
    refused(capsys, ["merge", a, b, tmp_path / "o", "--method", "wsm", "--input-steps", f"0,{10**12}"], "--input-steps",
            out=tmp_path / "o")


# -- meaningless input -------------------------------------------------------------------------

def _word_tokenizer(path: Path, swap: bool = False) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, 128)}}
    if swap:
        vocab["w1"], vocab["w2"] = 2, 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def test_random_bytes_corpus_refused(tmp_path, capsys):
    rand = tmp_path / "random.txt"
    rand.write_bytes(np.random.default_rng(0).bytes(50_000))
    out = tmp_path / "tok"
    refused(capsys, ["tokenizer", "train", rand, out, "--vocab-size", 300], "not UTF-8 text", out=out, named=rand)
    model = build_tiny("llama", tmp_path / "m")
    _word_tokenizer(model / "tokenizer.json")
    new = _word_tokenizer(tmp_path / "new.json", swap=True)
    refused(capsys, ["vocab", model, tmp_path / "v", "--tokenizer", new, "--method", "focus", "--corpus", rand],
            "not UTF-8 text", out=tmp_path / "v", named=rand)


def test_real_text_with_a_stray_bad_byte_is_accepted(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_bytes(("the quick brown fox jumps over the lazy dog\n" * 300).encode() + b"\xff\n")
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", str(text), str(out), "--vocab-size", "300", "--quiet"]) == 0
    assert (out / "tokenizer.json").is_file()


def test_corpus_directory_named(tmp_path, capsys):
    d = tmp_path / "corpus"
    d.mkdir()
    refused(capsys, ["tokenizer", "train", d, tmp_path / "tok", "--vocab-size", 300], "is a directory", named=d)


def test_merge_same_checkpoint_twice(tiny_llama, tmp_path, capsys):
    out = tmp_path / "o"
    refused(capsys, ["merge", tiny_llama, str(tiny_llama) + "/", out], "given twice", out=out)
    copy = shutil.copytree(tiny_llama, tmp_path / "copy")
    refused(capsys, ["merge", tiny_llama, copy, out], "same weights", out=out, named=copy)
    link = tmp_path / "link"
    link.symlink_to(tiny_llama)
    refused(capsys, ["merge", tiny_llama, link, out], "given twice", out=out)


def test_verify_with_different_tokenizers_is_not_exact(tiny_llama, tmp_path, capsys):
    _word_tokenizer(tiny_llama / "tokenizer.json")
    same = shutil.copytree(tiny_llama, tmp_path / "same")
    other = shutil.copytree(tiny_llama, tmp_path / "other")
    _word_tokenizer(other / "tokenizer.json", swap=True)  # same size, ids 1 and 2 swapped
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{i}" for i in range(1, 60)))
    capsys.readouterr()
    assert main(["verify", str(tiny_llama), str(same), "--text", str(text), "--expect-exact"]) == 0
    assert "exact within" in capsys.readouterr().out
    assert main(["verify", str(tiny_llama), str(other), "--text", str(text), "--expect-exact"]) == 1
    printed = capsys.readouterr().out
    assert "tokenizers differ" in printed and "id 1" in printed


# -- GGUF ----------------------------------------------------------------------------------------

def _gguf(path: Path, *, heads=2, kv=1, tokens=True, k_rows=4, hidden=8) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_embedding_length(hidden)
    w.add_block_count(1)
    w.add_feed_forward_length(16)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_context_length(32)
    w.add_layer_norm_rms_eps(1e-5)
    toks = [chr(ord("a") + i) for i in range(26)] + ["<s>", "</s>"]
    if tokens:
        w.add_tokenizer_model("gpt2")
        w.add_token_list(toks)
        w.add_token_types([1] * len(toks))
        w.add_token_merges([])
        w.add_token_scores([0.0] * len(toks))
        w.add_bos_token_id(26)
        w.add_eos_token_id(27)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (len(toks), 8), "output_norm.weight": (8,), "blk.0.attn_q.weight": (8, 8),
              "blk.0.attn_k.weight": (k_rows, 8), "blk.0.attn_v.weight": (4, 8), "blk.0.attn_output.weight": (8, 8),
              "blk.0.ffn_gate.weight": (16, 8), "blk.0.ffn_up.weight": (16, 8), "blk.0.ffn_down.weight": (8, 16),
              "blk.0.attn_norm.weight": (8,), "blk.0.ffn_norm.weight": (8,)}
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_valid_imports(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["import", str(_gguf(tmp_path / "ok.gguf")), str(out), "--quiet"]) == 0
    assert "model.layers.0.self_attn.k_proj.weight" in load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("case,kwargs,words", [
    ("zero_heads", {"heads": 0}, "head_count is 0"),
    ("no_vocabulary", {"tokens": False}, "no vocabulary"),
    ("shape_vs_heads", {"kv": 2}, "blk.0.attn_k.weight"),
    ("kv_not_dividing", {"heads": 2, "kv": 3}, "KV heads"),
])
def test_gguf_bad_metadata(case, kwargs, words, tmp_path, capsys):
    path = _gguf(tmp_path / f"{case}.gguf", **kwargs)
    out = tmp_path / "o"
    refused(capsys, ["import", path, out, "--quiet"], words, out=out, named=path)


def test_import_directory_named_gguf(tmp_path, capsys):
    d = tmp_path / "model.gguf"
    d.mkdir()
    refused(capsys, ["import", d, tmp_path / "o"], "is a directory", named=d)


# -- messages that name what is wrong ----------------------------------------------------------------

def test_flags_named(tmp_path, capsys):
    a, b = build_tiny("llama", tmp_path / "a", seed=0), build_tiny("llama", tmp_path / "b", seed=1)
    refused(capsys, ["merge", a, b, tmp_path / "o", "--method", "wsm", "--wsm-end", "nan"], "--wsm-end")
    refused(capsys, ["schedule", "show", "cosine", "--steps", 100, "--peak", "inf"], "--peak")
    refused(capsys, ["schedule", "plot", "cosine", "--steps", 100, "--peak", "nan", "--out", tmp_path / "p.png"],
            "--peak")


def test_schedule_spec_directory(tmp_path, capsys):
    d = tmp_path / "spec.yaml"
    d.mkdir()
    refused(capsys, ["schedule", "show", d], "is a directory", named=d)
    refused(capsys, ["schedule", "show", str(tmp_path) + os.sep], "is a directory")


def test_shrink_to_a_bigger_width_says_so(tiny_llama, tmp_path, capsys):
    out = tmp_path / "o"
    refused(capsys, ["shrink", tiny_llama, out, "--hidden", 1024], "bigger than the source's 32", out=out)
    refused(capsys, ["grow", tiny_llama, out, "--width-method", "hyperclone", "--hidden", 16],
            "smaller than the source's 32", out=out)


# -- config sizes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,words", [
    ("num_hidden_layers", 10**12, "more than the limit"),
    ("num_hidden_layers", 2.5, "not a whole number"),
    ("hidden_size", -1, "must be positive"),
    ("num_attention_heads", 0, "must be positive"),
    ("hidden_size", float("inf"), "not an integer"),
    ("intermediate_size", [1], "not an integer"),
    ("max_position_embeddings", "many", "not an integer"),
])
def test_corrupt_config_sizes(key, value, words, tiny_llama, tmp_path, capsys):
    cfg = tiny_llama / "config.json"
    config = json.loads(cfg.read_text())
    config[key] = value
    cfg.write_text(json.dumps(config))  # inf is written as Infinity, which Python's json reads back
    refused(capsys, ["inspect", tiny_llama], key, words, named=cfg)
    out = tmp_path / "o"
    refused(capsys, ["grow", tiny_llama, out, "--layers", 4, "--depth-method", "stack"], key, out=out)


def test_device_as_weights(tiny_llama, tmp_path, capsys):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    st = tiny_llama / "model.safetensors"
    st.unlink()
    st.symlink_to("/dev/zero")
    refused(capsys, ["convert", tiny_llama, tmp_path / "o", "--quiet"], "device", named=st)


def test_pickle_that_is_not_a_state_dict(tiny_llama, tmp_path, capsys):
    d = tmp_path / "nested"
    d.mkdir()
    shutil.copy(tiny_llama / "config.json", d)
    torch.save({"model": load_file(str(tiny_llama / "model.safetensors")), "step": 3}, d / "pytorch_model.bin")
    refused(capsys, ["convert", d, tmp_path / "o", "--quiet"], "not a state dict", named=d / "pytorch_model.bin")


def test_bench_corpus_of_random_bytes(tmp_path, capsys):
    rand = tmp_path / "random.txt"
    rand.write_bytes(np.random.default_rng(1).bytes(20_000))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("corpus: random.txt\nmodel: {hidden: 32, layers: 2, heads: 4, seq_len: 16}\n"
                      "train: {steps: 2, batch_size: 2}\narms: [{name: scratch}]\n")
    out = tmp_path / "bench-out"
    refused(capsys, ["bench", recipe, out, "--quiet"], "not UTF-8 text", named=rand)
    assert not out.exists()


def test_more_junk(tiny_llama, tmp_path, capsys):
    big = tmp_path / "bigint.yaml"
    big.write_text("model: " + "9" * 5000 + "\n")  # PyYAML raises ValueError building this int
    refused(capsys, ["run", big], "not valid YAML", named=big)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(tiny_llama / "config.json", empty)
    (empty / "model.safetensors").write_bytes(struct.pack("<Q", 8) + b"{}      ")
    refused(capsys, ["convert", empty, tmp_path / "o", "--quiet"], "no tensors", out=tmp_path / "o", named=empty)
    junk = tmp_path / "junk.txt"
    junk.write_bytes(np.random.default_rng(2).bytes(5000))
    refused(capsys, ["verify", tiny_llama, tiny_llama, "--text", junk], "not UTF-8 text", named=junk)


@pytest.mark.parametrize("flag,value,words", [
    ("--aux-epochs", 10**9, "limit"), ("--aux-dim", 10**9, "limit"), ("--k", 10**9, "limit"),
    ("--temperature", "nan", "finite"), ("--temperature", "-1", "> 0"), ("--aux-dim", 0, ">= 1"),
])
def test_vocab_options_bounded(flag, value, words, tmp_path, capsys):
    model = build_tiny("llama", tmp_path / "m")
    _word_tokenizer(model / "tokenizer.json")
    new = _word_tokenizer(tmp_path / "new.json", swap=True)
    corpus = tmp_path / "c.txt"
    corpus.write_text("w1 w2 w3 w4\n" * 50)
    out = tmp_path / "v"
    refused(capsys, ["vocab", model, out, "--tokenizer", new, "--method", "focus", "--corpus", corpus, flag, value],
            flag, words, out=out)


@pytest.mark.parametrize("edit,words", [
    (lambda r: r.update(seeds=10**9), "seeds"),
    (lambda r: r["train"].update(steps=10**12), "train.steps"),
    (lambda r: r["model"].update(seq_len=10**9), "activations"),
    (lambda r: r.update(tokenizer={"vocab_size": 2**31}), "tokenizer.vocab_size"),
])
def test_bench_recipe_counts_bounded(edit, words, tmp_path):
    from warmstart.bench import recipe as R

    recipe = {"model": {"hidden": 32, "layers": 2, "heads": 4, "seq_len": 16},
              "train": {"steps": 2, "batch_size": 2}, "arms": [{"name": "scratch"}]}
    edit(recipe)
    with pytest.raises(R.RecipeError) as info:
        R.parse(recipe, "r.yaml")
    assert words in info.value.line() and "limit" in info.value.line()


def test_fifo_side_files_in_a_model_dir_are_not_read(tiny_llama, tmp_path, capsys):
    """Optional side files (provenance record, sentence-transformers modules) that are FIFOs are skipped, not read."""
    os.mkfifo(tiny_llama / "warmstart.json")
    os.mkfifo(tiny_llama / "modules.json")
    assert main(["inspect", str(tiny_llama)]) == 0
    assert main(["convert", str(tiny_llama), str(tmp_path / "o"), "--quiet"]) == 0
    assert (tmp_path / "o" / "model.safetensors").is_file()


@pytest.mark.parametrize("name,content", [
    ("tokenizer.json", b'{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0'),  # truncated
    ("tokenizer_config.json", b"\x00\x01not json at all"),
    ("generation_config.json", b"{'single': 'quotes'}"),
])
def test_corrupt_side_json_is_refused_not_copied(name, content, tiny_llama, tmp_path, capsys):
    """A side file that travels with the weights must parse; a corrupt one is named, never copied into an output."""
    (tiny_llama / name).write_bytes(content)
    for argv in (["convert", tiny_llama], ["shrink", tiny_llama, "--layers", "1"]):
        out = tmp_path / "o"
        refused(capsys, [*argv[:2], out, *argv[2:]], name, out=out)


@pytest.mark.parametrize("value", ["0", "-3", "1000000000", "2.5"])
def test_thread_counts_bounded(value, tiny_llama, tmp_path, capsys):
    out = tmp_path / "m"
    copy = build_tiny("llama", tmp_path / "other", seed=1)
    try:
        code = main(["merge", str(tiny_llama), str(copy), str(out), "--threads", value])
    except SystemExit as stop:  # argparse's own refusal of a value that is not an integer
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "--threads" in err[-1], err
    assert not out.exists()
