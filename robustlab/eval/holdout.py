"""The hold-out protocol of §3.4.3 (Table 3.3): attack an ensemble of all
models but one, report the success rate on the ensemble (white-box) and on
the held-out model (black-box)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack
from robustlab.attacks.ensemble import Ensemble
from robustlab.eval.metrics import batch_device, misclassified


def holdout_evaluation(
    attack: Attack | Callable[[], Attack],
    models: Mapping[str, nn.Module],
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    weights: Mapping[str, float] | None = None,
    only_correct: bool = True,
    device: str | torch.device | None = None,
) -> dict[str, dict[str, float]]:
    """For each model k: attack Ensemble(models without k) and measure success.

    Args:
        attack: an attack, or a factory called once per hold-out (fresh RNG).
        models: name → classifier, at least two.
        loader: batches (x, y) with x in [0, 1].
        weights: name → ensemble weight; renormalized over the members of each
            ensemble (eq. 3.8 requires Σw = 1). Equal by default (§3.4.3: 1/6).
        only_correct: count only images every model classifies correctly
            (§3.4.1: "it is less meaningful to attack the images that are
            already classified wrongly").

    Returns:
        ``{"-name": {"ensemble": rate, "holdout": rate, "n": count}}`` with rates in [0, 1].
    """
    if len(models) < 2:
        raise ValueError(f"models must hold at least 2 models for a hold-out; got {len(models)}")
    device = batch_device(models.values(), device)
    batches = [(x.to(device), y.to(device)) for x, y in loader]
    results = {}
    for held, target_model in models.items():
        names = [k for k in models if k != held]
        w = [float(weights[k]) if weights else 1.0 for k in names]
        ens = Ensemble([models[k] for k in names], [v / sum(w) for v in w])  # attacked in inference state
        atk = attack() if callable(attack) and not isinstance(attack, Attack) else attack
        white = black = count = 0
        for x, y in batches:
            keep = torch.ones_like(y, dtype=torch.bool)
            if only_correct:
                for m in models.values():
                    keep &= ~misclassified(m, x, y)
            if not bool(keep.any()):
                continue
            xk, yk = x[keep], y[keep]
            x_adv = atk(ens, xk, yk)
            white += int(misclassified(ens, x_adv, yk).sum())
            black += int(misclassified(target_model, x_adv, yk).sum())
            count += int(keep.sum())
        results[f"-{held}"] = {
            "ensemble": white / max(count, 1),
            "holdout": black / max(count, 1),
            "n": count,
        }
    return results
