"""A self-contained ``report.html`` for a run directory, drawn by the Jinja
templates of ``robustlab/report/templates/`` (autoescaped): the verdicts of
the claims the results declare, then tables with 95% intervals, plots and
adversarial examples of what ``results.json`` holds — training history,
robust accuracy, robustness curves and the masking checklist, transfer
matrices, corruption errors, BN statistics, a study's models and
evaluations. Every image is inlined, so the file can be mailed or archived
alone."""
from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from robustlab._io import atomic_write_text, read_json_mapping
from robustlab.report.blocks import Section
from robustlab.report.blocks import table as _table
from robustlab.report.format import pct, table_rows, wilson
from robustlab.report.plots import png_base64
from robustlab.report.runs import (
    attack_sections,
    curve_sections,
    eval_curve_sections,
    is_attack,
    robust_sections,
    train_section,
    verdicts,
)
from robustlab.report.study import study_sections

__all__ = ["render", "render_study", "write_report", "write_study_report", "table", "table_rows", "pct", "wilson",
           "png_base64"]

RAW_LIMIT = 200_000  # characters of results.json shown folded at the end


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The templates, loaded from the package, escaping every value."""
    return jinja2.Environment(loader=jinja2.PackageLoader("robustlab.report", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def page(title: str, sections: list[Section], results: Mapping[str, Any],
         intro: list[tuple[str, str]] | None = None) -> str:
    """The whole HTML page of a run."""
    _unique_ids(sections, set())
    raw = json.dumps(results, indent=1, default=str)
    if len(raw) > RAW_LIMIT:
        raw = raw[:RAW_LIMIT] + "\n… (cut: see results.json)"
    return environment().get_template("page.html").render(
        title=title, intro=intro or [], verdicts=verdicts(results), sections=sections, raw=raw) + "\n"


def _unique_ids(sections: list[Any], seen: set[str]) -> None:
    """Section ids made unique over the page (each model's "white-box robustness" …)."""
    for s in sections:
        if not isinstance(s, Section):
            continue
        base, k = s.id, 2
        while s.id in seen:
            s.id, k = f"{base}-{k}", k + 1
        seen.add(s.id)
        _unique_ids(s.blocks, seen)


def table(rows: list[Mapping[str, Any]], columns: list[str] | None = None, attrs: str = "",
          n: int | None = None) -> str:
    """A readable results table as an HTML fragment (proportions with their
    interval on ``n`` images; ``attrs``: trusted extra attributes)."""
    if not rows:
        return ""
    t = _table(rows, n, columns=columns)
    html = environment().get_template("blocks.html").module.table(t)
    return Markup(str(html).replace("<table class=\"readable\"", f"<table class=\"readable\"{attrs}", 1))


def run_sections(results: Mapping[str, Any], run_dir: Path | None = None) -> list[Section]:
    """The sections of one run's results (train, eval or attack)."""
    if results.get("kind") == "study":
        return study_sections(results, run_dir)
    if is_attack(results):
        return attack_sections(results, run_dir)
    out: list[Section] = []
    if results.get("history"):
        out.append(train_section(results))
    models = results.get("models") or {}
    if results.get("kind") == "eval" and any("robust_accuracy" in m for m in models.values()):
        out += robust_sections(results, run_dir)
    elif results.get("kind") == "eval":
        out += eval_curve_sections(results)
    else:
        out += curve_sections(results)
        tr = results.get("transfer")
        if tr and tr.get("success"):
            from robustlab.report.runs import transfer_blocks, transfer_meta

            opts = results.get("options") or {}
            out.append(Section("Transfer (black-box)", transfer_meta(list(tr["success"]), opts.get("eps"),
                                                                     tr.get("n"), tr.get("attack_configs")),
                               transfer_blocks(tr["success"], tr.get("n"))))
    return out


def weights_text(record: Mapping[str, Any], outputs: Any = None) -> str:
    """Which weights a model held (``robustlab eval``'s per-model ``weights``),
    in a few words: the source, the file's name and the start of its sha256;
    then the outputs it was scored over (:func:`outputs_text`), if some."""
    source = record.get("source")
    if source in ("random", "factory"):
        words = ["randomly initialized (no weights given)" if source == "random" else "as its factory built it"]
    else:
        file = Path(str(record["file"])).name if record.get("file") else None
        words = [{"run": "robustlab run", "file": "file"}.get(str(source), f"{source} pretrained"),
                 record.get("weights") or record.get("tag"), file,
                 f"sha256 {str(record['sha256'])[:12]}…" if record.get("sha256") else None]
    return ", ".join(str(p) for p in (*words, outputs_text(outputs)) if p)


def outputs_text(record: Any) -> str:
    """Which outputs a model was scored over, when the data holds some of its
    classes (``robustlab eval``'s per-model ``outputs``); "" when all."""
    if not isinstance(record, Mapping) or not record.get("indices"):
        return ""
    return (f"scored over the {len(record['indices'])} outputs of the data's classes of its "
            f"{record.get('outputs')} ({record.get('of')})")


def _intro(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    if is_attack(results):
        data = results.get("data") or {}
        held = results.get("weights_record")
        return [("", f"robustlab attack on model {results.get('model')}, {data.get('n', results.get('n'))} images "
                     f"of {data.get('name', '?')}; {results.get('seconds', 0):.1f} s"),
                *([("", "weights: " + weights_text(held, results.get("outputs")))]
                  if isinstance(held, Mapping) else [])]
    if results.get("kind") == "eval":
        specs = ", ".join(map(str, results.get("model_specs") or []))
        models = (results.get("models") or {}).items()
        weights = [f"{name}: {weights_text(m['weights'], m.get('outputs'))}" for name, m in models
                   if isinstance(m, Mapping) and isinstance(m.get("weights"), Mapping)]
        return [("", f"robustlab eval, protocol {results.get('protocol')}, on {results.get('n')} images of "
                     f"{results.get('data')}; models {specs}; {results.get('seconds', 0):.1f} s"),
                *([("", "weights: " + "; ".join(weights))] if weights else [])]
    if results.get("kind") == "train":
        return [("", f"robustlab train: {results.get('steps', '?')} steps")]
    return []


def render(results: Mapping[str, Any], title: str, run_dir: Path | None = None) -> str:
    """The page of one run (train, eval, attack; a study goes to :func:`render_study`)."""
    if results.get("kind") == "study":
        return render_study(results, run_dir)
    return page(title, run_sections(results, run_dir), results, _intro(results))


def render_study(results: Mapping[str, Any], run_dir: Path | None = None) -> str:
    """The page of a study: its verdicts, its models, one section per
    evaluation (a readable table, its plot, adversarial examples where kept,
    and the cells exactly as ``results.json`` holds them)."""
    title = f"robustlab study — {results.get('title', results.get('name', '?'))}"
    took = f"{float(results.get('seconds', 0)):.0f} s"
    if results.get("compute_seconds") is not None:
        took += f" this run ({float(results['compute_seconds']):.0f} s of training and evaluation in all)"
    intro = [("", f"data {results.get('data', '?')}; {len(results.get('models') or {})} models; {took}"
                  + (f"; thesis chapter {results['chapter']}" if results.get("chapter") else ""))]
    if results.get("form") == "smoke":
        intro.append(("Smoke form.", "run with the config's smoke: overrides (fewer images and epochs): a check "
                                     "of the pipeline, not a result."))
    if results.get("claim"):
        intro.append(("Thesis claim.", str(results["claim"])))
    if results.get("notes"):
        intro.append(("Notes.", str(results["notes"])))
    return page(title, study_sections(results, run_dir), results, intro)


def _read(path: Path) -> dict[str, Any]:
    return read_json_mapping(path, "a run's results.json is the object robustlab wrote; run its command again")


#: What each kind of results.json holds at least (an attack record has no kind: :func:`is_attack`).
_REQUIRED = {"train": ("steps",), "eval": ("protocol",), "study": ("evaluations",)}


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """``run_dir/results.json``, checked to be a robustlab run's (train, eval,
    study or attack): another file is refused naming what it lacks, not
    rendered as an empty page (what ``robustlab report`` reads)."""
    path = Path(run_dir) / "results.json"
    results = _load(Path(run_dir))
    kind = results.get("kind")
    if kind is None and is_attack(results):
        return results
    if kind not in _REQUIRED:
        raise ValueError(f"{path} is not the results of a robustlab run: its kind is {kind!r} (train, eval, study "
                         "or an attack record); run the command again, or pass the run directory it came from")
    missing = [k for k in _REQUIRED[kind] if k not in results]
    if missing:
        raise ValueError(f"{path} is a {kind} results.json without {', '.join(missing)}: it was not written by "
                         "robustlab, or was edited; run the command again to rewrite it")
    return results


def _load(run_dir: Path) -> dict[str, Any]:
    """``run_dir/results.json`` as a mapping; a missing one is said as an unfinished run or no run."""
    path = run_dir / "results.json"
    if not path.is_file():
        if (run_dir / "run.json").is_file():
            kind = read_json_mapping(run_dir / "run.json", "a run's identity").get("kind", "robustlab")
            raise FileNotFoundError(f"{run_dir} is a {kind} run that has not finished (no results.json yet); "
                                    "run its command again to finish it")
        raise FileNotFoundError(f"{run_dir} has no results.json; is it a robustlab run directory?")
    return _read(path)


def write_report(run_dir: str | Path) -> Path:
    """Render ``run_dir/results.json`` (and the results of the runs inside it,
    e.g. an eval run in a training run) into ``run_dir/report.html``; a
    results.json of a kind without a report of its own gets the page's frame
    (``robustlab report`` checks the kind first: :func:`read_results`)."""
    run_dir = Path(run_dir)
    results = _load(run_dir)
    if results.get("kind") == "study":
        return write_study_report(run_dir)
    sections = run_sections(results, run_dir)
    for sub in sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / "results.json").is_file()):
        inner = _read(sub / "results.json")
        sections.append(Section(sub.name, [f"run directory {sub.name}/ inside this one"] + [
            text for _, text in _intro(inner)], run_sections(inner, sub), id=f"run-{sub.name}"))
    out = run_dir / "report.html"
    atomic_write_text(out, page(f"robustlab — {run_dir.name}", sections, results, _intro(results)))
    return out


def write_study_report(run_dir: str | Path) -> Path:
    """Render a study's ``results.json`` into ``run_dir/report.html``."""
    run_dir = Path(run_dir)
    results = _read(run_dir / "results.json")
    out = run_dir / "report.html"
    atomic_write_text(out, render_study(results, run_dir))
    return out
