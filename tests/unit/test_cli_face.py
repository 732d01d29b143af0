"""One face for users (issue 12): every --help ends with examples and lists its choices; --dry-run and --json on
the commands that write models; the Python API is what the CLI runs; provenance in every output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import warmstart
from tests.conftest import build_tiny
from warmstart.cli import command_names, main
from warmstart.merge.methods import METHODS as MERGE_METHODS
from warmstart.ops import registry
from warmstart.vocab.methods import METHODS as VOCAB_METHODS

SUBCOMMANDS = [[c] for c in command_names()] + [["schedule", "show"], ["schedule", "plot"], ["tokenizer", "train"]]


def _help(capsys, argv) -> str:
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=[" ".join(a) for a in SUBCOMMANDS])
def test_every_help_ends_with_real_examples(capsys, argv):
    text = _help(capsys, argv)
    tail = text[text.rindex("examples:"):].splitlines()[1:]
    assert tail and all(line.strip().startswith(f"warmstart {argv[0]}") for line in tail if line.strip()), text


def test_choices_come_from_the_registries(capsys):
    grow = _help(capsys, ["grow"])
    for name in [*registry.names("depth"), *registry.names("width")]:
        if name != "layer_map":
            assert name in grow
    vocab = _help(capsys, ["vocab"])
    assert all(name in vocab for name in VOCAB_METHODS.names())
    merge = _help(capsys, ["merge"])
    assert all(name in merge for name in MERGE_METHODS.names())


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("argv", [
    ["grow", "{src}", "{out}", "--layers", "4", "--depth-method", "expand"],
    ["shrink", "{src}", "{out}", "--layers", "1"],
    ["convert", "{src}", "{out}", "--dtype", "bf16"],
    ["merge", "{src}", "{src2}", "{out}"],
])
def test_dry_run_writes_nothing_and_says_what_it_would(tmp_path, capsys, argv):
    src = build_tiny("llama", tmp_path / "src")
    src2 = build_tiny("llama", tmp_path / "src2", seed=1)
    out = tmp_path / "out"
    before = _files(tmp_path)
    argv = [a.format(src=src, src2=src2, out=out) for a in argv]
    capsys.readouterr()
    assert main([*argv, "--dry-run", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert f"would write {out}" in text
    assert _files(tmp_path) == before  # no output, no temporary, no lock
    assert main([*argv, "--dry-run", "--json", "--quiet"]) == 0
    data = json.loads(capsys.readouterr().out)
    write = data.get("write", data)
    assert write["dry_run"] is True and write["total_bytes"] > 0
    # the plan's bytes are those a real run writes
    assert main([*argv, "--quiet"]) == 0
    capsys.readouterr()
    weights = sum(p.stat().st_size - 8 - int.from_bytes(p.read_bytes()[:8], "little")
                  for p in out.glob("*.safetensors"))
    assert weights == write["total_bytes"]


def test_dry_run_of_a_chain_names_each_tensors_origin(tiny_llama, tmp_path, capsys):
    capsys.readouterr()
    assert main(["grow", tiny_llama, tmp_path / "o", "--layers", "4", "--depth-method", "expand", "--dry-run",
                 "--json", "--quiet"]) == 0
    tensors = {t["name"]: t["from"] for t in json.loads(capsys.readouterr().out)["write"]["tensors"]}
    # expand 2 -> 4: blocks [0, 0*, 1, 1*]; the new blocks' residual outputs are new (zero), the rest copies
    assert tensors["model.layers.2.mlp.up_proj.weight"] == "copy of model.layers.1.mlp.up_proj.weight"
    assert tensors["model.layers.1.mlp.down_proj.weight"].startswith("new, in place of model.layers.0.mlp.down_proj")
    assert tensors["model.layers.1.mlp.up_proj.weight"].startswith("new, in place of model.layers.0.mlp.up_proj")


@pytest.mark.parametrize("argv,message", [
    (["grow", "{src}", "{out}", "--layers", "5", "--depth-method", "expand"], "does not divide"),
    (["merge", "{src}", "{out}"], "at least two"),
    (["convert", "{src}", "{src}", "--force"], "is the input"),
])
def test_dry_run_gives_the_errors_of_the_real_run(tmp_path, capsys, argv, message):
    src = build_tiny("llama", tmp_path / "src")
    out = tmp_path / "out"
    argv = [a.format(src=src, out=out) for a in argv]
    capsys.readouterr()
    assert main([*argv, "--quiet"]) == 2
    real = capsys.readouterr().err
    assert main([*argv, "--dry-run", "--quiet"]) == 2
    dry = capsys.readouterr().err
    assert message in real and dry == real
    assert not out.exists()


def test_existing_output_is_refused_by_a_dry_run_too(tiny_llama, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    assert main(["convert", tiny_llama, out, "--dry-run"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_api_is_what_the_cli_runs(tiny_llama, tmp_path, capsys):
    assert main(["grow", tiny_llama, tmp_path / "cli", "--layers", "4", "--depth-method", "stack", "--quiet"]) == 0
    result = warmstart.grow(tiny_llama, tmp_path / "api", layers=4, depth_method="stack")
    assert result.transform.exact is False  # G_stack changes the function: a warm start
    assert (tmp_path / "cli" / "model.safetensors").read_bytes() == (tmp_path / "api" / "model.safetensors").read_bytes()
    assert any(line.startswith("wrote ") for line in result.lines())
    assert json.loads(json.dumps(result.as_dict(), default=str))["config"]["num_hidden_layers"] == 4


def test_provenance_is_written_and_inspect_shows_it(tiny_llama, tmp_path, capsys):
    out = tmp_path / "grown"
    assert main(["grow", tiny_llama, out, "--layers", "4", "--depth-method", "expand", "--quiet"]) == 0
    rec = json.loads((out / "warmstart.json").read_text())
    assert rec["command"][:2] == ["warmstart", "grow"]
    assert rec["chain"] == [{"op": "expand", "layers": 4}] and rec["exact"] is True
    assert rec["sources"][0]["path"] == str(Path(tiny_llama).resolve())
    assert rec["sources"][0]["fingerprint"].startswith("sha256:")
    assert sorted(rec["files"]) == sorted(p.name for p in out.iterdir() if p.name != "warmstart.json")
    capsys.readouterr()
    assert main(["inspect", out]) == 0
    text = capsys.readouterr().out
    assert "made by" in text and "warmstart grow" in text and "exact" in text
    # the fingerprint changes when the source's content does
    from warmstart.checkpoint.reader import fingerprint

    before = fingerprint(tiny_llama)
    other = build_tiny("llama", tmp_path / "other", seed=5, hidden_size=48)
    assert fingerprint(other) != before


@pytest.mark.parametrize("argv", [a for a in SUBCOMMANDS if a not in (["schedule"], ["tokenizer"])],
                         ids=[" ".join(a) for a in SUBCOMMANDS if a not in (["schedule"], ["tokenizer"])])
def test_every_command_takes_json(capsys, argv):
    assert "--json" in _help(capsys, argv)


def test_schedule_show_json_is_the_table(capsys):
    assert main(["schedule", "show", "peak=1e-3; warmup:linear:4 > decay:cosine:6", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    lrs = [r["lr"] for r in data["rows"]]
    assert [r["step"] for r in data["rows"]] == list(range(10))
    # linear warmup over 4 updates: (t + 1) / 4 of the peak; then a cosine to zero over 6
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
