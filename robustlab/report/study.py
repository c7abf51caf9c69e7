"""The sections of a study's report: its models (network, recipe, training)
and one section per evaluation — a readable table with intervals, its plot,
its adversarial examples where the study kept them, and the table exactly as
``results.json`` holds it."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robustlab.report import plots
from robustlab.report.blocks import Cell, Exact, Figure, Note, Section, Table, cell, table
from robustlab.report.examples import study_examples
from robustlab.report.format import (
    attack_label,
    budget,
    humanize,
    network_text,
    pixels,
    recipe_text,
    short,
    steps_text,
    table_rows,
)
from robustlab.report.runs import accuracy_key, figure, transfer_meta

#: Training-record keys the models table leaves out (said elsewhere or not results).
_SKIP = {"kind", "step", "lr", "train_seconds", "epoch"}
#: Evaluation kinds whose numbers are not proportions of images (mIoU, mAP, counts).
_DENSE = ("dag", "dag transfer", "dag targeted", "dag proposals")
#: Kinds whose cells are not proportions at all (differences of BN statistics, ratios).
_NOT_PROPORTIONS = (*_DENSE, "bn_statistics")


def models_table(models: Mapping[str, Mapping[str, Any]]) -> Table:
    """One row per model: its name (the network under it), recipe as text,
    epochs, steps, training time, then its final metrics under readable names
    (accuracies first; an accuracy on test images carries its interval where
    the record holds their number, ``eval_n``)."""
    metrics = list(dict.fromkeys(k for m in models.values() for k in (m.get("final") or {}) if k not in _SKIP))
    metrics.sort(key=lambda k: (not accuracy_key(k), k.startswith("train_"), k))
    columns = ["model (network)", "recipe", "epochs", "steps", "train time (s)", *map(humanize, metrics)]
    rows = []
    for name, m in models.items():
        final = m.get("final") or {}
        n = final.get("eval_n")
        row = [Cell(name, network_text(m.get("model") or {}), cls="text"),
               Cell(recipe_text(m.get("recipe") or {}), cls="text wrap"), cell(final.get("epoch")),
               cell(m.get("steps")), Cell(f"{m.get('train_seconds', 0):.1f}", cls="num")]
        for k in metrics:
            v = final.get(k)
            prop = accuracy_key(k) and isinstance(v, (int, float))
            row.append(cell(v, n if not k.startswith("train_") else None, proportion=prop) if v is not None
                       else Cell("", cls="num"))
        rows.append(row)
    return Table(columns, rows)


def _meta(ev: Mapping[str, Any]) -> list[str]:
    """ε, steps and protocol of one study evaluation, from its recorded options."""
    kind, o, n = ev["kind"], ev.get("options") or {}, ev.get("n", "?")
    images = f"n = {short(n)} images"
    if kind == "accuracy":
        return ["no adversary (clean images)", "protocol accuracy: clean top-1" +
                (" per BN route" if o.get("routes") else ""), images]
    if kind == "whitebox":
        loss = {"both": "CE and C&W-margin losses", "cw": "C&W-margin loss"}.get(o.get("loss"), "CE loss")
        return [budget(pixels(o.get("eps"))), budget(pixels(o.get("step_size")), symbol="α"),
                "PGD " + steps_text(o.get("steps")),
                f"protocol white-box PGD: {loss}, {'targeted' if o.get('targeted') else 'untargeted'}, "
                f"{o.get('restarts', 1)} restart(s), worst case over the losses", images]
    if kind == "robust":
        from robustlab.eval import protocols

        p = str(o.get("protocol", "standard"))
        try:
            steps, what = protocols.get(p).resolve(o.get("options")).get("steps"), protocols.describe(p)
        except ValueError:
            steps, what = None, ""
        return [budget(pixels(o.get("eps")), str(o.get("norm", "linf"))), steps_text(steps) + " per stage",
                f"protocol {p}: {what}", images]
    if kind == "transfer":
        return [*transfer_meta(list(o.get("attacks") or []), pixels(o.get("eps")), n, ev.get("attack_configs")),
                f"sources {short(o.get('sources'))}; targets {short(o.get('targets'))}"]
    if kind == "blackbox":
        return [budget(pixels(o.get("eps"))), "attacks " + ", ".join(map(attack_label, o.get("attacks") or [])) +
                " with their default steps", f"protocol all-or-nothing (§4.6.2) over every attack made on "
                f"{short(o.get('sources'))}", images]
    if kind == "corruption":
        return ["no adversary (ε not applicable)", f"protocol corruption: {len(o.get('corruptions') or [])} "
                f"corruptions × severities {short(o.get('severities'))}", images]
    if kind in _DENSE:
        a = o.get("attack") if isinstance(o.get("attack"), Mapping) else o
        meta = [f"DAG γ = {short(a.get('gamma', 0.5))}/255 per iteration (eq. 2.3)"] if "gamma" in a else []
        if a.get("max_iter") is not None:
            meta.append(f"at most {a['max_iter']} iterations")
        meta.append(f"protocol {kind}" + (f" ({o['task']})" if o.get("task") else ""))
        return [*meta, f"n = {n} scenes"]
    return _generic_meta(kind, o, ev, images)


def _generic_meta(kind: str, o: Mapping[str, Any], ev: Mapping[str, Any], images: str) -> list[str]:
    """Any other kind: the budget, steps and attacks its options or attack records name."""
    meta = []
    configs = ev.get("attack_configs") if isinstance(ev.get("attack_configs"), Mapping) else {}
    if "eps" in o:
        meta.append(budget(pixels(o["eps"]), str(o.get("norm", "linf"))))
    elif ev.get("eps_255_per_batch"):
        meta.append(f"ε drawn per batch from {short(sorted(set(ev['eps_255_per_batch'])))} (/255)")
    if o.get("step_size") is not None:
        meta.append(budget(pixels(o["step_size"]), symbol="α"))
    if o.get("steps") is not None:
        meta.append(steps_text(o["steps"]))
    elif configs:
        meta.append("steps: " + ", ".join(f"{attack_label(a)} {short(c.get('steps', '?'))}"
                                          for a, c in configs.items() if isinstance(c, Mapping)))
    attacks = o.get("attacks")
    meta.append(f"protocol {kind}" + (f": {', '.join(map(attack_label, attacks))}" if attacks else ""))
    meta.append(images)
    return meta


def _plots(ev: Mapping[str, Any]) -> list[Figure]:
    kind = ev["kind"]
    if kind in ("whitebox", "robust") and ev.get("curves"):
        return [figure(plots.robustness_curves(ev["curves"]), "accuracy against PGD iterations")]
    if kind == "transfer" and (ev.get("raw") or {}).get("success"):
        success = ev["raw"]["success"]
        targets = list(dict.fromkeys(t for by in success.values() for row in by.values() for t in row))
        labels = [f"{attack_label(a)} from {s}" for a, by in success.items() for s in by]
        values = [[None if row.get(t) is None else 100 * row[t] for t in targets]
                  for by in success.values() for row in by.values()]
        return [figure(plots.heatmap(labels, targets, values, title="transfer success rate (%): "
                                     "(attack, source) → target"), "heatmap of transfer success rates")]
    if kind == "corruption" and ev.get("errors"):
        clean = {r["model"]: r["clean"] for r in ev.get("table") or [] if isinstance(r.get("clean"), float)}
        return [figure(plots.corruption_curves(ev["errors"], clean), "accuracy against corruption severity, "
                       "one line per model", wide=True)]
    return []


def evaluation_section(name: str, ev: Mapping[str, Any], run_dir: Path | None) -> Section:
    kind = ev["kind"]
    rows = ev.get("table") or []
    proportions: Any = kind not in _NOT_PROPORTIONS
    if kind == "gaps":  # success rates, then differences of them (not proportions of images)
        diffs = set((ev.get("options") or {}).get("differences") or {})
        proportions = lambda c: c not in diffs and not c.startswith("white-box ")  # noqa: E731
    labels = {c: c.replace("_", " ") for r in rows for c in r}
    blocks: list[Any] = []
    if ev.get("value"):
        blocks.append(Note(str(ev["value"]), "info"))
    blocks.append(table(rows, ev.get("n"), labels=labels, proportions=proportions))
    blocks += _plots(ev)
    for label, warns in (ev.get("warnings") or {}).items():
        blocks += [Note(f"{label}: {w}", "warn") for w in warns]
    blocks += study_examples(run_dir, name, ev)
    blocks += [Figure(extra["png"], str(extra.get("title", "")), str(extra.get("title", "")))
               for extra in ev.get("images") or [] if extra.get("png")]
    columns, cells = table_rows(rows)
    blocks.append(Exact(name, columns, cells))
    return Section(name, _meta(ev), blocks, subtitle=kind, id=f"evaluation-{name}")


def study_sections(results: Mapping[str, Any], run_dir: Path | None) -> list[Section]:
    out = []
    if results.get("models"):
        out.append(Section("Models", [f"{len(results['models'])} models trained on {results.get('data', '?')}"],
                           [models_table(results["models"])]))
    out += [evaluation_section(name, ev, run_dir) for name, ev in (results.get("evaluations") or {}).items()]
    return out
