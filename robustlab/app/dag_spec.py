"""The spec of a DAG study (``kind: dag``, thesis ch. 2): its keys, the
thesis's defaults, and :class:`DAGStudy`, the resolved form that
:mod:`robustlab.app.dag` (one task) and :mod:`robustlab.app.dag_cross`
(segmenters and detectors together, Table 2.4) run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from robustlab.app.spec import SpecError, from_mapping
from robustlab.units import parse_eps

DAG_KEYS = ("name", "title", "chapter", "claim", "claims", "notes", "kind", "task", "seed", "device", "scenes",
            "train", "models", "attack", "targeted", "pictures", "nms_ious", "sums", "smoke", "datasets", "dataset")
TASKS = ("segmentation", "detection")
CROSS_TASK = "cross-task"  # segmenters and detectors on the same scenes (§2.4.3, Table 2.4): robustlab.app.dag_cross
@dataclass
class SceneSpec:
    """The scenes (``robustlab.data.make_scenes``): objects of ``source`` on a
    ``size``² canvas, ``train`` / ``test`` scenes made from a seed."""

    source: str = "fashion_mnist"
    size: int = 64
    max_objects: int = 3
    train: int = 2000
    test: int = 40
    data_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DAGTrainSpec:
    """How a segmenter is trained (``robustlab.train.dense``)."""

    epochs: int = 8
    batch_size: int = 32
    lr: float = 1e-2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DetectorTrainSpec(DAGTrainSpec):
    """How a detector is trained (``robustlab.train.dense``)."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 2e-3


#: Eq. (2.3)'s step γ (§2.3.1) in the thesis's 0-255 units.
GAMMA = 0.5


def parse_gamma(value: float | str, name: str = "gamma") -> float:
    """DAG's γ as a user writes it, in the notations of a budget
    (:func:`robustlab.units.parse_eps`: ``0.5`` in 0-255 units, ``0.5/255``,
    ``0.002px``), in [0, 1] pixels; errors name ``name``.

    Raises:
        ValueError: not a budget, or not > 0.
    """
    positive = f"{name} must be > 0 (0-255 units; the thesis's {GAMMA}); got {value!r}"
    try:
        gamma = parse_eps(value, name)
    except ValueError:
        raw = str(value).strip()
        if raw.startswith("-") and _parses(raw[1:], name):  # -1, -1/255, -0.002px: a sign, not a notation, is wrong
            raise ValueError(positive) from None
        raise
    if not gamma > 0:
        raise ValueError(positive)
    return gamma


def _parses(text: str, name: str) -> bool:
    try:
        parse_eps(text, name)
    except ValueError:
        return False
    return True


@dataclass
class _GammaSpec:
    """γ as the study or the command line writes it (``gamma``: kept by
    ``to_dict``, so model keys and results.json read as written) and parsed
    once, when the spec is made, into pixels (``pixel_gamma``)."""

    gamma: float | str = GAMMA
    pixel_gamma: float = field(default=0.0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.pixel_gamma = parse_gamma(self.gamma)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "pixel_gamma"}


@dataclass
class DAGAttackSpec(_GammaSpec):
    """DAG on a segmenter (``robustlab.attacks.dag_segmentation``); ``gamma``
    in the notations of a budget, 0.5 in the thesis's 0-255 units (§2.3.1)."""

    max_iter: int = 200
    ignore_background: bool = False
    stop_fraction: float = 0.0

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the DAG attack, γ in [0, 1] pixels."""
        return {**{k: v for k, v in self.to_dict().items() if k != "gamma"}, "gamma": self.pixel_gamma}


@dataclass
class DetectorAttackSpec(_GammaSpec):
    """DAG on a detector (``robustlab.attacks.dag_detection``): the RPN's NMS
    IoU (denser proposals, §2.2.3) and the proposals it attacks."""

    max_iter: int = 150
    nms_iou: float = 0.9
    select_iou: float = 0.1
    score_thresh: float = 0.1
    post_nms_top_n: int = 3000

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the DAG attack but ``nms_iou`` (a positional argument), γ in [0, 1] pixels."""
        return {**{k: v for k, v in self.to_dict().items() if k not in ("gamma", "nms_iou")},
                "gamma": self.pixel_gamma}


#: The thesis's settings per task; every field has its default in the class.
TRAIN_SPECS: dict[str, type[DAGTrainSpec]] = {"segmentation": DAGTrainSpec, "detection": DetectorTrainSpec}
ATTACK_SPECS: dict[str, type[DAGAttackSpec] | type[DetectorAttackSpec]] = {
    "segmentation": DAGAttackSpec, "detection": DetectorAttackSpec}


@dataclass
class DAGModelSpec:
    """One dense model: its width, its seed and (cross-task studies) its task."""

    width: int
    seed: int
    task: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As the perturbation cache keys it (no ``task`` in a single-task study)."""
        return {**({"task": self.task} if self.task is not None else {}), "width": self.width, "seed": self.seed}




@dataclass
class DAGStudy:
    """A resolved DAG study: one task, or ``cross-task`` with ``train`` and
    ``attack`` per task and a ``task`` in every model's spec."""

    name: str
    title: str
    task: str
    models: dict[str, DAGModelSpec]
    scenes: SceneSpec
    train: Any  # DAGTrainSpec; cross-task: {task: DAGTrainSpec}
    attack: Any  # DAGAttackSpec / DetectorAttackSpec; cross-task: {task: ...}
    raw: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    pictures: int = 3
    targeted: bool = True
    nms_ious: list[float] = field(default_factory=lambda: [0.7, 0.9])
    sums: list[list[str]] = field(default_factory=list)  # cross-task: the summed perturbations (§2.4.4)
    claims: list[Any] = field(default_factory=list)  # robustlab.app.claims.Claim, checked at load
    form: str = "full"  # "smoke" under --smoke (robustlab.app.study.load_study)

    def task_of(self, model: str) -> str:
        """The task of one model: a cross-task study mixes segmenters and detectors."""
        return self.models[model].task or self.task

    def train_of(self, task: str) -> DAGTrainSpec:
        return self.train[task] if self.task == CROSS_TASK else self.train

    def attack_of(self, task: str) -> Any:
        return self.attack[task] if self.task == CROSS_TASK else self.attack

    def attack_options(self) -> dict[str, Any]:
        """The attack section as results.json records it (per task for a cross-task study)."""
        if self.task == CROSS_TASK:
            return {t: a.to_dict() for t, a in self.attack.items()}
        return self.attack.to_dict()


def resolve_section(values: Any, key: str, cls: type) -> Any:
    """A study section (``values``, named ``key`` in errors) as ``cls``, over its thesis defaults;
    a non-mapping and unknown keys refused (:func:`robustlab.app.spec.from_mapping`), a bad
    value (γ, parsed as the spec is made) named ``KEY.OPTION``."""
    try:
        return from_mapping(cls, values, key, what="study key")
    except SpecError:
        raise
    except ValueError as err:  # the spec's own check: the message starts with the option's name
        raise ValueError(f"{key}.{err}") from None


def dag_claims(raw: dict[str, Any], evaluations: list[str]) -> list[Any]:
    """The study's ``claims`` (:mod:`robustlab.app.claims`), read against the
    evaluations this study writes, before any work."""
    from robustlab.app.claims import parse_claims

    return parse_claims(raw.get("claims"), dict.fromkeys(evaluations))
