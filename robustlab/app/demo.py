"""``robustlab demo``: two small CNNs trained in seconds, every attack, one table.

Model A is attacked (white-box); model B, trained independently, measures how
well the adversarial examples transfer (black-box), the comparison of ch. 3.
"""
from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import torch

from robustlab._io import pick_device
from robustlab.app.attack import attack_dataset, format_attack_table
from robustlab.app.rundir import RunDir, fingerprint_of
from robustlab.attacks import create
from robustlab.data import DataNotFoundError, load_dataset, make_loader
from robustlab.eval.metrics import accuracy
from robustlab.models import create_model, save_model
from robustlab.train import fit_classifier
from robustlab.units import parse_eps, to_255

_logger = logging.getLogger(__name__)


def _attacks(eps: float) -> list[tuple[str, dict[str, Any]]]:
    """The demo's line-up: the ch. 3 family at ε, PGD as evaluated in §6.3
    (always a random start), targeted PGD, GD (§7.5.4). C&W, hundreds of iterations per image, is left to
    ``robustlab attack --attack cw``."""
    return [
        ("fgsm", {"eps": eps}),
        ("ifgsm", {"eps": eps}),
        ("mifgsm", {"eps": eps}),
        ("di2fgsm", {"eps": eps}),
        ("mdi2fgsm", {"eps": eps}),
        ("pgd", {"eps": eps, "steps": 10, "clean_init_prob": 0.0}),
        ("pgd", {"eps": eps, "steps": 10, "clean_init_prob": 0.0, "early_stop": True}),
        ("pgd", {"eps": eps, "steps": 10, "clean_init_prob": 0.0, "targeted": True}),
        ("gd", {}),
    ]


def _load(args: argparse.Namespace) -> tuple[Any, Any, str]:
    try:
        train = load_dataset(args.data, "train", data_dir=args.data_dir, limit=args.train_limit,
                             download=not args.no_download, size=args.image_size)
        test = load_dataset(args.data, "test", data_dir=args.data_dir, limit=args.limit,
                            download=not args.no_download, size=args.image_size)
        return train, test, args.data
    except DataNotFoundError as err:
        _logger.warning("%s is not available (%s); using scikit-learn's digits instead", args.data,
                        str(err).splitlines()[0])
        return load_dataset("digits", "train"), load_dataset("digits", "test", limit=args.limit), "digits"


def run_demo(args: argparse.Namespace) -> str:
    """Train, attack, write ``results.json``; returns the table the command prints."""
    eps = parse_eps(args.eps)
    device = pick_device(args.device)
    torch.manual_seed(0)
    train, test, data_name = _load(args)
    options = {k: v for k, v in vars(args).items() if k not in ("out", "device", "verbose", "config", "command")}
    run = RunDir(args.out, "demo", fingerprint_of(options))
    fresh = not run.reused and not run.path.exists()
    with run:
        try:
            return _run(args, run, eps, device, train, test, data_name)
        except BaseException:  # the demo does not resume: a failed one leaves no folder to refuse the next
            if fresh:
                run.discard()
            raise


def _run(args: argparse.Namespace, run: RunDir, eps: float, device: torch.device, train: Any, test: Any,
         data_name: str) -> str:
    info, out = train.info, run.ensure()
    models = {}
    for tag, width, seed in (("A", 16, 0), ("B", 16, 1)):
        torch.manual_seed(seed)
        m = create_model("smallcnn", info.num_classes, in_channels=info.channels, mean=info.mean,
                         std=info.std, width=width)
        start = time.perf_counter()
        fit_classifier(m, make_loader(train, 64, shuffle=True, seed=seed), epochs=1, device=device, seed=seed)
        models[tag] = m.to(device).eval()
        save_model(m, out / f"model_{tag}", meta={"dataset": data_name, "width": width, "seed": seed})
        _logger.info("trained model %s (smallcnn width %d) on %d %s images in %.1f s", tag, width, len(train),
                     data_name, time.perf_counter() - start)
    x, y = test.batch(slice(None))
    x, y = x.to(device), y.to(device)
    clean = (f"clean accuracy on {len(y)} test images: A {100 * accuracy(models['A'], x, y):.1f}%, "
             f"B {100 * accuracy(models['B'], x, y):.1f}%; ε = {to_255(eps):g}/255")
    records = []
    for name, kw in _attacks(eps):
        _logger.info("attack %s %s", name, kw)
        atk = create(name, seed=0, **kw)
        rec = attack_dataset(atk, models["A"], make_loader(test, args.batch_size), device=device,
                             progress=False)
        x_adv = rec.pop("tensors")["x_adv"].to(device)
        rec["transfer_acc_B"] = float(accuracy(models["B"], x_adv, y))
        label = atk.name + ("-es" if kw.get("early_stop") else "") + ("-tgt" if kw.get("targeted") else "")
        rec["attack"]["name"] = label
        records.append(rec)
    run.finish({"data": data_name, "eps_255": to_255(eps), "records": records}, report=False)
    return "\n".join([clean, "", format_attack_table(records, extra={"B %": "transfer_acc_B"}), "",
                      "adv %: model A's accuracy under the attack (white-box); B %: model B's accuracy on the",
                      "same images (black-box transfer). Results:", str(out / "results.json")])
