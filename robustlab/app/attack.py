"""Attack a whole dataset and summarize it: the work behind ``robustlab attack``."""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robustlab._progress import progress as progress_bar
from robustlab.app.evaluate import at_fitting_batch
from robustlab.attacks.base import Attack, AttackResult
from robustlab.eval.evaluate import model_output
from robustlab.eval.metrics import predict


def attack_dataset(
    attack: Attack,
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    device: torch.device | str = "cpu",
    keep_examples: bool = True,
    examples: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``attack`` over ``loader``; returns a JSON-ready record with clean and
    adversarial accuracy, success, norms, iterations, throughput and an audit,
    plus ``tensors`` (adversarial images and per-sample outcomes). ``examples``:
    the first that many images are also kept, clean and adversarial, under
    ``examples`` (``index``, ``clean``, ``adversarial``, ``y``, ``clean_pred``,
    ``adv_pred``: the report's grid, kept even without ``keep_examples``).
    ``progress``: images done, and the adversarial accuracy so far
    (:mod:`robustlab._progress`).

    A batch that runs out of device memory is attacked again in halves, and
    the batches after it at that size, down to one image at a time, with a
    warning; the record's ``batch_size`` says the size it finished at."""
    parts: dict[str, list[Tensor]] = {k: [] for k in ("x_adv", "y", "clean_pred", "adv_pred", "success", "steps",
                                                       "linf", "l2", "target")}
    kept: dict[str, list[Tensor]] = {k: [] for k in ("clean", "adversarial", "y", "clean_pred", "adv_pred")}
    seconds, right, seen, size = 0.0, 0, 0, None  # size: the batch size after running out of memory
    dataset = getattr(loader, "dataset", None)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    with progress_bar(total, f"attack {attack.name}", "image", enabled=progress) as bar:
        for x, y in loader:
            if not seen:  # a model that does not take these images: said so, not a traceback from its layers
                with torch.no_grad():
                    model_output(model, x[:2].to(device))
            start = 0
            while start < len(y):
                room, asked = max(examples - seen, 0), min(size or len(y), len(y) - start)

                def attempt(n: int, rows: slice = slice(start, None), room: int = room, x: Tensor = x, y: Tensor = y
                        ) -> tuple[float, int]:  # called at once: the defaults only bind this iteration's values
                    x, y = x[rows][:n], y[rows][:n]
                    return _attack_batch(attack, model, x.to(device), y.to(device), parts, keep_examples,
                                         kept if room else None, room)

                (took, still_right), done = at_fitting_batch(attempt, asked, torch.device(device),
                                                             f"attack {attack.name}")
                size = done if done < asked else size
                seconds, right, seen = seconds + took, right + still_right, seen + done
                bar.update(done)
                bar.set_postfix(adv_acc=f"{100 * right / max(bar.n, 1):.1f}%")
                start += done
    record = _record(attack, parts, seconds, keep_examples)
    if size is not None:
        record["batch_size"] = size
    if examples and kept["clean"]:
        record["examples"] = {k: torch.cat(v) for k, v in kept.items()}
        record["examples"]["index"] = torch.arange(len(record["examples"]["y"]))
    return record


def _attack_batch(attack: Attack, model: nn.Module, x: Tensor, y: Tensor, parts: dict[str, list[Tensor]],
                  keep_examples: bool, kept: dict[str, list[Tensor]] | None = None, room: int = 0
                  ) -> tuple[float, int]:
    """One batch into ``parts`` (and its first ``room`` images into ``kept``);
    returns (seconds the attack took, images still classified right)."""
    clean = predict(model, x)
    start = time.perf_counter()
    res: AttackResult = attack.run(model, x, y)
    if x.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    adv_pred = predict(model, res.x_adv)
    parts["x_adv"].append(res.x_adv.cpu() if keep_examples else res.x_adv[:0].cpu())
    parts["y"].append(y.cpu())
    parts["clean_pred"].append(clean.cpu())
    parts["adv_pred"].append(adv_pred.cpu())
    for k in ("success", "steps", "linf", "l2"):
        parts[k].append(getattr(res, k).cpu())
    if res.target is not None:
        parts["target"].append(res.target.cpu())
    if kept is not None:
        for k, v in (("clean", x), ("adversarial", res.x_adv), ("y", y), ("clean_pred", clean),
                     ("adv_pred", adv_pred)):
            kept[k].append(v[:room].detach().cpu())
    return seconds, int((adv_pred == y).sum())


def _record(attack: Attack, parts: dict[str, list[Tensor]], seconds: float, keep_examples: bool
            ) -> dict[str, Any]:
    t = {k: torch.cat(v) for k, v in parts.items() if v}
    n = int(t["y"].numel())
    correct = t["clean_pred"] == t["y"]
    summary = AttackResult(t["x_adv"], t["success"], t["steps"], t["y"], t.get("target"),
                           norms=(t["linf"], t["l2"])).summary()
    # The ε-ball audit: a projected L∞ attack must never exceed its budget.
    threat = getattr(attack, "threat", None)
    if threat is not None and threat.name == "linf" and getattr(attack, "project", False):
        summary["eps_violations"] = int((t["linf"] > threat.eps + 1e-6).sum())
    record: dict[str, Any] = {
        "attack": attack.config() if hasattr(attack, "config") else {"name": attack.name},
        "n": n,
        "clean_accuracy": float(correct.float().mean()) if n else 0.0,
        "adversarial_accuracy": float((t["adv_pred"] == t["y"]).float().mean()) if n else 0.0,
        "success_rate_on_correct": float(t["success"][correct].float().mean()) if bool(correct.any()) else None,
        "summary": summary,
        "seconds": seconds,
        "images_per_second": n / seconds if seconds > 0 else float("inf"),
        "tensors": {k: v for k, v in t.items() if k != "x_adv" or keep_examples},
    }
    return record


def format_attack_table(records: Sequence[dict[str, Any]], extra: Mapping[str, str] | None = None) -> str:
    """The terminal table of attack runs, in percentages as ``robustlab eval``
    prints them. ``success`` counts the images the model classified right
    before the attack (an image already misclassified is no success of the
    attack's); ``extra`` maps a column's heading to a record's key holding an
    accuracy (0-1), printed as a percentage too. A legend follows the table."""
    extra = dict(extra or {})
    cols = ["attack", "n", "clean %", "adv %", "success %", "max L∞/255", "mean L2", "steps", "img/s", *extra]
    rows = []
    for r in records:
        s, right = r["summary"], r.get("success_rate_on_correct")
        row = [r["attack"]["name"], str(r["n"]), f"{100 * r['clean_accuracy']:.1f}",
               f"{100 * r['adversarial_accuracy']:.1f}", "—" if right is None else f"{100 * right:.1f}",
               f"{s['linf_max_255']:.2f}", f"{s['l2_mean']:.3f}", f"{s['steps_mean']:.1f}",
               f"{r['images_per_second']:.0f}"]
        row += [f"{100 * r[k]:.1f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in extra.values()]
        rows.append(row)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    legend = "success %: of the images right before the attack, the share it fooled (targeted: sent to the target)"
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(r) for r in rows), legend])
