"""Plots for reports (matplotlib, headless). Each function takes plain data
(what ``results.json`` holds) and returns a Figure; :func:`save` writes a PNG."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def robustness_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], title: str = "") -> Figure:
    """Accuracy vs PGD iterations, log x-axis (Fig. 4.6, 6.2, 6.3).
    ``curves``: name → {"steps": [...], "accuracy": [...]}."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, c in curves.items():
        steps = [max(s, 1) for s in c["steps"]]
        ax.plot(steps, [100 * a for a in c["accuracy"]], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("attack iterations")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title or "white-box PGD")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def heatmap(rows: Sequence[str], cols: Sequence[str], values: Sequence[Sequence[float]], title: str = "",
            fmt: str = "{:.1f}") -> Figure:
    """A labelled matrix, e.g. transfer success rates (%) source × target (Table 3.1)."""
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2.5, 0.45 * len(rows) + 1.5))
    im = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, fmt.format(v), ha="center", va="center", color="w", fontsize=7)
    fig.colorbar(im, ax=ax)
    ax.set_title(title)
    return fig


def bn_statistics(stats: Mapping[str, Any], layer: str | None = None) -> Figure:
    """Running mean and variance per route on sampled channels (Fig. 6.5)."""
    layer = layer or next(iter(stats))
    entry = stats[layer]
    routes = [k for k in entry if k != "channels"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, key in zip(axes, ("mean", "var")):
        for r in routes:
            ax.plot(range(len(entry["channels"])), entry[r][key], marker=".", label=r)
        ax.set_title(f"running {key} — {layer}", fontsize=9)
        ax.set_xlabel("sampled channel")
        ax.legend(fontsize=8)
    return fig


def training_curves(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Per-epoch training loss and the evaluation accuracies logged with it."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = [h["epoch"] for h in history]
    for key in sorted({k for h in history for k in h if k.startswith("train_loss")}):
        axes[0].plot(epochs, [h.get(key) for h in history], marker="o", label=key)
    for key in sorted({k for h in history for k in h if k.endswith("_acc") or "_acc_" in k}):
        if key.startswith("train_"):
            continue
        pts = [(e, h[key]) for e, h in zip(epochs, history) if key in h]
        axes[1].plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=key)
    axes[0].set_title("training loss")
    axes[1].set_title("evaluation accuracy (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


def activation_curves(names: Sequence[str] = ("relu", "softplus", "psoftplus", "silu", "gelu", "elu", "smoothrelu")
                      ) -> Figure:
    """Activation functions and their derivatives on [−4, 4] (Fig. 5.2)."""
    import torch

    from robustlab.nn.activations import create_activation

    x = torch.linspace(-4, 4, 801, requires_grad=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name in names:
        act = create_activation(name)
        y = act(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        axes[0].plot(x.detach(), y.detach(), label=name)
        axes[1].plot(x.detach(), g, label=name)
    axes[0].set_title("activation")
    axes[1].set_title("derivative")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def image_grid(images: Any, titles: Sequence[str], rows: int = 1) -> Figure:
    """Images (N, C, H, W) in [0, 1] side by side (clean, perturbation ×10, adversarial …)."""
    n = len(titles)
    cols = -(-n // rows)
    fig, axes = plt.subplots(rows, cols, figsize=(1.8 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t in zip(axes.flat, images, titles):
        arr = img.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray" if arr.shape[-1] == 1 else None,
                  vmin=0, vmax=1)
        ax.set_title(t, fontsize=7)
    return fig
