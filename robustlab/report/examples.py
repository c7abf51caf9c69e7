"""Adversarial examples a run directory keeps, as rows of clean image,
adversarial image and amplified perturbation, ready to inline as PNGs.

Where the images come from:

- ``robustlab eval`` (robust protocols): ``examples-MODEL.safetensors`` with
  ``clean`` and ``adversarial`` (K, C, H, W) in [0, 1] and ``index`` (K,),
  the samples' positions in the data (their fate is in ``per_sample``);
- ``robustlab study``: the same format, one file per evaluation and model at
  ``evaluations/EVALUATION/examples-MODEL.safetensors``;
- ``robustlab attack``: ``examples.safetensors`` with the first few images'
  ``index``, ``clean``, ``adversarial``, ``y``, ``clean_pred`` and
  ``adv_pred`` (written even with ``--no-save``); failing that (older runs),
  ``adversarial.safetensors`` with ``x_adv``, ``y``, ``clean_pred``,
  ``adv_pred``, ``linf`` per sample and, where recorded, ``clean``; without
  it the clean images are read again from the data the run names, and used
  only if they give back the run's own per-sample ‖δ‖∞ (the same images, in
  the same order).
"""
from __future__ import annotations

import base64
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from robustlab.report.blocks import Example, Examples

_logger = logging.getLogger(__name__)

#: Samples shown per model.
SHOWN = 8


def png(img: Tensor) -> str:
    """An image (C, H, W) in [0, 1] (C = 1 or 3) as base64 PNG text."""
    from PIL import Image

    arr = (img.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr[0] if arr.shape[0] == 1 else arr.permute(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(arr.numpy()).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def amplified(delta: Tensor) -> tuple[Tensor, float]:
    """A perturbation (C, H, W) scaled to fill [0, 1] around 0.5 grey, and the
    gain: 0.5 + δ · 0.5 / max|δ| (a zero perturbation stays plain grey)."""
    peak = float(delta.abs().max())
    gain = 0.5 / peak if peak > 0 else 0.0
    return (0.5 + gain * delta).clamp(0, 1), gain


def rows(clean: Tensor, adversarial: Tensor, captions: Sequence[str]) -> list[Example]:
    """One :class:`Example` per sample of (K, C, H, W) clean / adversarial images."""
    out = []
    for x, a, caption in zip(clean, adversarial, captions):
        pert, gain = amplified(a.float() - x.float())
        out.append(Example(caption, png(x), png(a), png(pert), f"×{gain:.0f}" if gain else "= 0",
                           pixelated=x.shape[-1] <= 96))
    return out


def _read(path: Path) -> dict[str, Tensor] | None:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # a torn or foreign file: the report goes on without the images
        _logger.warning("%s: unreadable (%s); the report shows no examples from it", path, err)
        return None


def _fate(i: int, per_sample: Mapping[str, Any] | None) -> str:
    if not per_sample or i >= len(per_sample.get("broken_by") or []):
        return ""
    by, at = per_sample["broken_by"][i], per_sample["broken_at"][i]
    if by == "clean":
        return "wrong when clean"
    if by is None:
        return "robust"
    return f"broken by {by} at step {at}"


def class_name(k: int, classes: Sequence[str] | None) -> str:
    """Class ``k`` by its name where the dataset gives names, else its index."""
    return str(classes[k]) if classes and 0 <= k < len(classes) else str(k)


def kept_examples(path: Path, title: str, per_sample: Mapping[str, Any] | None = None,
                  classes: Sequence[str] | None = None) -> Examples | None:
    """The grid of an ``examples-*.safetensors`` file (``clean``, ``adversarial``,
    ``index``; ``y`` and ``adv_pred`` where recorded, shown as ``label → prediction``)."""
    t = _read(path) if path.is_file() else None
    if not t or "clean" not in t or "adversarial" not in t:
        return None
    index = t["index"].tolist() if "index" in t else list(range(len(t["clean"])))
    fates = [_fate(i, per_sample) for i in index]
    # the successful attacks first, then the robust samples, then those wrong already when clean
    order = sorted(range(len(index)), key=lambda j: (fates[j] == "wrong when clean", fates[j] == "robust", j))
    order = order[:SHOWN]
    labelled = "y" in t and "adv_pred" in t and len(t["y"]) == len(index) == len(t["adv_pred"])
    captions = []
    for j in order:
        what = (f"{class_name(int(t['y'][j]), classes)} → {class_name(int(t['adv_pred'][j]), classes)}"
                if labelled else "")
        captions.append(" · ".join(p for p in (f"#{index[j]}", fates[j], what) if p))
    return Examples(title, rows(t["clean"][order], t["adversarial"][order], captions))


def study_examples(run_dir: Path | None, evaluation: str, record: Mapping[str, Any]) -> list[Examples]:
    """Every model's grid of one study evaluation: the files its record names
    (``examples``: label → path relative to the run directory) or, failing
    that, ``evaluations/EVALUATION/examples-*.safetensors``."""
    if run_dir is None:
        return []
    named = record.get("examples")
    if isinstance(named, Mapping):
        files = [(str(label), run_dir / str(rel)) for label, rel in named.items()]
    else:
        folder = run_dir / "evaluations" / evaluation
        files = [(p.stem.removeprefix("examples-"), p) for p in sorted(folder.glob("examples-*.safetensors"))]
    per_sample = record.get("per_sample") or {}
    out = []
    for label, path in files:
        grid = kept_examples(path, f"adversarial examples of {label}", per_sample.get(label))
        if grid is not None:
            out.append(grid)
    return out


def _clean_from_data(data: Mapping[str, Any], k: int) -> Tensor | None:
    """The first ``k`` images of the data an attack run names (never downloaded)."""
    from robustlab.data import load_dataset

    try:
        ds = load_dataset(str(data["name"]), str(data.get("split") or "test"), limit=k, download=False,
                          data_dir=data.get("data_dir"), size=data.get("image_size"))
        return torch.stack([ds[i][0] for i in range(k)]).float()
    except Exception as err:  # absent files, another layout: no clean images, said in the report
        _logger.info("clean images of %s not readable (%s)", data.get("name"), err)
        return None


def attack_examples(run_dir: Path | None, results: Mapping[str, Any]) -> Examples | None:
    """The grid of a ``robustlab attack`` run (``examples.safetensors``, else ``adversarial.safetensors``)."""
    if run_dir is None:
        return None
    kept = run_dir / "examples.safetensors"
    t = _read(kept) if kept.is_file() else None
    if t and "clean" in t and "adversarial" in t:
        t = {**t, "x_adv": t["adversarial"]}
    else:
        path = run_dir / "adversarial.safetensors"
        t = _read(path) if path.is_file() else None
    if not t or "x_adv" not in t or not len(t["x_adv"]):
        return None
    k = min(SHOWN, len(t["x_adv"]))
    adv = t["x_adv"][:k].float()
    clean = t["clean"][:k].float() if "clean" in t else None
    note = ""
    if clean is None and isinstance(results.get("data"), Mapping):
        clean = _clean_from_data(results["data"], k)
        if clean is not None and clean.shape == adv.shape and "linf" in t:
            again = (adv - clean).flatten(1).abs().amax(1)
            if not torch.allclose(again, t["linf"][:k].float(), atol=1e-4):
                clean = None  # other images than the attacked ones: no perturbation is shown
        elif clean is not None and clean.shape != adv.shape:
            clean = None
        if clean is not None:
            note = "clean images read again from the data (the run did not store them)"
    if clean is None:
        clean, note = adv, ("the run stored no clean images and the data could not be read again: the "
                            "adversarial images are shown, without their perturbation")
    captions = []
    index = t["index"].tolist() if "index" in t else list(range(k))
    for i in range(k):
        parts = [f"#{index[i]}"]
        if "y" in t and "adv_pred" in t:
            y, a = int(t["y"][i]), int(t["adv_pred"][i])
            c = int(t["clean_pred"][i]) if "clean_pred" in t else y
            fate = "wrong when clean" if c != y else "fooled" if a != y else "robust"
            name = [class_name(k, results.get("classes")) for k in (y, c, a)]
            parts.append(f"label {name[0]}: clean → {name[1]}, adversarial → {name[2]} ({fate})")
        captions.append(" · ".join(parts))
    grid = Examples("adversarial examples", rows(clean, adv, captions), note)
    if clean is adv:
        for e in grid.items:
            e.perturbation, e.gain = "", ""
    return grid
