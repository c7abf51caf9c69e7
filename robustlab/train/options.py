"""Training options and the optimizer they describe."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from robustlab._checks import check_number
from robustlab.train.schedule import SCHEDULES, LRSchedule
from robustlab.train.sinks import SINKS

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
AMP = (None, "bf16", "fp16")
TRAINABLE = ("all", "bn")


@dataclass
class TrainOptions:
    """Everything the training loop needs besides the model, data and recipe.

    Defaults follow §5.3.1's ResNet recipe scaled to small runs: momentum SGD,
    weight decay 1e-4, the rate ÷10 at the given epochs. The thesis's ImageNet
    runs: ``epochs=110, milestones=(35, 70, 95), lr=0.1, base_batch=256,
    warmup_epochs=5, label_smoothing=0.1`` (§4.5).

    Attributes:
        epochs: passes over the training set.
        batch_size: the *global* batch (split evenly over DDP processes).
        optimizer: ``sgd`` (momentum, optional Nesterov), ``adam``, ``adamw``
            or ``rmsprop`` (§7.5.1: decay 0.9, momentum 0.9).
        lr: base learning rate (for ``base_batch`` images if that is set).
        base_batch: linear scaling rule, lr × batch_size / base_batch.
        schedule, milestones, gamma, decay_every, warmup_epochs: see
            :mod:`robustlab.train.schedule`.
        label_smoothing: ε of label smoothing (§4.5: 0.1).
        grad_clip: clip the global gradient norm to this value.
        amp: ``bf16`` or ``fp16`` mixed precision (fp16 only on CUDA, with a
            grad scaler).
        channels_last: NHWC memory format for model and inputs (GPU speed).
        bn_running_last: train with BN running statistics during the last K
            epochs (§6.4.3: K = 10 of 110).
        trainable: which parameters the optimizer updates: ``all`` (every
            parameter that requires a gradient) or ``bn`` (only the batch
            norms' affine γ and β; every other parameter is frozen,
            ``requires_grad=False``, so it is neither updated nor decayed).
            BN running statistics update as usual either way: §6.4.4's "BN
            re-finetune" of a model started from another's weights.
        checkpoint_every: steps between checkpoints (each epoch end is one too).
        keep_checkpoints: how many checkpoints stay on disk.
        log_every: steps between lines of ``metrics.jsonl``.
        log: where the metric records go (:mod:`robustlab.train.sinks`):
            ``jsonl`` (``metrics.jsonl``, the run's record; always included) and
            ``tensorboard`` (``run_dir/tensorboard``; ``pip install
            'robustlab[tensorboard]'``).
        eval_every: epochs between evaluations (the last epoch is always one).
        seed: seeds initialization-independent randomness: data order, attack
            starts and targets, augmentations.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` …
        workers: DataLoader workers for on-disk datasets.
        sync_bn: SyncBatchNorm under DDP on GPUs.
        progress: show a progress bar (rank 0).
    """

    epochs: int = 1
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    base_batch: int | None = None
    schedule: str = "step"
    milestones: Sequence[float] = field(default_factory=tuple)
    gamma: float = 0.1
    decay_every: float = 2.4
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    amp: str | None = None
    channels_last: bool = False
    bn_running_last: int = 0
    trainable: str = "all"
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    log_every: int = 20
    log: list[str] = field(default_factory=lambda: ["jsonl"])
    eval_every: int = 1
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    sync_bn: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.milestones = tuple(float(m) for m in (self.milestones or ()))
        for name in ("epochs", "batch_size", "log_every", "eval_every"):
            check_number(getattr(self, name), name, low=1, integer=True)
            setattr(self, name, int(getattr(self, name)))
        for name in ("bn_running_last", "workers", "keep_checkpoints", "seed"):
            check_number(getattr(self, name), name, low=0, integer=True)
        if self.checkpoint_every is not None:
            check_number(self.checkpoint_every, "checkpoint_every", low=1, integer=True)
        if self.base_batch is not None:
            check_number(self.base_batch, "base_batch", low=1, integer=True)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}; got {self.schedule!r}")
        check_number(self.lr, "lr", low=0.0, low_open=True)
        check_number(self.momentum, "momentum", low=0.0, high=1.0, high_open=True)
        check_number(self.weight_decay, "weight_decay", low=0.0)
        check_number(self.label_smoothing, "label_smoothing", low=0.0, high=1.0, high_open=True)
        if self.grad_clip is not None:
            check_number(self.grad_clip, "grad_clip", low=0.0, low_open=True)
        if self.amp not in AMP:
            raise ValueError(f"amp must be one of {AMP}; got {self.amp!r}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}; got {self.trainable!r}")
        self.log = _sinks(self.log)
        # the schedule's own checks (gamma, warmup_epochs, decay_every, milestones) before any run starts
        LRSchedule(self.lr, 1, self.epochs, self.schedule, self.milestones, self.gamma, self.decay_every,
                   self.warmup_epochs)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


def _sinks(log: Any) -> list[str]:
    """``log`` as a list of sink names: a string is one sink; ``jsonl`` must be among them."""
    names = [log] if isinstance(log, str) else log
    allowed = ", ".join(SINKS)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"log must be a sink name or a list of them ({allowed}); got {log!r}")
    unknown = [n for n in names if n not in SINKS]
    if unknown:
        raise ValueError(f"log names unknown sink(s) {unknown}; allowed: {allowed} (forward records to other "
                         "trackers with fit(on_log=[f]))")
    if "jsonl" not in names:
        raise ValueError(f"log must include 'jsonl' (metrics.jsonl is the run's record, which resume and reports "
                         f"read); got {list(names)}; allowed: {allowed}")
    return list(dict.fromkeys(names))


def trainable_parameters(model: nn.Module, trainable: str = "all") -> list[nn.Parameter]:
    """The parameters the optimizer updates (:attr:`TrainOptions.trainable`):
    ``all``: those that require a gradient; ``bn``: the batch norms' γ and β
    only, every other parameter frozen (§6.4.4,
    :func:`robustlab.nn.norm.bn_finetune_parameters`)."""
    if trainable == "bn":
        from robustlab.nn.norm import bn_finetune_parameters

        try:
            return bn_finetune_parameters(model)
        except ValueError:
            raise ValueError("trainable='bn' needs a model with batch norms (γ, β) to train; this one has none "
                             "(a GroupNorm model? use trainable='all')") from None
    if trainable != "all":
        raise ValueError(f"trainable must be one of {TRAINABLE}; got {trainable!r}")
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(params: list[nn.Parameter], opts: TrainOptions, lr: float) -> torch.optim.Optimizer:
    if opts.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=opts.momentum, nesterov=opts.nesterov and opts.momentum > 0,
                               weight_decay=opts.weight_decay)
    if opts.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=opts.weight_decay)
    if opts.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=opts.weight_decay)
    # §7.5.1 (EfficientNet): RMSProp with decay 0.9 and momentum 0.9; TF's ε = 1e-3.
    return torch.optim.RMSprop(params, lr=lr, alpha=0.9, momentum=opts.momentum, eps=1e-3,
                               weight_decay=opts.weight_decay)
