"""The evaluations of a ``robustlab study``: each kind's options and their
defaults (:data:`EVALUATIONS`), the check that turns a study's
``evaluations.NAME`` mapping into an :class:`~robustlab.app.spec.EvaluationSpec`
when the study loads (:func:`check_evaluation`), the evaluators by kind
(:data:`EVALUATORS`: accuracy, whitebox, robust, transfer, blackbox,
corruption, and those of :mod:`robustlab.app.study_ch3` and
:mod:`robustlab.app.study_kinds`) and :func:`run_evaluations`, which runs the
ones not already stored in the run directory's ``evaluations/``.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab._io import pick_device, write_json
from robustlab._progress import duration, progress
from robustlab.app import study_kinds, study_models
from robustlab.app.spec import EvaluationSpec, check_keys, parse_budgets
from robustlab.app.study_ch3 import CH3_EVALUATIONS, CH3_EVALUATORS, check_ch3_evaluation
from robustlab.app.summary import result_line
from robustlab.data.folder import spread_indices
from robustlab.models.resolve import is_factory_spec, load_factory
from robustlab.nn.norm import route
from robustlab.train.checkpoint import load_trained_model

_logger = logging.getLogger(__name__)

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


def check_evaluation(name: str, spec: dict[str, Any], model_names: list[str]) -> EvaluationSpec:
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
    attack_kwargs: dict[str, dict[str, Any]] = {}
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
        if not isinstance(steps, list) or not steps or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in steps):
            raise ValueError(f"evaluations.{name}.steps must be a list of iteration counts >= 1 (a PGD-0 column "
                             f"would be clean accuracy under an attack's name); got {steps!r}")
    if kind in ("transfer", "blackbox"):
        from robustlab.app.study_attacks import resolve_attacks

        # names, per-attack options and sweeps → labels, budgets into pixels (robustlab.app.study_attacks)
        attack_kwargs = resolve_attacks(name, opts, budgets.get("eps"))
    if kind in CH3_EVALUATIONS:
        attack_kwargs = check_ch3_evaluation(name, opts, model_names, budgets.get("eps"))
    if kind == "corruption":
        from robustlab.data.corruptions import CORRUPTIONS

        if opts["corruptions"] == "all":
            opts["corruptions"] = list(CORRUPTIONS)
        bad = [c for c in opts["corruptions"] if c not in CORRUPTIONS]
        if bad:
            raise ValueError(f"evaluations.{name}.corruptions: unknown {bad}; known: {', '.join(CORRUPTIONS)}")
        study_kinds.check_baseline(name, opts, model_names)
    return EvaluationSpec(kind, opts, attack_kwargs=attack_kwargs, **budgets)


@dataclass
class Context:
    """What an evaluator works on: the study, its run directory, the device and
    the test images (on the device); the trained models, loaded once each."""

    study: Any  # robustlab.app.study.Study (not imported: that module imports this one)
    run_dir: Path
    device: torch.device
    x: torch.Tensor
    y: torch.Tensor
    _models: dict[tuple[str, bool], nn.Module] = field(default_factory=dict)

    def data(self, opts: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The evaluation's ``limit`` test images: the first ones, or every
        k-th when the images come sorted by class (an ImageFolder's), so that
        a smaller limit is not the first classes only."""
        n = opts.get("limit") or self.study.limit or len(self.y)
        if n < len(self.y) and bool((self.y[1:] >= self.y[:-1]).all()):
            at = torch.tensor(spread_indices(len(self.y), n), device=self.y.device)
            return self.x[at], self.y[at]
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
            spec = self.study.models[name].model.name if name in getattr(self.study, "models", {}) else ""
            build = None
            if is_factory_spec(str(spec)):  # your own network: its factory rebuilds it, the run's weights fill it
                build = functools.partial(load_factory, str(spec))
            model = load_trained_model(self.run_dir / "models" / name, routed=routed, build=build)
            self._models[key] = model.to(self.device).eval()
        return self._models[key]

    def routes(self, name: str, routed: bool) -> list[tuple[str, nn.Module, Any]]:
        from robustlab.nn.norm import route_names

        model = self.model(name, routed)
        names = route_names(model)
        if not routed or not names:
            return [("-", model, None)]
        return [(r, model, r) for r in names]


def _eval_accuracy(ctx: Context, opts: dict[str, Any]) -> dict[str, Any]:
    from robustlab.eval.metrics import accuracy

    x, y = ctx.data(opts)
    rows = []
    for m in opts["models"]:
        for rname, model, r in ctx.routes(m, opts["routes"]):
            with route(model, r):
                rows.append({"model": m, **({"route": rname} if opts["routes"] else {}),
                             "clean accuracy": accuracy(model, x, y)})
    return {"n": len(y), "table": rows}


def _eval_whitebox(ctx: Context, opts: EvaluationSpec) -> dict[str, Any]:
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


def _eval_robust(ctx: Context, opts: EvaluationSpec) -> dict[str, Any]:
    """rl.eval.evaluate on every model (and route), through the protocol registry."""
    from robustlab.app.evaluate import SamplesDone
    from robustlab.eval.evaluate import evaluate

    eps = opts.eps
    batches = ctx.batches(opts)
    n = sum(len(y) for _, y in batches)
    rows, warnings, curves, kept = [], {}, {}, {}
    for m in opts["models"]:
        for rname, model, r in ctx.routes(m, opts["routes"]):
            label = m if not opts["routes"] else f"{m} [{rname}]"
            with route(model, r), progress(n, f"{opts['protocol']} {label}", "sample") as bar:
                ev = evaluate(model, batches, eps=eps, norm=opts["norm"], protocol=opts["protocol"],
                              fallback=opts["fallback"], options=opts["options"], device=ctx.device,
                              seed=ctx.study.models[m].seed, progress=SamplesDone(bar))
            _logger.info("%s %s: clean %.1f%%, robust %.1f%% (n = %d) in %s", opts["protocol"], label,
                         100 * ev.clean_accuracy, 100 * ev.robust_accuracy, n, duration(ev.seconds))
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
    out = {"n": n, "table": rows, "warnings": warnings, KEPT: kept}
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


def _eval_transfer(ctx: Context, opts: EvaluationSpec) -> dict[str, Any]:
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


def _eval_blackbox(ctx: Context, opts: EvaluationSpec) -> dict[str, Any]:
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


def _eval_corruption(ctx: Context, opts: dict[str, Any]) -> dict[str, Any]:
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


EVALUATORS: dict[str, Callable[[Context, dict[str, Any]], dict[str, Any]]] = {
    "accuracy": _eval_accuracy, "whitebox": _eval_whitebox, "robust": _eval_robust, "transfer": _eval_transfer,
    "blackbox": _eval_blackbox, "corruption": _eval_corruption, **CH3_EVALUATORS, **study_kinds.EVALUATORS,
}


# ------------------------------------------------------------------ running


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_evaluations(study: Any, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Run every evaluation not already stored (with the same options and models) in ``evaluations/``."""
    from robustlab.data import load_dataset, load_tensors

    cfg = next(iter(study.models.values()))
    d = cfg.data
    limit = max([study.limit or 0] + [e.get("limit") or 0 for e in study.evaluations.values()]) or None
    test = load_dataset(d.name, d.eval_split, data_dir=d.data_dir, limit=limit, download=d.download, size=d.size,
                        channels=d.channels)
    device = pick_device(study.device)
    x, y = (t.to(device) for t in load_tensors(test, workers=cfg.train.workers))
    ctx = Context(study, run_dir, device, x, y)
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
