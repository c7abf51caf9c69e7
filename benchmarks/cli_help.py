"""Wall time of ``robustlab --help`` and of every ``robustlab COMMAND --help``.

Each is a fresh ``python -m robustlab ... --help`` process, as a user types it;
the median of ``--repeat`` runs (default 5), beside a bare ``python -c pass``
(the interpreter's own start) and ``python -c "import torch"`` (what the help
would cost if it imported torch). Target: every help under 0.5 s.
Run: ``python benchmarks/cli_help.py [--repeat 5]``.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = ("", "attack", "train", "eval", "study", "report", "list", "demo")


def once(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (the median is shown)")
    args = parser.parse_args()
    runs = {"python -c pass": ["-c", "pass"], "python -c 'import torch'": ["-c", "import torch"]}
    runs.update({f"robustlab {cmd} --help".replace("  ", " "): ["-m", "robustlab", *([cmd] if cmd else []), "--help"]
                 for cmd in COMMANDS})
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeat):  # round by round, so a busy moment of the machine hits every command alike
        for label, argv in runs.items():
            times[label].append(once(argv))
    median = {k: statistics.median(v) for k, v in times.items()}
    bare = median["python -c pass"]
    print(f"{'command':<28} {'median s':>9} {'vs python':>10}")
    for label, t in median.items():
        print(f"{label:<28} {t:>9.3f} {t / bare:>9.1f}x")
    worst = max(t for k, t in median.items() if k.startswith("robustlab"))
    print(f"slowest help: {worst:.3f} s ({'within' if worst < 0.5 else 'OVER'} the 0.5 s target)")


if __name__ == "__main__":
    main()
