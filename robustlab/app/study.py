"""``robustlab study``: the main job. One YAML file declares the models a
comparison needs and the evaluations that compare them; the study trains the
models (or reuses the ones already trained in its run directory), runs the
evaluations and writes ``results.json`` and ``report.html``.

    name: quickstart
    title: vanilla vs PGD-AT vs SAT vs AdvProp on Fashion-MNIST
    dataset: fashion_mnist           # `dataset=cifar10` applies datasets.cifar10's overrides
    limit: 500                       # test images for every evaluation (an evaluation may say otherwise)
    defaults:                        # merged under every model (a `robustlab train` config)
      model: {name: smallcnn, width: 16}
      data: {limit: 12000}
      train: {epochs: 3, lr: 0.05, milestones: [2]}
    models:
      vanilla: {recipe: {name: vanilla}}
      pgd_at:  {recipe: {name: madry, eps: 25, steps: 5, step_size: 8, targeted: false}}
      mixed:   {recipe: {name: mixed}, sweep: {recipe.clean_ratio: [0.2, 0.5]}}   # mixed-clean_ratio0.2, ...
    evaluations:
      clean:  {kind: accuracy}
      pgd:    {kind: whitebox, eps: 25, step_size: 4, steps: [1, 5, 10, 20]}
      transfer: {kind: transfer, sources: [vanilla], targets: [vanilla_b], attacks: [ifgsm, di2fgsm]}
    smoke:                           # dotted overrides applied by --smoke
      defaults.data.limit: 1000

The attack list of a transfer, blackbox, holdout or nips2017 evaluation takes
per-attack options and sweeps, each row labelled by what differs (budgets in
0–255 notation; checked against the attack's options when the study loads;
:mod:`robustlab.app.study_attacks`)::

      attacks: [ifgsm, {name: di2fgsm, p: 0.3}, {name: cw, steps: 100, label: cw},
                {sweep: {attack: di2fgsm, p: [0.0, 0.5, 1.0]}},          # "di2fgsm p=0", ...
                {sweep: {attack: mdi2fgsm, step_size: [1, 3], steps: [15, 5], zip: true}}]

Chapter 3's ensemble protocols are the kinds ``holdout`` (Table 3.3: each
model held out of an ensemble of the others) and ``nips2017`` (§3.4.5: a
random ε per batch; :mod:`robustlab.app.study_ch3`). ``kind: sweep`` runs a
whole study once per value of one of its keys (e.g. ``defaults.data.size``,
which one study cannot vary) and combines the results
(:mod:`robustlab.app.study_sweep`).

The run directory (``runs/NAME`` unless ``--out``) holds ``models/NAME/`` (one
``robustlab train`` run directory each), ``evaluations/NAME.json`` (one per
evaluation) and the study's ``results.json`` / ``report.html``. A killed study
run again with the same command resumes: finished models and evaluations are
reused (a model whose configuration changed is retrained), an unfinished model
continues from its last checkpoint.

Each evaluation kind's options, its evaluator and the loop that runs them live
in :mod:`robustlab.app.study_eval`.
"""
from __future__ import annotations

import copy
import itertools
import json
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustlab.app import study_kinds, study_models
from robustlab.app.claims import Claim, evaluate_claims, parse_claims
from robustlab.app.config import (
    RunConfig,
    apply_overrides,
    check_available,
    find_config,
    load_yaml,
    resolve,
    set_dotted,
    split_override,
)
from robustlab.app.rundir import RunDir, study_fingerprint
from robustlab.app.spec import EvaluationSpec, check_keys
from robustlab.app.study_eval import EVALUATIONS, check_evaluation, run_evaluations
from robustlab.app.summary import clip, fit_table, metrics_line, path_lines, wrap_words

_logger = logging.getLogger(__name__)

STUDY_KEYS = ("name", "title", "chapter", "claim", "claims", "notes", "kind", "seed", "device", "dataset", "datasets",
              "limit", "batch_size", "defaults", "models", "evaluations", "smoke")


@dataclass
class Study:
    """A resolved study: every model's full run config and every evaluation's options."""

    name: str
    title: str
    models: dict[str, RunConfig]
    raw_models: dict[str, dict[str, Any]]
    evaluations: dict[str, EvaluationSpec]
    raw: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    limit: int | None = 500
    batch_size: int = 250
    claims: list[Claim] = field(default_factory=list)
    init_from: dict[str, str] = field(default_factory=dict)  # model → the model whose weights it starts from
    form: str = "full"  # "smoke" when loaded with its smoke overrides (load_study(..., smoke=True))


# ------------------------------------------------------------------ loading


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def apply_study_overrides(raw: dict[str, Any], overrides: Mapping[str, Any] | list[str], where: str,
                          keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Dotted overrides (``defaults.train.epochs=1`` strings, or a mapping of
    dotted keys to values) applied to a copy of ``raw``."""
    raw = copy.deepcopy(raw)
    items: list[tuple[str, Any]]
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = [split_override(item, "defaults.train.epochs=1") for item in overrides]
    if keys is None:
        from robustlab.app.dag import DAG_KEYS

        keys = DAG_KEYS if raw.get("kind") == "dag" else STUDY_KEYS
        if raw.get("kind") == "sweep":
            from robustlab.app.study_sweep import SWEEP_EXTRA_KEYS

            keys = (*STUDY_KEYS, *SWEEP_EXTRA_KEYS)
    for key, value in items:
        top = str(key).split(".")[0]
        if top not in keys:
            raise ValueError(f"{where}: unknown study key {top!r} in {key!r}; known: {', '.join(keys)}")
        try:
            set_dotted(raw, key, value)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return raw


def _sweep(name: str, spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``sweep: {recipe.clean_ratio: [0, 0.5]}`` → one model per value (the
    cartesian product over several keys), named ``NAME-clean_ratio0.5``."""
    grid = spec.pop("sweep", None)
    if not grid:
        return {name: spec}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError(f"models.{name}.sweep must map dotted keys to non-empty lists; got {grid!r}")
    out = {}
    for values in itertools.product(*grid.values()):
        one = copy.deepcopy(spec)
        tags = []
        for key, value in zip(grid, values):
            apply = apply_overrides({"model": {}, "recipe": {}, **one}, [f"{key}={json.dumps(value)}"])
            one = apply
            tags.append(f"{key.split('.')[-1]}{value}")
        out[f"{name}-{'-'.join(tags)}"] = one
    return out


def _drop_foreign_recipe_options(merged: dict[str, Any], defaults: dict[str, Any], own: dict[str, Any]) -> None:
    """A model naming another recipe than the defaults keeps only the default
    recipe options its recipe accepts: a vanilla model among adversarially
    trained ones does not inherit ε and steps; a mixed one does."""
    from robustlab.train.recipes import accepted_options

    name = (own.get("recipe") or {}).get("name")
    if not name or name == (defaults.get("recipe") or {}).get("name") or name not in recipes_names():
        return
    accepted = accepted_options(name)
    inherited = set(defaults.get("recipe") or {}) - set(own.get("recipe") or {}) - {"name"}
    for key in inherited - accepted:
        merged["recipe"].pop(key, None)


def recipes_names() -> list[str]:
    from robustlab.train.recipes import names

    return list(names())


def resolve_study(raw: dict[str, Any], *, name: str | None = None) -> Study:
    """A study mapping (YAML with overrides applied) → :class:`Study`; every
    model config and every evaluation is checked before anything runs."""
    if not isinstance(raw, dict):
        raise ValueError("a study config must be a mapping (name, defaults, models, evaluations, ...)")
    if {"recipe", "train"} & set(raw) and "models" not in raw:  # a training config given to `robustlab study`
        raise ValueError("this is a training config (model, data, recipe, train), not a study: run it with "
                         "`robustlab train CONFIG`, or name it as a model of a study (models: {NAME: {recipe: ...}})")
    check_keys(raw, STUDY_KEYS, noun="study key")
    name = str(raw.get("name") or name or "study")
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"study name must be letters, digits, '-' and '_'; got {name!r}")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ValueError(f"study key 'defaults' must be a mapping; got {defaults!r}")
    defaults = copy.deepcopy(defaults)
    if raw.get("dataset"):
        defaults.setdefault("data", {})["name"] = raw["dataset"]
    for key in ("seed", "device"):
        if key in raw:
            defaults.setdefault(key, raw[key])
    models_raw = raw.get("models")
    if not isinstance(models_raw, dict) or not models_raw:
        raise ValueError("study key 'models' must map model names to configs (at least one)")
    models: dict[str, RunConfig] = {}
    raw_models: dict[str, dict[str, Any]] = {}
    init_from: dict[str, str | None] = {}
    for mname, spec in models_raw.items():
        if not isinstance(mname, str):
            raise ValueError(f"model names must be strings; got {mname!r} (quote YAML words such as null, yes, 1)")
        if not isinstance(spec, dict):
            raise ValueError(f"models.{mname} must be a mapping (model, recipe, train, ...); got {spec!r}")
        for one_name, one in _sweep(str(mname), copy.deepcopy(spec)).items():
            if not one_name.replace("_", "").replace("-", "").replace(".", "").isalnum():
                raise ValueError(f"model name {one_name!r}: use letters, digits, '-', '_' and '.'")
            init_from[one_name] = study_models.pop_init_from(one_name, one)
            merged = _merge(defaults, one)
            _drop_foreign_recipe_options(merged, defaults, one)
            try:
                models[one_name] = resolve(merged)
                from robustlab.app.train import build_recipe, eval_plan

                # recipe and evaluation options checked now, not after training the others
                eval_plan(models[one_name], build_recipe(models[one_name]))
            except (ValueError, TypeError) as err:
                raise ValueError(f"models.{one_name}: {err}") from None
            raw_models[one_name] = merged
    datasets = {(c.data.name, c.data.eval_split, c.data.size, c.data.channels) for c in models.values()}
    if len(datasets) > 1:
        raise ValueError(f"every model of a study must use the same data (name, eval_split, size, channels); "
                         f"got {sorted(map(str, datasets))}")
    evals_raw = raw.get("evaluations") or {}
    if not isinstance(evals_raw, dict):
        raise ValueError("study key 'evaluations' must map names to {kind: ..., options}")
    evaluations = {}
    for ename, spec in evals_raw.items():
        if not isinstance(spec, dict) or "kind" not in spec:
            raise ValueError(f"evaluations.{ename} must be a mapping with a 'kind' "
                             f"({', '.join(EVALUATIONS)}); got {spec!r}")
        evaluations[str(ename)] = check_evaluation(str(ename), dict(spec), list(models))
        study_kinds.check(str(ename), evaluations[str(ename)], models)  # options that need the models' configs
    limit = raw.get("limit", 500)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"study key 'limit' must be a positive number of test images or null; got {limit!r}")
    batch_size = raw.get("batch_size", 250)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"study key 'batch_size' must be a whole number >= 1; got {batch_size!r}")
    init_from = {m: src for m, src in init_from.items() if src is not None}
    study_models.check_init_from(init_from, models)
    claims = parse_claims(raw.get("claims"), evaluations)
    return Study(name=name, title=str(raw.get("title") or name), models=models, raw_models=raw_models,
                 evaluations=evaluations, raw=raw, device=str(raw.get("device", "auto")), limit=limit,
                 batch_size=batch_size, claims=claims, init_from=init_from)


def load_study(path: str | Path, overrides: list[str] | None = None, *, smoke: bool = False) -> Study:
    """Read a study YAML; ``dataset=NAME`` among the overrides also applies the
    file's ``datasets.NAME`` overrides; ``smoke`` applies its ``smoke`` ones
    and makes the study's ``form`` ``"smoke"`` (``"full"`` otherwise), which
    its results.json records (a sweep's studies, one per value, too)."""
    path = find_config(path, "study config")  # a file, or a packaged study by name (quickstart, ch3_transfer)
    from_file = load_yaml(path, "study config")
    file_dataset, file_title = from_file.get("dataset"), from_file.get("title")
    raw = apply_study_overrides(from_file, overrides or [], "overrides")
    if raw.get("dataset") and raw.get("datasets") and raw["dataset"] in raw["datasets"]:
        profile = raw["datasets"][raw["dataset"]]
        if not isinstance(profile, dict):
            raise ValueError(f"datasets.{raw['dataset']} must be a mapping of dotted overrides")
        raw = apply_study_overrides(raw, profile, f"datasets.{raw['dataset']}")
        raw = apply_study_overrides(raw, overrides or [], "overrides")  # the command line wins
    if smoke:
        smoke_over = raw.get("smoke") or {}
        if not isinstance(smoke_over, dict):
            raise ValueError("study key 'smoke' must be a mapping of dotted overrides")
        raw = apply_study_overrides(raw, smoke_over, "smoke")
        raw = apply_study_overrides(raw, overrides or [], "overrides")
    if raw.get("dataset") != file_dataset and raw.get("title") == file_title and isinstance(file_title, str):
        raw["title"] = _retitled(file_title, file_dataset, raw.get("dataset"))
    form = "smoke" if smoke else "full"
    if raw.get("kind") == "dag":
        from robustlab.app.dag import resolve_dag_study

        dag = resolve_dag_study(raw, name=path.stem)
        dag.form = form
        return dag
    if raw.get("kind") == "sweep":  # one study per value of a key, e.g. the resolution (robustlab.app.study_sweep)
        from robustlab.app.study_sweep import Inner, resolve_sweep_study

        sweep = resolve_sweep_study(raw, Inner(STUDY_KEYS, apply_study_overrides, resolve_study, run_study),
                                    name=path.stem)
        for one in [sweep, *sweep.studies.values()]:
            one.form = form
        return sweep
    if raw.get("kind") not in (None, "study"):
        raise ValueError(f"study key 'kind' must be study (the default), dag or sweep; got {raw['kind']!r}")
    raw.pop("kind", None)
    study = resolve_study(raw, name=path.stem)
    study.form = form
    return study


def _retitled(title: str, old: Any, new: Any) -> str:
    """A study's title names the dataset it runs on: ``dataset=digits`` turns
    "… on Fashion-MNIST" into "… on 8×8 digits" (or adds "on …")."""
    from robustlab.data.info import display_name

    new_name = display_name(str(new))
    old_name = display_name(str(old)) if old else None
    if old_name and old_name in title:
        return title.replace(old_name, new_name)
    return f"{title} (on {new_name})"


# ------------------------------------------------------------------ running


def _trained(run: Path, cfg: RunConfig) -> bool | None:
    """True: finished with this config; False: started with this config; None: absent or stale."""
    if not (run / "config.yaml").is_file():
        return None
    try:
        same = load_yaml(run / "config.yaml") == cfg.to_dict()
    except (ValueError, FileNotFoundError):
        same = False
    if not same:
        return None
    return (run / "results.json").is_file() and (run / "model.json").is_file()


def _changes(run: Path, cfg: RunConfig, most: int = 4) -> str:
    """`` (train.epochs: 1 → 3, ...)``: where a model's stored config differs from its config now."""
    from robustlab.app.rundir import describe_changes

    try:
        old = load_yaml(run / "config.yaml")
        text = describe_changes(old, json.loads(json.dumps(cfg.to_dict(), default=str)), most)
    except (ValueError, FileNotFoundError, TypeError, AttributeError):
        return ""
    return f" ({text})" if text else " (it started from other weights)"


def train_models(study: Study, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Train every model of the study that is not trained yet; returns each
    model's training summary (its ``results.json``)."""
    from robustlab.app.train import run_train

    out = {}
    for i, name in enumerate(study_models.training_order(list(study.models), study.init_from)):
        cfg = study.models[name]
        run = run_dir / "models" / name
        state = _trained(run, cfg)
        init = study_models.init_record(run_dir, study.init_from[name]) if name in study.init_from else None
        if state is not None and study_models.stored_init(run) != init:
            state = None  # it started from other weights (its source was trained again)
        if state is None and run.exists():
            _logger.warning("model %s: its configuration changed%s; training it again (the model trained before "
                            "is removed)", name, _changes(run, cfg))
            shutil.rmtree(run)
        tag = f"[{i + 1}/{len(study.models)}] model {name}"
        if state:
            _logger.info("%s: trained, reusing %s", tag, run)
        else:
            verb = "resuming" if state is False else "training"
            _logger.info("%s: %s (%s, %s, %d epoch%s)", tag, verb, cfg.recipe.name, cfg.model.name,
                         cfg.train.epochs, "" if cfg.train.epochs == 1 else "s")
            if init is not None:
                study_models.write_init(run, init)
            run_train(cfg, study.raw_models[name], run, resume=state is False,
                      init=run_dir / "models" / init["model"] if init else None)
        res = json.loads((run / "results.json").read_text())
        if not state:
            _logger.info("%s: trained in %.1f s; %s", tag, res["train_seconds"], metrics_line(res["final"]))
        out[name] = {"run_dir": str(run), "recipe": cfg.recipe.to_dict(), "model": cfg.model.to_dict(),
                     "steps": res["steps"], "train_seconds": res["train_seconds"], "final": res["final"]}
        if init is not None:
            out[name]["init_from"] = init["model"]
    return out


def run_study(study: Any, out: str | Path | None = None) -> dict[str, Any]:
    """Train, evaluate, write ``results.json`` and ``report.html`` into ``out``
    (default ``runs/NAME``, so running the same command again resumes)."""
    from robustlab.app.dag import DAGStudy, run_dag_study

    if isinstance(study, DAGStudy):
        return run_dag_study(study, out)
    from robustlab.app.study_sweep import SweepStudy, run_sweep_study

    if isinstance(study, SweepStudy):
        return run_sweep_study(study, out)

    check_available(study.device, study.models)  # an absent GPU is refused before the folder is made
    check_models(study)  # so are a bad model option, recipe or dataset of any model
    with RunDir(out if out is not None else Path("runs") / study.name, "study", study_fingerprint(study.name)) as run:
        run.write_config(study.raw, "study.yaml")
        return _run_study(study, run)


def check_models(study: Study) -> None:
    """Every model's recipe, evaluation and network checked before any trains
    (:func:`robustlab.app.train.check_model`, on the first model's training
    data); errors name the model (``models.NAME: ...``)."""
    from robustlab.app.train import check_model
    from robustlab.data import dataset_info, load_dataset

    infos: dict[tuple[Any, ...], Any] = {}
    for name, cfg in study.models.items():
        d = cfg.data
        key = (d.name, d.data_dir, d.size, d.channels)
        try:
            if key not in infos:
                infos[key] = dataset_info(load_dataset(d.name, "train", data_dir=d.data_dir, limit=8,
                                                       download=d.download, size=d.size, channels=d.channels))
            check_model(cfg, infos[key])
        except (ValueError, TypeError) as err:
            raise ValueError(f"models.{name}: {err}") from None


def _run_study(study: Study, run: RunDir) -> dict[str, Any]:
    run_dir = run.path
    start = time.perf_counter()
    models = train_models(study, run_dir)
    evaluations = run_evaluations(study, run_dir)
    results = {"kind": "study", "name": study.name, "title": study.title, "claim": study.raw.get("claim"),
               "chapter": study.raw.get("chapter"), "notes": study.raw.get("notes"), "form": study.form,
               "data": next(iter(study.models.values())).data.name, "models": models,
               "evaluations": {k: {kk: vv for kk, vv in v.items() if kk != "key"} for k, v in evaluations.items()},
               "seconds": round(time.perf_counter() - start, 2)}
    # what the models and evaluations took when they ran (a rerun that reuses them takes a second)
    results["compute_seconds"] = round(sum(float(m.get("train_seconds") or 0) for m in models.values())
                                       + sum(float(e.get("seconds") or 0) for e in evaluations.values()), 2)
    results["claims"] = evaluate_claims(study.claims, results["evaluations"])
    return run.finish(results)


def format_study_summary(results: dict[str, Any]) -> str:
    """What ``robustlab study`` prints, within 100 columns: wide tables keep
    their key columns (:func:`~robustlab.app.summary.fit_table`); the report has them whole."""
    from robustlab.report.markdown import evaluation_cells

    took = f"{results['seconds']:.0f} s"
    if results.get("compute_seconds") is not None and results["compute_seconds"] > 2 * results["seconds"]:
        took += f"; {results['compute_seconds']:.0f} s of training and evaluation in all"  # reused
    lines = [clip(f"study {results['name']}: {results['title']} ({took})")]
    if results.get("form") == "smoke":
        lines += wrap_words("smoke form (--smoke): a few images and epochs that test the pipeline; its verdicts "
                            "are no result of the thesis's", "  ", "    ")
    for c in results.get("claims") or []:
        noise = " (within noise)" if c.get("within_noise") else ""
        lines += wrap_words(f"{c['id']}: {c['verdict'].upper()}{noise} — {c['says']}", "  ", "      ")
    for name, ev in results["evaluations"].items():
        columns, cells, unit = evaluation_cells(ev)
        lines += ["", clip(f"{name} ({ev['kind']}, {ev.get('n', '?')} images" + (f"; {unit})" if unit else ")"))]
        lines += fit_table(columns, cells)
    lines += ["", *path_lines("report", results["report"], indent="")]
    return "\n".join(lines)
