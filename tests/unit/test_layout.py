"""The package's layout (issue 11): no import loops, nothing imported against the flow, one of each helper."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "src" / "warmstart"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports, at the top or inside functions alike."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t.startswith("warmstart") and t != mod and t != "warmstart":
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_loops():
    assert cycles(import_graph()) == []


# Lower layers never import higher ones: the data flows reader -> spec -> operations -> plan -> writer, and the
# schedules, merges and vocabulary sit beside the core; the bench and the CLI are on top.
FORBIDDEN = {
    "warmstart.checkpoint": ("warmstart.plan", "warmstart.ops", "warmstart.arch", "warmstart.bench",
                             "warmstart.commands", "warmstart.cli", "warmstart.merge", "warmstart.vocab"),
    "warmstart.arch": ("warmstart.ops", "warmstart.bench", "warmstart.commands", "warmstart.cli"),
    "warmstart.ops": ("warmstart.bench", "warmstart.commands", "warmstart.cli"),
    "warmstart.plan": ("warmstart.ops", "warmstart.bench", "warmstart.commands", "warmstart.cli"),
    "warmstart.schedules": ("warmstart.bench", "warmstart.commands", "warmstart.cli", "warmstart.ops"),
    "warmstart.merge": ("warmstart.bench", "warmstart.commands", "warmstart.cli"),
    "warmstart.vocab": ("warmstart.bench", "warmstart.commands", "warmstart.cli"),
}


def test_no_import_against_the_flow():
    bad = []
    for mod, deps in import_graph().items():
        for layer, banned in FORBIDDEN.items():
            if mod == layer or mod.startswith(layer + "."):
                bad += [f"{mod} -> {d}" for d in deps if any(d == b or d.startswith(b + ".") for b in banned)]
    assert bad == []


def test_commands_do_not_import_each_other():
    bad = [f"{m} -> {d}" for m, deps in import_graph().items() if m.startswith("warmstart.commands.")
           for d in deps if d.startswith("warmstart.commands.") and d != "warmstart.commands.common"]
    assert bad == []


def _grep(pattern: str) -> list[str]:
    rx = re.compile(pattern, re.M)
    return sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if rx.search(p.read_text(encoding="utf-8")))


def test_one_of_each():
    # one atomic-rename implementation, one registry type, one loop over a chain's steps
    assert _grep(r"os\.(replace|rename)\(") == ["checkpoint/atomic.py"]
    assert _grep(r"\bmkdtemp\(|\bmkstemp\(") == ["checkpoint/atomic.py"]
    assert _grep(r"^class Registry\b") == ["registry.py"]
    assert _grep(r"PlannedCheckpoint\(") == ["bench/recipe.py", "ops/registry.py"]  # planning against a result
