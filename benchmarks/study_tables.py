"""Markdown tables of a study's results.json (the README's per-chapter tables).

    python benchmarks/study_tables.py runs/ch5_smooth [--only pgd,clean] [--pct]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RAW = ("iterations", "perceptibility", "proposals", "NMS IoU", "L∞", "mCE")  # columns that are not fractions


def _cell(v: object, pct: bool, column: str) -> str:
    if isinstance(v, float):
        if any(k in column for k in RAW):
            return f"{v:.4g}"
        return f"{100 * v:.1f}" if pct else f"{v:.4f}"
    return str(v)


def tables(run_dir: Path, only: list[str] | None = None, pct: bool = False, drop: list[str] | None = None) -> str:
    res = json.loads((run_dir / "results.json").read_text())
    out = []
    for name, ev in res["evaluations"].items():
        if only and name not in only:
            continue
        rows = ev["table"]
        cols = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in (drop or [])]
        out.append(f"**{name}** ({ev['kind']}, {ev.get('n', '?')} images{'; %' if pct else ''})\n")
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "---|" * len(cols))
        out += ["| " + " | ".join(_cell(r.get(c, ""), pct, c) for c in cols) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("run_dir", type=Path)
    p.add_argument("--only", help="comma-separated evaluation names")
    p.add_argument("--drop", help="comma-separated columns to leave out")
    p.add_argument("--pct", action="store_true", help="fractions as percentages")
    a = p.parse_args()
    print(tables(a.run_dir, a.only.split(",") if a.only else None, a.pct, a.drop.split(",") if a.drop else None))
