"""The sections of a study's report: its models (network, recipe, training)
and one section per evaluation — a readable table with intervals, its plot,
its adversarial examples where the study kept them, and the table exactly as
``results.json`` holds it."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from robustlab.report import plots
from robustlab.report.blocks import Cell, Exact, Figure, Note, Section, Table, cell, table
from robustlab.report.examples import study_examples
from robustlab.report.format import (
    attack_label,
    budget,
    counted_nothing,
    humanize,
    network_text,
    pixels,
    recipe_text,
    short,
    stage_steps_text,
    steps_text,
    table_rows,
)
from robustlab.report.runs import accuracy_key, figure, is_count_key, metric_n, transfer_heatmap, transfer_meta

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
    the record holds their number: ``clean_n``, ``{attack}_n``, :func:`metric_n`)."""
    metrics = list(dict.fromkeys(k for m in models.values() for k in (m.get("final") or {})
                                 if k not in _SKIP and not is_count_key(k)))
    metrics.sort(key=lambda k: (not accuracy_key(k), k.startswith("train_"), k))
    columns = ["model (network)", "recipe", "epochs", "steps", "train time (s)", *map(humanize, metrics)]
    rows = []
    for name, m in models.items():
        final = m.get("final") or {}
        row = [Cell(name, network_text(m.get("model") or {}), cls="text"),
               Cell(recipe_text(m.get("recipe") or {}), cls="text wrap"), cell(final.get("epoch")),
               cell(m.get("steps")), Cell(f"{m.get('train_seconds', 0):.1f}", cls="num")]
        for k in metrics:
            v = final.get(k)
            prop = accuracy_key(k) and isinstance(v, (int, float))
            row.append(cell(v, metric_n(final, k), proportion=prop) if v is not None else Cell("", cls="num"))
        rows.append(row)
    first = len(columns) - len(metrics)
    unknown = {metrics[i - first] for r in rows for i, c in enumerate(r) if i >= first and c.text.endswith("%†")}
    footnote = ("† on the training batches (a running mean over the last epoch): no interval is given."
                if unknown and all(k.startswith("train_") for k in unknown) else "")
    return Table(columns, rows, footnote=footnote)


def evaluation_meta(ev: Mapping[str, Any]) -> list[str]:
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
                f"{o.get('restarts', 1)} restart(s)" + (", worst case over the losses" if o.get("loss") == "both"
                                                          else ""), images]
    if kind == "robust":
        from robustlab.eval import protocols

        p = str(o.get("protocol", "standard"))
        try:
            resolved, what = protocols.get(p).resolve(o.get("options")), protocols.describe(p)
            steps, targeted = resolved.get("steps"), protocols.targeted_steps(resolved)
        except ValueError:
            steps, targeted, what = None, None, ""
        return [budget(pixels(o.get("eps")), str(o.get("norm", "linf"))), stage_steps_text(steps, targeted),
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
        meta.append(f"protocol {kind}" + (f" ({o['task']})" if o.get("task") else "") + ": " + _dense_what(kind, o))
        return [*meta, f"n = {short(n)} scene{'s' if n != 1 else ''}"]
    if kind in _KIND_META:
        return _KIND_META[kind](o, ev, n)
    return _generic_meta(kind, o, ev, images)


#: A readable name of each evaluation kind, beside it in the section's title.
KIND_TITLES = {
    "accuracy": "clean accuracy", "whitebox": "white-box PGD curves", "robust": "robust accuracy",
    "transfer": "black-box transfer", "blackbox": "all-or-nothing black-box", "corruption": "corruption robustness",
    "holdout": "hold-out ensemble transfer (§3.4.3, Table 3.3)", "nips2017": "NIPS 2017 protocol (§3.4.5)",
    "bn_statistics": "BN statistics (Figs. 6.5, 6.6)", "stylized": "Stylized-ImageNet (Table 7.1)",
    "imagenet_a": "ImageNet-A (Table 7.1)", "gaps": "transfer gaps across a sweep", "dag": "DAG (Table 2.1)",
    "dag transfer": "DAG perturbation transfer (Tables 2.2–2.4)", "dag targeted": "targeted DAG (§2.3.4)",
    "dag proposals": "DAG against proposal density (Fig. 2.3)",
}


def _dense_what(kind: str, o: Mapping[str, Any]) -> str:
    task = o.get("task")
    if kind == "dag":
        who = {"segmentation": "every pixel of each segmenter's scenes a target",
               "detection": "every dense proposal of each detector a target",
               "cross-task": "segmenters and detectors trained on the same scenes, each attacked by its own DAG"}
        return (f"{who.get(str(task), 'each network attacked by its own DAG')}; the metric (mIoU / mAP) on clean "
                "scenes, on Trunc(X + r) and on X + r with r's pixels permuted (the control)")
    if kind == "dag transfer":
        if o.get("sums") is not None:
            sums = short(["+".join(map(str, members)) for members in o["sums"]])
            return (f"every network's perturbation on every network (within-task white-box, cross-model and "
                    f"cross-task cells, §2.4.3), the summed perturbations {sums} "
                    f"and their permuted control ({short(o.get('permutation_draws', '?'))} draws, §2.4.4); "
                    f"{o.get('clip', 'Trunc(X + r)')}")
        return (f"each perturbation r ({short(o.get('perturbations') or [])}; 'a+b': their sum, §2.4.3) added to "
                "the scenes and scored on every network (Tables 2.2, 2.3)")
    if kind == "dag targeted":
        return f"a label map painted into {o.get('model', 'the model')}'s prediction by targeted DAG (a fooling image)"
    return (f"DAG on {o.get('model', 'the detector')} with the RPN's NMS IoU at {short(o.get('nms_ious') or [])}: "
            "denser proposals make a stronger attack")


def _steps_line(attacks: list[str], configs: Any) -> str:
    configs = configs if isinstance(configs, Mapping) else {}
    return "steps: " + ", ".join(f"{attack_label(a)} {short((configs.get(a) or {}).get('steps', '?'))}"
                                 for a in attacks)


def _holdout_meta(o: Mapping[str, Any], ev: Mapping[str, Any], n: Any) -> list[str]:
    attacks = list(o.get("attacks") or [])
    w = o.get("weights")
    fused = ("weights " + ", ".join(f"{m} {short(v)}" for m, v in w.items())) if isinstance(w, Mapping) and w \
        else "equal weights"
    return [budget(pixels(o.get("eps"))), _steps_line(attacks, ev.get("attack_configs")),
            f"protocol hold-out: {', '.join(map(attack_label, attacks))} made, for each model k of "
            f"{short(o.get('models') or [])}, on the ensemble of the others (logits fused, eq. 3.8, {fused}); "
            "scored on that ensemble (ensemble rows: white-box) and on k (hold-out rows: black-box)",
            f"n = {short(n)} images every model classifies correctly (§3.4.1)"]


def _nips2017_meta(o: Mapping[str, Any], ev: Mapping[str, Any], n: Any) -> list[str]:
    drawn = sorted(set(ev.get("eps_255_per_batch") or []))
    attacks = list(o.get("attacks") or [])
    ensemble = o.get("ensemble") or []
    source = "+".join(map(str, ensemble)) if isinstance(ensemble, list) else str(ensemble)
    weights = o.get("weights") if isinstance(o.get("weights"), Mapping) else None
    targets = [str(t) for t in o.get("targets") or []]
    targets += [str(d.get("label")) for d in o.get("defended") or [] if isinstance(d, Mapping)]
    return ["ε drawn per batch from {4, 8, 12, 16}/255" + (f" (drawn here: {short(drawn)})" if drawn else ""),
            "N = 10 steps, α = ε/N, μ = 1, p = 0.4 (the competition's settings)",
            f"protocol NIPS 2017: {', '.join(map(attack_label, attacks))} made on {source}"
            + (" (a logit ensemble, eq. 3.8" + (", weights " + ", ".join(f"{k} {short(v)}" for k, v in
                                                                        weights.items()) if weights else "")
               + ")" if isinstance(ensemble, list) and len(ensemble) > 1 else "")
            + f", scored as the misclassification rate of {', '.join(targets)} and their average"
            + ("; M+DEFENSE: model M behind that input-transformation defense" if o.get("defended") else ""),
            f"n = {short(n)} images in {short(o.get('batches', '?'))} batches"]


def _bn_statistics_meta(o: Mapping[str, Any], ev: Mapping[str, Any], n: Any) -> list[str]:
    return ["no ε of its own: the attacked route's batch is made adversarial by the model's training attack "
            "(its recipe's ε and steps)",
            "protocol BN statistics: per BN layer, each route's running mean and variance against the first "
            "route's (Fig. 6.5), and one test batch's statistics against the running ones (Fig. 6.6); pictures "
            f"of {short(o.get('channels', 20))} random channels of {o.get('layer') or 'the middle BN layer'}",
            f"models {short(o.get('models') or [])}", f"n = {short(n)} images (one batch)"]


def _shifted_meta(o: Mapping[str, Any], ev: Mapping[str, Any], n: Any) -> list[str]:
    name = KIND_TITLES[o.get("kind") or ev["kind"]].split(" (")[0]
    d = ev.get("data") if isinstance(ev.get("data"), Mapping) else {}
    what = (f"top-1 over the logits of the {d.get('classes_present')} classes present (of {d.get('classes')})"
            if d.get("restricted_to_present") else "top-1 over every class")
    return ["no adversary (a shifted test set: ε not applicable)",
            f"protocol {ev['kind']}: {what}, on {name} images read from {o.get('root', '?')}",
            f"n = {short(n)} images" + (f" of {d['classes_present']} classes" if d.get("classes_present") else "")]


def _gaps_meta(o: Mapping[str, Any], ev: Mapping[str, Any], n: Any) -> list[str]:
    diffs = o.get("differences") or {}
    values = o.get("values") or []
    ename = o.get("evaluation", "?")
    ns = short(n) if not isinstance(n, list) or len(set(n)) > 1 else short(n[0])
    return [f"sweep of {o.get('sweep', '?')} over {short(values)}; ε and steps: those of the {ename}_VALUE sections",
            f"protocol gaps: per value, each attack's success rate in {ename} averaged over its black-box cells "
            "(targets other than the source); then " + ", ".join(f"{d} = {attack_label(a)} − {attack_label(b)}"
                                                                 for d, (a, b) in diffs.items()),
            f"n = {ns} images per value" + (f" ({short(values)})" if isinstance(n, list) and len(set(n)) > 1 else "")]


_KIND_META = {"holdout": _holdout_meta, "nips2017": _nips2017_meta, "bn_statistics": _bn_statistics_meta,
              "stylized": _shifted_meta, "imagenet_a": _shifted_meta, "gaps": _gaps_meta}


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
    if kind == "transfer" and (ev.get("raw") or {}).get("success") and not counted_nothing(ev.get("n")):
        return [transfer_heatmap(ev["raw"]["success"])]
    if kind == "corruption" and ev.get("errors"):
        clean = {r["model"]: r["clean"] for r in ev.get("table") or [] if isinstance(r.get("clean"), float)}
        return [figure(plots.corruption_curves(ev["errors"], clean), "accuracy against corruption severity, "
                       "one line per model", wide=True)]
    return []


def proportion_rule(ev: Mapping[str, Any]) -> bool | Callable[[str], bool]:
    """Whether an evaluation's cells are proportions of images (shown as
    percentages): True / False for the whole table, or a test per column
    (a ``gaps`` table holds success rates, then differences of them)."""
    if ev["kind"] == "gaps":
        diffs = set((ev.get("options") or {}).get("differences") or {})
        return lambda c: c not in diffs and not c.startswith("white-box ")
    return ev["kind"] not in _NOT_PROPORTIONS


def evaluation_section(name: str, ev: Mapping[str, Any], run_dir: Path | None,
                       examples_from: tuple[Path | None, str] | None = None) -> Section:
    """One evaluation's section (``examples_from``: the run directory and
    evaluation name its example files were written under, when not these)."""
    kind = ev["kind"]
    rows = ev.get("table") or []
    proportions = proportion_rule(ev)
    labels = {c: c.replace("_", " ") for r in rows for c in r}
    blocks: list[Any] = []
    if ev.get("value"):
        blocks.append(Note(str(ev["value"]), "info"))
    if counted_nothing(ev.get("n")):  # e.g. a transfer none of whose images every model classifies
        blocks.append(Note("this evaluation counted no image (n = 0): its rates are 0 / 0 and measure nothing; "
                           "train the models longer or evaluate more images", "warn"))
    blocks.append(table(rows, ev.get("n"), labels=labels, proportions=proportions))
    blocks += _plots(ev)
    for label, warns in (ev.get("warnings") or {}).items():
        blocks += [Note(f"{label}: {w}", "warn") for w in warns]
    blocks += study_examples(*(examples_from or (run_dir, name)), ev)
    blocks += [Figure(extra["png"], str(extra.get("title", "")), str(extra.get("title", "")))
               for extra in ev.get("images") or [] if extra.get("png")]
    columns, cells = table_rows(rows)
    blocks.append(Exact(name, columns, cells))
    subtitle = f"{kind} · {KIND_TITLES[kind]}" if kind in KIND_TITLES else kind
    return Section(name, evaluation_meta(ev), blocks, subtitle=subtitle, id=f"evaluation-{name}")


def _sweep_value(results: Mapping[str, Any], name: str) -> tuple[str, str, str] | None:
    """(value, the inner evaluation's name, the value's run folder) of a
    sweep's combined evaluation ``EVALUATION_VALUE``; None for any other."""
    sweep = results.get("sweep") if isinstance(results.get("sweep"), Mapping) else {}
    runs = sweep.get("runs") if isinstance(sweep.get("runs"), Mapping) else {}
    for value in map(str, sweep.get("values") or []):
        if name.endswith(f"_{value}") and value in runs:
            return value, name[: -len(value) - 1], str(runs[value])
    return None


def study_sections(results: Mapping[str, Any], run_dir: Path | None) -> list[Section]:
    out = []
    if results.get("models"):
        out.append(Section("Models", [f"{len(results['models'])} models trained on {results.get('data', '?')}"],
                           [models_table(results["models"])]))
    for name, ev in (results.get("evaluations") or {}).items():
        swept = _sweep_value(results, name)
        if swept is None:
            out.append(evaluation_section(name, ev, run_dir))
            continue
        value, inner, folder = swept
        section = evaluation_section(name, ev, run_dir, (None if run_dir is None else run_dir / folder, inner))
        section.meta.insert(0, f"sweep value {results['sweep'].get('key', '?')} = {value}: evaluation {inner} of "
                               f"the study in {folder}/")
        out.append(section)
    return out
