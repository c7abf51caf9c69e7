"""Black-box protocols: transfer matrices (Table 3.1), all-or-nothing accuracy
(Table 4.2); the hold-out ensemble of Table 3.3 is :mod:`robustlab.eval.holdout`.

Adversarial examples are made once per (attack, source model) and replayed on
every target, so a matrix of A attacks × S sources × T targets costs A·S
attacks and A·S·T forward passes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack
from robustlab.eval.metrics import batch_device, predict

AttackSpec = Attack | Callable[[], Attack]


def _fresh(attack: AttackSpec) -> Attack:
    """A factory is called for each source, so every source starts from the same RNG state."""
    return attack if isinstance(attack, Attack) else attack()


def transfer_matrix(
    attacks: Mapping[str, AttackSpec],
    sources: Mapping[str, nn.Module],
    targets: Mapping[str, nn.Module],
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    only_correct: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Success rates of adversarial examples made on each source, measured on
    each target (Table 3.1: rows attack × source, columns targets; a cell
    whose source is its target is a white-box attack).

    Args:
        attacks: name → attack, or a zero-argument factory (fresh RNG per source).
        only_correct: count only images every model (sources and targets)
            classifies correctly (§3.4.1).

    Returns:
        ``{"success": {attack: {source: {target: rate}}}, "n": images counted,
        "accuracy": {attack: {source: {target: accuracy on all images}}}}``.
        Success is "prediction ≠ label" on the counted images.
    """
    if not attacks or not sources or not targets:
        raise ValueError("attacks, sources and targets must each hold at least one entry")
    models = {**sources, **targets}
    device = batch_device(models.values(), device)
    batches = [(x.to(device), y.to(device)) for x, y in loader]
    keep = []
    for x, y in batches:
        k = torch.ones_like(y, dtype=torch.bool)
        if only_correct:
            for m in models.values():
                k &= predict(m, x) == y
        keep.append(k)
    n = int(sum(int(k.sum()) for k in keep))
    total = sum(len(y) for _, y in batches)
    success: dict[str, dict[str, dict[str, float]]] = {}
    accuracy: dict[str, dict[str, dict[str, float]]] = {}
    for a_name, spec in attacks.items():
        success[a_name], accuracy[a_name] = {}, {}
        for s_name, source in sources.items():
            atk = _fresh(spec)
            fooled = {t: 0 for t in targets}
            right = {t: 0 for t in targets}
            for (x, y), k in zip(batches, keep):
                x_adv = atk(source, x, y)
                for t_name, target in targets.items():
                    wrong = predict(target, x_adv) != y
                    fooled[t_name] += int((wrong & k).sum())
                    right[t_name] += int((~wrong).sum())
            success[a_name][s_name] = {t: fooled[t] / max(n, 1) for t in targets}
            accuracy[a_name][s_name] = {t: right[t] / max(total, 1) for t in targets}
    return {"success": success, "accuracy": accuracy, "n": n, "total": total, "only_correct": only_correct}


def all_or_nothing(
    model: nn.Module,
    adversarial_sets: Mapping[str, Iterable[tuple[Tensor, Tensor]]],
    *,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """CAAD 2018's criterion (§4.6.2, Table 4.2): an image counts as correct only
    if ``model`` classifies every attacker's version of it correctly.

    Args:
        adversarial_sets: attacker name → batches (x_adv, y) over the *same*
            images in the same order (e.g. made on source models, or loaded
            from the attackers' outputs).

    Returns:
        ``{"all_or_nothing": accuracy, "per_attacker": {name: accuracy}, "n": images}``;
        all-or-nothing ≤ the minimum over attackers by construction.
    """
    if not adversarial_sets:
        raise ValueError("adversarial_sets must name at least one attacker")
    device = batch_device([model], device)
    correct_all: Tensor | None = None
    labels: Tensor | None = None
    per: dict[str, float] = {}
    for name, batches in adversarial_sets.items():
        hits, ys = [], []
        for x, y in batches:
            y = y.to(device)
            hits.append((predict(model, x.to(device)) == y).cpu())
            ys.append(y.cpu())
        hit, yy = torch.cat(hits), torch.cat(ys)
        if labels is None:
            labels, correct_all = yy, hit
        else:
            if yy.shape != labels.shape or not torch.equal(yy, labels):
                raise ValueError(f"attacker {name!r} gives other images or labels than the first attacker")
            correct_all = correct_all & hit
        per[name] = float(hit.float().mean()) if hit.numel() else 0.0
    assert correct_all is not None
    return {"all_or_nothing": float(correct_all.float().mean()) if correct_all.numel() else 0.0,
            "per_attacker": per, "n": int(correct_all.numel())}


def adversarial_sets(
    attacks: Mapping[str, tuple[AttackSpec, nn.Module]],
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    device: str | torch.device | None = None,
) -> dict[str, list[tuple[Tensor, Tensor]]]:
    """Black-box attackers for :func:`all_or_nothing`: attacker name →
    (attack, source model); each attacks its source on every batch."""
    device = batch_device([source for _, source in attacks.values()], device)
    batches = [(x.to(device), y.to(device)) for x, y in loader]
    out = {}
    for name, (spec, source) in attacks.items():
        atk = _fresh(spec)
        out[name] = [(atk(source, x, y), y) for x, y in batches]
    return out
