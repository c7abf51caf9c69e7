"""Run directories: one folder per job."""
from __future__ import annotations

import time
from pathlib import Path


def new_run_dir(out: str | Path | None, kind: str) -> Path:
    """``out`` if given, else ``runs/KIND-YYYYmmdd-HHMMSS``; created if missing."""
    path = Path(out) if out is not None else Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path
