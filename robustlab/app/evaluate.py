"""``robustlab eval``: evaluate trained checkpoints with the thesis's protocols
and write ``results.json`` + ``report.html`` into a run directory.

Protocols: ``whitebox`` (robustness curve vs PGD iterations, with the
gradient-masking checklist run alongside), ``transfer`` (I-FGSM, MI-FGSM,
DI²-FGSM, M-DI²-FGSM between every pair of the given checkpoints),
``corruption`` (15 corruptions × 5 severities, on the fly) and ``all``.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustlab._io import pick_device, write_json
from robustlab.data import load_dataset
from robustlab.eval.analysis import bn_statistics
from robustlab.eval.sanity import run_sanity_checks
from robustlab.eval.transfer import transfer_matrix
from robustlab.eval.whitebox import robustness_curve, worst_case
from robustlab.models.checkpoint import load_model
from robustlab.nn.norm import route, route_names

PROTOCOLS = ("whitebox", "transfer", "corruption", "all")
TRANSFER_ATTACKS = ("ifgsm", "mifgsm", "di2fgsm", "mdi2fgsm")


def _batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i: i + size], y[i: i + size]) for i in range(0, len(y), size)]


def _whitebox(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opts: dict[str, Any], device: torch.device
              ) -> dict[str, Any]:
    out: dict[str, Any] = {"whitebox": {}, "sanity": None}
    kinds = [("untargeted", False)] + ([("targeted", True)] if opts["targeted"] else [])
    curves = []
    loader = _batches(x, y, opts["batch_size"])
    for loss in ("ce", "cw"):  # the margin loss does not saturate where softmax does
        for name, targeted in kinds:
            curve = robustness_curve(model, loader, steps=opts["steps"], eps=opts["eps"],
                                     step_size=opts["step_size"], targeted=targeted, restarts=opts["restarts"],
                                     seed=opts["seed"], device=device, loss=loss)
            out["whitebox"][f"PGD {name}" + (" (C&W margin)" if loss == "cw" else "")] = curve.as_dict()
            curves.append(curve)
    out["whitebox"]["worst case"] = worst_case(curves).as_dict()
    report = run_sanity_checks(model, loader, eps=opts["eps"], steps=min(20, max(opts["steps"])), limit=200,
                               seed=opts["seed"], device=device)
    out["sanity"] = report.as_dict()
    return out


def _transfer(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, opts: dict[str, Any],
              device: torch.device) -> dict[str, Any]:
    from robustlab.attacks import create

    attacks = {a: (lambda a=a: create(a, eps=opts["eps"], seed=opts["seed"])) for a in TRANSFER_ATTACKS}
    loader = _batches(x, y, opts["batch_size"])
    return {"transfer": transfer_matrix(attacks, models, models, loader, device=device)}


def _corruption(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_accuracy: float) -> dict[str, Any]:
    from robustlab.eval.corruption import corruption_errors, mce

    errors = corruption_errors(model, x, y)
    return {"corruption": {"clean_error": 1.0 - clean_accuracy, "mce_vs_alexnet": mce(errors),
                           "mean_error": sum(sum(s.values()) / len(s) for s in errors.values()) / len(errors),
                           "errors": errors}}


def run_eval(checkpoints: list[str], data: str, protocol: str, *, out: str | Path | None = None,
             eps: float, step_size: float, steps: list[int], targeted: bool = False, restarts: int = 1,
             limit: int | None = 500, route_name: str | None = None, batch_size: int = 250, seed: int = 0,
             data_dir: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Evaluate ``checkpoints`` (run directories) on ``data``'s test split."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}; got {protocol!r}")
    if not checkpoints:
        raise ValueError("give at least one --checkpoint RUN_DIR")
    if protocol in ("transfer",) and len(checkpoints) < 2:
        raise ValueError("the transfer protocol needs at least two --checkpoint run directories")
    dev = pick_device(device)
    models = {Path(c).name: load_model(c).to(dev).eval() for c in checkpoints}
    test = load_dataset(data, "test", data_dir=data_dir, limit=limit)
    x, y = (t.to(dev) for t in test.batch(slice(0, len(test))))
    run_dir = Path(out) if out is not None else Path(checkpoints[0]) / f"eval-{protocol}"
    run_dir.mkdir(parents=True, exist_ok=True)
    opts = {"eps": eps, "step_size": step_size, "steps": steps, "targeted": targeted, "restarts": restarts,
            "batch_size": batch_size, "seed": seed}
    start = time.perf_counter()
    name, model = next(iter(models.items()))
    results: dict[str, Any] = {"kind": "eval", "protocol": protocol, "checkpoints": checkpoints, "data": data,
                               "n": len(y), "options": opts, "route": route_name}
    with route(model, route_name) if route_name else contextlib.nullcontext():
        with torch.no_grad():
            results["clean_accuracy"] = float((model(x).argmax(1) == y).float().mean())
        if protocol in ("whitebox", "all"):
            results.update(_whitebox(model, x, y, opts, dev))
        if protocol in ("corruption", "all"):
            with torch.no_grad():
                results.update(_corruption(model, x, y, results["clean_accuracy"]))
    if protocol in ("transfer", "all") and len(models) > 1:
        results.update(_transfer(models, x, y, opts, dev))
    results["routes"] = list(route_names(model))
    stats = bn_statistics(model)
    if stats:  # Fig. 6.5: running statistics per route (or of the plain BNs)
        results["bn_statistics"] = stats
    results["seconds"] = round(time.perf_counter() - start, 2)
    write_json(run_dir / "results.json", results)
    from robustlab.report import write_report

    results["report"] = str(write_report(run_dir))
    results["run_dir"] = str(run_dir)
    return results


def format_eval_summary(results: dict[str, Any]) -> str:
    lines = [f"{results['protocol']} on {results['data']} ({results['n']} images): clean accuracy "
             f"{results['clean_accuracy']:.4f}"]
    for name, c in (results.get("whitebox") or {}).items():
        lines.append(f"  {name}: " + ", ".join(f"{s}:{a:.3f}" for s, a in zip(c["steps"], c["accuracy"])))
    if results.get("sanity"):
        warns = results["sanity"]["warnings"]
        lines.append("  sanity: " + ("; ".join(f"[{w['check']}] {w['message']}" for w in warns) if warns
                                     else "no gradient-masking symptom"))
    if results.get("corruption"):
        c = results["corruption"]
        lines.append(f"  corruption: mean error {c['mean_error']:.3f}, mCE vs AlexNet {c['mce_vs_alexnet']:.1f}")
    if results.get("transfer"):
        for attack, by_src in results["transfer"]["success"].items():
            lines.append(f"  transfer {attack}: " + "; ".join(
                f"{s}→{t} {v:.2f}" for s, row in by_src.items() for t, v in row.items()))
    lines.append(f"  report: {results['report']}")
    return "\n".join(lines)
