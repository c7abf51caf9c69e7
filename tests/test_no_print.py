"""Library code reports through logging (STYLE §12): no ``print`` call and no
root-logger setup anywhere in the package but the command line's entry point
(``app/cli.py``, which prints the final summaries) and the report writers."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "robustlab"
ALLOWED = {"app/cli.py"}  # and robustlab/report/*, which writes files


def _calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if name in ("print", "basicConfig"):
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {name}")
    return found


def test_library_modules_never_print_or_configure_logging():
    bad = [hit for p in sorted(ROOT.rglob("*.py")) if p.relative_to(ROOT).as_posix() not in ALLOWED
           and p.relative_to(ROOT).parts[0] != "report" for hit in _calls(p)]
    assert bad == []
