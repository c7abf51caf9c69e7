"""The layout maps of the README's Development section and docs/development.md
name every module of each floor, under that floor (so a new or moved module
shows up in the map or fails here)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_layers import FLOORS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "robustlab"
FLOOR_LINE = re.compile(r"^floor (\d+)\s+(\S+)", re.M)


def _floors(text: str) -> dict[str, str]:
    """Package (``app``, ``nn``, ...; ``robustlab`` for floor 0's files) → the text of its floor."""
    marks = list(FLOOR_LINE.finditer(text))
    out = {}
    for m, nxt in zip(marks, [*marks[1:], None]):
        body = text[m.start(): nxt.start() if nxt else text.index("```", m.start())]
        if m.group(1) == "0":
            out["robustlab"] = body
        elif m.group(2).endswith("/"):
            out[m.group(2).rstrip("/")] = body
    return out


def _modules(package: str) -> list[str]:
    folder = PACKAGE / package
    return sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_"))  # private helpers may go unnamed


@pytest.mark.parametrize("doc", ["README.md", "docs/development.md"])
def test_the_layout_map_names_every_module_on_its_floor(doc):
    floors = _floors((ROOT / doc).read_text(encoding="utf-8"))
    packages = sorted(name for name, floor in FLOORS.items() if (PACKAGE / name).is_dir())
    assert sorted(set(floors) - {"robustlab"}) == packages
    missing = [f"{pkg}/{m}.py" for pkg in packages for m in _modules(pkg)
               if not re.search(rf"(?<![\w/]){re.escape(m)}\b", floors[pkg])]
    missing += [f"{p.name}" for p in PACKAGE.glob("*.py")
                if p.stem not in ("__init__", "__main__") and p.name not in floors["robustlab"]]
    assert missing == []
