"""Robust accuracy of a model over a dataset under one attack."""
from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from robustlab.attacks.base import Attack
from robustlab.eval.metrics import batch_device, pooled_batches


def robust_accuracy(
    attack: Attack,
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    pool: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Accuracy of ``model`` on ``attack``'s adversarial examples over ``loader``.

    Each of the loader's batches is attacked as it comes (``pool`` concatenates
    batches into pools of at least that many images; memory grows with it, so
    the default keeps the loader's batches). With an early-stopping attack and
    ``micro_batch`` set, every model call stays full while the active set
    shrinks, so the cost follows the samples that resist, not the batch size.
    Accuracy is counted as the thesis does (§4.6): the prediction
    on the adversarial image equals the true label, whatever the target.

    The batches go to ``device`` (default: the model's); the model is left
    as it was found (device, mode).

    Returns ``n``, ``robust_accuracy``, ``success_rate``, ``steps_mean`` and
    ``seconds`` (attack time).
    """
    device = batch_device([model], device)
    correct = success = steps = n = 0
    seconds = 0.0

    def flush(x: Tensor, y: Tensor) -> None:
        nonlocal correct, success, steps, n, seconds
        x, y = x.to(device), y.to(device)
        start = time.perf_counter()
        res = attack.run(model, x, y)
        if res.success.is_cuda:
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        # Untargeted success already is "prediction ≠ y" on the returned image.
        right = ~res.success if not attack.targeted else attack.logits(model, res.x_adv).argmax(1) == y
        correct += int(right.sum())
        success += int(res.success.sum())
        steps += int(res.steps.sum())
        n += len(y)

    for x, y in pooled_batches(loader, pool):
        flush(x, y)
    if n == 0:
        raise ValueError("loader yielded no samples")
    return {"n": n, "robust_accuracy": correct / n, "success_rate": success / n, "steps_mean": steps / n,
            "seconds": seconds}
