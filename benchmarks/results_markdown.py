"""Regenerate the verdict blocks of docs/results.md and README.md from study runs.

    python benchmarks/results_markdown.py runs/gpu-studies [RUN_DIR ...] [--files docs/results.md README.md]

Each argument is a study run directory (it holds a results.json) or a folder
of them, such as the ``$OUT`` of ``benchmarks/run_studies_gpu.sh``. The
``<!-- results:begin -->`` … ``<!-- results:end -->`` block gets one section
per run (conditions and verdict table); ``<!-- results-summary:begin -->`` …
``<!-- results-summary:end -->`` one row per run. The same as
``robustlab report RUN_DIR... --markdown --update FILE``, once per file.
A smoke run is labelled smoke in both blocks.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from robustlab.report.markdown import update_file

ROOT = Path(__file__).resolve().parents[1]


def _is_study(path: Path) -> bool:
    try:
        return json.loads((path / "results.json").read_text()).get("kind") == "study"
    except (OSError, ValueError):
        return False


def study_runs(paths: list[Path]) -> list[Path]:
    """The study run directories among ``paths`` and their subfolders:
    quickstart first, then by name (ch2_…, ch3_…, … as the chapters go)."""
    runs = []
    for p in paths:
        if (p / "results.json").is_file():
            runs.append(p)
        elif p.is_dir():
            runs += [sub for sub in sorted(p.iterdir()) if sub.is_dir() and _is_study(sub)]
        else:
            raise FileNotFoundError(f"{p}: no such run directory")
    return sorted(dict.fromkeys(runs), key=lambda r: (r.name != "quickstart", r.name))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="study run directories, or folders of them")
    p.add_argument("--files", nargs="+", type=Path, default=[ROOT / "docs" / "results.md", ROOT / "README.md"],
                   help="markdown files whose generated blocks to rewrite (default: docs/results.md README.md)")
    a = p.parse_args(argv)
    try:
        runs = study_runs(a.runs)
        if not runs:
            raise FileNotFoundError(f"no study run directory in {', '.join(map(str, a.runs))}")
        for f in a.files:
            print(f"{f}: {', '.join(update_file(f, runs))} from {len(runs)} run(s)")
    except (ValueError, FileNotFoundError) as err:
        print(f"results_markdown: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
