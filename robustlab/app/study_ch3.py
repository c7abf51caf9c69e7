"""Chapter 3's ensemble protocols as study evaluations: ``holdout`` (§3.4.3,
Table 3.3; the ablations of §3.4.4, Figs. 3.4–3.6) and ``nips2017`` (§3.4.5,
Table 3.4).

    holdout:  {kind: holdout, models: [a, b, c], attacks: [ifgsm, mdi2fgsm], eps: 15}
    nips2017: {kind: nips2017, ensemble: [a, c], targets: [b, d], attacks: [mifgsm, mdi2fgsm], batches: 50}

``holdout``: for each model k, the attack is made on the ensemble of the
others (logits fused with equal weights, eq. 3.8, unless ``weights`` names
them) and scored on that ensemble (``ensemble`` rows: white-box) and on k
(``hold-out`` rows: black-box); columns ``-k`` as in Table 3.3; only images
every model classifies correctly count (§3.4.1).

``nips2017``: the competition's protocol: the images split into ``batches``
(50 in §3.4.5), each with its own ε drawn from {4, 8, 12, 16}, N = 10, α = ε/N,
μ = 1 and p = 0.4 (:mod:`robustlab.eval.nips2017`; the attacks' ε, steps and
step size are the protocol's); made on the ensemble of ``ensemble`` (one
model: that model; ``weights`` as for holdout) and scored as the
misclassification rate on all images of every target, with their average.
``defended`` adds targets behind the competition's input-transformation
defenses (:mod:`robustlab.eval.defenses`), e.g.
``defended: [{model: b, defense: randomization}, {model: b, defense: jpeg, quality: 75}]``,
as columns ``→ b+randomization``, ``→ b+jpeg`` (``label`` names one otherwise;
the randomization's seed is the evaluation's). Both take the attack lists of :mod:`robustlab.app.study_attacks`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: kind → (option → default), merged into robustlab.app.study_eval.EVALUATIONS.
CH3_EVALUATIONS: dict[str, dict[str, Any]] = {
    "holdout": {"models": "all", "attacks": ["ifgsm", "di2fgsm", "mifgsm", "mdi2fgsm"], "eps": 15,
                "weights": None, "limit": None},
    "nips2017": {"ensemble": "all", "weights": None, "targets": None, "defended": [],
                 "attacks": ["ifgsm", "di2fgsm", "mifgsm", "mdi2fgsm"], "batches": 50, "seed": 0, "limit": None},
}
#: The attack options the §3.4.5 protocol sets itself.
NIPS2017_FIXED = ("eps", "steps", "step_size")


def _check_weights(name: str, weights: Any, members: list[str]) -> None:
    if weights is None:
        return
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"evaluations.{name}.weights must map model names to positive weights; got {weights!r}")
    unknown = sorted(set(weights) - set(members))
    if unknown:
        raise ValueError(f"evaluations.{name}.weights: {unknown} are not among the ensembled models "
                         f"{', '.join(members)}")
    missing = sorted(set(members) - set(weights))
    if missing:
        raise ValueError(f"evaluations.{name}.weights: give every ensembled model a weight; missing {missing}")
    bad = {k: v for k, v in weights.items()
           if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0}
    if bad:
        raise ValueError(f"evaluations.{name}.weights must be positive numbers; got {bad}")


def check_ch3_evaluation(name: str, opts: dict[str, Any], model_names: list[str], eps: float | None
                         ) -> dict[str, dict[str, Any]]:
    """Options of a holdout / nips2017 evaluation, checked in place (model
    lists already resolved by the study, ``eps`` parsed into pixels); returns
    the attacks' keyword arguments (:func:`robustlab.app.study_attacks.resolve_attacks`)."""
    from robustlab.app.study_attacks import resolve_attacks

    if opts["kind"] == "holdout":
        if len(opts["models"]) < 2:
            raise ValueError(f"evaluations.{name}.models: a hold-out needs at least 2 models; got {opts['models']}")
        _check_weights(name, opts["weights"], opts["models"])
        return resolve_attacks(name, opts, eps)
    from robustlab.eval.nips2017 import nips2017_attack
    from robustlab.units import from_255

    if not opts["ensemble"]:
        raise ValueError(f"evaluations.{name}.ensemble must name at least one model")
    _check_weights(name, opts["weights"], opts["ensemble"])
    batches = opts["batches"]
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"evaluations.{name}.batches must be a whole number >= 1 (§3.4.5: 50); got {batches!r}")
    seed = opts["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"evaluations.{name}.seed must be a whole number >= 0; got {seed!r}")
    opts["defended"] = _check_defended(name, opts["defended"], model_names)
    return resolve_attacks(name, opts, None, forbidden=NIPS2017_FIXED,
                           build=lambda attack, options: nips2017_attack(attack, from_255(16), **options))


def _defense_options(item: dict[str, Any]) -> dict[str, Any]:
    """A ``defended`` entry's options for its defense: all but model, defense and label."""
    return {k: v for k, v in item.items() if k not in ("model", "defense", "label")}


def _check_defended(name: str, items: Any, model_names: list[str]) -> list[dict[str, Any]]:
    """``defended`` entries checked (a model of the study, a known defense, its
    options) and labelled; returns them with ``label`` filled in."""
    from torch import nn

    from robustlab.eval.defenses import DEFENSES, defended

    where = f"evaluations.{name}.defended"
    if not isinstance(items, list):
        raise ValueError(f"{where} must be a list of {{model: NAME, defense: {'|'.join(DEFENSES)}, ...}}; "
                         f"got {items!r}")
    out, labels = [], set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "model" not in item or "defense" not in item:
            raise ValueError(f"{where}[{i}] must be a mapping with model and defense "
                             f"(one of {', '.join(DEFENSES)}); got {item!r}")
        if item["model"] not in model_names:
            raise ValueError(f"{where}[{i}].model: unknown model {item['model']!r}; the study has "
                             f"{', '.join(model_names)}")
        options = _defense_options(item)
        try:
            defended(nn.Identity(), item["defense"], **options)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}[{i}]: {err}") from None
        label = item.get("label") or "+".join([item["model"], item["defense"]]) + "".join(
            f" {k}={v}" for k, v in sorted(options.items()))
        if label in labels:
            raise ValueError(f"{where}[{i}]: the label {label!r} is used twice; give one a label")
        labels.add(label)
        out.append({**item, "label": label})
    return out


def _ensemble(ctx: Any, members: list[str], weights: dict[str, float] | None) -> Any:
    from robustlab.attacks.ensemble import Ensemble

    if len(members) == 1:
        return ctx.model(members[0])
    w = [float(weights[m]) if weights else 1.0 for m in members]
    return Ensemble([ctx.model(m) for m in members], [v / sum(w) for v in w]).eval()


def eval_holdout(ctx: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """Table 3.3: ``ensemble`` rows (white-box), then ``hold-out`` rows (black-box), one per attack."""
    from robustlab.app.study_attacks import configs, factories
    from robustlab.eval.holdout import holdout_evaluation

    models = {m: ctx.model(m) for m in opts["models"]}
    seed = ctx.study.models[opts["models"][0]].seed
    batches = ctx.batches(opts)
    white, black, n = [], [], 0
    for label, make in factories(opts, seed).items():
        res = holdout_evaluation(make, models, batches, weights=opts["weights"], device=ctx.device)
        white.append({"attack": label, "setting": "ensemble", **{k: v["ensemble"] for k, v in res.items()}})
        black.append({"attack": label, "setting": "hold-out", **{k: v["holdout"] for k, v in res.items()}})
        n = next(iter(res.values()))["n"]
    return {"n": n, "table": white + black, "attack_configs": configs(opts),
            "value": "success rate on the images every model classifies correctly; column -k: the attack is "
                     "made on the ensemble of the others (ensemble rows: white-box) and scored on k (hold-out "
                     "rows: black-box)"}


def eval_nips2017(ctx: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """Table 3.4: a random ε per batch, the §3.4.5 attacker settings, success on every target and their average."""
    import math

    from robustlab.eval.nips2017 import run_nips2017

    x, y = ctx.data(opts)
    size = max(1, math.ceil(len(y) / opts["batches"]))
    batches = [(x[i: i + size], y[i: i + size]) for i in range(0, len(y), size)]
    source = _ensemble(ctx, opts["ensemble"], opts["weights"])
    plain = {t: ctx.model(t) for t in opts["targets"]}
    rows, eps_used = [], None
    for label in opts["attacks"]:
        targets = {**plain, **_defended_targets(ctx, opts)}  # rebuilt: every attack meets the same draws
        overrides = dict(opts.attack_kwargs[label])  # the protocol sets the budgets; no eps among them
        res = run_nips2017(overrides.pop("name"), source, batches, targets, seed=opts["seed"], device=ctx.device,
                           **overrides)
        eps_used = res["eps_255_per_batch"]
        rates = {f"→ {t}": v for t, v in res["success"].items()}
        rows.append({"attack": label, **rates, "average": sum(rates.values()) / max(len(rates), 1)})
    return {"n": len(y), "table": rows, "eps_255_per_batch": eps_used,
            "value": f"misclassification rate on all images; the attacks made on "
                     f"{'+'.join(opts['ensemble'])} with ε drawn per batch from {{4, 8, 12, 16}} "
                     f"({len(batches)} batches), N = 10, α = ε/N (§3.4.5)"}


def _defended_targets(ctx: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """label → the model behind its defense; a randomization draws from the evaluation's seed."""
    from robustlab.eval.defenses import defended

    out = {}
    for d in opts["defended"]:
        options = _defense_options(d)
        if d["defense"] == "randomization":
            options.setdefault("seed", opts["seed"])
        out[d["label"]] = defended(ctx.model(d["model"]), d["defense"], **options)
    return out


CH3_EVALUATORS: dict[str, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
    "holdout": eval_holdout, "nips2017": eval_nips2017,
}
