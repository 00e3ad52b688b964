"""headsup's import graph: no circles, and no module imports from a layer above its own.

Circles: a static walk of every `import headsup...` / `from headsup... import ...` statement with `ast`
(function-level imports included); `from package import submodule` counts as an import of the
submodule only. Layers: import-linter's `lint-imports` against the layers contract in pyproject.toml
(shared/DESIGN.md's order).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "headsup"


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "headsup":
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                graph[name] |= subs or ({node.module} & modules.keys())
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names} & modules.keys()
        graph[name].discard(name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_walk_finds_circles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    graph = _graph()
    assert "headsup.system" in graph["headsup.cli"] and "headsup.testing.tiny" in graph["headsup.tools"]


def test_headsup_has_no_import_circles():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_no_module_imports_from_a_layer_above_its_own(tmp_path):
    """import-linter's verdict on the layers contract; a copy of the package with one upward import (models
    importing the pipeline) breaks it, so the contract is really checked."""
    lint = Path(sys.executable).parent / "lint-imports"
    run = subprocess.run([str(lint)], cwd=ROOT.parent, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "1 kept, 0 broken" in run.stdout, run.stdout[-2000:]
    broken = tmp_path / "headsup"
    shutil.copytree(ROOT, broken, ignore=shutil.ignore_patterns("__pycache__"))
    (broken / "models" / "norm.py").write_text((ROOT / "models" / "norm.py").read_text()
                                                + "\nfrom headsup.inference.pipeline import SRPipeline\n")
    shutil.copy(ROOT.parent / "pyproject.toml", tmp_path)
    run = subprocess.run([str(lint)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PATH": "", "PYTHONPATH": str(tmp_path)})
    assert run.returncode == 1 and "headsup.models.norm -> headsup.inference.pipeline" in run.stdout, run.stdout
