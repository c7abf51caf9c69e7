"""``robustlab train``: a config in, a run directory out.

The run directory holds ``config.yaml`` (as resolved), ``metrics.jsonl``,
``checkpoints/``, the exported model (``model.safetensors`` + ``model.json``,
loadable with ``robustlab.models.load_model`` or ``robustlab attack --model
RUN_DIR``) and ``results.json``.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab._io import pick_device
from robustlab.app.config import RunConfig
from robustlab.app.rundir import RunDir, changed_keys, default_path, fingerprint_of
from robustlab.data import dataset_info, load_dataset
from robustlab.data.folder import split_root, spread_indices
from robustlab.data.info import class_difference
from robustlab.nn.norm import route, route_names
from robustlab.train import fit, recipes, sinks
from robustlab.units import from_255, parse_budget, to_255

_logger = logging.getLogger(__name__)


def build_recipe(cfg: RunConfig) -> recipes.Recipe:
    return recipes.create(cfg.recipe.name, **cfg.recipe_options())


def build_model(cfg: RunConfig, info: Any, recipe: recipes.Recipe) -> nn.Module:
    """The config's model for the dataset; a recipe that trains BN routes gets
    a mixture-BN model with those routes unless the config says otherwise."""
    from robustlab.models import create_model
    from robustlab.models.resolve import is_factory_spec, load_factory

    name = cfg.model.name
    spec = {k: v for k, v in cfg.model.options.items() if v is not None}  # null: the factory's default
    if is_factory_spec(name):  # the user's own network: built as it is, exported as weights (save_weights)
        weights = spec.pop("weights", None)  # its own trained weights to start from (fine-tuning)
        if spec:
            raise ValueError(f"config key model: {name} is your own network; the options {sorted(spec)} apply to "
                             "robustlab's, timm's and torchvision's models only (yours takes model.weights): build "
                             "them into the factory, and clear a packaged config's with "
                             f"{' '.join(f'model.{k}=null' for k in sorted(spec))}")
        torch.manual_seed(cfg.seed)
        model = load_factory(name)
        if weights is not None:
            from robustlab.models.factory import load_weights

            load_weights(model, weights, name)
        from robustlab.nn import convert_norm, route_names

        if recipe.routes and not route_names(model):  # its batch norms become mixture BNs (§7.4.2); the
            try:  # exported model drops the auxiliary ones again, so the factory rebuilds it
                return convert_norm(model, "mbn", routes=recipe.routes, inplace=True)
            except ValueError:
                raise ValueError(f"recipe {recipe.name!r} trains BN routes {list(recipe.routes)}, and {name} has no "
                                 "BatchNorm layers to give them; use another recipe or a network with batch "
                                 "norms") from None
        missing = [r for r in recipe.routes if r not in route_names(model)]
        if missing:
            raise ValueError(f"recipe {recipe.name!r} trains BN routes {list(recipe.routes)}; {name} has mixture "
                             f"BNs without {missing}: return the plain network, robustlab converts its batch norms")
        return model
    if recipe.routes:
        if spec.get("norm") not in (None, "bn", "mbn"):
            raise ValueError(f"recipe {recipe.name!r} trains BN routes {recipe.routes}; model.norm must be mbn, "
                             f"not {spec['norm']!r}")
        spec["norm"] = "mbn"
        spec.setdefault("routes", list(recipe.routes))
    torch.manual_seed(cfg.seed)  # the same initial weights on every run (and every DDP rank)
    if ":" not in name:  # built-in nets normalize with the dataset's statistics; timm/torchvision
        spec = {"mean": info.mean, "std": info.std, **spec}  # models with their own (pretrained weights')
    model = _imagenet_rows(name, info, spec) or create_model(name, info.num_classes, in_channels=info.channels,
                                                             **spec)
    record = model.robustlab_spec.get("pretrained") or {}
    if int(os.environ.get("RANK", "0")) != 0:  # said once, by the first process
        return model
    if record.get("new_head"):
        _logger.info("model %s: %s pretrained weights loaded; its classifier (%s) is freshly initialized for the "
                     "data's %d classes", name, record.get("source"), record["new_head"], info.num_classes)
    elif record.get("head_rows"):
        loaded = f"the weights of {record['file']}" if record.get("source") == "file" else \
            f"{record.get('source')}'s pretrained weights"
        _logger.info("model %s: %s loaded (ImageNet-1k); its classifier (%s) keeps their rows of the data's %d "
                     "classes", name, loaded, record["head_rows"]["classifier"], info.num_classes)
    return model


def _imagenet_rows(name: str, info: Any, spec: dict[str, Any]) -> nn.Module | None:
    """A named network with ImageNet-1k weights, to fine-tune on some of
    ImageNet's classes named by wnid (Imagenette, ImageNet-100): built with
    its 1000 outputs, its classifier narrowed to the rows of the data's
    classes (:func:`~robustlab.models.narrow_classifier`), so that it starts
    as the pretrained network scored over them, not from a freshly
    initialized head. None where that does not apply: no pretrained weights,
    data of other classes, weights not of ImageNet-1k's 1000 (a file of the
    data's classes, timm's ImageNet-21k), or no linear classifier."""
    from robustlab.data.info import imagenet_wnids, subset_indices
    from robustlab.models import create_model, narrow_classifier

    weighted = spec.get("weights") is not None or bool(spec.get("pretrained"))
    indices = subset_indices(getattr(info, "classes", None) or (), imagenet_wnids()) if weighted else None
    if indices is None or info.num_classes == 1000:
        return None
    try:
        model = create_model(name, 1000, in_channels=info.channels, **spec)
    except ValueError as err:
        if "mis-shaped" in str(err):  # a weights file of another number of outputs: the data's, fine-tuned
            return None
        raise
    record = model.robustlab_spec.get("pretrained") or {}
    if record.get("new_head"):  # weights of other classes than ImageNet-1k's (timm's 21k)
        return None
    try:
        head = narrow_classifier(model.net, indices, 1000)  # inside the Normalize create_model puts first
    except ValueError:
        return None
    model.robustlab_spec["num_classes"] = len(indices)
    record["head_rows"] = {"of": "ImageNet-1k", "classifier": head, "indices": list(indices)}
    return model


def check_model_output(model: nn.Module, data: Any, name: str) -> None:
    """One forward pass on two training images, in eval mode, before anything
    is written: a network that fails on the data or whose output is not
    logits (N, classes) is refused now, not after training (10 logits for 3
    classes would otherwise train without a word)."""
    from robustlab.data import dataset_info
    from robustlab.data.datasets import to_float
    from robustlab.eval.evaluate import model_output

    classes = dataset_info(data).num_classes
    x = to_float(torch.stack([torch.as_tensor(data[i][0]) for i in range(min(2, len(data)))]))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            z = model_output(model, x)  # what eval and attack say of a model that does not take the images
    except ValueError as err:
        raise ValueError(f"config key model.name: {name} on the training images: {err}") from None
    finally:
        model.train(was)
    if not isinstance(z, torch.Tensor) or tuple(z.shape) != (len(x), classes):
        got = f"shape {tuple(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"config key model.name: {name} must return logits of shape (N, {classes}) for the "
                         f"{classes} classes of the training data; it returns {got} for {len(x)} images"
                         + (" (robustlab calls a factory with no arguments: build the right number of outputs "
                            "into it)" if isinstance(z, torch.Tensor) and z.dim() == 2 else ""))


EVAL_BATCH = 250  # images attacked at once by the training-time evaluation


@dataclass(frozen=True)
class EvalPlan:
    """What the training-time evaluation measures besides clean accuracy:
    robust accuracy, logged as ``metric`` (``pgd_acc``, ``fgsm_acc`` ...).

    ``eval.attack: pgd`` runs the ``quick`` protocol of the registry
    (:mod:`robustlab.eval.protocols`, the one ``robustlab eval --protocol
    quick`` and studies run): CE PGD with ``eval.steps`` steps, a random
    start, α = ``eval.step_size`` or 2.5·ε/steps, towards a random wrong
    class with ``eval.targeted``, keyed on ``eval.seed``; no masking
    checklist and no fallback, so it stays cheap. Any other ``eval.attack``
    (an attack preset such as ``fgsm`` or ``mi-fgsm``, which no protocol
    expresses) runs that seeded preset, made afresh at every evaluation,
    over the same batches (``protocol`` is None, ``options`` are the
    preset's)."""

    attack: str
    eps: float
    protocol: str | None
    options: dict[str, Any]

    @property
    def metric(self) -> str:
        return f"{self.attack}_acc"


def eval_plan(cfg: RunConfig, recipe: recipes.Recipe) -> EvalPlan | None:
    """The training-time evaluation's attack (None for ``eval.attack: null``);
    ε defaults to the recipe's. Built once before training too, so bad options fail first."""
    from robustlab.eval import protocols

    ev = cfg.eval
    if not ev.attack:
        return None
    eps = parse_budget(ev.eps, "eval.eps") if ev.eps is not None else \
        getattr(getattr(recipe, "attack", None), "eps", from_255(8))
    step_size = parse_budget(ev.step_size, "eval.step_size") if ev.step_size is not None else None
    if ev.attack == "pgd":
        if not 0 < eps <= 1:
            raise ValueError(f"eval.eps must be > 0 (the quick protocol's budget); got {ev.eps!r}")
        options = {"steps": ev.steps if ev.steps is not None else protocols.QUICK_STEPS, "step_size": step_size,
                   "targeted": ev.targeted}
        try:
            protocols.stages_for("quick", eps, options)
        except ValueError as err:  # "option steps ..." → "eval.steps ...": the config key
            raise ValueError(f"{str(err).replace('option ', 'eval.', 1)} (eval.attack pgd runs the quick "
                             "protocol)") from None
        return EvalPlan(ev.attack, eps, "quick", options)
    kw: dict[str, Any] = {"eps": eps, "seed": ev.seed, "targeted": ev.targeted}
    if ev.steps is not None and ev.attack != "fgsm":
        kw["steps"] = ev.steps
    if step_size is not None:
        kw["step_size"] = step_size
    plan = EvalPlan(ev.attack, eps, None, kw)
    _preset(plan)
    return plan


def _preset(plan: EvalPlan) -> Any:
    """The seeded attack preset of a plan without a protocol."""
    from robustlab.attacks import create as create_attack

    try:
        return create_attack(plan.attack, **plan.options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"eval (attack {plan.attack!r}): {err}") from None


def _robust(plan: EvalPlan, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            seed: int, device: torch.device) -> float:
    """Robust accuracy of ``model`` under ``plan`` on ``batches`` (each at most EVAL_BATCH images)."""
    if plan.protocol is None:
        from robustlab.eval.robust import robust_accuracy

        return robust_accuracy(_preset(plan), model, batches, device=device)["robust_accuracy"]
    from robustlab.eval.evaluate import evaluate

    ev = evaluate(model, batches, eps=plan.eps, protocol=plan.protocol, options=plan.options, fallback=False,
                  checklist=False, batch_size=EVAL_BATCH, device=device, seed=seed)
    for w in ev.warnings:
        _logger.info("training-time evaluation: %s", w)
    return ev.robust_accuracy


def load_eval_split(cfg: RunConfig) -> Any:
    """The ``data.eval_limit`` images of the evaluation split the training-time evaluation measures."""
    d = cfg.data
    return load_dataset(d.name, d.eval_split, data_dir=d.data_dir, limit=d.eval_limit, download=d.download,
                        size=d.size, channels=d.channels)


def make_evaluate(cfg: RunConfig, recipe: recipes.Recipe, device: torch.device, test: Any = None
                  ) -> Callable[[nn.Module], dict]:
    """Clean accuracy on every BN route (``clean_acc``, ``clean_acc_ROUTE``)
    and, unless ``eval.attack`` is null, robust accuracy on ``eval.limit``
    of those images (``{attack}_acc``, ``{attack}_acc_ROUTE``), as
    :class:`EvalPlan` says, in batches of at most ``EVAL_BATCH`` images;
    with the number of images each was measured on (``clean_n``: the
    ``data.eval_limit`` test images; ``{attack}_n``: ``eval.limit`` of them:
    the first ones of an in-memory set, every k-th of an ImageFolder, whose
    images are sorted by class), the same for every route, so a report can
    give intervals. ``test``: that split already loaded (:func:`load_eval_split`)."""

    ev = cfg.eval
    plan = eval_plan(cfg, recipe)
    test = load_eval_split(cfg) if test is None else test
    n_adv = len(test) if ev.limit is None else min(ev.limit, len(test))
    if hasattr(test, "batch"):  # in memory: on the device once
        x, y = test.batch(slice(0, len(test)))
        x, y = x.to(device), y.to(device)

        def batches(n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            yield from ((x[i: min(i + EVAL_BATCH, n)], y[i: min(i + EVAL_BATCH, n)]) for i in range(0, n, EVAL_BATCH))
    else:  # an ImageFolder: streamed at every evaluation, never held whole
        from torch.utils.data import DataLoader, Subset

        def batches(n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            part = test if n == len(test) else Subset(test, spread_indices(len(test), n) or range(n))
            for xb, yb in DataLoader(part, batch_size=EVAL_BATCH, num_workers=cfg.train.workers,
                                     pin_memory=device.type == "cuda"):
                yield xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)

    def evaluate(model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in route_names(model) or (None,):
            tag = f"_{name}" if name is not None else ""
            with route(model, name):
                right = seen = bad = 0
                for xb, yb in batches(len(test)):
                    with torch.no_grad():
                        z = model(xb)
                    bad += int((~torch.isfinite(z)).any(1).sum())
                    right += int((z.argmax(1) == yb).sum())
                    seen += len(yb)
                if bad:  # an argmax of NaN is a class: the accuracy would read as a result
                    raise FloatingPointError(f"the trained model gives NaN or infinite logits on {bad} of {seen} "
                                             "test images: the training diverged; lower train.lr or check the model")
                out[f"clean_acc{tag}"] = right / seen
                out.setdefault("clean_n", seen)
                if plan is not None:
                    out[f"{plan.metric}{tag}"] = _robust(plan, model, batches(n_adv), ev.seed, device)
                    out.setdefault(f"{plan.attack}_n", n_adv)
        return out

    return evaluate


# Training options a resumed run may change: how long it trains and how it
# logs, not what it trains. Everything else of the config is the run's identity.
RESUMABLE_TRAIN_KEYS = ("epochs", "checkpoint_every", "keep_checkpoints", "log_every", "log", "eval_every", "device",
                        "workers", "progress")


def identity(cfg: RunConfig) -> dict[str, Any]:
    """What the run is: the resolved config without the device, the
    evaluation settings and :data:`RESUMABLE_TRAIN_KEYS`; its
    :func:`~robustlab.app.rundir.fingerprint_of` is the run directory's fingerprint."""
    d = cfg.to_dict()
    d.pop("device")
    d.pop("eval")
    d["data"].pop("workers")  # keyed augmentation: the worker count changes no image
    d["train"] = {k: v for k, v in d["train"].items() if k not in RESUMABLE_TRAIN_KEYS}
    return d


def config_changes(old: RunConfig, new: RunConfig, *, identity_only: bool = True) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` where two configs differ (in what the run is, by default)."""
    return changed_keys(*(identity(c) if identity_only else c.to_dict() for c in (old, new)))


def _check_resume(cfg: RunConfig, run_dir: Path) -> RunConfig | None:
    """The config a resumed run started with; refuses overrides that change what the run is."""
    from robustlab.app.config import load_config

    if not (run_dir / "config.yaml").is_file():
        return None
    old, _ = load_config(run_dir / "config.yaml")
    changed = config_changes(old, cfg)
    if changed:
        diff = "; ".join(f"{k}: {a!r} → {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"--resume {run_dir}: {', '.join(changed)} would change what the run is ({diff}); only "
                         f"{', '.join('train.' + k for k in RESUMABLE_TRAIN_KEYS)}, device and eval.* may change. "
                         "Start a new run with --out instead")
    return old


def config_warnings(cfg: RunConfig, recipe: recipes.Recipe) -> list[str]:
    """What a valid config may still not mean: an attacker that cannot reach
    the edge of its ε-ball (``steps × step_size < eps`` from the clean image:
    a weaker adversary than the budget says); an ImageFolder decoded with no
    loader worker (the GPU waiting on JPEG decoding)."""
    out = []
    atk = getattr(recipe, "attack", None)
    steps, alpha, eps = (getattr(atk, k, None) for k in ("steps", "step_size", "eps"))
    if all(isinstance(v, (int, float)) for v in (steps, alpha, eps)) and steps * alpha < eps * (1 - 1e-6):
        linf = getattr(getattr(atk, "threat", None), "name", "linf") == "linf"
        say = (lambda v: f"{to_255(v):.4g}/255") if linf else (lambda v: f"{v:.4g}")  # noqa: E731
        out.append(f"config keys recipe.steps × recipe.step_size: the attacker moves at most {steps} × "
                   f"{say(alpha)} = {say(steps * alpha)} from the clean image, less than ε = {say(eps)}: it never "
                   f"reaches the budget's edge (raise steps or step_size)")
    if str(cfg.data.name).startswith("imagefolder:") and cfg.train.workers == 0:
        out.append(f"config key data.workers is 0: every training image of {cfg.data.name} is decoded and cropped "
                   "in the training process, between steps; set data.workers (about the CPU cores per GPU, e.g. 8) "
                   "to load them in parallel with training")
    return out


def milestone_note(cfg: RunConfig) -> str | None:
    """Step-schedule milestones at or past the last epoch: the learning rate
    is never divided there. Logged as a note, not a warning: it is what a
    short trial of a long config (``train.epochs=1``, a smoke study) means."""
    t = cfg.train
    late = [m for m in t.milestones if m >= t.epochs]
    if t.schedule != "step" or not late:
        return None
    return (f"config key train.milestones: {', '.join(f'{m:g}' for m in late)} {'is' if len(late) == 1 else 'are'} "
            f"at or past train.epochs ({t.epochs}): the learning rate is not divided there")


def checked_recipe(cfg: RunConfig) -> recipes.Recipe:
    """The run's recipe, after its evaluation options, device and log sinks are
    checked (a missing tensorboard too): what fails before any folder or training."""
    recipe = build_recipe(cfg)
    eval_plan(cfg, recipe)
    sinks.require(cfg.train.log)
    return recipe


def check_model(cfg: RunConfig, info: Any) -> None:
    """What a run would refuse about its recipe, evaluation and network, found
    without training it: the network is built on PyTorch's meta device (no
    memory, no weights loaded; one a meta build cannot make is left to the
    run itself). For a study, before its first model trains."""
    from robustlab.models.resolve import is_factory_spec

    recipe = checked_recipe(cfg)
    own = is_factory_spec(cfg.model.name)
    if own and set(k for k, v in cfg.model.options.items() if v is not None) - {"weights"}:
        build_model(cfg, info, recipe)  # refuses the options before the factory runs
    if cfg.model.options.get("weights") is not None or cfg.model.options.get("pretrained"):
        return  # weights load into real tensors: the run checks them
    try:
        with torch.device("meta"):
            build_model(cfg, info, recipe)
    except (ValueError, TypeError, FileNotFoundError, ImportError):
        raise
    except Exception as err:  # a module whose construction needs real tensors: the run builds it
        _logger.debug("model %s not checked on the meta device: %s", cfg.model.name, err)


def _check_classes(cfg: RunConfig, info: Any) -> Any:
    """An ImageFolder's evaluation split must have the training split's classes
    (torchvision numbers them by sorted folder name: another set maps one
    class's images onto another's label). Returns that split (None for other
    data), so the training-time evaluation does not scan the folder again."""
    d = cfg.data
    if not d.name.startswith("imagefolder:"):
        return None
    root = split_root(d.name.split(":", 1)[1])
    if not any((root / s).is_dir() for s in ("train", d.eval_split, "val")):
        raise ValueError(f"data.name: {d.name} holds class folders but no train/ and {d.eval_split}/ splits: the "
                         "images trained on would also be the ones evaluated; split them into ROOT/train/CLASS "
                         "and ROOT/val/CLASS")
    split = load_eval_split(cfg)
    test = dataset_info(split)
    if test.classes != info.classes:
        raise ValueError(f"data.name: {d.name}: the {d.eval_split} split's classes differ from the train split's "
                         f"({len(test.classes)} and {len(info.classes)} classes; "
                         f"{class_difference(info.classes, test.classes, 'train', d.eval_split)}); both splits "
                         "need the same class folders")
    return split


def _check_epochs(cfg: RunConfig, run_dir: Path) -> None:
    """Refuse fewer ``train.epochs`` than the run's newest checkpoint has trained."""
    import json

    from robustlab.train.checkpoint import META, latest_checkpoint

    found = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if found is None:
        return
    try:
        meta = json.loads((found / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # a damaged checkpoint: the resume names it, and the one before it
    done = int(meta.get("step", 0)) / max(int(meta.get("steps_per_epoch") or 1), 1)
    if cfg.train.epochs < done:
        raise ValueError(f"config key train.epochs={cfg.train.epochs}: {run_dir} has trained {done:g} epochs "
                         f"already; give train.epochs >= {math.ceil(done)}, or start a new run with --out")


def run_train(cfg: RunConfig, raw: dict[str, Any], out: str | Path | None, *, resume: bool = False,
              init: str | Path | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says into ``out``; returns what ``results.json`` holds.
    ``init``: another run directory whose trained weights the model starts
    from (fine-tuning, :func:`robustlab.train.finetune.init_from_run`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if out is None and world > 1:
        raise ValueError("--out is required under torchrun (every process must write to the same run directory)")
    recipe = checked_recipe(cfg)
    device = pick_device(cfg.device)
    if cfg.train.amp == "fp16" and device.type != "cuda":
        raise ValueError(f"config key train.amp: fp16 needs a CUDA device (this run: {device}); use bf16 or null")
    if cfg.train.batch_size % world:
        raise ValueError(f"config key train.batch_size ({cfg.train.batch_size}) must be divisible by the number of "
                         f"processes ({world}): it is the global batch, split evenly over them")
    main = int(os.environ.get("RANK", "0")) == 0
    for warning in config_warnings(cfg, recipe) if main else ():
        _logger.warning(warning)
    note = milestone_note(cfg) if main else None
    if note is not None:
        _logger.info(note)
    out = default_path(out, f"train-{recipe.name}")
    old = _check_resume(cfg, out) if resume else None  # --resume: names the keys that would change the run
    # another run there: refused now, naming the keys that differ
    run = RunDir(out, "train", fingerprint_of(identity(cfg)), writer=main, config=cfg.to_dict())
    if not resume and run.reused:  # the same command again continues the run (or reuses it, finished)
        resume, old = True, _check_resume(cfg, out)
    _check_epochs(cfg, out)
    d = cfg.data
    train_set = load_dataset(d.name, "train", data_dir=d.data_dir, limit=d.limit, download=d.download,
                             size=d.size, channels=d.channels, augment=d.train_augment())
    if cfg.train.batch_size > len(train_set):  # fit would refuse it once the run directory exists
        raise ValueError(f"config key train.batch_size ({cfg.train.batch_size}) is larger than the training set "
                         f"({len(train_set)} images)")
    test = _check_classes(cfg, train_set.info)
    model = build_model(cfg, train_set.info, recipe)
    check_model_output(model, train_set, cfg.model.name)  # before the run directory: nothing half-written
    if init is not None:
        from robustlab.train.finetune import init_from_run

        init_from_run(model, init)
    run_dir = run.path
    if main:
        changed = config_changes(old, cfg, identity_only=False) if old is not None else None
        run.ensure()
        if old is None or changed:
            run.write_config(cfg.to_dict())
        if changed:  # e.g. train.epochs extended
            run.record({"resumed with": {k: list(v) for k, v in changed.items()}})
    try:
        evaluate = make_evaluate(cfg, recipe, device, test) if main else None
        result = fit(model, train_set, recipe, options=cfg.train, out=run_dir, resume=resume, evaluate=evaluate)
        if evaluate is not None and changed and result.resumed_from == result.steps and any(
                k.startswith("eval.") for k in changed):  # a finished run, evaluated again as eval.* now says
            _reevaluate(result, evaluate(result.model))
            if main:
                from robustlab.models.checkpoint import update_meta

                update_meta(run_dir, final=result.history[-1])  # model.json says what results.json says
        results = {
            "kind": "train", "run_dir": str(run_dir), "recipe": recipe.config(), "config": cfg.to_dict(),
            "steps": result.steps, "train_seconds": round(result.seconds, 3),
            "images_per_second": round(result.images_per_second, 1), "resumed_from_step": result.resumed_from,
            "final": result.history[-1] if result.history else {}, "history": result.history,
        }
        if main:
            run.finish(results)
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            try:  # every rank tears down together: rank 0 may still be writing results and the report
                dist.barrier()
            finally:
                dist.destroy_process_group()
        if main:
            run.close()
    return results


def _reevaluate(result: Any, metrics: dict[str, Any]) -> None:
    """A finished run re-run with other ``eval.*`` options: its last epoch's
    evaluation figures are replaced by the new ones (the same model, measured
    as the config now says; run.json records the change), so the old figures
    are not reported under the new options."""
    if not result.history:
        return
    last = result.history[-1]
    kept = {k: v for k, v in last.items() if k in ("kind", "epoch", "step", "train_seconds") or k.startswith("train_")}
    result.history[-1] = {**kept, **metrics}
    _logger.info("evaluated again with the new eval.* options: %s", ", ".join(sinks.metric_cells(metrics)))


def format_train_summary(results: dict[str, Any]) -> str:
    """What ``robustlab train`` prints: the last metrics, wrapped to 100 columns."""
    from robustlab._progress import duration
    from robustlab.app.summary import clip, path_lines, wrap_items

    cells = sinks.metric_cells(results["final"], skip=("kind",))
    head = clip(f"{results['recipe']['name']}: {results['steps']} steps, {duration(results['train_seconds'])} "
                f"({results['images_per_second']:.0f} img/s)")
    return "\n".join([head, *wrap_items("  ", cells), *path_lines("run directory", results["run_dir"])])
