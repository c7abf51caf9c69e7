"""Progress of long loops: one layer for the whole package (STYLE §12).

``progress(total, desc, unit)`` is a tqdm bar when stderr is a terminal. When
it is not (a CI log, ``nohup``, a pipe) it writes plain lines instead, through
``logging.getLogger("robustlab.progress")`` at INFO, every 10% of the total and
every 30 s (at most one a second), never a carriage return::

    train madry: 400/1000 steps (40%), 12.3 step/s, eta 49 s, loss 0.412

Both end with one such line when the loop closes, so a log keeps how long each
loop took. A loop is silent with ``enabled=False`` or when the ``robustlab``
logger is set above INFO (``robustlab -q`` sets ERROR). Whether the plain lines
are shown is the logging configuration's choice: library code configures no
logging, the command line shows INFO (:class:`LogHandler`).
"""
from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any, TextIO

logger = logging.getLogger("robustlab.progress")

EVERY_FRACTION = 0.1  # a plain line at least every 10% of the total ...
EVERY_SECONDS = 30.0  # ... and every 30 s,
MIN_SECONDS = 1.0  # but never two within a second (a fast loop logs its closing line only)

_open_bars = 0  # tqdm bars now drawn: log records are written above them (tqdm.write)


def silenced() -> bool:
    """True when the ``robustlab`` loggers are set above INFO. Only levels set
    on ``robustlab.progress`` or ``robustlab`` count: the root logger's default
    (WARNING) must not hide a library user's bars."""
    for name in ("robustlab.progress", "robustlab"):
        level = logging.getLogger(name).level
        if level != logging.NOTSET:
            return level > logging.INFO
    return False


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _plural(unit: str) -> str:
    if unit.endswith("s"):
        return unit
    return unit + ("es" if unit.endswith(("ch", "sh", "x")) else "s")


def duration(seconds: float) -> str:
    """``seconds`` as a person reads them: 0.3 s, 42 s, 2.5 min, 1.2 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _rate(per_second: float, unit: str) -> str:
    if per_second >= 100:
        return f"{per_second:.0f} {unit}/s"
    if per_second >= 1:
        return f"{per_second:.1f} {unit}/s"
    return f"{1 / per_second:.1f} s/{unit}"


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """A loop's progress; made by :func:`progress`. ``mode`` is ``"bar"``
    (tqdm on a terminal), ``"log"`` (plain lines) or ``"off"``."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int, mode: str,
                 stream: TextIO | None = None) -> None:
        self.total, self.desc, self.unit, self.mode = total, desc, unit, mode
        self.n = self.initial = initial
        self.postfix: dict[str, Any] = {}
        self.fraction: float | None = None  # the share of the work done, where units take unequal work
        self._first: tuple[float, float] | None = None  # (time, share) at the first estimate
        self.start = self.last = time.monotonic()
        self.mark = self._fraction_mark()
        self.closed = mode == "off"
        self._bar: Any = None
        if mode == "bar":
            global _open_bars
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True,
                             leave=False)
            _open_bars += 1

    def _fraction_mark(self) -> int:
        return int(self.n / self.total / EVERY_FRACTION) if self.total else 0

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.n += n
        if self.mode == "bar":
            self._bar.update(n)
        elif self.mode == "log":
            now, mark = time.monotonic(), self._fraction_mark()
            due = (mark > self.mark and now - self.last >= MIN_SECONDS) or now - self.last >= EVERY_SECONDS
            if due and (self.total is None or self.n < self.total):
                self.mark, self.last = mark, now
                logger.info(self.line())

    def skip(self, n: int) -> None:
        """``n`` more units found done before this loop began (a resumed
        evaluation's saved samples): counted, but not in the rate."""
        self.n += n
        self.initial += n
        self.mark = self._fraction_mark()
        if self.mode == "bar":
            self._bar.initial += n
            self._bar.n += n
            self._bar.refresh()

    def set_postfix(self, **values: Any) -> None:
        """Figures shown after the counts (``loss=0.41``), until replaced."""
        self.postfix = dict(values)
        self._bar_postfix()

    def estimate(self, fraction: float) -> None:
        """The share (0-1) of the loop's work done, for a loop whose units take
        unequal work (an evaluation's samples: the ones an attack breaks leave
        at once, the robust ones run every attack): the eta then follows the
        work done instead of the units counted, at the rate the share has grown
        since its first estimate (so the time spent before the work began, as
        an evaluation's masking checklist, does not count)."""
        self.fraction = min(max(float(fraction), 0.0), 1.0)
        if self._first is None:
            self._first = (time.monotonic(), self.fraction)
        if self.mode == "bar" and "{remaining}" in (self._bar.bar_format or "{remaining}"):
            self._bar.bar_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"
        self._bar_postfix()

    def _bar_postfix(self) -> None:
        if self.mode == "bar":
            eta = self._eta()
            extra = {} if self.fraction is None or eta is None else {"eta": duration(eta)}
            self._bar.set_postfix(refresh=False, **self.postfix, **extra)

    def _eta(self) -> float | None:
        """Seconds left: from the work share when :meth:`estimate` gave one,
        else from the units' rate; None when there is nothing to go on."""
        now = time.monotonic()
        if self.fraction is not None and self._first is not None:
            since, share = self._first
            return (now - since) * (1 - self.fraction) / (self.fraction - share) if self.fraction > share else None
        elapsed = max(now - self.start, 1e-9)
        rate = (self.n - self.initial) / elapsed
        return (self.total - self.n) / rate if rate > 0 and self.total else None

    def line(self, final: bool = False) -> str:
        """The plain line: counts, percent, rate, eta (or time taken) and the postfix."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.n - self.initial) / elapsed
        text = f"{self.desc}: {self.n}"
        if self.total:
            text += f"/{self.total} {_plural(self.unit)} ({100 * self.n / self.total:.0f}%)"
        else:
            text += f" {_plural(self.unit)}"
        if final:
            text += f" in {duration(elapsed)}"
        if rate > 0:
            text += f", {_rate(rate, self.unit)}"
        eta = None if final or not self.total or self.n >= self.total else self._eta()
        if eta is not None:
            text += f", eta {duration(eta)}"
        return ", ".join([text, *(f"{k} {_value(v)}" for k, v in self.postfix.items())])

    def close(self) -> None:
        """Remove the bar and log the closing line (once)."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            global _open_bars
            self._bar.close()
            _open_bars -= 1
        logger.info(self.line(final=True))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
                 ) -> None:
        self.close()


def progress(total: int | None, desc: str, unit: str = "it", *, enabled: bool = True, initial: int = 0,
             stream: TextIO | None = None) -> Progress:
    """Progress of a loop of ``total`` units (None: unknown) named ``desc``.

    A tqdm bar on ``stream`` (default ``sys.stderr``) when it is a terminal,
    plain INFO lines on ``robustlab.progress`` otherwise, nothing when
    ``enabled`` is false or :func:`silenced`. ``initial``: units already done
    (a resumed run); the rate counts only the units done here."""
    stream = sys.stderr if stream is None else stream
    if not enabled or silenced():
        mode = "off"
    else:
        mode = "bar" if _isatty(stream) else "log"
    return Progress(total, desc, unit, initial, mode, stream)


class LogHandler(logging.Handler):
    """The command line's log handler: INFO records as bare lines (progress,
    what each step does), others as ``LEVEL logger: message``; written to the
    ``sys.stderr`` of the moment (a stream swapped later, as pytest's capture,
    is followed) and above any bar being drawn."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno != logging.INFO:
            text = f"{record.levelname} {record.name}: {text}"
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        return text

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text, stream = self.format(record), sys.stderr
            if _open_bars:
                from tqdm import tqdm

                tqdm.write(text, file=stream)
            else:
                stream.write(text + "\n")
                stream.flush()
        except Exception:  # logging's contract: report the failure, never raise it
            self.handleError(record)
