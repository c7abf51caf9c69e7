"""What a report page is made of, as plain data: sections holding tables,
figures, example grids and notes. The builders fill these; the Jinja
templates (``templates/``) draw them, escaping every string."""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from robustlab.report.format import NOTHING, counted_nothing, interval, is_proportion, number


@dataclass
class Cell:
    """One table cell: ``text`` (the figure), ``note`` (its interval and n,
    drawn smaller under it), ``title`` (the exact value, on hover), ``cls``."""

    text: str
    note: str = ""
    title: str = ""
    cls: str = ""


def cell(value: Any, n: int | None = None, *, proportion: bool | None = None) -> Cell:
    """A value of a results table as a cell: a proportion becomes a percentage
    with its 95% Wilson interval and n (marked † where n is unknown); text is
    left-aligned; other numbers keep 4 decimals."""
    if isinstance(value, Cell):
        return value
    if proportion is None:
        proportion = is_proportion(value)
    if proportion and isinstance(value, (int, float)) and not isinstance(value, bool):
        exact = f"{float(value):.4f}"
        if counted_nothing(n):  # recorded, and zero: e.g. a transfer none of whose images every model classifies
            return Cell(NOTHING, "n=0", f"{exact}: counted no image, so this cell measures nothing", "num")
        if not n:
            return Cell(f"{100 * value:.1f}%†", title=exact, cls="num")
        return Cell(f"{100 * value:.1f}%", interval(value, n), exact, "num")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Cell(number(value), cls="num")
    return Cell("" if value is None else number(value), cls="text")


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    footnote: str = ""
    cls: str = "readable"
    attrs: dict[str, str] = field(default_factory=dict)
    kind: str = "table"

    def __post_init__(self) -> None:
        if not self.footnote and any(c.text.endswith("%†") for r in self.rows for c in r):
            self.footnote = "† n not recorded in results.json: no interval is given."


def table(rows: Sequence[Mapping[str, Any]], n: int | Sequence[int | None] | None = None, *,
          columns: Sequence[str] | None = None, labels: Mapping[str, str] | None = None, caption: str = "",
          transpose: bool | None = None, proportions: bool | Callable[[str], bool] = True) -> Table:
    """A readable table of result rows (dicts). Proportions become
    percentages with their interval on ``n`` images (one n, or one per row);
    ``proportions``: True finds them by value (a float in [0, 1]), False
    has none (e.g. mIoU), a predicate names the columns that hold them. A
    table much wider than long (over 12 columns: a row per model, a column
    per corruption) is drawn transposed so that it fits the page."""
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    labels = dict(labels or {})
    if isinstance(n, Sequence) and not isinstance(n, str) and len(n) == len(rows):
        ns = [k if isinstance(k, int) and not isinstance(k, bool) else None for k in n]
    else:  # one n for every row; anything but a count is no n
        ns = [n if isinstance(n, int) and not isinstance(n, bool) else None] * len(rows)

    def flag(column: str) -> bool | None:
        if callable(proportions):
            return bool(proportions(column))
        return None if proportions else False

    def one(r: Mapping[str, Any], c: str, k: int) -> Cell:
        v = r.get(c)
        return cell(v, ns[k], proportion=flag(c) and isinstance(v, (int, float)) if callable(proportions)
                    else flag(c))

    if transpose is None:
        transpose = len(columns) > 12 and len(rows) < len(columns) - 1
    if transpose and columns:
        key = columns[0]
        head = [labels.get(key, key)] + [str(r.get(key, "")) for r in rows]
        body = [[Cell(labels.get(c, c), cls="text")] + [one(r, c, k) for k, r in enumerate(rows)]
                for c in columns[1:]]
        return Table(head, body, caption)
    body = [[one(r, c, k) for c in columns] for k, r in enumerate(rows)]
    return Table([labels.get(c, c) for c in columns], body, caption)


@dataclass
class Figure:
    png: str  # base64
    alt: str
    caption: str = ""
    kind: str = "figure"
    wide: bool = False  # many small panels: kept legible on a narrow screen, scrolled in its own frame


@dataclass
class Example:
    """One sample: its clean image, adversarial image and amplified perturbation (base64 PNGs)."""

    caption: str
    clean: str
    adversarial: str
    perturbation: str
    gain: str
    pixelated: bool = True


@dataclass
class Examples:
    title: str
    items: list[Example]
    note: str = ""
    kind: str = "examples"


@dataclass
class Note:
    text: str
    level: str = "info"  # ok | warn | info
    kind: str = "note"


@dataclass
class Facts:
    """A short list of ``label: value`` pairs (an audit, a training summary)."""

    items: list[tuple[str, str]]
    kind: str = "facts"


@dataclass
class Section:
    """A titled part of the page; ``meta``: the budget, steps and protocol in its header."""

    title: str
    meta: list[str] = field(default_factory=list)
    blocks: list[Any] = field(default_factory=list)
    subtitle: str = ""
    id: str = ""
    kind: str = "section"

    def __post_init__(self) -> None:
        if not self.id:
            self.id = re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"


@dataclass
class Verdict:
    id: str
    says: str
    verdict: str
    values: list[tuple[str, str]]
    holds_if: str = ""  # the comparison, as the study wrote it
    reason: str = ""  # why it was not evaluated
    comparisons: list[tuple[str, str, bool | None]] = field(default_factory=list)  # (item, "0.532 > 0.006 …", noise)
    within_noise: bool | None = None  # the verdict rests on a difference inside its 95% interval's reach of 0

    @property
    def cls(self) -> str:
        v = self.verdict.strip().lower()
        return "holds" if v == "holds" else "fails" if v in ("does not hold", "fails", "not held") else "unclear"


@dataclass
class Exact:
    """A results table cell for cell as ``results.json`` holds it (folded
    under the readable one): ``<table class="results" data-evaluation=NAME>``."""

    evaluation: str
    columns: list[str]
    rows: list[list[str]]
    kind: str = "exact"
