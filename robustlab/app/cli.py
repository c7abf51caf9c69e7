"""Command line: ``robustlab attack | train | eval | study | report | list | demo``.

Budgets on the command line are in the thesis's 0–255 notation (``--eps 16``)
unless written as a fraction (``16/255``) or in pixels (``0.5px``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)

# Attack options: CLI flag → (keyword, converter). Only flags the user sets
# are passed on, so every other knob keeps the thesis default of the preset.
_ATTACK_FLAGS = ("eps", "steps", "step_size", "norm", "mu", "p", "loss", "targeted", "early_stop",
                 "random_start", "clean_init_prob", "smooth_grad", "confidence", "lr",
                 "binary_search_steps", "seed")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, unless the help already says it or
    there is none to show (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if "default" in text or d is None or d is False or d == [] or d == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


#: rl.attacks.names(), spelled out so that --help imports no torch (a test keeps the two equal)
ATTACK_NAMES = ("fgsm", "ifgsm", "mifgsm", "di2fgsm", "mdi2fgsm", "pgd", "pgd_train", "gd", "cw", "dcw")
WHITEBOX_DEFAULTS = {"step_size": "1", "steps": "10,20,50,100,200", "restarts": 1}  # eval --protocol whitebox


def _add_attack_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("attack")
    g.add_argument("--attack", default="pgd", help=", ".join(ATTACK_NAMES))
    g.add_argument("--eps", help="budget: 16 (0-255 units), 16/255, or 0.5px; a plain number below 1 is pixels "
                   "(0.03 = 0.03 px), and with --norm l2 any plain number (default: the attack's; pgd 16, the ch. 3 "
                   "family 15)")
    g.add_argument("--steps", type=int, help="iterations N (default: the thesis rule of the attack)")
    g.add_argument("--step-size", help="step α, same notation as --eps: 1 (0-255 units), 1/255, 0.004px, or a plain "
                   "number below 1 as pixels (default: the attack's)")
    g.add_argument("--norm", choices=("linf", "l2"), help="threat model (default: the attack's, mostly linf)")
    g.add_argument("--mu", type=float, help="momentum decay μ (default: the attack's; mi-fgsm 1.0)")
    g.add_argument("--p", type=float, help="input-diversity probability (default: the attack's; di2-fgsm 0.5)")
    g.add_argument("--resize-back", action="store_true",
                   help="input diversity: resize the padded images back to the input size, for a model that takes "
                        "one input size only (a ViT, a flatten head)")
    g.add_argument("--loss", choices=("ce", "cw"), help="loss the attack ascends: cross-entropy or C&W margin "
                   "(default: the attack's)")
    g.add_argument("--targeted", action="store_true", default=None, help="random wrong class as target")
    g.add_argument("--early-stop", action="store_true", default=None, help="retire samples once fooled")
    g.add_argument("--random-start", action=argparse.BooleanOptionalAction, default=None,
                   help="start from a random point of the ε-ball (default: the attack's; PGD yes)")
    g.add_argument("--clean-init-prob", type=float, help="PGD: probability of a clean start (default: pgd 0, "
                   "pgd_train 0.2, as in adversarial training)")
    g.add_argument("--smooth-grad", type=float, metavar="ALPHA", help="softplus(α) backward for ReLU (§5.3.2; default: "
                   "none)")
    g.add_argument("--confidence", type=float, help="C&W κ (default: the attack's)")
    g.add_argument("--lr", type=float, help="C&W learning rate (default: the attack's)")
    g.add_argument("--binary-search-steps", type=int, help="C&W search rounds over c (default: the attack's)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random start, target and transform")


def _add_data_options(p: argparse.ArgumentParser, default: str | None = None) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=default,
                   help="fashion_mnist, mnist, cifar10, cifar100, digits, imagefolder:ROOT"
                   + (" (required)" if default is None else ""))
    g.add_argument("--split", default="test", choices=("train", "test"), help="dataset split")
    g.add_argument("--data-dir", help="where dataset files are looked for first")
    g.add_argument("--limit", type=int, help="use N samples (default: all): a built-in set's first N, an "
                   "imagefolder's every k-th image (all classes)")
    g.add_argument("--image-size", type=int, help="resize images (default: a built-in set as stored, an "
                   "imagefolder 224: resize + centre crop); the API's load_dataset(size=), a config's data.size")
    g.add_argument("--batch-size", type=int, default=128, help="images per batch")
    g.add_argument("--no-download", action="store_true", help="never download missing data")


_LISTS = {
    "attacks": ("robustlab.attacks", "names"),
    "activations": ("robustlab.nn.activations", "activation_names"),
    "denoise": ("robustlab.nn.denoise", "BLOCK_OPS"),
    "models": ("robustlab.models.factory", "model_names"),
    "datasets": ("robustlab.data.datasets", "dataset_names"),
    "configs": ("robustlab.app.config", "config_names"),  # packaged: CONFIG by name
}


def _names(kind: str) -> list[str]:
    import importlib

    module, attr = _LISTS[kind]
    value = getattr(importlib.import_module(module), attr)
    return list(value() if callable(value) else value)


def build_parser() -> argparse.ArgumentParser:
    from robustlab import __version__

    parser = argparse.ArgumentParser(prog="robustlab", description="Robust representation learning toolkit.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"robustlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logs too (every layer swapped, ...), and the traceback of an error")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only results and errors")
    # The same flags after the subcommand: SUPPRESS keeps a flag given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logs too (every layer swapped, ...), and the traceback of an error")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress lines, only results and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="one of the commands below; robustlab COMMAND --help for its options")

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], formatter_class=_HelpFormatter, **kw)

    atk = add("attack",
                         help="attack a model on a dataset split; write adversarial examples, results.json")
    atk.add_argument("--config", help="YAML file of options (keys as the flags: eps, steps, data, ...); "
                     "flags on the command line win")
    atk.add_argument("--model",
                     help="checkpoint directory, built-in name (smallcnn, resnet18_cifar, ...), timm:NAME, "
                     "tv:NAME or your own path/to/file.py:factory (required)")
    atk.add_argument("--weights", help="local weights file for a named model or your factory's network, or DEFAULT: "
                     "torchvision's or timm's pretrained weights (from their cache)")
    g = atk.add_argument_group("architecture of a named model (checkpoints record their own)")
    g.add_argument("--act", help="swap activations (names: robustlab list activations)")
    g.add_argument("--norm-layer", choices=("bn", "mbn", "gn"), help="batch norm, mixture BN or GroupNorm")
    g.add_argument("--denoise", help="add denoising blocks (ops: robustlab list denoise)")
    g.add_argument("--route", help="MixtureBatchNorm route to attack through (e.g. clean, adv)")
    _add_data_options(atk)
    _add_attack_options(atk)
    g = atk.add_argument_group("dense attacks (DAG, ch. 2)")
    g.add_argument("--dag", action="store_true",
                   help="DAG on a segmentation/detection model of a DAG study (--model RUN/models/NAME) on its "
                   "test scenes (--limit, default 8); --steps is DAG's iteration cap")
    g.add_argument("--gamma", default=0.5, help="DAG step γ (eq. 2.3), same notation as --eps: 0.5 (0-255 units, "
                   "the thesis's), 0.5/255 or 0.002px")
    g.add_argument("--nms-iou", type=float, default=0.9, help="detection: RPN NMS IoU of the proposals (§2.3.2)")
    atk.add_argument("--out", help="run directory (default runs/attack-TIMESTAMP)")
    atk.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    atk.add_argument("--no-save", action="store_true", help="do not write adversarial.safetensors")

    tr = add("train",
                        help="train a model with a recipe from a YAML config; write a run directory",
                        description="robustlab train CONFIG.yaml [key.sub=value ...] [--out DIR]; "
                        "robustlab train --resume DIR. Under torchrun every process runs this command.")
    tr.add_argument("config_and_overrides", nargs="*", metavar="CONFIG [key=value ...]",
                    help="a YAML config (configs/train_*.yaml) then dotted overrides: train.epochs=1 "
                    "data.limit=512 recipe.name=advprop")
    tr.add_argument("--out", help="run directory (default runs/train-RECIPE-TIMESTAMP)")
    tr.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")

    ev = add("eval",
                        help="evaluate any model's robustness (standard: a worst case at least as strong "
                        "as AutoAttack's), or curves, transfer and corruption",
                        description="robustlab eval --model SPEC --data DATA --eps 8/255 [--protocol standard]. "
                        "SPEC: a run directory, timm:NAME, tv:NAME, path/to/file.py:factory or "
                        "package.module:factory (a factory returns an nn.Module taking [0, 1] pixels).")
    ev.add_argument("--model", action="append", default=[], metavar="SPEC",
                    help="the model to evaluate (repeat for several; every one is evaluated)")
    ev.add_argument("--checkpoint", action="append", default=[], metavar="RUN_DIR",
                    help="a robustlab run directory (same as --model RUN_DIR)")
    ev.add_argument("--weights", action="append", default=[],
                    help="a local state-dict file (.safetensors, or .pt/.pth read weights-only), or DEFAULT: "
                    "torchvision's or timm's pretrained weights (from their cache); repeat it with --model, one "
                    "per --model in the same order")
    ev.add_argument("--mean", help="per-channel mean the model expects, e.g. 0.485,0.456,0.406: your factory's "
                    "model is wrapped to take [0, 1] pixels; a timm:/tv: or built-in one normalizes with it instead "
                    "of its own")
    ev.add_argument("--std", help="per-channel std the model expects, with --mean")
    ev.add_argument("--data", required=True, help="dataset whose test split is used: fashion_mnist, cifar10, "
                    "imagefolder:ROOT, ...")
    ev.add_argument("--data-dir", help="where dataset files are looked for first")
    ev.add_argument("--image-size", type=int, help="resize images (default: a built-in set as stored, an "
                    "imagefolder 224: resize + centre crop); the API's load_dataset(size=), a config's data.size")
    ev.add_argument("--protocol", default="standard", choices=("standard", "thesis", "quick", "whitebox",
                                                               "transfer", "corruption", "all"),
                    help="standard | thesis | quick: robust accuracy; whitebox | transfer | corruption | all: "
                    "curves and comparisons")
    ev.add_argument("--eps", default="8/255", help="budget: 8/255 or 0.03px (pixels), 8 (0-255 units); a plain "
                    "number below 1 is read as pixels (0.1 = 0.1 px), and with --norm l2 any plain number (3 = ε₂ 3)")
    ev.add_argument("--norm", default="linf", choices=("linf", "l2"), help="threat model")
    ev.add_argument("--fallback", choices=("auto", "on", "off"), default="auto",
                    help="gradient-free Square Attack: auto = when the masking checklist flags the model")
    ev.add_argument("--limit", type=int, help="evaluate N test images (default: all): a built-in set's first N, "
                    "an imagefolder's every k-th image (all classes)")
    ev.add_argument("--batch-size", type=int, default=250, help="images attacked at once (the largest model call)")
    ev.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    ev.add_argument("--route", help="mixture-BN route to evaluate through")
    ev.add_argument("--step-size", help=f"whitebox: PGD step (§6.3; default: {WHITEBOX_DEFAULTS['step_size']})")
    ev.add_argument("--steps", help="whitebox: comma-separated PGD iteration counts (default: "
                    f"{WHITEBOX_DEFAULTS['steps']})")
    ev.add_argument("--targeted", action="store_true", help="whitebox: also the targeted curve (random target, §6.3)")
    ev.add_argument("--restarts", type=int,
                    help=f"whitebox: random restarts (default: {WHITEBOX_DEFAULTS['restarts']})")
    ev.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a robust protocol's option, repeatable: --option steps=20 --option queries=1000 "
                    "(standard: steps, targets, target_steps, restarts, queries, p_init; thesis: steps, "
                    "step_size, queries, p_init; quick: steps, step_size, targeted, queries, p_init)")
    ev.add_argument("--seed", type=int, default=0, help="seed of every random start and target")
    ev.add_argument("--out", help="run directory (default RUN_DIR/eval-PROTOCOL for a run directory, "
                    "RUN_DIR/eval-PROTOCOL-2 … when that one holds an evaluation with other options; else "
                    "runs/eval-TIMESTAMP)")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")

    st = add("study",
                        help="the main job: train a chapter's models, evaluate them, write a report",
                        description="robustlab study CONFIG.yaml [key=value ...] [--out DIR] [--smoke]. "
                        "Running the same command again resumes: trained models and finished evaluations "
                        "are reused.")
    st.add_argument("config_and_overrides", nargs="+", metavar="CONFIG [key=value ...]",
                    help="a study YAML (configs/quickstart.yaml, configs/ch*_*.yaml) then dotted overrides: "
                    "dataset=cifar10 defaults.train.epochs=1 evaluations.pgd.steps=[1,10]")
    st.add_argument("--out", help="run directory (default runs/NAME)")
    st.add_argument("--smoke", action="store_true", help="the config's reduced variant (its `smoke:` overrides)")

    rep = add("report", help="(re)write RUN_DIR/report.html from its results.json; --markdown: the studies' "
              "verdicts as markdown",
              description="robustlab report RUN_DIR... writes each RUN_DIR/report.html. With --markdown, each "
              "study run becomes a markdown section (title, chapter, conditions, a verdict table with the "
              "numbers compared), printed, written to --out, or put into --update FILE's generated blocks "
              "(<!-- results:begin --> ... <!-- results:end -->, <!-- results-summary:begin --> ... "
              "<!-- results-summary:end -->).")
    rep.add_argument("run_dir", nargs="+", metavar="RUN_DIR",
                     help="a run directory with a results.json (train, eval, study, attack --dag)")
    rep.add_argument("--markdown", action="store_true", help="the study runs' verdicts as markdown instead")
    rep.add_argument("--out", metavar="FILE", help="--markdown: write the markdown to FILE (default: print it)")
    rep.add_argument("--update", metavar="FILE", help="--markdown: regenerate the marked blocks of FILE "
                     "(README.md, docs/results.md) from the runs")

    lst = add("list", help="list the names the registries accept")
    lst.add_argument("kind", nargs="?", choices=sorted(_LISTS), help="one registry (default: all)")

    demo = add("demo", help="train two small models in seconds and print an attack table")
    _add_data_options(demo, default="fashion_mnist")
    demo.add_argument("--train-limit", type=int, default=10000, help="training images per model")
    demo.add_argument("--eps", default="16", help="budget (0-255 units)")
    demo.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    demo.set_defaults(limit=500, batch_size=250)
    parser.subcommands = {"attack": atk, "demo": demo, "list": lst}  # for --config
    return parser


def apply_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None, args: argparse.Namespace
                 ) -> argparse.Namespace:
    """Re-parse with a YAML file's options as defaults, so flags still win."""
    from robustlab.app.config import find_config, load_yaml
    from robustlab.app.spec import check_keys

    sub = parser.subcommands[args.command]
    cfg = load_yaml(find_config(args.config, "--config"), "--config")
    known = {a.dest for a in sub._actions} - {"help", "config"}
    cfg = {str(k).replace("-", "_"): v for k, v in cfg.items()}
    try:
        check_keys(cfg, sorted(known), noun="option")
    except ValueError as err:
        raise ValueError(f"--config: {err}") from None
    sub.set_defaults(**{k: (str(v) if k in ("eps", "step_size") else v) for k, v in cfg.items()})
    return parser.parse_args(argv)


def attack_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``attacks.create`` from the flags the user set."""
    from robustlab.units import parse_budget

    kw = {}
    for key in _ATTACK_FLAGS:
        value = getattr(args, key, None)
        if value is None:
            continue
        if key in ("eps", "step_size"):
            value = parse_budget(value, "--" + key.replace("_", "-"), pixels=getattr(args, "norm", None) == "l2")
        kw[key] = value
    return kw


def _checked_attack_flags(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`attack_kwargs`, refusing the flags the attack does not take by
    their names (``--norm does not apply to cw``), not as unknown keywords."""
    from robustlab.attacks.presets import accepted_options, canonical_name

    kw = attack_kwargs(args)
    name = canonical_name(args.attack)
    # cw and dcw take eps in the API (a study loops over attacks with one ε) and ignore it: refused here
    allowed = accepted_options(name) - ({"eps"} if name in ("cw", "dcw") else set())
    foreign = sorted(set(kw) - allowed)
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        takes = sorted("--" + k.replace("_", "-") for k in allowed & set(_ATTACK_FLAGS))
        why = " (C&W bounds no ε and no norm but L2: it minimizes ‖δ‖₂)" if name in ("cw", "dcw") else ""
        raise ValueError(f"{flags} {'does' if len(foreign) == 1 else 'do'} not apply to {args.attack}{why}; "
                         f"its flags: {', '.join(takes)}")
    return kw


def _load_data(args: argparse.Namespace, split: str | None = None, limit: int | None = None,  # noqa: ANN202
               channels: int | None = None):
    from robustlab.data import load_dataset

    return load_dataset(args.data, split or args.split, data_dir=args.data_dir, limit=limit or args.limit,
                        download=not args.no_download, size=args.image_size, channels=channels)


def cmd_attack(args: argparse.Namespace) -> int:
    from robustlab._checks import check_number
    from robustlab._io import pick_device, write_tensors
    from robustlab.app.attack import attack_dataset, format_attack_table
    from robustlab.app.evaluate import (
        build_model,
        check_trained_classes,
        check_trained_head,
        class_map,
        grayscale_folder,
        memory_batch,
        scored,
        weights_record,
    )
    from robustlab.app.rundir import RunDir, fingerprint_of
    from robustlab.attacks import create
    from robustlab.data import dataset_info, make_loader
    from robustlab.eval.evaluate import EXAMPLES
    from robustlab.nn import route

    if args.dag:
        from robustlab.app.dag import attack_dense
        from robustlab.app.study import format_study_summary

        if args.model is None:
            raise ValueError("--model is required: a dense model directory of a DAG study (RUN/models/NAME)")
        res = attack_dense(args.model, limit=args.limit or 8, out=args.out, seed=args.seed or 0, gamma=args.gamma,
                           max_iter=args.steps, nms_iou=args.nms_iou, device=args.device)
        print(format_study_summary(res))
        return 0
    for flag in ("model", "data"):
        if getattr(args, flag) is None:
            raise ValueError(f"--{flag} is required (on the command line or as `{flag}:` in --config)")
    for flag in ("limit", "batch_size", "image_size", "steps", "binary_search_steps"):
        value = getattr(args, flag)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"--{flag.replace('_', '-')} must be a whole number >= 1; got {value!r}")
    if args.seed is not None:
        check_number(args.seed, "--seed", low=0, high=2**63 - 1, integer=True)
    atk = create(args.attack, **_checked_attack_flags(args))  # bad names/values fail before any loading
    if getattr(args, "resize_back", False):
        if getattr(atk, "diversity", None) is None:
            raise ValueError(f"--resize-back applies to an attack with input diversity (di2fgsm, mdi2fgsm, dcw, or "
                             f"--p above 0); {args.attack} has none")
        atk.diversity.resize_back = True
    options = {k: v for k, v in vars(args).items()  # -q/-v and where it runs are no part of what runs
               if k not in ("out", "device", "verbose", "quiet", "config", "command")}
    run = RunDir(args.out, "attack", fingerprint_of(options), config=options)  # another run there: refused now
    device = pick_device(args.device)
    data = _load_data(args)
    info = dataset_info(data)
    check_trained_classes(args.model, info)
    arch = {k: v for k, v in (("act", args.act), ("norm", args.norm_layer), ("denoise", args.denoise))
            if v is not None}
    model = build_model(str(args.model), args.weights, info, **arch).to(device).eval()
    check_trained_head(args.model, model, info)
    held = weights_record(str(args.model), args.weights, model)
    if grayscale_folder(args.data, info, [model]):
        data = _load_data(args, channels=1)
        info = dataset_info(data)
    outputs = class_map(str(args.model), model, data, device)
    model = scored(str(args.model), model, outputs)
    routed = route(model, args.route or None)
    with routed:
        batch = memory_batch([model], data, args.batch_size, device)  # on the CPU: what fits in memory
        record = attack_dataset(atk, model, make_loader(data, batch), device=device,
                                keep_examples=not args.no_save, examples=EXAMPLES)
    tensors, examples = record.pop("tensors"), record.pop("examples", None)
    batch = record.pop("batch_size", batch)  # the size it finished at, after running out of device memory
    record.update(model=str(args.model), weights=args.weights, weights_record=held, outputs=outputs, route=args.route,
                  architecture=arch,
                  data={"name": args.data, "split": args.split, "limit": args.limit, "n": len(data)},
                  classes=list(info.classes) or None, **({"batch_size": batch} if batch != args.batch_size else {}))
    with run:
        run.write_config(options)  # what ran: every option, resolved from the command line and --config
        if not args.no_save:
            write_tensors(run.ensure() / "adversarial.safetensors", tensors)
        if examples is not None:  # the report's grid: a few clean / adversarial pairs, kept even with --no-save
            write_tensors(run.ensure() / "examples.safetensors", examples)
        done = run.finish(record)
    from robustlab.app.summary import path_lines

    print(format_attack_table([record]))
    if outputs is not None:
        from robustlab.report.html import outputs_text

        text = outputs_text(outputs)
        print(text[0].upper() + text[1:])
    if getattr(atk, "project", True) is False or not hasattr(atk, "threat"):  # GD (§7.5.4), C&W
        print(f"{args.attack} is not ε-bounded: its adv % is no robust accuracy; compare the perturbation sizes")
    print("\n".join(path_lines("wrote", run.path / "results.json", indent="")
                    + path_lines("report", done["report"], indent="")))
    return 0


def _run_kind(run_dir: Any) -> str | None:
    """The ``kind`` a run directory's run.json records (None without one);
    a damaged run.json is refused naming it, as the report refuses it."""
    from robustlab._io import read_json_mapping

    if not (run_dir / "run.json").is_file():
        return None
    kind = read_json_mapping(run_dir / "run.json", "--resume reads the run's kind from it").get("kind")
    return kind if isinstance(kind, str) else None


def cmd_train(args: argparse.Namespace) -> int:
    from robustlab.app.config import load_config
    from robustlab.app.train import format_train_summary, run_train

    items = list(args.config_and_overrides)
    if args.resume:
        run_dir = Path(args.resume)
        if items and "=" not in items[0]:
            raise ValueError("with --resume the config is the run's own config.yaml; give only key=value overrides")
        config_path, overrides, out = run_dir / "config.yaml", items, run_dir
        kind = _run_kind(run_dir)
        if kind not in (None, "train"):
            raise ValueError(f"--resume: {run_dir} is a robustlab {kind} run, not a train run; an interrupted "
                             f"{kind} resumes when its own command runs again")
        if not config_path.is_file():
            raise FileNotFoundError(f"--resume: {run_dir} has no config.yaml; is it a robustlab train run directory?")
    else:
        if not items or "=" in items[0]:
            raise ValueError("give a config file first: robustlab train CONFIG.yaml [key=value ...]")
        config_path, overrides, out = Path(items[0]), items[1:], args.out
    cfg, raw = load_config(config_path, overrides)
    results = run_train(cfg, raw, out, resume=bool(args.resume))
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(format_train_summary(results))
    return 0


def _floats(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated numbers (e.g. 0.485,0.456,0.406); got {text!r}") from None


def _protocol_options(items: Sequence[str], norm: str) -> dict[str, Any]:
    """``--option KEY=VALUE`` as a protocol's options: values read as YAML
    (``20``, ``true``), a step size as a budget (``2/255``, ``0.5px``)."""
    from robustlab.app.config import parse_value
    from robustlab.units import parse_budget

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not value.strip():
            raise ValueError(f"--option must be KEY=VALUE (e.g. --option steps=20); got {item!r}")
        if key in options:
            raise ValueError(f"--option {key} is given twice")
        options[key] = (parse_budget(value.strip(), f"--option {key}", pixels=norm == "l2") if key == "step_size"
                        else parse_value(value.strip()))
    return options


def cmd_eval(args: argparse.Namespace) -> int:
    from robustlab.app.evaluate import EvalSpec, format_eval_summary, run_eval
    from robustlab.units import parse_budget

    given = [f"--{k.replace('_', '-')}" for k in (*WHITEBOX_DEFAULTS, "targeted") if getattr(args, k)]
    if given and args.protocol not in ("whitebox", "all"):  # they were recorded as if used, and changed nothing
        raise ValueError(f"{', '.join(given)} apply to --protocol whitebox (and all), not {args.protocol}: "
                         f"{args.protocol} runs its own attacks; drop them")
    for key, default in WHITEBOX_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, default)

    try:
        steps = [int(s) for s in str(args.steps).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--steps must be comma-separated integers; got {args.steps!r}") from None
    if len(args.weights) > 1 and len(args.weights) != len(args.model):
        raise ValueError(f"--weights: give one per --model, in the same order ({len(args.model)} --model, "
                         f"{len(args.weights)} --weights); a --checkpoint carries its own")
    for run_dir in args.checkpoint:  # a run directory by name: a typo is said as one, not as an unknown model
        if not Path(run_dir).is_dir():
            raise FileNotFoundError(f"--checkpoint {run_dir}: no such run directory (a robustlab train run, or a "
                                    "study's RUN/models/NAME)")
    spec = EvalSpec(models=[*args.model, *args.checkpoint], data=args.data, protocol=args.protocol,
                    eps=parse_budget(args.eps, "--eps", pixels=args.norm == "l2"), norm=args.norm,
                    weights=(args.weights[0] if len(args.weights) == 1 else args.weights or None),
                    mean=_floats(args.mean, "--mean"), std=_floats(args.std, "--std"), limit=args.limit,
                    batch_size=args.batch_size, workers=args.workers,
                    fallback={"auto": None, "on": True, "off": False}[args.fallback], seed=args.seed,
                    route=args.route, data_dir=args.data_dir, image_size=args.image_size, device=args.device,
                    out=args.out, steps=steps,
                    step_size=parse_budget(args.step_size, "--step-size", pixels=args.norm == "l2"),
                    targeted=args.targeted, restarts=args.restarts,
                    options=_protocol_options(args.option, args.norm) if args.option else None)
    results = run_eval(spec, quiet=args.quiet)
    print(format_eval_summary(results))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from robustlab.app.study import format_study_summary, load_study, run_study

    items = list(args.config_and_overrides)
    if "=" in items[0]:
        raise ValueError("give a study config first: robustlab study CONFIG.yaml [key=value ...]")
    study = load_study(items[0], items[1:], smoke=args.smoke)
    print(format_study_summary(run_study(study, args.out)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if not args.markdown:
        if args.out or args.update:
            raise ValueError("--out and --update go with --markdown (report.html is always RUN_DIR/report.html)")
        from robustlab.report import write_report
        from robustlab.report.html import read_results

        for run_dir in args.run_dir:  # every folder checked before any report is written
            read_results(run_dir)
        for run_dir in args.run_dir:
            print(write_report(run_dir))
        return 0
    from robustlab._io import atomic_write_text
    from robustlab.report.markdown import read_study, studies_markdown, update_file

    for run_dir in args.run_dir:  # every folder checked before anything is written
        read_study(run_dir)
    if args.update:
        blocks = update_file(args.update, args.run_dir)
        print(f"{args.update}: regenerated {', '.join(blocks)} from {len(args.run_dir)} run(s)")
    text = studies_markdown(args.run_dir)
    if args.out:
        atomic_write_text(Path(args.out), text)
        print(args.out)
    elif not args.update:
        print(text, end="")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from robustlab.app.summary import wrap_items

    for kind in [args.kind] if args.kind else sorted(_LISTS):
        print("\n".join(wrap_items(f"{kind}: ", _names(kind), indent="  ")))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may also come after --out
        if args.command not in ("train", "study") or not all("=" in e and not e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.config_and_overrides = [*args.config_and_overrides, *extra]
    if args.verbose and args.quiet:
        parser.error("-v/--verbose and -q/--quiet contradict each other; give one")
    if getattr(args, "resume", None) and getattr(args, "out", None) is not None \
            and Path(args.out).resolve() != Path(args.resume).resolve():
        parser.error(f"--resume continues {args.resume} in place; --out {args.out} names another folder (drop it)")
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.INFO
    if level == logging.INFO and int(os.environ.get("RANK", "0")) > 0:
        level = logging.WARNING  # under torchrun, rank 0 alone reports progress
    undo = _log_to_stderr(level)
    try:
        return _run(parser, argv, args)
    finally:
        undo()


def _log_to_stderr(level: int) -> Callable[[], None]:
    """The command line's logging: the ``robustlab`` loggers to stderr at
    ``level`` (INFO: progress lines and what each step does; ``-v`` DEBUG,
    ``-q`` ERROR). Returns the undo, for ``main`` called in a process that
    goes on (tests, notebooks)."""
    from robustlab._progress import LogHandler

    pkg = logging.getLogger("robustlab")
    level_before, handlers_before = pkg.level, list(pkg.handlers)
    for h in handlers_before:
        if isinstance(h, LogHandler):  # a previous main() in this process
            pkg.removeHandler(h)
    pkg.addHandler(LogHandler())
    pkg.setLevel(level)

    def undo() -> None:
        pkg.setLevel(level_before)
        pkg.handlers[:] = handlers_before

    return undo


def _say_error(command: str, text: str) -> None:
    """``robustlab COMMAND: error: TEXT`` on stderr. Under torchrun the other
    ranks say it only once they have joined the process group (then naming
    their rank): before that it is the config's own check, failing alike on
    every rank, and rank 0 alone says it instead of every process repeating it."""
    try:
        rank = int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    except ValueError:  # not torchrun's numbers: said as on one process
        rank = 0
    if rank:
        distributed = sys.modules.get("robustlab.train.distributed")
        if not getattr(distributed, "joined", False):
            return
        print(f"robustlab {command}: error (rank {rank}): {text}", file=sys.stderr)
        return
    print(f"robustlab {command}: error: {text}", file=sys.stderr)


def check_one_process(command: str) -> None:
    """Refuse a command other than ``train`` (and ``list``) started by torchrun
    on several processes: each would do the whole work into the same run
    directory."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return
    if world > 1 and command not in ("train", "list"):
        raise ValueError(f"robustlab {command} runs in one process; under torchrun (WORLD_SIZE={world}) every "
                         "process would do all of it into the same run directory. Start it without torchrun "
                         f"(one GPU: --device cuda:N); torchrun is for robustlab train")


def out_of_memory_text(args: argparse.Namespace, err: BaseException) -> str:
    """What to do when the device ran out of memory: the batch-size option of
    the command, and what the same command keeps when run again."""
    from robustlab._checks import error_line
    from robustlab.app.evaluate import ROBUST

    first = error_line(err, 160, "out of memory")
    if args.command == "eval" and getattr(args, "protocol", None) in ROBUST:
        hint = ("the model did not fit even one image at a time (a robust protocol halves --batch-size, down to "
                "1, when memory runs out): give it a device with more memory (--device)")
    elif args.command == "eval":
        hint = (f"give a smaller --batch-size (it was {args.batch_size}): the same command with it continues "
                "after the images already evaluated")
    elif args.command == "attack":
        hint = ("the model did not fit even one image at a time (attack halves --batch-size, down to 1, when "
                "memory runs out): give it a device with more memory (--device)")
    else:  # train, study: the config's batch sizes (the learning rate is the config's too)
        hint = ("give a smaller train.batch_size (with a learning rate to match: train.lr; training continues "
                "from its last checkpoint)" + (", or, in the study's evaluations, a smaller study key batch_size"
                                               if args.command == "study" else ""))
    return f"the device ran out of memory ({first}); {hint}"


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None, args: argparse.Namespace) -> int:
    commands = {"attack": cmd_attack, "list": cmd_list, "train": cmd_train, "eval": cmd_eval, "report": cmd_report,
                "study": cmd_study}
    try:
        check_one_process(args.command)
        if getattr(args, "config", None):
            args = apply_config(parser, argv, args)
        if getattr(args, "device", "auto") != "auto":  # a name torch cannot parse: refused before any work
            from robustlab.app.config import check_device

            check_device(args.device, "--device")
        if args.command == "demo":
            from robustlab.app.demo import run_demo

            print(run_demo(args))
            return 0
        return commands[args.command](args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        if getattr(args, "verbose", False):  # -v: where it was raised, for a report of a bug
            import traceback

            traceback.print_exc(file=sys.stderr)
        text = str(err)
        if "Original Traceback" in text:  # raised in a DataLoader worker: its own message is the last line
            text = text.strip().splitlines()[-1].split(": ", 1)[-1]
        _say_error(args.command, text)
        return 2
    except (PermissionError, NotADirectoryError, IsADirectoryError) as err:  # an --out it cannot write, ...
        where = f" {err.filename}" if err.filename else ""
        _say_error(args.command, f"cannot use{where}: {err.strerror or err}")
        return 2
    except FloatingPointError as err:  # a run that diverged: said plainly (its checkpoints stay), exit 1
        _say_error(args.command, str(err))
        return 1
    except RuntimeError as err:
        if type(err).__name__ != "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA, MPS)
            raise
        _say_error(args.command, out_of_memory_text(args, err))
        return 1
    except KeyboardInterrupt:  # Ctrl-C: what was saved stays (checkpoints, an evaluation's state)
        print(f"robustlab {args.command}: interrupted; the same command continues from what was saved",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
