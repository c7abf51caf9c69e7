"""Study evaluation kinds of chapters 6 and 7 beyond accuracy and attacks:

* ``bn_statistics`` — Fig. 6.5 and 6.6: how the BN statistics of a model
  differ between its routes (MBN_clean vs MBN_adv; AdvProp's main vs
  auxiliary BNs) and between a batch and the running averages;
* ``stylized`` and ``imagenet_a`` — Table 7.1's shifted test sets, read from
  class folders (:mod:`robustlab.data.shifted`);
* the mCE columns of the ``corruption`` kind (``baseline: MODEL``).

    evaluations:
      bn: {kind: bn_statistics, models: [mbn, madry], channels: 20}
      sin: {kind: stylized, root: ~/data/stylized-imagenet/val}
      ina: {kind: imagenet_a, root: ~/data/imagenet-a}
      corruption: {kind: corruption, baseline: vanilla}
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.app.config import RunConfig
from robustlab.nn.norm import MixtureBatchNorm, route, route_names

# Evaluators take robustlab.app.study_eval's Context (not imported: that module imports this one).
_Context = Any

# kind → (option → default), merged into robustlab.app.study_eval.EVALUATIONS
OPTIONS: dict[str, dict[str, Any]] = {
    # layer: the BN drawn in the pictures (default: the middle one, as the thesis's res3 of ResNet-152)
    "bn_statistics": {"models": "all", "channels": 20, "layer": None, "seed": 0, "limit": None},
    "stylized": {"models": "all", "root": None, "workers": 0, "limit": None},
    "imagenet_a": {"models": "all", "root": None, "workers": 0, "limit": None},
}
COLUMNS = ("|Δ mean|", "|Δ var|", "|Δ mean|/σ", "|Δ var|/var", "var ratio")
_SHIFTED = {"stylized": "Stylized-ImageNet", "imagenet_a": "ImageNet-A"}


# ------------------------------------------------------------------ checks at load time


def _input_shape(cfg: RunConfig) -> tuple[int, int]:
    """(channels, size) of the models' input: the data config's, else the dataset's."""
    from robustlab.data.info import INFO

    info = INFO.get(cfg.data.name)
    size = cfg.data.size or (info.size if info else 224)
    channels = cfg.data.channels or (info.channels if info else 3)
    return channels, size


def shifted_dataset(opts: Mapping[str, Any], cfg: RunConfig, limit: int | None = None) -> Any:
    """The class-folder tree of a ``stylized`` / ``imagenet_a`` evaluation,
    labelled by the study's training classes, at the models' input shape
    (``limit`` images, class-mixed; None: all)."""
    from robustlab.data.shifted import class_names, read_class_folder

    channels, size = _input_shape(cfg)
    classes = class_names(cfg.data.name, cfg.data.data_dir)
    return read_class_folder(opts["root"], classes, kind=opts["kind"], size=size, channels=channels, limit=limit)


def check(name: str, opts: dict[str, Any], models: Mapping[str, RunConfig]) -> None:
    """Options of this module's kinds that need the models' configs, checked
    before anything trains (a missing folder, a bad layout, a GroupNorm model)."""
    kind = opts["kind"]
    if kind == "bn_statistics":
        no_bn = [m for m in opts["models"] if models[m].model.options.get("norm") == "gn"]
        if no_bn:
            raise ValueError(f"evaluations.{name}: model(s) {no_bn} have GroupNorm, no BN statistics")
        ch = opts["channels"]
        if ch is not None and (isinstance(ch, bool) or not isinstance(ch, int) or ch < 1):
            raise ValueError(f"evaluations.{name}.channels must be a number of channels >= 1 or null; got {ch!r}")
        if opts["layer"] is not None and not isinstance(opts["layer"], str):
            raise ValueError(f"evaluations.{name}.layer must name a batch norm or be null; got {opts['layer']!r}")
        if isinstance(opts["seed"], bool) or not isinstance(opts["seed"], int) or opts["seed"] < 0:
            raise ValueError(f"evaluations.{name}.seed must be a whole number >= 0; got {opts['seed']!r}")
    elif kind in _SHIFTED:
        if not isinstance(opts["root"], str) or not opts["root"]:
            raise ValueError(f"evaluations.{name}.root must be the folder of {_SHIFTED[kind]} images "
                             f"(ROOT/CLASS/IMAGE); got {opts['root']!r}")
        if isinstance(opts["workers"], bool) or not isinstance(opts["workers"], int) or opts["workers"] < 0:
            raise ValueError(f"evaluations.{name}.workers must be a whole number >= 0; got {opts['workers']!r}")
        lim = opts["limit"]
        if lim is not None and (isinstance(lim, bool) or not isinstance(lim, int) or lim < 1):
            raise ValueError(f"evaluations.{name}.limit must be a positive number of images or null; got {lim!r}")
        try:
            shifted_dataset(opts, next(iter(models.values())))
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"evaluations.{name}.root: {err}") from None


def check_baseline(name: str, opts: dict[str, Any], model_names: list[str]) -> None:
    """``corruption``'s ``baseline``: a model of the study, evaluated too (first)."""
    base = opts.get("baseline")
    if base is None:
        return
    if not isinstance(base, str) or base not in model_names:
        raise ValueError(f"evaluations.{name}.baseline: unknown model {base!r}; the study has "
                         f"{', '.join(model_names)}")
    if base not in opts["models"]:
        opts["models"] = [base, *opts["models"]]


# ------------------------------------------------------------------ corruption: mCE


def add_mce(rows: list[dict[str, Any]], errors: Mapping[str, Any], baseline: str) -> dict[str, Any]:
    """Add ``mCE`` and ``relative mCE`` (percent; the baseline scores 100)
    after ``corrupted (mean)`` in every row (ImageNet-C's normalization,
    :func:`robustlab.eval.corruption.mce`, with ``baseline``'s errors in
    AlexNet's place). A corruption on which the baseline makes no error (no
    excess error over its clean error, for the relative mCE) cannot normalize
    and is left out of that mean; the returned record lists them."""
    from robustlab.eval.corruption import mce, relative_mce

    base = errors[baseline]
    clean = {r["model"]: 1.0 - r["clean"] for r in rows}
    ok = [c for c in base if sum(base[c].values()) > 0]
    ok_rel = [c for c in base if sum(e - clean[baseline] for e in base[c].values()) > 0]
    for k, r in enumerate(rows):
        err = errors[r["model"]]
        extra = {"mCE": mce({c: err[c] for c in ok}, {c: base[c] for c in ok}) if ok else None,
                 "relative mCE": relative_mce({c: err[c] for c in ok_rel}, clean[r["model"]],
                                              {c: base[c] for c in ok_rel}, clean[baseline]) if ok_rel else None}
        keys = list(r)
        at = keys.index("corrupted (mean)") + 1 if "corrupted (mean)" in keys else len(keys)
        rows[k] = {**{c: r[c] for c in keys[:at]}, **extra, **{c: r[c] for c in keys[at:]}}
    return {"mce": {"baseline": baseline, "excluded": sorted(set(base) - set(ok)),
                    "excluded_relative": sorted(set(base) - set(ok_rel))}}


# ------------------------------------------------------------------ bn_statistics (Fig. 6.5, 6.6)


def _compare(a: Mapping[str, Tensor], b: Mapping[str, Tensor], eps: float = 1e-5) -> dict[str, float]:
    """How statistics ``a`` differ from the reference ``b`` (per channel, averaged)."""
    dm, dv = (a["mean"] - b["mean"]).abs(), (a["var"] - b["var"]).abs()
    return {"|Δ mean|": float(dm.mean()), "|Δ var|": float(dv.mean()),
            "|Δ mean|/σ": float((dm / (b["var"] + eps).sqrt()).mean()), "|Δ var|/var": float((dv / (b["var"] + eps))
                                                                                            .mean()),
            "var ratio": float(a["var"].sum() / b["var"].sum().clamp_min(eps))}


def _running(model: nn.Module, layer: str, r: str | None) -> dict[str, Tensor]:
    """The running statistics of ``layer`` through route ``r`` (a plain BN has one set)."""
    bn = dict(model.named_modules())[layer]
    bn = bn.bns[r] if isinstance(bn, MixtureBatchNorm) and r is not None else bn
    return {"mean": bn.running_mean.float(), "var": bn.running_var.float()}


def _batch_for(ctx: _Context, m: str, model: nn.Module, r: str | None, x: Tensor, y: Tensor
               ) -> tuple[Tensor, str]:
    """The batch route ``r`` sees in training: adversarial images (made by the
    model's own recipe attack) for the route it attacks through — or, on a
    model without routes, when its recipe attacks at all — clean otherwise."""
    from robustlab.app.train import build_recipe

    recipe = build_recipe(ctx.study.models[m])
    attack_route = getattr(recipe, "attack_route", None)
    if hasattr(recipe, "adversarial") and (r is None or r == attack_route):
        return recipe.adversarial(model, x, y, ctx.study.models[m].seed).detach(), "adversarial"
    return x, "clean"


def _bn_layers(model: nn.Module) -> list[str]:
    """Names of the batch norms (and mixture batch norms) with running statistics, in model order."""
    from robustlab.eval.analysis import bn_statistics

    return list(bn_statistics(model, channels=1))


def _eval_bn_statistics(ctx: _Context, opts: dict[str, Any]) -> dict[str, Any]:
    """Fig. 6.5 / 6.6 in numbers and pictures: per model and BN layer, each
    route's running statistics against the first route's, and each route's
    batch statistics (on a batch of test images, adversarial for the
    attacked route) against its running statistics."""
    from robustlab.eval.analysis import batch_statistics, bn_statistics

    x, y = ctx.batches(opts)[0]
    rows: list[dict[str, Any]] = []
    images, figures, warnings = [], {}, {}
    for m in opts["models"]:
        model = ctx.model(m, routed=True)
        routes = route_names(model)
        layers = _bn_layers(model)
        if not layers:
            warnings[m] = ["no batch norm with running statistics: nothing to compare"]
            continue
        layer = opts["layer"] or layers[len(layers) // 2]
        if layer not in layers:
            raise ValueError(f"evaluations: bn_statistics layer {layer!r} is not a batch norm of {m}; its batch "
                             f"norms: {', '.join(layers)}")
        picked = bn_statistics(model, channels=opts["channels"], seed=opts["seed"])[layer]
        figures[m] = {"layer": layer, "running": picked, "batch": {}}
        modules = dict(model.named_modules())
        mixture = [n for n in layers if isinstance(modules[n], MixtureBatchNorm)]
        for other in routes[1:]:  # Fig. 6.5: MBN_adv vs MBN_clean
            rows += [{"model": m, "layer": n, "route": other, "statistic": f"running vs {routes[0]} route",
                      **_compare(_running(model, n, other), _running(model, n, routes[0]))} for n in mixture]
        for r in routes or (None,):  # Fig. 6.6: batch vs running
            xb, what = _batch_for(ctx, m, model, r, x, y)
            with route(model, r):
                batch = batch_statistics(model, xb, layers)
            rows += [{"model": m, "layer": n, "route": r or "-", "statistic": f"batch ({what}) vs running",
                      **_compare(batch[n], _running(model, n, r))} for n in layers]
            idx = torch.tensor(picked["channels"], device=batch[layer]["mean"].device)
            run = _running(model, layer, r)
            figures[m]["batch"][r or "-"] = {
                "images": what, "batch_mean": batch[layer]["mean"][idx].tolist(),
                "batch_var": batch[layer]["var"][idx].tolist(), "running_mean": run["mean"][idx].tolist(),
                "running_var": run["var"][idx].tolist()}
        images += _pictures(m, figures[m], routes)
    return {"n": len(y), "table": rows, "images": images, "statistics": figures, "warnings": warnings,
            "value": "per-channel differences averaged over each layer's channels (σ, var: the reference's); "
                     "var ratio: Σ var / Σ var of the reference"}


def _pictures(m: str, fig: Mapping[str, Any], routes: tuple[str, ...]) -> list[dict[str, str]]:
    from robustlab.report import plots
    from robustlab.report.html import png_base64

    out = []
    layer = fig["layer"]
    if len(routes) > 1:
        k = len(fig["running"]["channels"])
        out.append({"title": f"Fig. 6.5: running mean and variance of {m}'s BN routes, {k} random channels of {layer}",
                    "png": png_base64(plots.bn_statistics({layer: fig["running"]}, layer))})
    for r, d in fig["batch"].items():
        out.append({"title": f"Fig. 6.6: batch vs running statistics of {m}" + (f" (route {r})" if r != "-" else "")
                             + f" at {layer}", "png": png_base64(plots.batch_vs_running(d, layer, r))})
    return out


# ------------------------------------------------------------------ stylized, imagenet_a (Table 7.1)


def _eval_shifted(ctx: _Context, opts: dict[str, Any]) -> dict[str, Any]:
    """Top-1 accuracy of every model on a class-folder test set; ImageNet-A's
    over the logits of the classes it holds only."""
    from robustlab.data.shifted import describe
    from robustlab.eval.shifted import folder_accuracy

    # like every evaluation: the evaluation's limit, else the study's
    ds = shifted_dataset(opts, next(iter(ctx.study.models.values())), opts["limit"] or ctx.study.limit)
    classes = ds.present if ds.restrict else None
    column = f"{_SHIFTED[opts['kind']]} accuracy"
    rows = [{"model": m, column: folder_accuracy(ctx.model(m), ds, classes=classes, batch_size=ctx.study.batch_size,
                                                 device=ctx.device, workers=opts["workers"])}
            for m in opts["models"]]
    what = (f"top-1 over the {len(ds.present)} classes present" if ds.restrict else "top-1 over every class")
    return {"n": len(ds), "table": rows, "value": f"{what}; images of {Path(opts['root']).expanduser()}",
            "data": describe(ds)}


EVALUATORS = {"bn_statistics": _eval_bn_statistics, "stylized": _eval_shifted, "imagenet_a": _eval_shifted}
