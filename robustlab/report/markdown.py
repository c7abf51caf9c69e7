"""Markdown of study runs: per run directory, its title and chapter, the
verdict of each claim with the numbers compared (and their n), and the
conditions it ran under — what ``robustlab report RUN_DIR... --markdown``
prints and what the README's and ``docs/results.md``'s generated blocks hold.

A generated block sits between marker comments in a markdown file, so the
prose around it stays hand-written::

    <!-- results:begin -->            (one section per study run)
    <!-- results:end -->
    <!-- results-summary:begin -->    (one row per study run: its verdict counts)
    <!-- results-summary:end -->

:func:`update_file` replaces what is between the markers and nothing else.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from robustlab._io import atomic_write_text, safe_yaml
from robustlab.report.format import NOTHING, comparisons, counted_nothing, is_proportion, row_counts, short

#: Marker comments of the generated blocks: name → renderer over run directories.
BLOCKS = ("results", "results-summary")
_VERDICTS = ("holds", "does not hold", "not evaluated")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def read_study(run_dir: str | Path) -> dict[str, Any]:
    """``run_dir/results.json`` of a study run (``robustlab study``); a clear
    error for a folder without one or a run of another kind."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no results.json; is it a robustlab run directory?")
    results = _read_json(path)
    if results.get("kind") != "study":
        raise ValueError(f"{run_dir} is a {results.get('kind', 'unknown')!r} run, not a study: --markdown "
                         "renders the claims of `robustlab study` runs")
    return results


# ------------------------------------------------------------------ conditions


def _dotted(raw: Any, key: str) -> tuple[bool, Any]:
    node = raw
    for part in [p for p in str(key).split(".") if p]:
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def run_form(results: Mapping[str, Any], run_dir: Path) -> str:
    """``smoke``, ``full`` or ``not recorded``: the ``form`` results.json
    records (``robustlab study`` writes it). Older runs: an explicit
    ``smoke`` flag; otherwise inferred from the run's ``study.yaml`` (the
    config as resolved), a smoke form when every one of its ``smoke:``
    overrides is in effect, full when the config has smoke overrides not all
    in effect."""
    if results.get("form") in ("smoke", "full"):
        return str(results["form"])
    if isinstance(results.get("smoke"), bool):
        return "smoke" if results["smoke"] else "full"
    path = run_dir / "study.yaml"
    if not path.is_file():
        return "not recorded"
    import yaml

    try:
        raw = safe_yaml(path.read_text()) or {}
    except yaml.YAMLError:
        return "not recorded"
    smoke = raw.get("smoke") if isinstance(raw, Mapping) else None
    if not isinstance(smoke, Mapping) or not smoke:
        return "full"  # the config has no reduced form
    in_effect = [_dotted(raw, k) == (True, v) for k, v in smoke.items()]
    return "smoke" if all(in_effect) else "full"


def _limit(run_dir: Path) -> Any:
    path = run_dir / "study.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        raw = safe_yaml(path.read_text()) or {}
    except yaml.YAMLError:
        return None
    return raw.get("limit") if isinstance(raw, Mapping) else None


def conditions(results: Mapping[str, Any], run_dir: str | Path) -> list[str]:
    """What the run was: form (smoke / full), the images-per-evaluation limit
    and the n the evaluations had, data, when and by which version it ran
    (``run.json``), the git commit of the source that wrote the results
    (``run.json``'s ``commit``; "not recorded" for older runs or a run
    outside a git checkout), and its wall time."""
    run_dir = Path(run_dir)
    form = run_form(results, run_dir)
    out = [f"form: **{form}**" + (" (the config's `smoke:` overrides; a check of the pipeline, "
                                  "not a result)" if form == "smoke" else "")]
    limit = _limit(run_dir)
    ns = sorted({int(ev["n"]) for ev in (results.get("evaluations") or {}).values()
                 if isinstance(ev, Mapping) and isinstance(ev.get("n"), (int, float))})
    if limit is not None:
        out.append(f"limit: {short(limit)} test images per evaluation")
    if ns:
        out.append(f"n: {ns[0]}" + (f"–{ns[-1]}" if len(ns) > 1 else "") + " per evaluation")
    if results.get("data"):
        out.append(f"data: {results['data']}")
    run = _read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    if run.get("created"):
        out.append(f"run: {run['created']}")
    if run.get("robustlab"):
        out.append(f"robustlab {run['robustlab']}")
    commit = results.get("commit") or run.get("commit")
    out.append(f"commit: `{commit}`" if commit else "commit: not recorded")
    if isinstance(results.get("seconds"), (int, float)):
        out.append(f"{float(results['seconds']):.0f} s")
    out.append(f"run directory `{run_dir.name}`")
    return out


# ------------------------------------------------------------------ verdicts


def _cell(text: Any) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _evaluation_of(label: str) -> str:
    """``pgd[at].PGD-3`` → ``pgd``; ``mean(transfer[*, a]."→ b")`` → ``transfer``."""
    m = re.match(r"^(?:\w+\()?([^\[(]+)\[", label)
    return m.group(1) if m else ""


def compared(claim: Mapping[str, Any], evaluations: Mapping[str, Any]) -> list[str]:
    """Each number the claim compared, as ``cell = value (n = N)``."""
    values = claim.get("values") or {}
    if not isinstance(values, Mapping):
        return [short(values)]
    out = []
    for label, value in values.items():
        ev = evaluations.get(_evaluation_of(str(label)))
        n = ev.get("n") if isinstance(ev, Mapping) else None
        text = f"{label} = {value:.4f}" if isinstance(value, float) else f"{label} = {short(value)}"
        out.append(text + (f" (n = {short(n)})" if n is not None else ""))
    return out


def numbers_cell(claim: Mapping[str, Any], evaluations: Mapping[str, Any]) -> str:
    """The verdict table's last cell: the comparison itself first
    (``**0.532 > 0.006** (+52.6 points, 95% CI [+48.1, +57.0])``, one per
    ``for_each`` item, marked *within noise* where its interval holds 0), then
    every value behind it folded in a ``<details>`` (GitHub renders it in a
    table cell); without a recorded comparison, the values as they are."""
    numbers = compared(claim, evaluations)
    if claim.get("reason"):
        numbers.insert(0, f"({claim['reason']})")
    lead = [(f"{item}: " if item else "") + "**" + text.replace(" (", "** (", 1) + (" *within noise*" if item and noise
                                                                                    else "")
            for item, text, noise in comparisons(claim)]
    if not lead:
        return _cell("; ".join(numbers)) or "—"
    folded = f"<details><summary>values compared ({len(numbers)})</summary>{'; '.join(numbers)}</details>"
    return _cell("; ".join(lead) + " " + folded)


def verdict_table(results: Mapping[str, Any]) -> list[str]:
    """The markdown table of the run's claims: id, what it says, verdict
    ("(within noise)" where the 95% interval of the difference contains 0),
    numbers compared (the comparison first, then its cells with their n);
    a claim not evaluated gives its reason."""
    claims = [c for c in results.get("claims") or [] if isinstance(c, Mapping)]
    if not claims:
        return ["This study declares no claims."]
    evaluations = results.get("evaluations") or {}
    lines = ["| claim | says | verdict | numbers compared |", "|---|---|---|---|"]
    for c in claims:
        verdict = str(c.get("verdict", "not recorded"))
        noise = " (within noise)" if c.get("within_noise") is True else ""
        lines.append(f"| {_cell(c.get('id', ''))} | {_cell(c.get('says', ''))} | **{_cell(verdict)}**{noise} | "
                     f"{numbers_cell(c, evaluations)} |")
    return lines


def _table_cell(v: Any, column: str, proportions: Any) -> str:
    is_pct = proportions(column) if callable(proportions) else proportions
    if isinstance(v, float) and is_pct and is_proportion(v):
        return f"{100 * v:.1f}"
    if isinstance(v, float) and callable(proportions) and abs(v) <= 1:  # a difference of two rates: points
        return f"{100 * v:+.1f}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return _cell(short(v) if isinstance(v, (list, tuple, bool)) else v)


def evaluation_cells(ev: Mapping[str, Any]) -> tuple[list[str], list[list[str]], str]:
    """(columns, rows of cells, unit) of a study evaluation's table as the
    markdown and the terminal print it: proportions of images in percent with
    one decimal (``unit`` says so), other numbers to 4 significant digits."""
    from robustlab.report.study import proportion_rule

    pairs = [(r, n) for r, n in zip(ev.get("table") or [], row_counts(ev)) if isinstance(r, Mapping)]
    proportions = proportion_rule(ev) if "kind" in ev else False
    columns = list(dict.fromkeys(k for r, _ in pairs for k in r))
    unit = "%" if proportions is True else ("%; differences in points" if callable(proportions) else "")

    def text(row: Mapping[str, Any], n: Any, column: str) -> str:
        v = row.get(column, "")
        if counted_nothing(n) and isinstance(v, float):  # a rate over no image: 0 / 0, not 0 %
            return NOTHING
        return _table_cell(v, column, proportions)

    return columns, [[text(r, n, c) for c in columns] for r, n in pairs], unit


def evaluation_tables(results: Mapping[str, Any]) -> list[str]:
    """Every evaluation's table, folded under its name, kind, n and
    conditions (ε, steps, protocol: the report's section header): proportions
    of images in percent with one decimal, other numbers to 4 significant
    digits, as ``results.json`` holds them otherwise."""
    from robustlab.report.study import KIND_TITLES, evaluation_meta

    out = []
    for name, ev in (results.get("evaluations") or {}).items():
        rows = [r for r in ev.get("table") or [] if isinstance(r, Mapping)] if isinstance(ev, Mapping) else []
        if not rows:
            continue
        kind = str(ev.get("kind", ""))
        columns, cells, unit = evaluation_cells(ev)
        head = f"<b>{_cell(name)}</b> ({_cell(kind)}" + (f": {KIND_TITLES[kind]}" if kind in KIND_TITLES else "")
        head += f"; n = {short(ev.get('n', '?'))}" + (f"; {unit})" if unit else ")")
        try:
            meta = evaluation_meta(ev)
        except (KeyError, TypeError, ValueError):
            meta = []
        out += [f"<details><summary>{head}</summary>", ""]
        if meta:
            out += [_cell(" · ".join(meta)), ""]
        if ev.get("value"):
            out += [f"*{_cell(ev['value'])}*", ""]
        out.append("| " + " | ".join(_cell(c) for c in columns) + " |")
        out.append("|" + "---|" * len(columns))
        out += ["| " + " | ".join(row) + " |" for row in cells]
        out += ["", "</details>", ""]
    return out


def study_markdown(run_dir: str | Path, level: int = 3, tables: bool = True) -> str:
    """One study run as a markdown section: ``### title (ch. N)``, its
    conditions, its verdict table, then (``tables``) every evaluation's
    table, folded."""
    run_dir = Path(run_dir)
    results = read_study(run_dir)
    chapter = results.get("chapter")
    head = f"{'#' * level} {results.get('title') or results.get('name', run_dir.name)}"
    head += f" (`{results.get('name', run_dir.name)}`" + (f", thesis ch. {chapter})" if chapter else ")")
    lines = [head, "", " · ".join(conditions(results, run_dir)), ""]
    if results.get("claim"):
        lines += [f"Thesis claim: {' '.join(str(results['claim']).split())}", ""]
    lines += verdict_table(results)
    if tables:
        folded = evaluation_tables(results)
        if folded:
            lines += ["", "The tables the claims read (click to open):", "", *folded]
    return "\n".join(lines).rstrip() + "\n"


def studies_markdown(run_dirs: Sequence[str | Path], level: int = 3, tables: bool = True) -> str:
    """Every run's section, in the order given."""
    return "\n".join(study_markdown(d, level, tables) for d in run_dirs)


def summary_markdown(run_dirs: Sequence[str | Path]) -> str:
    """One row per study run: chapter, form, how many claims hold / do not
    hold / were not evaluated, how many of the verdicts are within sampling
    noise (the 95% interval of the compared difference contains 0; and how
    many have no such interval: a comparison with a number that is not a
    proportion of images, or of differences of rates), and the
    ids of those that do not hold (marked ``~`` when within noise)."""
    lines = ["| study | ch. | form | holds | does not hold | not evaluated | within noise | "
             "claims that do not hold |",
             "|---|---|---|---|---|---|---|---|"]
    for d in run_dirs:
        d = Path(d)
        results = read_study(d)
        claims = [c for c in results.get("claims") or [] if isinstance(c, Mapping)]
        count = {v: sum(c.get("verdict") == v for c in claims) for v in _VERDICTS}
        noisy = sum(c.get("within_noise") is True for c in claims)
        # verdicts whose comparison has no sampling interval (an exact number, differences of differences)
        unknown = sum(c.get("verdict") in ("holds", "does not hold") and not isinstance(c.get("within_noise"), bool)
                      for c in claims)
        failing = ", ".join(f"{c.get('id')}{'~' if c.get('within_noise') is True else ''}" for c in claims
                            if c.get("verdict") == "does not hold")
        lines.append(f"| {_cell(results.get('name', d.name))} | {_cell(results.get('chapter') or '')} | "
                     f"{run_form(results, d)} | {count['holds']} | {count['does not hold']} | "
                     f"{count['not evaluated']} | {noisy}{f' (no interval: {unknown})' if unknown else ''} | "
                     f"{_cell(failing) or '—'} |")
    if any("~" in line.rsplit("|", 2)[-2] for line in lines[2:]):
        lines.append("")
        lines.append("~: within noise (the 95% interval of the difference contains 0).")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ generated blocks


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with what lies between ``<!-- NAME:begin -->`` and
    ``<!-- NAME:end -->`` replaced by ``content`` (every such block)."""
    begin, end = _markers(name)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"no {begin} … {end} block")
    body = (f"{begin}\n<!-- generated by `robustlab report RUN_DIR... --markdown --update FILE`; "
            f"edits inside this block are overwritten -->\n\n{content.rstrip()}\n\n{end}")
    return pattern.sub(lambda _: body, text)


def update_file(path: str | Path, run_dirs: Sequence[str | Path]) -> list[str]:
    """Regenerate every ``results`` / ``results-summary`` block of the
    markdown file ``path`` from ``run_dirs``; returns the blocks rewritten."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such markdown file to update")
    text = path.read_text()
    found = [name for name in BLOCKS if _markers(name)[0] in text]
    if not found:
        raise ValueError(f"{path} has no generated block; add {' … '.join(_markers('results'))} "
                         f"(or {' … '.join(_markers('results-summary'))}) where it should go")
    render = {"results": lambda: studies_markdown(run_dirs, level=4),
              "results-summary": lambda: summary_markdown(run_dirs)}
    for name in found:
        if _markers(name)[1] not in text:
            raise ValueError(f"{path}: {_markers(name)[0]} has no {_markers(name)[1]} after it")
        text = replace_block(text, name, render[name]())
    atomic_write_text(path, text)
    return found
