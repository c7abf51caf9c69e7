"""``kind: sweep`` studies: one ordinary study run once per value of one of
its keys, e.g. the input resolution (a study needs one data shape for all its
models), then combined into one ``results.json`` / ``report.html``.

    kind: sweep
    sweep:
      name: resolution                 # the combined tables' row key
      key: defaults.data.size          # a dotted study key, set to each value in turn
      values: [28, 56, 112]
      per_value:                       # dotted overrides for one value, applied last
        56: {defaults.model.stages: 4}
        112: {defaults.model.stages: 5}
    gaps:                              # optional: the evaluation `gaps`, one row per value
      evaluation: transfer             # an inner transfer evaluation
      differences: {di2_gap: [di2fgsm, ifgsm], mdi2_gap: [mdi2fgsm, mifgsm]}
    claims: [...]                      # over gaps and the inner tables (named EVALUATION_VALUE)
    defaults: ... models: ... evaluations: ... smoke: ...   # the inner study

Each value runs as its own study in ``RUN/NAME_VALUE/`` (e.g.
``resolution_56/``, with its own results.json and report), so a rerun reuses
or resumes each one. The combined results hold every inner evaluation as
``EVALUATION_VALUE`` (``transfer_56``), the models as ``MODEL_VALUE``, and
``gaps``: per value, each attack's success rate averaged over the
black-box cells (targets other than the row's source) and each named
difference of two such means, with a plot of the differences against the
value (``gaps.png``).
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustlab.app.claims import Claim, evaluate_claims, parse_claims
from robustlab.app.config import RunConfig, check_available
from robustlab.app.spec import check_keys

_logger = logging.getLogger(__name__)

#: The keys a sweep adds to a study's.
SWEEP_EXTRA_KEYS = ("sweep", "gaps")
SWEEP_SPEC_KEYS = ("name", "key", "values", "per_value")
GAPS_KEYS = ("evaluation", "differences")


@dataclass(frozen=True)
class Inner:
    """What a sweep needs of :mod:`robustlab.app.study`, handed over by that module when it
    dispatches a ``kind: sweep`` study here (so this module never imports it back)."""

    keys: tuple[str, ...]                  # STUDY_KEYS
    apply: Callable[..., dict[str, Any]]   # apply_study_overrides
    resolve: Callable[[dict[str, Any]], Any]
    run: Callable[[Any, Path], dict[str, Any]]


@dataclass
class SweepStudy:
    """A resolved sweep: one :class:`~robustlab.app.study.Study` per value."""

    name: str
    title: str
    label: str
    key: str
    studies: dict[str, Any]                # value → robustlab.app.study.Study
    gaps: dict[str, Any] | None
    inner: Inner | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    device: str = "auto"
    form: str = "full"  # "smoke" under --smoke, as every value's study (robustlab.app.study.load_study)

    @property
    def models(self) -> dict[str, RunConfig]:
        return {f"{m}_{v}": cfg for v, st in self.studies.items() for m, cfg in st.models.items()}

    @property
    def evaluations(self) -> dict[str, dict[str, Any]]:
        out = {f"{e}_{v}": opts for v, st in self.studies.items() for e, opts in st.evaluations.items()}
        if self.gaps is not None:
            out["gaps"] = {"kind": "gaps", **self.gaps}
        return out

    def folder(self, value: str) -> str:
        return f"{self.label}_{value}"


def _spec(raw: dict[str, Any], study_keys: tuple[str, ...]) -> tuple[str, str, list[Any], dict[str, Any]]:
    spec = raw.get("sweep")
    if not isinstance(spec, dict):
        raise ValueError("a sweep study needs sweep: {key: DOTTED.KEY, values: [...], name: ..., per_value: ...}")
    check_keys(spec, SWEEP_SPEC_KEYS, "sweep")
    key, values = spec.get("key"), spec.get("values")
    if not isinstance(key, str) or key.split(".")[0] not in study_keys or key.split(".")[0] in ("name", "kind"):
        raise ValueError(f"sweep.key must be a dotted study key (e.g. defaults.data.size); got {key!r}")
    if not isinstance(values, list) or not values or isinstance(values[0], (dict, list)):
        raise ValueError(f"sweep.values must be a non-empty list of values; got {values!r}")
    tags = [str(v) for v in values]
    if len(set(tags)) != len(tags) or not all(t.replace(".", "").replace("-", "").isalnum() for t in tags):
        raise ValueError(f"sweep.values must be distinct numbers or words (they name folders); got {values!r}")
    label = spec.get("name", key.split(".")[-1])
    if not isinstance(label, str) or not label.replace("_", "").isalnum():
        raise ValueError(f"sweep.name must be a word (letters, digits, '_'); got {label!r}")
    per_value = spec.get("per_value") or {}
    if not isinstance(per_value, dict):
        raise ValueError(f"sweep.per_value must map values to dotted overrides; got {per_value!r}")
    stray = sorted(str(v) for v in per_value if str(v) not in tags)
    if stray:
        raise ValueError(f"sweep.per_value: {stray} are not among sweep.values {tags}")
    bad = [str(v) for v, o in per_value.items() if not isinstance(o, dict)]
    if bad:
        raise ValueError(f"sweep.per_value.{bad[0]} must be a mapping of dotted overrides")
    return label, key, values, {str(v): o for v, o in per_value.items()}


def _check_gaps(gaps: Any, studies: dict[str, Any]) -> dict[str, Any] | None:
    if gaps is None:
        return None
    if not isinstance(gaps, dict) or sorted(set(gaps) - set(GAPS_KEYS)):
        raise ValueError(f"gaps must be a mapping with {', '.join(GAPS_KEYS)}; got {gaps!r}")
    ename, diffs = gaps.get("evaluation"), gaps.get("differences")
    if not isinstance(diffs, dict) or not diffs or not all(
            isinstance(k, str) and isinstance(v, list) and len(v) == 2 for k, v in diffs.items()):
        raise ValueError(f"gaps.differences must map column names to [attack, attack] (the first minus the "
                         f"second); got {diffs!r}")
    for st in studies.values():
        ev = st.evaluations.get(str(ename))
        if ev is None or ev["kind"] != "transfer":
            raise ValueError(f"gaps.evaluation must name a transfer evaluation of the study; got {ename!r}")
        missing = sorted({a for pair in diffs.values() for a in pair} - set(ev["attacks"]))
        if missing:
            raise ValueError(f"gaps.differences: {missing} are not attacks of evaluations.{ename} "
                             f"({', '.join(ev['attacks'])})")
    return {"evaluation": str(ename), "differences": {k: list(v) for k, v in diffs.items()}}


def resolve_sweep_study(raw: dict[str, Any], inner_study: Inner, *, name: str | None = None) -> SweepStudy:
    """A ``kind: sweep`` mapping (overrides applied) → :class:`SweepStudy`;
    every inner study is resolved (checked) before anything runs."""
    keys = (*inner_study.keys, *SWEEP_EXTRA_KEYS)
    check_keys(raw, keys, noun="study key")
    name = str(raw.get("name") or name or "sweep")
    label, key, values, per_value = _spec(raw, inner_study.keys)
    apply_study_overrides, resolve_study, study_keys = inner_study.apply, inner_study.resolve, inner_study.keys
    inner_raw = {k: copy.deepcopy(v) for k, v in raw.items() if k not in ("kind", "sweep", "gaps", "claims")}
    studies: dict[str, Any] = {}
    for value in values:
        tag = str(value)
        where = f"sweep value {tag}"
        inner = apply_study_overrides(inner_raw, {key: value}, where, keys=study_keys)
        inner = apply_study_overrides(inner, per_value.get(tag, {}), f"sweep.per_value.{tag}", keys=study_keys)
        inner["name"] = f"{name}_{tag}"
        inner["title"] = f"{raw.get('title') or name} ({label} {tag})"
        try:
            studies[tag] = resolve_study(inner)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    study = SweepStudy(name=name, title=str(raw.get("title") or name), label=label, key=key, studies=studies,
                       gaps=_check_gaps(raw.get("gaps"), studies), raw=raw, device=str(raw.get("device", "auto")),
                       inner=inner_study)
    study.claims = parse_claims(raw.get("claims"), study.evaluations)
    return study


# ------------------------------------------------------------------ combining


def _black_box_means(ev: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """attack → mean success over the black-box cells, and over the white-box ones."""
    black: dict[str, list[float]] = {}
    white: dict[str, list[float]] = {}
    for row in ev["table"]:
        for col, value in row.items():
            if not col.startswith("→ ") or not isinstance(value, (int, float)):
                continue
            into = white if col[2:] == row["source"] else black
            into.setdefault(row["attack"], []).append(float(value))
    return ({a: sum(v) / len(v) for a, v in black.items()}, {a: sum(v) / len(v) for a, v in white.items()})


def gaps_evaluation(study: SweepStudy, inner: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``gaps`` table: one row per value (black-box means, then the named differences)."""
    assert study.gaps is not None
    ename, diffs = study.gaps["evaluation"], study.gaps["differences"]
    rows, ns = [], []
    for value, res in inner.items():
        ev = res["evaluations"][ename]
        black, white = _black_box_means(ev)
        row: dict[str, Any] = {study.label: value, **black}
        row.update({d: black[a] - black[b] for d, (a, b) in diffs.items()})
        row.update({f"white-box {d}": white[a] - white[b] for d, (a, b) in diffs.items() if a in white and b in white})
        rows.append(row)
        ns.append(ev["n"])
    out = {"kind": "gaps", "options": {"sweep": study.key, "values": list(inner), **study.gaps}, "n": ns,
           "table": rows, "value": f"per {study.label}: each attack's success rate in {ename}, averaged over "
                                   f"its black-box cells (targets other than the source); then the differences "
                                   f"{', '.join(f'{d} = {a} − {b}' for d, (a, b) in diffs.items())}"}
    png = _gaps_png(study, rows)
    if png:
        out["images"] = [{"png": png, "title": f"black-box success gaps against {study.label}"}]
    return out


def _gaps_png(study: SweepStudy, rows: list[dict[str, Any]]) -> str | None:
    """The differences (percentage points) against the swept value: one line each."""
    from robustlab.report import plots

    assert study.gaps is not None
    try:
        xs = [float(r[study.label]) for r in rows]
    except ValueError:
        xs = list(range(len(rows)))
    fig, ax = plots.plt.subplots(figsize=(5, 3.4))
    for d in study.gaps["differences"]:
        ax.plot(xs, [100 * r[d] for r in rows], marker="o", label=d)
    ax.axhline(0, color="grey", lw=0.8, ls=":")
    ax.set_xticks(xs, [str(r[study.label]) for r in rows])
    ax.set_xlabel(study.label)
    ax.set_ylabel("black-box success gap (points)")
    ax.legend(fontsize=7)
    return plots.png_base64(fig)


def run_sweep_study(study: SweepStudy, out: str | Path | None = None) -> dict[str, Any]:
    """Each value's study in its folder, then the combined results and report."""
    from robustlab.app.rundir import RunDir, study_fingerprint

    for tag, st in study.studies.items():  # an absent GPU is refused before any folder is made
        check_available(st.device, st.models, f"sweep value {tag}: ")
    with RunDir(out if out is not None else Path("runs") / study.name, "study", study_fingerprint(study.name)) as run:
        run.write_config(study.raw, "study.yaml")
        start = time.perf_counter()
        inner = {}
        for i, (tag, st) in enumerate(study.studies.items()):
            _logger.info("[%d/%d] %s %s: study %s", i + 1, len(study.studies), study.label, tag, st.name)
            inner[tag] = study.inner.run(st, run.path / study.folder(tag))
        first = next(iter(study.studies.values()))
        evaluations = {f"{e}_{tag}": ev for tag, res in inner.items() for e, ev in res["evaluations"].items()}
        if study.gaps is not None:
            evaluations["gaps"] = gaps_evaluation(study, inner)
        results = {"kind": "study", "name": study.name, "title": study.title, "claim": study.raw.get("claim"),
                   "chapter": study.raw.get("chapter"), "notes": study.raw.get("notes"), "form": study.form,
                   "data": f"{next(iter(first.models.values())).data.name}, {study.label} "
                           f"{', '.join(study.studies)}",
                   "sweep": {"key": study.key, "values": list(study.studies),
                             "runs": {tag: study.folder(tag) for tag in study.studies}},
                   "models": {f"{m}_{tag}": info for tag, res in inner.items() for m, info in res["models"].items()},
                   "evaluations": evaluations, "seconds": round(time.perf_counter() - start, 2)}
        results["claims"] = evaluate_claims(study.claims, evaluations)
        if "gaps" in evaluations and evaluations["gaps"].get("images"):
            import base64

            (run.ensure() / "gaps.png").write_bytes(base64.b64decode(evaluations["gaps"]["images"][0]["png"]))
        return run.finish(results)
