"""robustlab._progress: a bar on a terminal, plain log lines elsewhere, never a
carriage return in a log, silent when asked."""
from __future__ import annotations

import io
import logging

import pytest

from robustlab import _progress
from robustlab._progress import LogHandler, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture()
def records():
    """The lines the progress logger emits (at INFO, whatever the root's level)."""
    handler, logger = _Records(), logging.getLogger("robustlab.progress")
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(before)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(_progress.time, "monotonic", c)
    return c


def test_a_log_gets_a_line_every_tenth_and_a_closing_line(records, clock):
    stream = io.StringIO()
    with progress(100, "train madry", "step", stream=stream) as bar:
        assert bar.mode == "log"
        for _ in range(100):
            clock.now += 2.0  # 2 s a step: every tenth is more than a second after the last line
            bar.update(1)
            bar.set_postfix(loss=0.4123456)
    assert stream.getvalue() == ""  # nothing drawn: the lines go through logging
    assert len(records) == 9 + 1
    assert records[0] == "train madry: 10/100 steps (10%), 2.0 s/step, eta 3.0 min, loss 0.4123"
    assert records[-1] == "train madry: 100/100 steps (100%) in 3.3 min, 2.0 s/step, loss 0.4123"
    assert not any("\r" in line for line in records)


def test_a_fast_loop_logs_its_closing_line_only(records):
    with progress(1000, "attack pgd", "image", stream=io.StringIO()) as bar:
        for _ in range(1000):
            bar.update(1)
    assert len(records) == 1 and records[0].startswith("attack pgd: 1000/1000 images (100%) in ")


def test_an_unknown_total_logs_every_30_seconds(records, clock):
    bar = progress(None, "DAG", "batch", stream=io.StringIO())
    for _ in range(3):
        clock.now += 32
        bar.update(4)
    bar.close()
    bar.close()  # closing twice logs once
    assert records == ["DAG: 4 batches, 8.0 s/batch", "DAG: 8 batches, 8.0 s/batch", "DAG: 12 batches, 8.0 s/batch",
                       "DAG: 12 batches in 1.6 min, 8.0 s/batch"]


def test_resumed_loop_counts_its_rate_from_where_it_started(records, clock):
    with progress(10, "train", "step", initial=6, stream=io.StringIO()) as bar:
        clock.now += 4
        bar.update(4)
    assert records == ["train: 10/10 steps (100%) in 4.0 s, 1.0 step/s"]


def test_units_found_done_count_but_not_in_the_rate(records, clock):
    with progress(10, "eval m", "sample", stream=io.StringIO()) as bar:
        bar.skip(6)  # a resumed evaluation's saved samples
        clock.now += 4
        bar.update(4)
    assert records == ["eval m: 10/10 samples (100%) in 4.0 s, 1.0 sample/s"]
    term = _Terminal()
    with progress(10, "eval m", "sample", stream=term) as bar:
        bar.skip(10)
    assert "10/10" in term.getvalue()


def test_a_terminal_gets_a_tqdm_bar_and_the_log_only_the_closing_line(records):
    term = _Terminal()
    with progress(5, "train x", "step", stream=term) as bar:
        assert bar.mode == "bar"
        for _ in range(5):
            bar.update(1)
    assert "\r" in term.getvalue() and "train x" in term.getvalue()
    assert len(records) == 1 and records[0].startswith("train x: 5/5 steps (100%)")
    assert _progress._open_bars == 0


@pytest.mark.parametrize("stream", [io.StringIO(), _Terminal()], ids=["log", "terminal"])
def test_disabled_or_silenced_loops_say_nothing(records, stream):
    for bar in (progress(3, "off", enabled=False, stream=stream),):
        bar.update(3)
        bar.close()
    pkg = logging.getLogger("robustlab")
    before = pkg.level
    logging.getLogger("robustlab.progress").setLevel(logging.NOTSET)  # the package's level decides
    pkg.setLevel(logging.ERROR)  # what `robustlab -q` sets
    try:
        bar = progress(3, "quiet", stream=stream)
        assert bar.mode == "off"
        bar.update(3)
        bar.close()
    finally:
        pkg.setLevel(before)
    assert records == [] and stream.getvalue() == ""


def test_log_handler_writes_info_bare_and_others_named(capsys):
    logger = logging.getLogger("robustlab.test_progress")
    handler = LogHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("train madry: 1/2 steps")
        logger.warning("careful")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    assert capsys.readouterr().err == "train madry: 1/2 steps\nWARNING robustlab.test_progress: careful\n"


def test_an_estimated_work_share_sets_the_eta_before_any_unit_is_done(records, clock):
    with progress(100, "eval m", "sample", stream=io.StringIO()) as bar:
        clock.now += 10  # before the work: not counted in the eta
        bar.estimate(0.05)
        clock.now += 30  # no sample done yet: a units' rate has nothing to go on
        bar.estimate(0.2)
        bar.update(0)
        clock.now += 40
        bar.estimate(0.45)
        bar.update(50)  # half the samples, but not half the work
    assert records[0] == "eval m: 0/100 samples (0%), eta 2.7 min"  # 15% in 30 s: 80% in 160 s
    assert records[1] == "eval m: 50/100 samples (50%), 1.6 s/sample, eta 1.6 min"  # 40% in 70 s: 55% in 96 s
    assert records[-1] == "eval m: 50/100 samples (50%) in 80 s, 1.6 s/sample"


def test_a_bar_with_an_estimated_work_share_shows_that_eta(clock):
    term = _Terminal()
    with progress(10, "eval m", "sample", stream=term) as bar:
        bar.estimate(0.0)
        clock.now += 30
        bar.estimate(0.25)
        bar.set_postfix(calls=7)
        bar.update(1)
        text = str(bar._bar)  # the bar as tqdm draws it now
    assert "eta=1.5 min" in text and "calls=7" in text and "<" not in text  # tqdm's own eta is gone
