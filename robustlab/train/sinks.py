"""Where the training loop's metric records go: ``TrainOptions.log`` names the sinks.

A record is one line of ``metrics.jsonl``: ``{"kind": "train", "step", "epoch",
"lr", "loss", ...}`` every ``log_every`` steps, ``{"kind": "epoch", "epoch",
"step", "train_loss", ..., evaluation results, "train_seconds"}`` at every
epoch end, already averaged over DDP ranks. Only rank 0 writes.

``jsonl`` is the run's record (resume truncates it, reports read it) and is
always on; ``tensorboard`` mirrors the numeric fields as scalars. Other
trackers (wandb, MLflow …) get the same records through ``fit(on_log=[f])``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from robustlab._progress import duration

INSTALL_HINT = "pip install 'robustlab[tensorboard]'"


def metric_cells(record: dict[str, Any], skip: tuple[str, ...] = ("kind", "epoch")) -> list[str]:
    """A record's fields as a person reads them, for logs and summaries: an
    accuracy (``clean_acc``, ``pgd_acc_adv``, ``train_acc``) in percent with
    the n of its evaluation (``clean_n``, ``pgd_n``) beside it, seconds as a
    duration, other numbers to 4 significant digits; the keys stay those of
    ``metrics.jsonl``."""
    cells = []
    for key, value in record.items():
        if key in skip or key.endswith("_n") and any(k.startswith(f"{key[:-2]}_acc") for k in record):
            continue  # an evaluation's n: shown with its accuracies
        if "_acc" in f"_{key}" and isinstance(value, float):
            n = record.get(f"{key.split('_acc')[0]}_n") if not key.startswith("acc") else None
            cells.append(f"{key} {100 * value:.1f}%" + (f" (n={n})" if n is not None else ""))
        elif key.endswith("seconds") and isinstance(value, (int, float)):
            cells.append(f"{key} {duration(value)}")
        else:
            cells.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return cells


class Sink(Protocol):
    """A destination of metric records."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """One JSON line per record, appended to ``run_dir/metrics.jsonl``.

    The file is opened per record, so every line is on disk once written and a
    killed run leaves at most a torn last line (which resume tolerates).
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is None and self.path.is_file():  # a fresh start: the lines of a run killed before
            self.path.unlink()  # its first checkpoint are not this run's

    @staticmethod
    def require() -> None:
        pass

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        pass


class TensorBoardSink:
    """Scalars in ``run_dir/tensorboard``: ``train/NAME`` of train records and
    ``epoch/NAME`` of epoch records, at ``global_step = step``; every numeric
    field but ``step`` and ``epoch``."""

    PREFIX = {"train": "train", "epoch": "epoch"}

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        writer = self.require()
        # The checkpoint at step S holds the records up to and including S (they are written before
        # it is saved), and the resumed run writes from S + 1 on: TensorBoard hides the events a killed
        # run wrote at steps >= purge_step, so the events read as one run, as metrics.jsonl does.
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = writer(str(Path(run_dir) / "tensorboard"), purge_step=purge)

    @staticmethod
    def require() -> Any:
        """``SummaryWriter``; an ImportError with the install command if tensorboard is absent."""
        try:  # imported here: torch.utils.tensorboard takes a second to import
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(f"log sink 'tensorboard' needs the tensorboard package: {INSTALL_HINT} ({err})") from None
        return SummaryWriter

    def write(self, record: dict[str, Any]) -> None:
        prefix = self.PREFIX.get(record.get("kind"))
        if prefix is None:
            return
        step = int(record["step"])
        for name, value in record.items():
            if name in ("kind", "step", "epoch") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(f"{prefix}/{name}", value, global_step=step)

    def close(self) -> None:
        self.writer.close()


SINKS: dict[str, type] = {"jsonl": JsonlSink, "tensorboard": TensorBoardSink}


def require(names: list[str]) -> None:
    """Fail now, before any directory or training, if a sink's package is missing."""
    for name in names:
        SINKS[name].require()


def open_sinks(names: list[str], run_dir: Path, resume_step: int | None = None) -> list[Sink]:
    """The sinks ``names`` writing into ``run_dir`` (a run resumed at ``resume_step``)."""
    opened: list[Sink] = []
    try:
        for name in names:
            opened.append(SINKS[name](run_dir, resume_step))
    except BaseException:
        close_all(opened)
        raise
    return opened


def close_all(sinks: list[Sink]) -> None:
    """Close every sink, even if one fails to (the first error is raised after)."""
    error: BaseException | None = None
    for sink in sinks:
        try:
            sink.close()
        except Exception as err:  # the others must still close
            error = error or err
    if error is not None:
        raise error
