"""Attacking an ensemble by weighted logit fusion, eq. (3.8).

    l(X; θ_1..θ_K) = Σ_k w_k · l_k(X; θ_k),   w_k ≥ 0,  Σ_k w_k = 1

Logits, not probabilities or gradients, are fused (as in Dong et al. and
§3.3.5); the ensemble is an ordinary ``nn.Module`` so any attack takes it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

#: §3.4.5: NIPS 2017 weights, 1/7.25 for seven models and 0.25/7.25 for Inc-v3_adv.
NIPS2017_WEIGHTS = tuple([1 / 7.25] * 7 + [0.25 / 7.25])


class Ensemble(nn.Module):
    """Σ_k w_k · model_k(x); equal weights by default.

    Args:
        models: the K members, each mapping (N, C, H, W) to logits (N, classes).
        weights: K non-negative weights summing to 1 (eq. 3.8).
    """

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        models = list(models)
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise ValueError("models must be a non-empty sequence of torch.nn.Module")
        if weights is None:
            weights = [1.0 / len(models)] * len(models)
        weights = [float(w) for w in weights]
        if len(weights) != len(models):
            raise ValueError(f"weights must have one entry per model ({len(models)}); got {len(weights)}")
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise ValueError(f"weights must be finite and >= 0 (eq. 3.8); got {weights}")
        if abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1 (eq. 3.8); got sum {sum(weights):.6g}")
        self.members = nn.ModuleList(models)
        self.register_buffer("weights", torch.tensor(weights), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        fused = None
        for w, model in zip(self.weights.tolist(), self.members):
            logits = model(x)
            if fused is not None and logits.shape != fused.shape:
                raise ValueError(
                    f"ensemble members disagree on the logits shape: {tuple(fused.shape)} vs {tuple(logits.shape)}"
                )
            fused = w * logits if fused is None else fused + w * logits
        return fused

    def extra_repr(self) -> str:
        return "weights=[" + ", ".join(f"{w:.4g}" for w in self.weights.tolist()) + "]"
