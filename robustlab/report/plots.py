"""Plots for reports (matplotlib, headless). Each function takes plain data
(what ``results.json`` holds) and returns a Figure; :func:`save` writes a PNG."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import torch
from torch import Tensor, nn

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from robustlab.report.format import humanize  # noqa: E402


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def log_steps_axis(ax: Any, values: Sequence[float]) -> None:
    """A log x-axis labelled at every decade (1, 10, 100 …) with minor ticks
    between them; it reaches down to the decade below the smallest value so
    that at least one decade is labelled."""
    lo, hi = min(values), max(values)
    ax.set_xscale("log")
    ax.set_xlim(10 ** math.floor(math.log10(lo)) * 0.9, hi * 1.25)
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_major_formatter(LogFormatter(base=10, labelOnlyBase=True))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10)), numticks=50))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _percent_axis(ax: Any, top: float) -> None:
    ax.set_ylim(0, min(100.0, max(5.0, top * 1.1 + 2)))
    ax.set_ylabel("accuracy (%)")


def robustness_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], title: str = "") -> Figure:
    """Accuracy vs PGD iterations, log x-axis (Fig. 4.6, 6.2, 6.3).
    ``curves``: name → {"steps": [...], "accuracy": [...]}. A 0-iteration
    point (the clean accuracy) cannot sit on a log axis: it is drawn as a
    dotted line of the curve's colour."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    top, xs = 0.0, []
    for name, c in curves.items():
        pts = [(s, 100 * a) for s, a in zip(c["steps"], c["accuracy"]) if a is not None]
        zero = [a for s, a in pts if s <= 0]
        pts = [(s, a) for s, a in pts if s > 0]
        line = ax.plot([s for s, _ in pts], [a for _, a in pts], marker="o", label=name)[0]
        if zero:
            ax.axhline(zero[0], ls=":", color=line.get_color(), lw=1, label=f"{name}, 0 steps")
        top = max([top, *(a for _, a in pts), *zero])
        xs += [s for s, _ in pts]
    log_steps_axis(ax, xs or [1, 10])
    ax.set_xlabel("attack iterations (log scale)")
    _percent_axis(ax, top)
    ax.set_title(title or "white-box PGD")
    ax.grid(alpha=0.3, which="major")
    ax.grid(alpha=0.12, which="minor")
    ax.legend(fontsize=8)
    return fig


def label_colour(rgba: Sequence[float]) -> str:
    """Black or white, whichever contrasts more with a background colour
    (WCAG relative luminance: black wins above L = 0.179)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    luminance = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return "black" if luminance > 0.179 else "white"


def heatmap(rows: Sequence[str], cols: Sequence[str], values: Sequence[Sequence[float | None]], title: str = "",
            fmt: str = "{:.1f}", vmin: float = 0.0, vmax: float = 100.0, label: str = "success rate (%)") -> Figure:
    """A labelled matrix on one fixed colour scale (``vmin``–``vmax``, shared
    by every cell and every report), e.g. transfer success rates (%) of
    (attack, source) rows on target columns (Tables 3.1, 3.2). Each label is
    black or white, whichever reads better on its cell's colour."""
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in r] for r in values], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.25 * len(cols) + 2.8), 0.5 * len(rows) + 1.6))
    cmap = plt.get_cmap("viridis")
    im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=20 if len(cols) > 3 else 0, ha="right" if len(cols) > 3
                  else "center", fontsize=9)
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            if np.isnan(v):
                continue
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=9,
                    color=label_colour(cmap((v - vmin) / (vmax - vmin or 1))))
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title, fontsize=10)
    return fig


def corruption_curves(errors: Mapping[str, Mapping[str, Mapping[Any, float]]], clean: Mapping[str, float] | None = None
                      ) -> Figure:
    """Accuracy vs corruption severity, one line per model: the mean over the
    corruptions first, then one small panel per corruption (ch. 7, ImageNet-C).
    ``errors``: model → corruption → severity → error; ``clean``: model →
    clean accuracy, drawn at severity 0."""
    models = list(errors)
    names = list(dict.fromkeys(c for m in models for c in errors[m]))
    panels = ["mean over corruptions", *names]
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.3 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, panel in zip(axes.flat, panels):
        for k, m in enumerate(models):
            if panel == "mean over corruptions":
                sev = sorted({int(s) for c in errors[m].values() for s in c})
                acc = [100 * (1 - sum(errors[m][c].get(str(s), errors[m][c].get(s, 0.0)) for c in errors[m])
                              / len(errors[m])) for s in sev]
            else:
                by = errors[m].get(panel, {})
                sev = sorted(int(s) for s in by)
                acc = [100 * (1 - by.get(str(s), by.get(s, 0.0))) for s in sev]
            if clean and m in clean:
                sev, acc = [0, *sev], [100 * clean[m], *acc]
            ax.plot(sev, acc, marker="o", ms=3, color=colors[k % len(colors)], label=m)
        ax.set_title(panel.replace("_", " "), fontsize=9)
        ticks = sorted({int(t) for line in ax.get_lines() for t in line.get_xdata()})
        ax.set_xticks(ticks, ["clean" if t == 0 else str(t) for t in ticks])
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        ax.set_xlabel("severity", fontsize=8)
    axes[0][0].set_ylabel("accuracy (%)", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
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
        axes[0].plot(epochs, [h.get(key) for h in history], marker="o", label=humanize(key))
    for key in sorted({k for h in history for k in h if k.endswith("_acc") or "_acc_" in k}):
        if key.startswith("train_"):
            continue
        pts = [(e, h[key]) for e, h in zip(epochs, history) if key in h]
        axes[1].plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=humanize(key))
    axes[0].set_title("training loss")
    axes[1].set_title("evaluation accuracy (%)")
    axes[1].set_ylim(bottom=0)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


def activation_curves(names: Sequence[str] = ("relu", "softplus", "psoftplus", "silu", "gelu", "elu", "smoothrelu")
                      ) -> Figure:
    """Activation functions and their derivatives on [−4, 4] (Fig. 5.2)."""
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


def png_base64(fig: Figure) -> str:
    """A figure as base64 PNG text (closed afterwards), for inlining in a report."""
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


# ------------------------------------------------------------------ dense predictions (ch. 2)

# the class colours of label maps and boxes, (11, 3) in [0, 1]: background black, then
# ten colours far apart from each other (the start of Sasha Trubetskoy's list of 20)
PALETTE = torch.tensor([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 190]],
                       dtype=torch.float32) / 255


def colorize(labels: Tensor) -> Tensor:
    """Label map (H, W) → RGB (3, H, W) in [0, 1] (background black, 255 grey)."""
    lab = labels.long().cpu()
    out = PALETTE[lab.clamp(max=len(PALETTE) - 1) % len(PALETTE)].permute(2, 0, 1)
    return torch.where((lab == 255)[None], torch.full_like(out, 0.5), out)


def with_boxes(image: Tensor, det: Mapping[str, Tensor], score: float = 0.5) -> Tensor:
    """``image`` (3, H, W) in [0, 1] with the boxes of ``det`` ({boxes, labels[, scores]})
    scoring at least ``score`` drawn in their class colours."""
    from torchvision.utils import draw_bounding_boxes

    keep = det["scores"] >= score if "scores" in det else torch.ones(len(det["boxes"]), dtype=torch.bool)
    boxes, labels = det["boxes"][keep], det["labels"][keep]
    img = (image.detach().cpu().clamp(0, 1) * 255).to(torch.uint8)
    colors = [tuple(int(c * 255) for c in PALETTE[int(lab) % len(PALETTE)]) for lab in labels]
    return draw_bounding_boxes(img, boxes, colors=colors or None, width=1).float() / 255


def dag_pictures(task: str, model: nn.Module, x: Tensor, r: Tensor, scenes: Any, count: int) -> Figure | None:
    """Fig. 2.1/2.2 for the first ``count`` images: clean, perturbation ×10
    (+0.5), adversarial, the ground truth and the predictions before and
    after (``task``: segmentation or detection; ``x``, ``r``: (N, 3, H, W),
    ``scenes``: their masks or boxes). None when there is nothing to draw."""
    from robustlab.eval.dense import detect, segment

    n = min(count, x.shape[0])
    if n == 0:
        return None
    x, r = x[:n], r[:n]
    adv = (x + r).clamp(0, 1)
    panels = []
    if task == "segmentation":
        before, after = segment(model, x).cpu(), segment(model, adv).cpu()
        for i in range(n):
            panels += [x[i].cpu(), (10 * r[i] + 0.5).cpu(), adv[i].cpu(), colorize(scenes.masks[i]),
                       colorize(before[i]), colorize(after[i])]
        titles = ["clean", "perturbation ×10", "adversarial", "ground truth", "prediction (clean)",
                  "prediction (adversarial)"] * n
    else:
        before, after = detect(model, x), detect(model, adv)
        for i in range(n):
            panels += [x[i].cpu(), (10 * r[i] + 0.5).cpu(), adv[i].cpu(),
                       with_boxes(x[i], {"boxes": scenes.boxes[i], "labels": scenes.labels[i]}),
                       with_boxes(x[i], before[i]), with_boxes(adv[i], after[i])]
        titles = ["clean", "perturbation ×10", "adversarial", "ground truth", "detections (clean)",
                  "detections (adversarial)"] * n
    return image_grid(panels, titles, rows=n)


def summed_pictures(x: Tensor, r: Tensor, truth: Sequence[Tensor],
                    predictions: Mapping[str, Sequence[Sequence[Tensor]]]) -> Figure:
    """Fig. 2.6: one summed perturbation against every network. Per image, a
    row of the clean image, its ground truth (``truth[i]``, RGB) and each
    network's prediction (``predictions[name][0][i]``, RGB), then a row of
    the perturbation ×10 (+0.5), Trunc(X + r) and each network's prediction
    on it (``predictions[name][1][i]``)."""
    adv = (x + r).clamp(0, 1)
    panels, titles = [], []
    for i in range(len(truth)):
        panels += [x[i].cpu(), truth[i]] + [p[0][i] for p in predictions.values()]
        titles += ["clean", "ground truth"] + [f"{m} (clean)" for m in predictions]
        panels += [(10 * r[i] + 0.5).cpu(), adv[i].cpu()] + [p[1][i] for p in predictions.values()]
        titles += ["perturbation ×10", "adversarial (sum)"] + [f"{m} (sum)" for m in predictions]
    return image_grid(panels, titles, rows=2 * len(truth))


def active_targets(active: Mapping[str, Sequence[Sequence[int]]]) -> Figure:
    """Fig. 2.4: DAG's active targets per iteration, as a percentage of the
    first iteration's, averaged over the images of each model
    (``active``: model → per image, the count at each iteration; an image
    that stopped early keeps its last count)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, per_image in active.items():
        steps = max(len(a) for a in per_image)
        mean = [sum(a[min(t, len(a) - 1)] / max(a[0], 1) for a in per_image) / len(per_image) for t in range(steps)]
        ax.plot(range(steps), [100 * m for m in mean], label=name)
    ax.set_xlabel("DAG iteration")
    ax.set_ylabel("active targets (% of the first iteration)")
    ax.set_title("active targets per iteration (Fig. 2.4)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def batch_vs_running(stats: Mapping[str, Any], layer: str, route: str = "-") -> Figure:
    """Fig. 6.6: the batch statistics a batch induces at ``layer`` against the
    running ones, on sampled channels (``stats``: ``batch_mean``, ``batch_var``,
    ``running_mean``, ``running_var`` lists and ``images``, what the batch
    held; ``route``: the BN route, ``"-"`` for a plain BN)."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, key in zip(axes, ("mean", "var")):
        ax.plot(stats[f"running_{key}"], marker="o", ls="", label="running")
        ax.plot(stats[f"batch_{key}"], marker="x", ls="", label=f"batch ({stats['images']})")
        ax.set_title(f"{key} — {layer}" + (f" [{route}]" if route != "-" else ""), fontsize=9)
        ax.set_xlabel("sampled channel")
        ax.legend(fontsize=8)
    return fig
