"""A self-contained ``report.html`` for a run directory: tables and plots of
what its ``results.json`` holds (training history, robustness curves and the
sanity checklist, transfer matrices, corruption errors, BN statistics), with
every image inlined, so the file can be mailed or archived alone."""
from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from robustlab._io import atomic_write_text
from robustlab.report import plots

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;
background:#fff}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:.5em 1em;margin:.5em 0}
.ok{background:#e8f5e9;border:1px solid #8bc34a;padding:.5em 1em;margin:.5em 0}
img{max-width:100%;margin:.5em 0}pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.8em}
"""


def png_base64(fig: Any) -> str:
    """A figure as base64 PNG text (closed afterwards), for inlining in a report."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plots.plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(fig: Any) -> str:
    return f'<img alt="plot" src="data:image/png;base64,{png_base64(fig)}">'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def table(rows: list[Mapping[str, Any]], columns: list[str] | None = None, attrs: str = "") -> str:
    if not rows:
        return ""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f'<div style="overflow-x:auto"><table{attrs}><tr>{head}</tr>{body}</table></div>'


def _training(res: Mapping[str, Any]) -> str:
    hist = res.get("history") or []
    parts = [f"<p>recipe <b>{html.escape(str(res.get('recipe', {}).get('name', '?')))}</b>, "
             f"{res.get('steps', '?')} steps, {res.get('train_seconds', 0):.1f} s of training "
             f"({res.get('images_per_second', 0):.0f} images/s)</p>"]
    if hist:
        parts += [table([{k: v for k, v in h.items() if k != "kind"} for h in hist]), _img(plots.training_curves(hist))]
    return "".join(parts)


def _whitebox(res: Mapping[str, Any]) -> str:
    curves = res["whitebox"]
    rows = [{"attack": name, **{f"PGD-{s}": a for s, a in zip(c["steps"], c["accuracy"])}}
            for name, c in curves.items()]
    return table(rows) + _img(plots.robustness_curves(curves))


def _sanity(res: Mapping[str, Any]) -> str:
    sanity = res["sanity"]
    warns = sanity.get("warnings", [])
    box = "".join(f'<div class="warn">⚠ [{html.escape(w["check"])}] {html.escape(w["message"])}</div>'
                  for w in warns) or '<div class="ok">no gradient-masking symptom found</div>'
    m = {k: v for k, v in sanity.get("measurements", {}).items() if not isinstance(v, dict)}
    return box + table([m])


def _transfer(res: Mapping[str, Any]) -> str:
    out = []
    tr = res["transfer"]
    for attack, by_source in tr["success"].items():
        sources = list(by_source)
        targets = list(next(iter(by_source.values())))
        values = [[100 * by_source[s][t] for t in targets] for s in sources]
        out.append(f"<h3>{html.escape(attack)}: success rate (%) on {tr.get('n', '?')} images</h3>")
        out.append(table([{"source \\ target": s, **{t: 100 * by_source[s][t] for t in targets}} for s in sources]))
        out.append(_img(plots.heatmap(sources, targets, values, title=f"{attack}: source → target")))
    return "".join(out)


def _corruption(res: Mapping[str, Any]) -> str:
    c = res["corruption"]
    errors = c.get("errors", {})
    rows = [{"corruption": name, **{f"s{s}": e for s, e in sev.items()}} for name, sev in errors.items()]
    summary = {k: v for k, v in c.items() if k != "errors" and not isinstance(v, dict)}
    return table([summary]) + table(rows)


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion p measured on n samples."""
    if n <= 0:
        return (0.0, 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def pct(p: float | None, n: int) -> str:
    """``41.2% [37.0, 45.5] (n=500)``: a percentage with its 95% interval."""
    if p is None:
        return "—"
    lo, hi = wilson(float(p), int(n))
    return f"{100 * p:.1f}% <small>[{100 * lo:.1f}, {100 * hi:.1f}] n={n}</small>"


def _example_grid(run_dir: Path | None, name: str, eps: float, per_sample: Mapping[str, Any] | None = None) -> str:
    """Clean, adversarial and amplified-perturbation images of the first samples."""
    if run_dir is None or not (run_dir / f"examples-{name}.safetensors").is_file():
        return ""
    from safetensors.torch import load_file

    t = load_file(str(run_dir / f"examples-{name}.safetensors"))
    clean, adv, idx = t["clean"][:6], t["adversarial"][:6], t["index"][:6].tolist()
    gain = 0.5 / max(eps, 1e-12)
    pert = ((adv - clean) * gain + 0.5).clamp(0, 1)
    images = [*clean, *adv, *pert]
    def fate(i: int) -> str:
        if not per_sample or i >= len(per_sample.get("broken_by", [])):
            return f"adversarial #{i}"
        by, at = per_sample["broken_by"][i], per_sample["broken_at"][i]
        return "wrong when clean" if by == "clean" else "robust" if by is None else f"{by} @{at}"

    titles = ([f"clean #{i}" for i in idx] + [fate(i) for i in idx]
              + [f"perturbation ×{gain:.0f}" for _ in idx])
    fig = plots.image_grid(images, titles, rows=3)
    return f'<img alt="adversarial examples of {html.escape(name)}" src="data:image/png;base64,{png_base64(fig)}">'


def _evaluation(res: Mapping[str, Any], run_dir: Path | None = None) -> str:
    """``robustlab eval`` with a robust-accuracy protocol: one table per model."""
    parts = []
    eps = float(res.get("eps", 0))
    parts.append(f"<p>protocol <b>{html.escape(str(res.get('protocol')))}</b>, ε = {eps * 255:.4g}/255 "
                 f"({eps:.4g} in pixels, {html.escape(str(res.get('norm')))}), {res.get('n')} images</p>")
    for name, r in res["models"].items():
        n = int(r.get("n", 0))
        rows = [{"": "clean", "accuracy": pct(r["clean_accuracy"], n)}]
        rows += [{"": f"after {k}", "accuracy": pct(v, n)} for k, v in (r.get("per_attack") or {}).items()]
        rows.append({"": "<b>robust accuracy</b>", "accuracy": f"<b>{pct(r['robust_accuracy'], n)}</b>"})
        body = "".join(f"<tr><td>{row['']}</td><td>{row['accuracy']}</td></tr>" for row in rows)
        parts.append(f"<h3>{html.escape(name)}</h3><table><tr><th>after attack</th><th>accuracy</th></tr>"
                     f"{body}</table>")
        fb = r.get("fallback") or {}
        if fb.get("used"):
            parts.append(f'<div class="warn">Square Attack ran on the survivors: {html.escape(fb["reason"])}</div>')
        for w in r.get("warnings") or []:
            parts.append(f'<div class="warn">{html.escape(w)}</div>')
        if not r.get("warnings"):
            parts.append('<div class="ok">no gradient-masking symptom; outputs are logits</div>')
        a = r.get("audit") or {}
        parts.append(f"<p>audit: max ‖δ‖∞ {a.get('linf_max_255', 0):.3g}/255, max ‖δ‖₂ {a.get('l2_max', 0):.3g}, "
                     f"NaNs {a.get('nan_count')}, pixels in [{a.get('pixel_min')}, {a.get('pixel_max')}], "
                     f"{r.get('seconds', 0):.1f} s</p>")
        if r.get("curve"):
            c = r["curve"]
            parts.append(_img(plots.robustness_curves(
                {"final iterate": {"steps": c["steps"], "accuracy": c["final_accuracy"]},
                 "best iterate": {"steps": c["steps"], "accuracy": c["best_accuracy"]}}, name)))
        parts.append(_example_grid(run_dir, name, eps, r.get("per_sample")))
    return "".join(parts)


def _bn(res: Mapping[str, Any]) -> str:
    return _img(plots.bn_statistics(res["bn_statistics"]))


SECTIONS: list[tuple[str, str, Callable[[Mapping[str, Any]], str]]] = [
    ("history", "Training", _training),
    ("whitebox", "White-box robustness", _whitebox),
    ("sanity", "Gradient-masking checklist", _sanity),
    ("transfer", "Transfer (black-box)", _transfer),
    ("corruption", "Corruption robustness", _corruption),
    ("bn_statistics", "BN statistics", _bn),
]


def render(results: Mapping[str, Any], title: str, run_dir: Path | None = None) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    models = results.get("models") or {}
    if results.get("kind") == "eval" and any("robust_accuracy" in m for m in models.values()):
        body.append(f"<h2>Robust accuracy</h2>{_evaluation(results, run_dir)}")
    elif results.get("kind") == "eval" and len(models) > 1:  # curve protocols: each model's sections
        for name, sub in models.items():
            body.append(f"<h2>{html.escape(name)}</h2>")
            body += [f"<h3>{heading}</h3>{fn(sub)}" for key, heading, fn in SECTIONS if sub.get(key)]
    for key, heading, fn in SECTIONS:
        if results.get(key):
            body.append(f"<h2>{heading}</h2>{fn(results)}")
    body.append("<h2>results.json</h2><details><summary>show</summary><pre>"
                f"{html.escape(json.dumps(results, indent=1)[:200_000])}</pre></details>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Render ``run_dir/results.json`` (and the results of eval runs inside it)
    into ``run_dir/report.html``."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no results.json; is it a robustlab run directory?")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if results.get("kind") == "study":
        return write_study_report(run_dir)
    page = render(results, f"robustlab — {run_dir.name}", run_dir)
    for sub in sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / "results.json").is_file()):
        inner = render(json.loads((sub / "results.json").read_text()), sub.name, sub)
        page = page.replace("</body></html>", inner.split("<body>", 1)[1].split("</body>", 1)[0]
                            .replace("<h1>", "<h1 style='margin-top:2em'>") + "</body></html>")
    out = run_dir / "report.html"
    atomic_write_text(out, page)
    return out


# ------------------------------------------------------------------ studies


def table_rows(rows: list[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Columns and formatted cells of a results table: the same strings the
    report and the terminal summary show (floats to 4 decimals)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return columns, [[_fmt(r.get(c, "")) for c in columns] for r in rows]


def _study_models(models: Mapping[str, Any]) -> str:
    rows = []
    for name, m in models.items():
        final = {k: v for k, v in (m.get("final") or {}).items() if k not in ("kind", "epoch", "step", "lr")}
        spec = ", ".join(f"{k}={v}" for k, v in m["model"].items() if v is not None)
        recipe = ", ".join(f"{k}={v}" for k, v in m["recipe"].items())
        rows.append({"model": name, "network": spec, "recipe": recipe, "steps": m["steps"],
                     "train s": m["train_seconds"], **final})
    return table(rows)


def _study_plot(ev: Mapping[str, Any]) -> str:
    if ev["kind"] == "whitebox" and ev.get("curves"):
        return _img(plots.robustness_curves(ev["curves"]))
    if ev["kind"] == "transfer":
        raw = ev["raw"]["success"]
        out = []
        for attack, by_src in raw.items():
            sources = list(by_src)
            targets = list(next(iter(by_src.values())))
            values = [[100 * by_src[s][t] for t in targets] for s in sources]
            out.append(_img(plots.heatmap(sources, targets, values, title=f"{attack}: success (%) source → target")))
        return "".join(out)
    return ""


def render_study(results: Mapping[str, Any]) -> str:
    """The page of a study: what it compares, the models, one table (and plot)
    per evaluation — the cells are exactly ``results.json``'s numbers."""
    title = f"robustlab study — {results['title']}"
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>data <b>{html.escape(str(results['data']))}</b>; {len(results['models'])} models; "
            f"{results['seconds']:.0f} s</p>"]
    if results.get("claim"):
        body.append(f"<p><b>Thesis claim.</b> {html.escape(str(results['claim']))}</p>")
    if results.get("notes"):
        body.append(f"<p><b>Notes.</b> {html.escape(str(results['notes']))}</p>")
    body.append(f"<h2>Models</h2>{_study_models(results['models'])}")
    for name, ev in results["evaluations"].items():
        what = f" — {html.escape(ev['value'])}" if ev.get("value") else ""
        body.append(f"<h2>{html.escape(name)} <small>({html.escape(ev['kind'])}, {ev.get('n', '?')} images"
                    f"{what})</small></h2>")
        opts = {k: v for k, v in ev["options"].items() if k not in ("kind",)}
        body.append(f"<p><small>{html.escape(json.dumps(opts))}</small></p>")
        body.append(table(ev["table"], attrs=f' class="results" data-evaluation="{html.escape(name)}"'))
        body.append(_study_plot(ev))
        for label, warns in (ev.get("warnings") or {}).items():
            for w in warns:
                body.append(f'<div class="warn">{html.escape(label)}: {html.escape(w)}</div>')
        for extra in ev.get("images", []):
            body.append(f'<img alt="{html.escape(extra.get("title", ""))}" src="data:image/png;base64,'
                        f'{extra["png"]}">')
    body.append("<h2>results.json</h2><details><summary>show</summary><pre>"
                f"{html.escape(json.dumps(results, indent=1)[:200_000])}</pre></details>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")


def write_study_report(run_dir: str | Path) -> Path:
    """Render a study's ``results.json`` into ``run_dir/report.html``."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    out = run_dir / "report.html"
    atomic_write_text(out, render_study(results))
    return out
