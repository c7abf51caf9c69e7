"""The NIPS 2017 adversarial competition protocol (§3.4.5).

The data is split into batches and each batch gets its own ε drawn from
{4, 8, 12, 16}/255. The attacker runs N = 10 iterations with μ = 1 and, for
the diversity attacks, p = 0.4; the step is α = ε/N (Dong et al.'s MI-FGSM
setting, which the thesis follows).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack
from robustlab.attacks.presets import canonical_name, create
from robustlab.eval.metrics import batch_device, misclassified
from robustlab.units import from_255

#: §3.4.5 step (2): ε chosen per batch from {4/255, 8/255, 12/255, 16/255}.
NIPS2017_EPS_255 = (4, 8, 12, 16)
NIPS2017_STEPS, NIPS2017_MU, NIPS2017_P = 10, 1.0, 0.4


def nips2017_attack(name: str, eps: float, **overrides: Any) -> Attack:
    """An attack with the §3.4.5 settings for one batch's ε."""
    key = canonical_name(name)
    if key in ("cw", "dcw"):
        raise ValueError("the NIPS 2017 protocol bounds ε; C&W has no ε budget")
    kw: dict[str, Any] = {"eps": eps}
    if key != "fgsm":
        kw.update(steps=NIPS2017_STEPS, step_size=eps / NIPS2017_STEPS)
    if key in ("mifgsm", "mdi2fgsm"):
        kw["mu"] = NIPS2017_MU
    if key in ("di2fgsm", "mdi2fgsm"):
        kw["p"] = NIPS2017_P
    kw.update(overrides)
    return create(key, **kw)



def run_nips2017(
    name: str,
    source: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    targets: Mapping[str, nn.Module],
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Attack ``source`` batch by batch with a random ε each; report the
    success rate (misclassification) on every model of ``targets``."""
    gen = torch.Generator().manual_seed(seed)
    device = batch_device([source, *targets.values()], device)
    wrong = {k: 0 for k in targets}
    eps_used, count = [], 0
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        eps_255 = NIPS2017_EPS_255[int(torch.randint(len(NIPS2017_EPS_255), (), generator=gen))]
        atk = nips2017_attack(name, from_255(eps_255), seed=seed + i, **overrides)
        x_adv = atk(source, x, y)
        for k, m in targets.items():
            wrong[k] += int(misclassified(m, x_adv, y).sum())
        eps_used.append(eps_255)
        count += len(y)
    return {
        "attack": canonical_name(name),
        "eps_255_per_batch": eps_used,
        "n": count,
        "success": {k: v / max(count, 1) for k, v in wrong.items()},
    }
