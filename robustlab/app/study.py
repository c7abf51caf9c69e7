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
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab._io import pick_device, write_json
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
from robustlab.app.spec import EvaluationSpec, check_keys, parse_budgets
from robustlab.app.study_ch3 import CH3_EVALUATIONS, CH3_EVALUATORS, check_ch3_evaluation
from robustlab.app.summary import clip, fit_table, metrics_line, path_lines, result_line
from robustlab.nn.norm import route
from robustlab.train.checkpoint import load_trained_model

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
        evaluations[str(ename)] = _check_evaluation(str(ename), dict(spec), list(models))
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
    file's ``datasets.NAME`` overrides; ``smoke`` applies its ``smoke`` ones."""
    path = find_config(path, "study config")  # a file, or a packaged study by name (quickstart, ch3_transfer)
    raw = apply_study_overrides(load_yaml(path, "study config"), overrides or [], "overrides")
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
    if raw.get("kind") == "dag":
        from robustlab.app.dag import resolve_dag_study

        return resolve_dag_study(raw, name=path.stem)
    if raw.get("kind") == "sweep":  # one study per value of a key, e.g. the resolution (robustlab.app.study_sweep)
        from robustlab.app.study_sweep import Inner, resolve_sweep_study

        return resolve_sweep_study(raw, Inner(STUDY_KEYS, apply_study_overrides, resolve_study, run_study),
                                   name=path.stem)
    if raw.get("kind") not in (None, "study"):
        raise ValueError(f"study key 'kind' must be study (the default), dag or sweep; got {raw['kind']!r}")
    raw.pop("kind", None)
    return resolve_study(raw, name=path.stem)


# ------------------------------------------------------------------ evaluations

# kind → (option → default); "models" (list or "all") is common to every kind but transfer.
EVALUATIONS: dict[str, dict[str, Any]] = {
    "accuracy": {"models": "all", "routes": False, "limit": None},
    "whitebox": {"models": "all", "eps": 16, "step_size": 1, "steps": [1, 5, 10, 20], "loss": "ce",
                 "targeted": False, "restarts": 1, "routes": False, "limit": None},
    "transfer": {"sources": None, "targets": None, "attacks": ["fgsm", "ifgsm", "mifgsm", "di2fgsm", "mdi2fgsm"],
                 "eps": 16, "ensemble": None, "limit": None},
    "blackbox": {"models": "all", "sources": None, "attacks": ["ifgsm", "mifgsm", "di2fgsm", "mdi2fgsm"],
                 "eps": 32, "limit": None},
    # baseline: the model whose errors normalize mCE (ImageNet-C's AlexNet; robustlab.app.study_kinds.add_mce)
    "corruption": {"models": "all", "corruptions": "all", "severities": [1, 2, 3, 4, 5], "baseline": None,
                   "limit": None},
    # rl.eval.evaluate: protocol standard | thesis | quick (robustlab.eval.protocols)
    "robust": {"models": "all", "protocol": "standard", "eps": 16, "norm": "linf", "options": None,
               "fallback": None, "routes": False, "limit": None},
    **CH3_EVALUATIONS,  # holdout, nips2017 (robustlab.app.study_ch3)
    **study_kinds.OPTIONS,  # bn_statistics, stylized, imagenet_a (robustlab.app.study_kinds)
}


def _check_evaluation(name: str, spec: dict[str, Any], model_names: list[str]) -> EvaluationSpec:
    kind = spec.pop("kind")
    if kind not in EVALUATIONS:
        raise ValueError(f"evaluations.{name}.kind must be one of {', '.join(EVALUATIONS)}; got {kind!r}")
    defaults = EVALUATIONS[kind]
    try:
        check_keys(spec, defaults, noun="option", where=f" for kind {kind!r}")
    except ValueError as err:
        raise ValueError(f"evaluations.{name}: {err}") from None
    opts = {"kind": kind, **copy.deepcopy(defaults), **spec}

    def names(key: str) -> list[str]:
        value = opts[key]
        if value in ("all", None):
            return list(model_names)
        value = [value] if isinstance(value, str) else list(value)
        missing = [m for m in value if m not in model_names]
        if missing:
            raise ValueError(f"evaluations.{name}.{key}: unknown model(s) {missing}; the study has "
                             f"{', '.join(model_names)}")
        return value

    for key in ("models", "sources", "targets", "ensemble"):
        if key == "ensemble" and opts.get(key) is None:
            continue
        if key in opts:
            opts[key] = names(key)
    budgets = parse_budgets(name, opts)  # once: the evaluators read spec.eps / spec.step_size
    if kind == "robust":
        from robustlab.eval import protocols

        try:
            protocols.get(opts["protocol"]).resolve(opts["options"])
        except ValueError as err:
            raise ValueError(f"evaluations.{name}: {err}") from None
        if opts["fallback"] not in (None, True, False):
            raise ValueError(f"evaluations.{name}.fallback must be null, true or false; got {opts['fallback']!r}")
    if kind == "whitebox":
        if opts["loss"] not in ("ce", "cw", "both"):
            raise ValueError(f"evaluations.{name}.loss must be ce, cw or both; got {opts['loss']!r}")
        steps = opts["steps"]
        if not isinstance(steps, list) or not steps or not all(isinstance(s, int) and s >= 0 for s in steps):
            raise ValueError(f"evaluations.{name}.steps must be a list of iteration counts; got {steps!r}")
    if kind in ("transfer", "blackbox"):
        from robustlab.app.study_attacks import resolve_attacks

        resolve_attacks(name, opts)  # names, per-attack options and sweeps → labels (robustlab.app.study_attacks)
    if kind in CH3_EVALUATIONS:
        check_ch3_evaluation(name, opts, model_names)
    if kind == "corruption":
        from robustlab.data.corruptions import CORRUPTIONS

        if opts["corruptions"] == "all":
            opts["corruptions"] = list(CORRUPTIONS)
        bad = [c for c in opts["corruptions"] if c not in CORRUPTIONS]
        if bad:
            raise ValueError(f"evaluations.{name}.corruptions: unknown {bad}; known: {', '.join(CORRUPTIONS)}")
        study_kinds.check_baseline(name, opts, model_names)
    return EvaluationSpec(kind, opts, **budgets)


@dataclass
class _Context:
    study: Study
    run_dir: Path
    device: torch.device
    x: torch.Tensor
    y: torch.Tensor
    _models: dict[tuple[str, bool], nn.Module] = field(default_factory=dict)

    def data(self, opts: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        n = opts.get("limit") or self.study.limit or len(self.y)
        return self.x[:n], self.y[:n]

    def batches(self, opts: Mapping[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.data(opts)
        b = self.study.batch_size
        return [(x[i: i + b], y[i: i + b]) for i in range(0, len(y), b)]

    def model(self, name: str, routed: bool = False) -> nn.Module:
        """The exported model, or with ``routed`` the trained one with every BN
        route (AdvProp's auxiliary BNs included) from its last checkpoint."""
        key = (name, routed)
        if key not in self._models:
            model = load_trained_model(self.run_dir / "models" / name, routed=routed)
            self._models[key] = model.to(self.device).eval()
        return self._models[key]

    def routes(self, name: str, routed: bool) -> list[tuple[str, nn.Module, Any]]:
        from robustlab.nn.norm import route_names

        model = self.model(name, routed)
        names = route_names(model)
        if not routed or not names:
            return [("-", model, None)]
        return [(r, model, r) for r in names]


def _eval_accuracy(ctx: _Context, opts: dict[str, Any]) -> dict[str, Any]:
    from robustlab.eval.metrics import accuracy

    x, y = ctx.data(opts)
    rows = []
    for m in opts["models"]:
        for rname, model, r in ctx.routes(m, opts["routes"]):
            with route(model, r):
                rows.append({"model": m, **({"route": rname} if opts["routes"] else {}),
                             "clean accuracy": accuracy(model, x, y)})
    return {"n": len(y), "table": rows}


def _eval_whitebox(ctx: _Context, opts: EvaluationSpec) -> dict[str, Any]:
    from robustlab.eval.whitebox import whitebox_protocol

    eps, alpha = opts.eps, opts.step_size
    losses = ("ce", "cw") if opts["loss"] == "both" else (opts["loss"],)
    batches = ctx.batches(opts)
    rows, curves, warnings, kept, fates = [], {}, {}, {}, {}
    for m in opts["models"]:
        for rname, model, r in ctx.routes(m, opts["routes"]):
            label = m if not opts["routes"] else f"{m} [{rname}]"
            with route(model, r):
                res = whitebox_protocol(model, batches, steps=opts["steps"], eps=eps, step_size=alpha, losses=losses,
                                        targeted=(opts["targeted"],), restarts=opts["restarts"],
                                        seed=ctx.study.models[m].seed, device=ctx.device)
                kept[label], fates[label] = _whitebox_examples(model, *ctx.data(opts), eps, alpha, opts, losses[0],
                                                               ctx.study.models[m].seed, ctx.device)
            curve, check = res["worst"], res["sanity"]
            curves[label] = {"steps": curve.steps, "accuracy": curve.accuracy}
            warnings[label] = [str(w) for w in check.warnings]
            rows.append({"model": m, **({"route": rname} if opts["routes"] else {}),
                         **{f"PGD-{s}": a for s, a in zip(curve.steps, curve.accuracy)},
                         "masking": ", ".join(w.check for w in check.warnings) or "none"})
    return {"n": sum(len(y) for _, y in batches), "table": rows, "curves": curves, "warnings": warnings,
            "per_sample": fates, KEPT: kept}


def _whitebox_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                       opts: Mapping[str, Any], loss: str, seed: int, device: torch.device
                       ) -> tuple[dict[str, torch.Tensor], dict[str, list]]:
    """The report's grid of a whitebox evaluation: its first few images (as many
    as ``evaluate`` keeps) attacked once more by the curve's PGD run (max(steps)
    iterations, the first loss, the first start), and their fates (``per_sample``
    for those images: the iteration that broke each, None if none did)."""
    from robustlab.eval.evaluate import EXAMPLES
    from robustlab.eval.metrics import predict
    from robustlab.eval.whitebox import pgd_for_curve

    x, y = x[:EXAMPLES].to(device), y[:EXAMPLES].to(device)
    atk = pgd_for_curve(eps, alpha, max(opts["steps"]), targeted=opts["targeted"], seed=seed, loss=loss)
    res = atk.run(model, x, y)
    clean_right = (predict(model, x) == y).tolist()
    broken = res.success.tolist()
    fates = {"broken_by": [None if not b else "PGD" if c else "clean" for b, c in zip(broken, clean_right)],
             "broken_at": [int(s) if b and c else None for b, c, s in zip(broken, clean_right, res.steps.tolist())]}
    return {"index": torch.arange(len(y)), "clean": x.detach().cpu(), "adversarial": res.x_adv.detach().cpu()}, fates


def _eval_robust(ctx: _Context, opts: EvaluationSpec) -> dict[str, Any]:
    """rl.eval.evaluate on every model (and route), through the protocol registry."""
    from robustlab.eval.evaluate import evaluate

    eps = opts.eps
    batches = ctx.batches(opts)
    rows, warnings, curves, kept = [], {}, {}, {}
    for m in opts["models"]:
        for rname, model, r in ctx.routes(m, opts["routes"]):
            with route(model, r):
                ev = evaluate(model, batches, eps=eps, norm=opts["norm"], protocol=opts["protocol"],
                              fallback=opts["fallback"], options=opts["options"], device=ctx.device,
                              seed=ctx.study.models[m].seed)
            label = m if not opts["routes"] else f"{m} [{rname}]"
            warnings[label] = ev.warnings
            iterates = {}
            if ev.curve:  # the thesis protocol (§4.6.1, §6.3): the final iterate scored, the best beside it
                c = ev.curve
                curves[label] = {"steps": c["steps"], "accuracy": c["final_accuracy"],
                                 "final_accuracy": c["final_accuracy"], "best_accuracy": c["best_accuracy"]}
                iterates = {f"final@{c['steps'][-1]}": c["final_accuracy"][-1],
                            f"best@{c['steps'][-1]}": c["best_accuracy"][-1]}
            if ev.examples is not None:
                kept[label] = ev.examples
            rows.append({"model": m, **({"route": rname} if opts["routes"] else {}), "clean": ev.clean_accuracy,
                         **ev.per_attack, **iterates, "robust": ev.robust_accuracy,
                         "square fallback": "yes" if ev.fallback["used"] else "no",
                         "masking": ", ".join(w.split("]")[0].strip("[") for w in ev.warnings) or "none"})
    out = {"n": sum(len(y) for _, y in batches), "table": rows, "warnings": warnings, KEPT: kept}
    if curves:
        out["curves"] = curves
    return out


#: An evaluator's adversarial examples ({label: {"clean", "adversarial", "index"}}), written by
#: run_evaluations to evaluations/NAME/examples-LABEL.safetensors (the report's image grids).
KEPT = "_examples"


def _keep_examples(res: dict[str, Any], folder: Path, run_dir: Path) -> None:
    from robustlab._io import write_tensors

    kept = res.pop(KEPT, None) or {}
    paths = {}
    for label, tensors in kept.items():
        path = folder / f"examples-{re.sub(r'[^A-Za-z0-9_.-]+', '_', label).strip('_')}.safetensors"
        folder.mkdir(parents=True, exist_ok=True)
        write_tensors(path, tensors)
        paths[label] = str(path.relative_to(run_dir))
    if paths:
        res["examples"] = paths


def _eval_transfer(ctx: _Context, opts: dict[str, Any]) -> dict[str, Any]:
    from robustlab.app.study_attacks import configs, factories
    from robustlab.eval.transfer import transfer_matrix

    attacks = factories(opts, ctx.study.models[(opts["sources"] or opts["ensemble"])[0]].seed)
    sources = {s: ctx.model(s) for s in opts["sources"]}
    if opts["ensemble"]:  # §3.3.5: one source whose logits are the average of the members' (eq. 3.8)
        from robustlab.attacks.ensemble import Ensemble

        sources["ensemble(" + "+".join(opts["ensemble"]) + ")"] = Ensemble([ctx.model(m) for m in opts["ensemble"]])
    res = transfer_matrix(attacks, sources,
                          {t: ctx.model(t) for t in opts["targets"]}, ctx.batches(opts), device=ctx.device)
    rows = [{"attack": a, "source": s, **{f"→ {t}": v for t, v in row.items()}}
            for a, by_src in res["success"].items() for s, row in by_src.items()]
    return {"n": res["n"], "table": rows, "value": "success rate on images every model classifies correctly",
            "raw": res, "attack_configs": configs(opts)}


def _eval_blackbox(ctx: _Context, opts: dict[str, Any]) -> dict[str, Any]:
    """§4.6.2, Table 4.2: every attack made on every source model is one
    attacker; a defender is right on an image only if it classifies every
    attacker's version of it correctly (CAAD 2018's all-or-nothing, ε = 32)."""
    from robustlab.app.study_attacks import factories
    from robustlab.eval.transfer import adversarial_sets, all_or_nothing

    attackers = {f"{a}@{src}": (make, ctx.model(src))
                 for src in opts["sources"] for a, make in factories(opts, 0).items()}
    sets = adversarial_sets(attackers, ctx.batches(opts), device=ctx.device)
    rows = []
    for m in opts["models"]:
        res = all_or_nothing(ctx.model(m), sets, device=ctx.device)
        rows.append({"model": m, "all-or-nothing": res["all_or_nothing"], **res["per_attacker"]})
    return {"n": sum(len(y) for _, y in ctx.batches(opts)), "table": rows,
            "value": "accuracy: all-or-nothing over the attackers, then per attacker"}


def _eval_corruption(ctx: _Context, opts: dict[str, Any]) -> dict[str, Any]:
    from robustlab.eval.corruption import corruption_errors
    from robustlab.eval.metrics import accuracy

    x, y = ctx.data(opts)
    rows, errors = [], {}
    for m in opts["models"]:
        model = ctx.model(m)
        err = corruption_errors(model, x, y, opts["corruptions"], opts["severities"])
        errors[m] = err
        per = {c: 1.0 - sum(s.values()) / len(s) for c, s in err.items()}
        rows.append({"model": m, "clean": accuracy(model, x, y), "corrupted (mean)": sum(per.values()) / len(per),
                     **per})
    mce = study_kinds.add_mce(rows, errors, opts["baseline"]) if opts.get("baseline") else {}
    return {"n": len(y), "table": rows, "value": "accuracy, mean over severities" +
            (f"; mCE and relative mCE in % of {opts['baseline']}'s errors (lower is better)" if mce else ""),
            "errors": errors, **mce}


EVALUATORS: dict[str, Callable[[_Context, dict[str, Any]], dict[str, Any]]] = {
    "accuracy": _eval_accuracy, "whitebox": _eval_whitebox, "robust": _eval_robust, "transfer": _eval_transfer,
    "blackbox": _eval_blackbox, "corruption": _eval_corruption, **CH3_EVALUATORS, **study_kinds.EVALUATORS,
}


# ------------------------------------------------------------------ running


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
            _logger.warning("model %s: its configuration changed; training it again", name)
            shutil.rmtree(run)
        tag = f"[{i + 1}/{len(study.models)}] model {name}"
        if state:
            _logger.info("%s: trained, reusing %s", tag, run)
        else:
            verb = "resuming" if state is False else "training"
            _logger.info("%s: %s (%s, %s, %d epochs)", tag, verb, cfg.recipe.name, cfg.model.name,
                         cfg.train.epochs)
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


def run_evaluations(study: Study, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Run every evaluation not already stored (with the same options and models) in ``evaluations/``."""
    from robustlab.data import load_dataset

    cfg = next(iter(study.models.values()))
    d = cfg.data
    limit = max([study.limit or 0] + [e.get("limit") or 0 for e in study.evaluations.values()]) or None
    test = load_dataset(d.name, d.eval_split, data_dir=d.data_dir, limit=limit, download=d.download, size=d.size,
                        channels=d.channels)
    device = pick_device(study.device)
    x, y = (t.to(device) for t in test.batch(slice(0, len(test))))
    ctx = _Context(study, run_dir, device, x, y)
    (run_dir / "evaluations").mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (name, opts) in enumerate(study.evaluations.items()):
        used = opts.used_models
        key = _fingerprint({"opts": opts.options, "limit": study.limit, "data": d.name,
                            "models": {m: study_models.model_key(study.models[m], run_dir / "models" / m)
                                       for m in used}})
        path = run_dir / "evaluations" / f"{name}.json"
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                _logger.info("[%d/%d] evaluation %s: done, reusing", i + 1, len(study.evaluations), name)
                out[name] = stored
                continue
        _logger.info("[%d/%d] evaluation %s (%s)", i + 1, len(study.evaluations), name, opts["kind"])
        start = time.perf_counter()
        res = EVALUATORS[opts["kind"]](ctx, opts)
        _keep_examples(res, run_dir / "evaluations" / name, run_dir)
        res = {"kind": opts.kind, "options": opts.options, "key": key, "seconds": round(time.perf_counter() - start, 2),
               **res}
        write_json(path, res)
        _logger.info("[%d/%d] evaluation %s: done in %.1f s; %s", i + 1, len(study.evaluations), name,
                     res["seconds"], result_line(res))
        out[name] = res
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
    with RunDir(out if out is not None else Path("runs") / study.name, "study", study_fingerprint(study.name)) as run:
        run.write_config(study.raw, "study.yaml")
        return _run_study(study, run)


def _run_study(study: Study, run: RunDir) -> dict[str, Any]:
    run_dir = run.path
    start = time.perf_counter()
    models = train_models(study, run_dir)
    evaluations = run_evaluations(study, run_dir)
    results = {"kind": "study", "name": study.name, "title": study.title, "claim": study.raw.get("claim"),
               "chapter": study.raw.get("chapter"), "notes": study.raw.get("notes"),
               "data": next(iter(study.models.values())).data.name, "models": models,
               "evaluations": {k: {kk: vv for kk, vv in v.items() if kk != "key"} for k, v in evaluations.items()},
               "seconds": round(time.perf_counter() - start, 2)}
    results["claims"] = evaluate_claims(study.claims, results["evaluations"])
    return run.finish(results)


def format_study_summary(results: dict[str, Any]) -> str:
    """What ``robustlab study`` prints, within 100 columns: wide tables keep
    their key columns (:func:`~robustlab.app.summary.fit_table`); the report has them whole."""
    from robustlab.report.html import table_rows

    lines = [clip(f"study {results['name']}: {results['title']} ({results['seconds']:.0f} s)")]
    for c in results.get("claims") or []:
        lines.append(f"  {c['id']}: {c['verdict'].upper()} — {c['says']}"[:100])
    for name, ev in results["evaluations"].items():
        lines += ["", clip(f"{name} ({ev['kind']}, {ev.get('n', '?')} images)")]
        lines += fit_table(*table_rows(ev["table"]))
    lines += ["", *path_lines("report", results["report"], indent="")]
    return "\n".join(lines)
