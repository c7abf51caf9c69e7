"""The spec of a DAG study (``kind: dag``, thesis ch. 2): its keys, the
thesis's defaults, and :class:`DAGStudy`, the resolved form that
:mod:`robustlab.app.dag` (one task) and :mod:`robustlab.app.dag_cross`
(segmenters and detectors together, Table 2.4) run.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from robustlab.app.spec import check_keys, check_mapping

DAG_KEYS = ("name", "title", "chapter", "claim", "claims", "notes", "kind", "task", "seed", "device", "scenes",
            "train", "models", "attack", "targeted", "pictures", "nms_ious", "sums", "smoke", "datasets", "dataset")
TASKS = ("segmentation", "detection")
CROSS_TASK = "cross-task"  # segmenters and detectors on the same scenes (§2.4.3, Table 2.4): robustlab.app.dag_cross
SCENE_DEFAULTS = {"source": "fashion_mnist", "size": 64, "max_objects": 3, "train": 2000, "test": 40,
                  "data_dir": None}
TRAIN_DEFAULTS = {"segmentation": {"epochs": 8, "batch_size": 32, "lr": 1e-2},
                  "detection": {"epochs": 10, "batch_size": 16, "lr": 2e-3}}
ATTACK_DEFAULTS = {"segmentation": {"gamma": 0.5, "max_iter": 200, "ignore_background": False,
                                    "stop_fraction": 0.0},
                   "detection": {"gamma": 0.5, "max_iter": 150, "nms_iou": 0.9, "select_iou": 0.1,
                                 "score_thresh": 0.1, "post_nms_top_n": 3000}}


@dataclass
class DAGStudy:
    """A resolved DAG study: one task, or ``cross-task`` with ``train`` and
    ``attack`` per task and a ``task`` in every model's spec."""

    name: str
    title: str
    task: str
    models: dict[str, dict[str, Any]]
    scenes: dict[str, Any]
    train: dict[str, Any]
    attack: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    pictures: int = 3
    targeted: bool = True
    nms_ious: list[float] = field(default_factory=lambda: [0.7, 0.9])
    sums: list[list[str]] = field(default_factory=list)  # cross-task: the summed perturbations (§2.4.4)
    claims: list[Any] = field(default_factory=list)  # robustlab.app.claims.Claim, checked at load

    def task_of(self, model: str) -> str:
        """The task of one model: a cross-task study mixes segmenters and detectors."""
        return self.models[model].get("task", self.task)

    def train_of(self, task: str) -> dict[str, Any]:
        return self.train[task] if self.task == CROSS_TASK else self.train

    def attack_of(self, task: str) -> dict[str, Any]:
        return self.attack[task] if self.task == CROSS_TASK else self.attack


def resolve_section(values: Any, key: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """A study section (``values``, named ``key`` in errors) over its defaults; unknown keys refused."""
    values = check_mapping(values, key, "study key")
    check_keys(values, defaults, key)
    return {**copy.deepcopy(defaults), **values}


def check_gamma(attack: dict[str, Any], where: str) -> None:
    if not attack["gamma"] > 0:
        raise ValueError(f"{where}.gamma must be > 0 (0-255 units; the thesis's 0.5); got {attack['gamma']!r}")


def dag_claims(raw: dict[str, Any], evaluations: list[str]) -> list[Any]:
    """The study's ``claims`` (:mod:`robustlab.app.claims`), read against the
    evaluations this study writes, before any work."""
    from robustlab.app.claims import parse_claims

    return parse_claims(raw.get("claims"), dict.fromkeys(evaluations))
