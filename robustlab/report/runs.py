"""The sections of a run's report — ``robustlab train``, ``eval`` and
``attack`` — built from its ``results.json`` (and the example files beside
it) as plain blocks; every section header states the budget, the steps and
the protocol it was measured under."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from robustlab.report import plots
from robustlab.report.blocks import Cell, Facts, Figure, Note, Section, Table, Verdict, cell, table
from robustlab.report.examples import attack_examples, kept_examples
from robustlab.report.format import (
    attack_label,
    budget,
    comparisons,
    counted_nothing,
    humanize,
    number,
    recipe_text,
    short,
    stage_steps_text,
    steps_text,
)
from robustlab.units import to_255


def figure(fig: Any, alt: str, caption: str = "", *, wide: bool = False) -> Figure:
    return Figure(plots.png_base64(fig), alt, caption, wide=wide)


def accuracy_key(key: str) -> bool:
    """Columns holding a proportion of samples (accuracies, errors, rates), not losses or times."""
    k = key.lower()
    return any(w in k for w in ("acc", "error", "success", "rate")) and "mce" not in k


def metric_n(record: Mapping[str, Any], key: str) -> int | None:
    """The number of test images an accuracy of a training record was measured
    on: ``clean_acc[_ROUTE]`` → ``clean_n``, ``{attack}_acc[_ROUTE]`` →
    ``{attack}_n`` (older records: ``eval_n``, or None); None for accuracies on
    training batches (``train_*``) and for other keys."""
    if key.startswith("train_") or "_acc" not in key:
        return None
    n = record.get(key.split("_acc", 1)[0] + "_n", record.get("eval_n"))
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def is_count_key(key: str) -> bool:
    """``clean_n``, ``pgd_n``, ``eval_n``: the number of images behind a metric, not a metric."""
    return key.endswith("_n")


# ------------------------------------------------------------------ claims


def verdicts(results: Mapping[str, Any]) -> list[Verdict]:
    """The ``claims`` a study declares (``id``, ``says``, ``verdict``, ``values``), each led by
    the comparison it made (:func:`~robustlab.report.format.comparisons`)."""
    out = []
    for c in results.get("claims") or []:
        if not isinstance(c, Mapping):
            continue
        values = c.get("values") or {}
        pairs = list(_flat(values)) if isinstance(values, Mapping) else [("", short(values))]
        out.append(Verdict(str(c.get("id", "")), str(c.get("says", "")), str(c.get("verdict", "not recorded")),
                           pairs, str(c.get("holds_if") or ""), str(c.get("reason") or ""), comparisons(c),
                           c.get("within_noise") if isinstance(c.get("within_noise"), bool) else None))
    return out


def _flat(values: Mapping[str, Any], prefix: str = ""):
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            yield from _flat(v, f"{key} › ")
        else:
            yield key, short(v)


# ------------------------------------------------------------------ training


def _history_cell(h: Mapping[str, Any], k: str, v: Any) -> Any:
    if k.endswith("seconds") and isinstance(v, (int, float)):
        return Cell(f"{v:.1f}", cls="num")
    n = metric_n(h, k)
    return cell(v, n, proportion=True) if n is not None and isinstance(v, (int, float)) else v


def train_section(res: Mapping[str, Any]) -> Section:
    hist = [{k: _history_cell(h, k, v) for k, v in h.items() if k != "kind" and not is_count_key(k)}
            for h in res.get("history") or []]
    recipe = res.get("recipe") or {}
    meta = [f"recipe: {recipe_text(recipe)}", f"{res.get('steps', '?')} optimizer steps",
            f"{res.get('train_seconds', 0):.1f} s of training ({res.get('images_per_second', 0):.0f} images/s)"]
    blocks: list[Any] = []
    if hist:
        columns = [c for c in dict.fromkeys(k for h in hist for k in h) if c != "step"]
        blocks.append(table(hist, None, columns=columns, labels={c: humanize(c) for c in columns},
                            proportions=accuracy_key))
        blocks.append(figure(plots.training_curves(res["history"]), "training loss and accuracy per epoch"))
    return Section("Training", meta, blocks)


# ------------------------------------------------------------------ robust accuracy (robustlab eval)


def _protocol_meta(res: Mapping[str, Any], first: Mapping[str, Any]) -> list[str]:
    from robustlab.eval.protocols import describe, targeted_steps

    opts = first.get("options") or {}
    protocol = str(res.get("protocol") or first.get("protocol"))
    try:
        what = describe(protocol)
    except ValueError:
        what = ""
    steps = opts.get("steps")
    meta = [budget(res.get("eps", first.get("eps")), str(res.get("norm") or first.get("norm") or "linf")),
            f"protocol {protocol}" + (f": {what}" if what else "")]
    if steps is not None:
        staged = isinstance(steps, int) and len(opts.get("stages") or []) > 1
        text = stage_steps_text(steps, targeted_steps(opts)) if staged else steps_text(steps)
        meta.append(text + (f", {opts['restarts']} restart(s)" if "restarts" in opts else ""))
    if isinstance(opts.get("step_size"), (int, float)):
        meta.append(budget(opts["step_size"], str(res.get("norm") or first.get("norm") or "linf"), "α"))
    elif protocol == "standard":
        meta.append("APGD's own step sizes (2ε, halved where progress stalls)")
    if (first.get("fallback") or {}).get("used") and opts.get("queries"):
        meta.append(f"Square fallback: {opts['queries']} queries (p₀ = {opts.get('p_init', 0.8):g})")
    meta.append(f"n = {res.get('n', first.get('n'))} images of {res.get('data', '?')}")
    return meta


def robust_sections(res: Mapping[str, Any], run_dir: Path | None) -> list[Section]:
    """``robustlab eval`` with a robust-accuracy protocol: one table of every
    model (clean, after each attack of the cascade, robust), then each model's
    checks, audit, curve and adversarial examples."""
    models = res["models"]
    first = next(iter(models.values()))
    rows, ns = [], []
    for name, r in models.items():
        a = r.get("audit") or {}
        rows.append({"model": name, "clean": r.get("clean_accuracy"),
                     **{f"after {k}": v for k, v in (r.get("per_attack") or {}).items()},
                     "robust": r.get("robust_accuracy"),
                     "Square fallback": "yes" if (r.get("fallback") or {}).get("used") else "no",
                     "max ‖δ‖∞": f"{a.get('linf_max_255', 0):.3g}/255" if a else "—"})
        ns.append(r.get("n"))
    out = [Section("Robust accuracy", _protocol_meta(res, first), [table(rows, ns)])]
    for name, r in models.items():
        blocks: list[Any] = []
        fb = r.get("fallback") or {}
        if fb.get("used"):
            blocks.append(Note(f"Square Attack ran on the survivors: {fb.get('reason', '')}", "warn"))
        blocks += [Note(str(w), "warn") for w in r.get("warnings") or []]
        if not r.get("warnings"):
            blocks.append(Note("no gradient-masking symptom; outputs are logits", "ok"))
        a = r.get("audit") or {}
        blocks.append(Facts([("max ‖δ‖∞", f"{a.get('linf_max_255', 0):.3g}/255"),
                             ("max ‖δ‖₂", f"{a.get('l2_max', 0):.3g}"), ("NaNs", str(a.get("nan_count"))),
                             ("pixels", f"[{number(a.get('pixel_min'))}, {number(a.get('pixel_max'))}]"),
                             ("within budget", short(a.get("within_budget"))),
                             ("model calls", str(r.get("model_calls", "—"))),
                             ("time", f"{r.get('seconds', 0):.1f} s")]))
        if r.get("curve"):
            c = r["curve"]
            blocks.append(figure(plots.robustness_curves(
                {"final iterate": {"steps": c["steps"], "accuracy": c["final_accuracy"]},
                 "best iterate": {"steps": c["steps"], "accuracy": c["best_accuracy"]}}, name),
                f"robust accuracy of {name} against attack iterations"))
        if run_dir is not None:
            grid = kept_examples(run_dir / f"examples-{name}.safetensors", f"adversarial examples of {name}",
                                 r.get("per_sample"), res.get("classes"))
            if grid is not None:
                blocks.append(grid)
        out.append(Section(name, [budget(r.get("eps"), str(r.get("norm") or "linf")), f"n = {r.get('n')} images"],
                           blocks))
    return out


# ------------------------------------------------------------------ curve protocols (robustlab eval)


def _curve_meta(opts: Mapping[str, Any], n: Any, norm: str = "linf") -> list[str]:
    meta = [budget(opts.get("eps"), norm)]
    if opts.get("step_size") is not None:
        meta.append(budget(opts["step_size"], norm, "α"))
    if opts.get("steps") is not None:
        meta.append("PGD " + steps_text(opts["steps"]))
    meta.append(f"CE and C&W-margin losses, {'untargeted and targeted' if opts.get('targeted') else 'untargeted'}, "
                f"{opts.get('restarts', 1)} restart(s)")
    meta.append(f"n = {n} images")
    return meta


def whitebox_block(curves: Mapping[str, Any], n: Any) -> list[Any]:
    steps = list(dict.fromkeys(s for c in curves.values() for s in c["steps"]))
    rows = [{"attack": name, **{f"PGD-{s}": a for s, a in zip(c["steps"], c["accuracy"])}}
            for name, c in curves.items()]
    return [table(rows, n, columns=["attack", *(f"PGD-{s}" for s in steps)]),
            figure(plots.robustness_curves(curves), "accuracy against PGD iterations")]


def sanity_blocks(sanity: Mapping[str, Any]) -> list[Any]:
    warns = sanity.get("warnings") or []
    blocks: list[Any] = [Note(f"[{w.get('check')}] {w.get('message')}", "warn") for w in warns] or \
        [Note("no gradient-masking symptom found", "ok")]
    m = {k: v for k, v in (sanity.get("measurements") or {}).items() if not isinstance(v, dict)}
    n = m.pop("n", None)
    if "eps" in m:
        m["eps"] = f"{to_255(m['eps']):.4g}/255"
    losses = {k for k in m if k.startswith("loss")}
    blocks.append(table([m], n, labels={k: humanize(k) for k in m},
                        proportions=lambda k: k not in losses and k not in ("steps", "eps")))
    return blocks


def corruption_blocks(c: Mapping[str, Any], n: Any) -> list[Any]:
    """The corruption record as accuracies (1 − error, as the plots and the
    study tables show them) by severity, and its summary with the mCE."""
    errors = c.get("errors") or {}
    severities = list(dict.fromkeys(str(s) for sev in errors.values() for s in sev))
    acc = lambda e: None if e is None else 1.0 - float(e)  # noqa: E731
    rows = [{"corruption": name.replace("_", " "), **{f"severity {s}": acc(sev.get(s)) for s in severities}}
            for name, sev in errors.items()]
    summary = {"clean acc": acc(c.get("clean_error")), "corrupted acc (mean)": acc(c.get("mean_error")),
               "mCE vs AlexNet (%)": c.get("mce_vs_alexnet")}
    return [table([summary], n, proportions=lambda k: "acc" in k),
            table(rows, n, caption="accuracy (1 − error rate) by severity")]


def transfer_heatmap(success: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Figure:
    """The heatmap of every (attack, source) → target success rate, in percent."""
    targets = list(dict.fromkeys(t for by in success.values() for row in by.values() for t in row))
    labels = [f"{attack_label(a)} from {s}" for a, by in success.items() for s in by]
    values = [[None if row.get(t) is None else 100 * row[t] for t in targets]
              for by in success.values() for row in by.values()]
    fig = plots.heatmap(labels, targets, values, title="transfer success rate (%): (attack, source) → target")
    return figure(fig, "heatmap of transfer success rates")


def transfer_blocks(success: Mapping[str, Mapping[str, Mapping[str, float]]], n: Any) -> list[Any]:
    """One table and one heatmap of every (attack, source) → target success rate."""
    targets = list(dict.fromkeys(t for by in success.values() for row in by.values() for t in row))
    rows = [{"attack": attack_label(a), "source": s, **{f"→ {t}": row.get(t) for t in targets}}
            for a, by in success.items() for s, row in by.items()]
    blocks: list[Any] = [table(rows, n, caption="success rate on images every model classifies correctly")]
    if counted_nothing(n):  # no image every model classifies: nothing to draw
        return [Note("no image is classified correctly by every model (n = 0): the success rates measure "
                     "nothing", "warn"), *blocks]
    return [*blocks, transfer_heatmap(success)]


def transfer_meta(attacks: list[str], eps: float | None, n: Any, configs: Mapping[str, Any] | None = None
                  ) -> list[str]:
    """ε, each attack's steps (recorded, or the attack's own default for ε) and n."""
    steps = []
    for a in attacks:
        cfg = (configs or {}).get(a)
        if cfg is None and eps is not None:
            try:
                from robustlab.attacks import create

                cfg = create(a, eps=eps).config()
                cfg = {**cfg, "default": True}
            except Exception:  # an attack this version no longer knows: its steps stay unknown
                cfg = None
        s = (cfg or {}).get("steps")
        steps.append(f"{attack_label(a)} {s if s is not None else '?'}" + ("*" if (cfg or {}).get("default") else ""))
    meta = [budget(eps), "steps: " + ", ".join(steps), f"protocol transfer: {', '.join(map(attack_label, attacks))}"
            " made on each source, scored on each target", f"n = {n} images"]
    if any(s.endswith("*") for s in steps):
        meta.append("* the attack's default steps at this ε (not recorded by the run)")
    return meta


def curve_sections(res: Mapping[str, Any], title: str = "", *, corruption_plot: bool = True) -> list[Section]:
    """whitebox / sanity / corruption / BN statistics of one model's results
    (``title``: the model's name, when its sections sit under it)."""
    opts = res.get("options") or {}
    n = res.get("n") or (res.get("sanity") or {}).get("measurements", {}).get("n")
    out = []
    if res.get("warnings"):  # on the data or the model (the robust protocols give theirs beside their table)
        out.append(Section("Warnings", [], [Note(str(w), "warn") for w in res["warnings"]]))
    if res.get("clean_accuracy") is not None and title:
        out.append(Section("Clean accuracy", ["no adversary", f"n = {n} images"], [table(
            [{"model": title, "clean acc": res["clean_accuracy"]}], n)]))
    if res.get("whitebox"):
        out.append(Section("White-box robustness", _curve_meta(opts, n), whitebox_block(res["whitebox"], n)))
    if res.get("sanity"):
        m = res["sanity"].get("measurements") or {}
        out.append(Section("Gradient-masking checklist",
                           [budget(m.get("eps", opts.get("eps"))), f"PGD {steps_text(m.get('steps'))}",
                            "protocol: unbounded, random-search, noise and loss-growth checks",
                            f"n = {m.get('n', n)} images"], sanity_blocks(res["sanity"])))
    if res.get("corruption"):
        c = res["corruption"]
        sev = sorted({int(s) for e in (c.get("errors") or {}).values() for s in e})
        blocks = corruption_blocks(c, n)
        if c.get("errors") and corruption_plot:
            clean = {title or "model": res["clean_accuracy"]} if res.get("clean_accuracy") is not None else None
            blocks.append(figure(plots.corruption_curves({title or "model": c["errors"]}, clean),
                                 "accuracy against corruption severity", wide=True))
        out.append(Section("Corruption robustness",
                           ["no adversary (ε not applicable)", f"protocol corruption: {len(c.get('errors') or {})} "
                            f"corruptions × severities {', '.join(map(str, sev))}", f"n = {n} images"], blocks))
    if res.get("bn_statistics"):
        out.append(Section("BN statistics", ["running mean and variance per route, sampled channels"],
                           [figure(plots.bn_statistics(res["bn_statistics"]), "BN running statistics")]))
    return out


def eval_curve_sections(res: Mapping[str, Any]) -> list[Section]:
    """``robustlab eval`` with whitebox / transfer / corruption / all."""
    models = res.get("models") or {}
    out: list[Section] = []
    if len(models) > 1:
        for name, sub in models.items():
            out.append(Section(name, [], curve_sections({**sub, "options": res.get("options"), "n": res.get("n")},
                                                        name, corruption_plot=False)))
        errors = {m: r["corruption"]["errors"] for m, r in models.items() if (r.get("corruption") or {}).get("errors")}
        if errors:
            clean = {m: models[m]["clean_accuracy"] for m in errors if models[m].get("clean_accuracy") is not None}
            out.append(Section("Corruption robustness of every model", ["no adversary (ε not applicable)",
                                                                       f"n = {res.get('n')} images"],
                               [figure(plots.corruption_curves(errors, clean), "accuracy against severity",
                                       wide=True)]))
    else:
        out += curve_sections(res)
    tr = res.get("transfer")
    if tr and tr.get("success"):
        opts = res.get("options") or {}
        meta = transfer_meta(list(tr["success"]), opts.get("eps"), tr.get("n"), tr.get("attack_configs"))
        if tr.get("resize_back"):
            meta.append(f"input diversity resized back to the input size on {', '.join(tr['resize_back'])} "
                        "(models of one input size)")
        out.append(Section("Transfer (black-box)", meta, transfer_blocks(tr["success"], tr.get("n"))))
    return out


# ------------------------------------------------------------------ robustlab attack


def is_attack(results: Mapping[str, Any]) -> bool:
    return isinstance(results.get("attack"), Mapping) and "adversarial_accuracy" in results


def attack_sections(res: Mapping[str, Any], run_dir: Path | None) -> list[Section]:
    a = res["attack"]
    n = int(res.get("n") or 0)
    s = res.get("summary") or {}
    norm = str(a.get("norm") or "linf")
    unbounded = a.get("project") is False or "eps" not in a  # GD (§7.5.4), C&W: no ε-ball caps their images
    if "eps" not in a:
        meta = [f"{attack_label(a.get('name', '?'))}", "no ε-ball: it minimizes ‖δ‖₂ (sizes below)"]
    else:
        meta = [f"{attack_label(a.get('name', '?'))}", budget(a.get("eps"), norm)
                + (" bounds the random start only (no projection)" if a.get("project") is False else "")]
    if a.get("step_size") is not None:
        meta.append(budget(a["step_size"], norm, "α"))
    meta.append(steps_text(a.get("steps")))
    how = [f"{a.get('loss', 'ce').upper()} loss", "targeted" if a.get("targeted") else "untargeted"]
    if a.get("random_start"):
        how.append("random start")
    for key, label in (("mu", "μ"), ("p", "p")):
        if a.get(key):
            how.append(f"{label} = {a[key]:g}")
    meta.append(", ".join(how))
    data = res.get("data") or {}
    meta.append(f"n = {n} images of {data.get('name', '?')} ({data.get('split', '?')})")
    correct = round(float(res.get("clean_accuracy") or 0) * n)
    rows = [[Cell("clean accuracy", cls="text"), cell(res.get("clean_accuracy"), n)],
            [Cell("adversarial accuracy", cls="text"), cell(res.get("adversarial_accuracy"), n)],
            [Cell("success rate (all images)", cls="text"), cell(s.get("success_rate"), n)],
            [Cell("success rate (images right when clean)", cls="text"),
             cell(res.get("success_rate_on_correct"), correct) if res.get("success_rate_on_correct") is not None
             else Cell("—", cls="num")]]
    blocks: list[Any] = [Table(["measure", "value"], rows)]
    blocks.append(Facts([("max ‖δ‖∞", f"{s.get('linf_max_255', 0):.4g}/255"),
                         ("mean ‖δ‖∞", f"{s.get('linf_mean_255', 0):.4g}/255"),
                         ("mean ‖δ‖₂", number(s.get("l2_mean"))), ("max ‖δ‖₂", number(s.get("l2_max"))),
                         ("mean steps", f"{s.get('steps_mean', 0):.1f}"),
                         ("pixels", f"[{number(s.get('pixel_min'))}, {number(s.get('pixel_max'))}]"),
                         ("NaNs", str(s.get("nan_count"))), ("ε violations", str(s.get("eps_violations", "—"))),
                         ("throughput", f"{res.get('images_per_second', 0):.0f} images/s")]))
    if s.get("eps_violations"):
        blocks.append(Note(f"{s['eps_violations']} adversarial images leave the ε-ball", "warn"))
    if unbounded:
        blocks.append(Note("this attack is not ε-bounded: its accuracy is not a robust accuracy at any budget; "
                           "compare it by the perturbation sizes it needed", "info"))
    grid = attack_examples(run_dir, res)
    if grid is not None:
        blocks.append(grid)
    model = res.get("model")
    sub = f"model {model}" + (f", route {res['route']}" if res.get("route") else "") if model else ""
    return [Section("Attack", meta, blocks, subtitle=sub)]
