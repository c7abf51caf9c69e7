"""What the commands print at the end fits 100 columns (issue 17): long lists
wrap, wide tables keep their key columns, and the full tables stay in
``results.json`` and ``report.html``. A path is never cut: it stands on a line
of its own, as long as it is."""
from __future__ import annotations

from collections.abc import Sequence

WIDTH = 100
CELL = 28  # the widest table cell shown; longer ones end in "…"


def clip(line: str, width: int = WIDTH) -> str:
    """``line`` cut to ``width`` characters, ending in "…" when cut."""
    return line if len(line) <= width else line[: width - 1] + "…"


def wrap_words(text: str, first: str = "  ", rest: str = "      ", width: int = WIDTH) -> list[str]:
    """``text`` wrapped at spaces to ``width`` columns: its first line after
    ``first``, the others after ``rest`` (a warning or a claim is never cut)."""
    import textwrap

    return textwrap.wrap(text, width, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False) or [first]


def path_lines(label: str, path: object, *, indent: str = "  ", width: int = WIDTH) -> list[str]:
    """``label: path`` on one line, or the path alone on the next when too long
    (a path is never cut: it is to be copied)."""
    line = f"{indent}{label}: {path}"
    return [line] if len(line) <= width else [f"{indent}{label}:", str(path)]


def wrap_items(head: str, items: Sequence[str], *, sep: str = ", ", indent: str = "    ", width: int = WIDTH
               ) -> list[str]:
    """``head`` then ``items`` joined by ``sep``, continued on ``indent``-ed lines."""
    lines, line, empty = [], head, True
    for item in items:
        if not empty and len(line) + len(sep) + len(item) > width:
            lines.append(line + sep.rstrip())
            line, empty = indent + item, False
            continue
        line, empty = line + ("" if empty else sep) + item, False
    lines.append(line)
    return [clip(x, width) for x in lines]


def _keep_columns(widths: list[int], budget: int) -> list[int]:
    """The first column (the row's name), the last (often the strongest attack)
    and as many of the others, left to right, as fit ``budget``."""
    if sum(w + 2 for w in widths) <= budget + 2:
        return list(range(len(widths)))
    keep = [0, len(widths) - 1] if len(widths) > 1 else [0]
    used = sum(widths[i] + 2 for i in keep)
    for i in range(1, len(widths) - 1):
        if used + widths[i] + 2 <= budget + 2:
            keep.append(i)
            used += widths[i] + 2
    return sorted(keep)


def fit_table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, indent: str = "  ", width: int = WIDTH,
              max_rows: int = 20) -> list[str]:
    """A table in ``width`` columns: cells over :data:`CELL` characters cut,
    columns that do not fit left out (named on a last line), at most
    ``max_rows`` rows (the first ones) with the count of the others."""
    columns = [clip(c, CELL) for c in columns]
    shown = [[clip(v, CELL) for v in r] for r in rows[:max_rows]]
    widths = [max([len(c), *(len(r[i]) for r in shown if i < len(r))]) for i, c in enumerate(columns)]
    keep = _keep_columns(widths, width - len(indent))

    def line(cells: Sequence[str]) -> str:
        return clip(indent + "  ".join(cells[i].ljust(widths[i]) for i in keep).rstrip(), width)

    out = [line(columns), *(line(r) for r in shown)]
    if len(rows) > max_rows:
        out.append(f"{indent}… {len(rows) - max_rows} more rows in the report")
    dropped = [columns[i] for i in range(len(columns)) if i not in keep]
    if dropped:
        out += wrap_items(f"{indent}(in the report also: ", dropped, indent=indent + "  ", width=width - 1)
        out[-1] += ")"
    return out


def metrics_line(final: dict[str, object], width: int = WIDTH) -> str:
    """A training run's last figures in one line: its accuracies and loss."""
    from robustlab.train.sinks import metric_cells

    keys = [k for k in final if "acc" in k or k == "loss" or k.endswith("_loss")] or list(final)
    kept = {k: v for k, v in final.items() if k in keys or k.endswith("_n")}  # an accuracy's n sits beside it
    return clip(", ".join(metric_cells(kept, skip=())), width)


def result_line(ev: dict, width: int = WIDTH) -> str:
    """An evaluation's result in one line: each row's first cell and its last
    numeric column (the strongest attack or the quantity of the table), e.g.
    ``PGD-10: plain 0.0312, at 0.4688``."""
    from robustlab.report.format import NOTHING, counted_nothing
    from robustlab.report.markdown import evaluation_cells

    if counted_nothing(ev.get("n")):  # a transfer none of whose images every model classifies: rates 0 / 0
        return clip(f"counted no image (n = 0): {ev.get('value') or 'nothing measured'}", width)
    columns, rows, unit = evaluation_cells(ev)
    numeric = [i for i in range(1, len(columns)) if all(_is_number(r[i]) or r[i] == NOTHING for r in rows)]
    if not rows or not numeric:
        return f"{len(rows)} rows"
    summary = [i for i in numeric if "(mean)" in columns[i] or columns[i] in ("robust", "mean")]
    i = (summary or numeric)[-1]  # a corruption table's mean, not its last corruption
    pct = "%" if unit == "%" else ""
    return clip(f"{columns[i]}: " + ", ".join(f"{r[0]} {r[i]}{pct if r[i] != NOTHING else ''}" for r in rows), width)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
