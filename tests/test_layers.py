"""The import graph of the package: data flows one way, no library
package imports the application, and no two modules import each other.

Imports are read from the source (ast), module-level and function-level alike,
so an import hidden in a function body to dodge a cycle still counts."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "robustlab"

# Floors, low to high: a module may import its own package or a lower floor
# (the floor-0 helpers may also use each other; the cycle test still applies).
# data → model (models/, altered by nn/) → train (calls attacks/) → eval
# (calls attacks/ again) → report → app; nn/ knows nothing of attacks.
FLOORS = {
    "robustlab": 0, "units": 0, "_checks": 0, "_io": 0, "_progress": 0, "_version": 0,
    "nn": 1,
    "attacks": 2,
    "models": 3,
    "data": 4,
    "train": 5,
    "eval": 6,
    "report": 7,
    "app": 8,
    "__main__": 9,
}
LIBRARY = {name for name, floor in FLOORS.items() if floor < FLOORS["app"]}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The module a dotted name lives in (``robustlab.nn.route`` → ``robustlab.nn``)."""
    while name not in MODULES:
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str, path: Path | None = None) -> dict[str, int]:
    """robustlab modules imported anywhere in ``module``, with a line number each."""
    path = path or MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports pkg.sub when that is a module, else a name of pkg
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name) if name.startswith("robustlab") else None
            if target is not None and target != module:
                found.setdefault(target, node.lineno)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_module_has_a_floor():
    assert sorted({_layer(m) for m in MODULES} - set(FLOORS)) == []


def test_library_packages_never_import_the_app():
    bad = [f"{MODULES[m].relative_to(ROOT.parent)}:{line} imports {target}"
           for m, targets in GRAPH.items() if _layer(m) in LIBRARY
           for target, line in targets.items() if _layer(target) in ("app", "__main__")]
    assert bad == []


def test_imports_run_downward():
    bad = [f"{MODULES[m].relative_to(ROOT.parent)}:{line} ({_layer(m)}, floor {FLOORS[_layer(m)]}) imports "
           f"{target} ({_layer(target)}, floor {FLOORS[_layer(target)]})"
           for m, targets in GRAPH.items()
           for target, line in targets.items()
           if _layer(target) != _layer(m) and FLOORS[_layer(target)] >= FLOORS[_layer(m)] > 0]
    assert bad == []


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    described = [" ↔ ".join(c) + ": " + "; ".join(f"{a} → {b}" for a in c for b in GRAPH[a] if b in c)
                 for c in _cycles(GRAPH)]
    assert described == []


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b": 1}, "b": {"a": 1}}, [["a", "b"]]),
    ({"a": {"b": 1}, "b": {"c": 1}, "c": {}}, []),
    ({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}, [["a", "b", "c"]]),
])
def test_cycle_finder_finds_cycles(graph, cycle):
    assert _cycles(graph) == cycle


def test_function_level_and_relative_imports_count(tmp_path):
    # the checks above would be blind if imports inside functions were skipped
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from robustlab.app import cli\n    from . import folder\n"
                      "    import robustlab.nn.norm\n    from .info import DatasetInfo\n")
    assert sorted(_imports("robustlab.data.probe", source)) == [
        "robustlab.app.cli", "robustlab.data.folder", "robustlab.data.info", "robustlab.nn.norm"]
