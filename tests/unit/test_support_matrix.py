"""docs/families.md's support matrix is what benchmarks/support_matrix.py computes (so it cannot drift)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Recomputed here: four families that between them have every quirk (offset norms, embedding scale,
# sandwich norms, per-head q/k norms, sliding/global pattern; fused qkv and gate_up; post-sublayer norms and
# whole-projection q/k norms; a nested multimodal config).
# `python benchmarks/support_matrix.py --check` recomputes every family.
CHECKED = ["gemma3_text", "phi3", "olmo2", "gemma3"]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("support_matrix", ROOT / "benchmarks" / "support_matrix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(table: str) -> dict[str, dict[str, str]]:
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    families = header[1:]
    out: dict[str, dict[str, str]] = {f: {} for f in families}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for family, value in zip(families, cells[1:]):
            out[family][cells[0]] = value
    return out


def test_doc_lists_every_family_and_operation(script):
    from warmstart import tiny_families as T

    doc = _parse(script.doc_table(script.DOC.read_text(encoding="utf-8")))
    assert list(doc) == list(T.FAMILY_CONFIGS)
    for family, cells in doc.items():
        assert list(cells) == list(script.COLUMNS), family
        assert not any("FAILED" in c for c in cells.values())


def test_doc_cells_match_a_fresh_run(script):
    doc = _parse(script.doc_table(script.DOC.read_text(encoding="utf-8")))
    fresh = script.compute(CHECKED)
    for family in CHECKED:
        assert fresh[family] == doc[family], family
    # The exactness claims are there to be checked: these families must have them.
    for family in CHECKED:
        assert fresh[family]["expand"] == "exact (0.0)"
        assert fresh[family]["hyperclone x2"].startswith("exact")
        assert fresh[family]["hyperclone x2 + expand"].startswith("exact")
