"""The one training loop; recipes decide how a batch becomes a loss.

    for each step:  lr ← schedule(step)
                    batch ← recipe.prepare(model, x, y)      (attacks, augmentations)
                    loss  ← recipe.loss(model, batch)         (one DDP forward)
                    backward, clip, optimizer step

Around it: AMP, channels_last, metrics to ``metrics.jsonl`` (and TensorBoard,
callbacks: :mod:`robustlab.train.sinks`), a progress bar,
atomic checkpoints every N steps and at every epoch end, bit-exact resume,
DDP through ``torchrun`` (see :mod:`robustlab.train.distributed`), and the
running-statistics switch for the last epochs (§6.4.3).
"""
from __future__ import annotations

import gc
import inspect
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustlab._checks import check_batch
from robustlab._io import atomic_write_text
from robustlab._progress import progress
from robustlab.nn.norm import use_running_stats
from robustlab.train import distributed, sinks
from robustlab.train.batches import EpochBatches, LoaderSettings, on_device, to_pixels, training_data
from robustlab.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, restore, save_checkpoint
from robustlab.train.options import TrainOptions, make_optimizer, trainable_parameters
from robustlab.train.recipes import Recipe
from robustlab.train.schedule import LRSchedule, scaled_lr

_logger = logging.getLogger(__name__)

Evaluate = Callable[[nn.Module], dict[str, float]]
StepCallback = Callable[[int, dict[str, Any]], None]  # or Callable[[int], None]
LogCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """What :func:`fit` returns. ``model`` is the recipe's exported model
    (AdvProp: auxiliary BNs dropped), in eval mode."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    run_dir: Path | None = None
    resumed_from: int | None = None


class _RecipeForward(nn.Module):
    """The recipe's loss as one module forward, so DDP sees one forward per
    backward however many BN routes the recipe runs."""

    def __init__(self, model: nn.Module, recipe: Recipe, amp: torch.dtype | None) -> None:
        super().__init__()
        self.model, self.recipe, self.amp = model, recipe, amp

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        device_type = next(iter(batch.values())).device.type
        with torch.autocast(device_type, dtype=self.amp, enabled=self.amp is not None), \
                self.recipe.optimizer_backward():
            return self.recipe.loss(self.model, batch)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 1_024 + rank


def _callables(fs: Any, name: str) -> list[Callable]:
    """``fs`` (one callable or a sequence of them) as a list; TypeError for anything else."""
    if callable(fs):
        return [fs]
    try:
        fs = list(fs)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of callables; got {type(fs).__name__}") from None
    for f in fs:
        if not callable(f):
            raise TypeError(f"{name} must hold callables; got {f!r} ({type(f).__name__})")
    return fs


def _takes_metrics(f: Callable) -> bool:
    """Whether ``f`` accepts two positional arguments, ``f(step, metrics)``."""
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: the one-argument form
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)


def _step_callbacks(on_step: Any) -> list[StepCallback]:
    """``on_step`` as ``f(step, metrics)`` callables; ``f(step)`` ones are wrapped (arity read once)."""
    return [f if _takes_metrics(f) else (lambda step, metrics, f=f: f(step)) for f in _callables(on_step, "on_step")]


def fit(
    model: nn.Module,
    data: object,
    recipe: Recipe | None = None,
    *,
    options: TrainOptions | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    evaluate: Evaluate | None = None,
    on_step: Sequence[StepCallback] = (),
    on_log: Sequence[LogCallback] = (),
    **overrides: Any,
) -> TrainResult:
    """Train ``model`` on ``data`` with ``recipe`` (vanilla if None).

    Args:
        model: any classifier taking [0, 1] images (normalization inside).
        data: an ``(images, labels)`` pair of tensors, a map-style Dataset
            of (image, label) or a DataLoader. In-memory data is sliced;
            anything else is streamed by one DataLoader with ``workers``
            processes kept across epochs, prefetching, pinned memory on CUDA
            (memory flat in the dataset's size). A DataLoader gives its
            dataset, batch size and worker settings (``batch_size=`` and
            ``workers=`` may not contradict it), not its order: robustlab
            draws its own seeded order, the same for any world size
            (exact resume, DDP). Images may be float in [0, 1] or uint8
            (scaled on the device). A dataset from :mod:`robustlab.data`
            with an augmentation draws it from (seed, epoch, index): bit-exact
            resume whatever the workers; a plain dataset's own random
            transforms draw from its workers' RNG (not resume-exact).
        recipe: from :func:`robustlab.train.recipes.create`.
        options: :class:`TrainOptions`; keyword ``overrides`` replace fields
            (``fit(model, data, epochs=3, lr=0.05)``).
        out: run directory for ``metrics.jsonl``, checkpoints and the exported
            model (``model.safetensors`` + ``model.json`` when the model was
            made by ``create_model``), and ``tensorboard/`` with
            ``log=["jsonl", "tensorboard"]``. Nothing is written without it.
        resume: continue from the newest checkpoint in ``out`` (bit for bit on
            CPU); starts afresh if there is none.
        evaluate: ``evaluate(model) -> {name: value}`` run on rank 0 after
            every ``eval_every`` epochs, the model in eval mode; logged.
        on_step: callables run on every rank after every optimizer step, as
            ``f(step)`` or, when ``f`` takes two positional arguments (read
            once, before training), ``f(step, metrics)``: the step's logs
            (``loss``, the recipe's accuracies …) as 0-d detached tensors of
            this process (not averaged over DDP ranks), still on the device so
            that no step waits for the GPU (``float(v)`` does), and ``"lr"``,
            the step's learning rate (a float).
        on_log: callables ``f(record)`` run on rank 0 with every record
            ``metrics.jsonl`` gets (train records every ``log_every`` steps,
            epoch records; averaged over ranks), with or without ``out``:
            the place to forward metrics to wandb, MLflow …
    """
    opts = options or TrainOptions()
    if overrides:
        opts = TrainOptions.from_dict({**opts.to_dict(), **overrides})
    recipe = recipe or Recipe()
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must come from robustlab.train.recipes.create; got {type(recipe).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    step_callbacks, log_callbacks = _step_callbacks(on_step), _callables(on_log, "on_log")
    if out is not None:
        sinks.require(opts.log)  # a missing tensorboard fails before any folder or training
    recipe.check_model(model)
    dataset, settings, loader_batch = training_data(data)
    if settings is not None:  # a DataLoader: its batch size and worker settings, robustlab's seeded order
        opts = _loader_options(opts, overrides, loader_batch, settings)
    info = distributed.setup(opts.device)
    if opts.amp == "fp16" and info.device.type != "cuda":
        raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' or none on CPU")
    batches = EpochBatches(on_device(dataset, info.device), opts.batch_size, rank=info.rank, world=info.world_size,
                           seed=opts.seed, workers=opts.workers, settings=settings, device=info.device)
    x0, y0 = batches.first()
    check_batch(to_pixels(x0), {"y": y0})  # pixels in [0, 1], integer labels: refused before any work
    left = len(dataset) - batches.steps_per_epoch * opts.batch_size
    if left and info.is_main:  # every step has the whole global batch (the LR scaling rule, DDP's equal split)
        _logger.info("an epoch is %d steps of %d images: %d images sit out each epoch (another random %d each "
                     "time)", batches.steps_per_epoch, opts.batch_size, left, left)
    run_dir = Path(out) if out is not None else None
    if run_dir is not None and info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    recipe.label_smoothing = opts.label_smoothing
    classes = tuple(getattr(getattr(dataset, "info", None), "classes", None) or ())  # recorded in model.json
    return _Trainer(model, recipe, opts, batches, info, run_dir, evaluate, step_callbacks, log_callbacks,
                    classes=classes).run(resume)


def _loader_options(opts: TrainOptions, overrides: dict[str, Any], batch_size: int | None,
                    settings: LoaderSettings) -> TrainOptions:
    """``opts`` with a DataLoader's batch size and workers; an explicit contradicting override is refused."""
    given = {"batch_size": batch_size, "workers": settings.workers}
    for key, value in given.items():
        if key in overrides and value is not None and overrides[key] != value:
            raise ValueError(f"{key}={overrides[key]!r} contradicts the DataLoader's {key} {value}; "
                             f"pass one of them (robustlab uses the DataLoader's settings)")
    if batch_size is None:
        raise ValueError("data: the DataLoader has no batch_size (it was given a batch_sampler); robustlab draws "
                         "its own order, so give it batch_size=N")
    return TrainOptions.from_dict({**opts.to_dict(), **{k: v for k, v in given.items() if v is not None}})


class _Trainer:
    def __init__(self, model: nn.Module, recipe: Recipe, opts: TrainOptions, batches: EpochBatches,
                 info: distributed.Dist, run_dir: Path | None, evaluate: Evaluate | None,
                 on_step: Sequence[StepCallback], on_log: Sequence[LogCallback], *,
                 classes: Sequence[str] = ()) -> None:
        self.recipe, self.opts, self.batches, self.info = recipe, opts, batches, info
        self.classes = list(classes)
        self.run_dir, self.evaluate, self.on_step, self.on_log = run_dir, evaluate, on_step, on_log
        self.sinks: list[sinks.Sink] = []  # opened by run(), on rank 0 only
        self.memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
        self.model = model.to(info.device, memory_format=self.memory_format)
        if opts.sync_bn and info.enabled and info.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.spe = batches.steps_per_epoch
        self.total = opts.epochs * self.spe
        base = scaled_lr(opts.lr, opts.batch_size, opts.base_batch)
        self.schedule = LRSchedule(base, self.spe, opts.epochs, opts.schedule, opts.milestones, opts.gamma,
                                   opts.decay_every, opts.warmup_epochs)
        params = trainable_parameters(self.model, opts.trainable)
        self.optimizer = make_optimizer(params, opts, self.schedule.lr_at(0))
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(opts.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=opts.amp == "fp16")
        forward = _RecipeForward(self.model, recipe, amp)
        if info.enabled:
            ids = [info.device] if info.device.type == "cuda" else None
            forward = nn.parallel.DistributedDataParallel(forward, device_ids=ids)
        self.forward = forward
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.window: dict[str, float | Tensor] = {}
        self.epoch_sums: dict[str, float | Tensor] = {}
        self.train_seconds = 0.0

    # -- bookkeeping -------------------------------------------------------
    def _meta(self, sums: dict[str, dict[str, float]]) -> dict[str, Any]:
        return {"epoch": self.step // self.spe, "steps_per_epoch": self.spe, "batch_size": self.opts.batch_size,
                "world_size": self.info.world_size, "history": self.history, **sums,
                "train_seconds": self.train_seconds, "recipe": self.recipe.config()}

    def _summed(self, sums: dict[str, float | Tensor]) -> dict[str, float]:
        """Running sums added over the ranks (every rank calls it): what a
        resume gives rank 0 alone, the others starting from zero."""
        if not self.info.enabled or not sums:
            return _floats(sums)
        mean = self._reduce(sums, 1)
        return {k: v * self.info.world_size for k, v in mean.items()}

    def _save(self, every_rank: bool = True) -> None:
        """A checkpoint, written by rank 0; ``every_rank``: all ranks call it
        (the metric sums are added over them; rank 0 alone keeps its own)."""
        if self.run_dir is None:
            return
        sums = {"window": self._summed(self.window), "epoch_sums": self._summed(self.epoch_sums)} if every_rank \
            else {"window": _floats(self.window), "epoch_sums": _floats(self.epoch_sums)}
        if self.info.is_main:
            save_checkpoint(self.run_dir, self.step, model=self.model, optimizer=self.optimizer, scaler=self.scaler,
                            meta=self._meta(sums), keep=self.opts.keep_checkpoints)

    def _resume(self) -> int | None:
        if self.run_dir is None:
            raise ValueError("resume=True needs the run directory: pass out=")
        found = latest_checkpoint(self.run_dir)
        if not distributed.broadcast_flag(self.info, found is not None):
            _logger.info("no checkpoint in %s: starting afresh", self.run_dir)
            return None
        found = found or latest_checkpoint(self.run_dir)  # ranks share the run directory
        try:
            tensors, meta = load_checkpoint(found)
        except CheckpointError as err:
            older = sorted(p.name for p in found.parent.iterdir() if p.is_dir() and p.name < found.name)
            hint = (f"; remove {found} to resume from the one before it ({older[-1]})" if older
                    else f"; remove {found} to start afresh")
            raise CheckpointError(f"{err}{hint}") from None
        for key, mine in (("steps_per_epoch", self.spe), ("batch_size", self.opts.batch_size),
                          ("world_size", self.info.world_size)):
            if meta.get(key) != mine:
                raise ValueError(f"checkpoint {found} was written with {key}={meta.get(key)}; this run has {mine}")
        restore(tensors, meta, model=self.model, optimizer=self.optimizer, scaler=self.scaler)
        self.step, self.history = int(meta["step"]), list(meta["history"])
        # The sums were added over the ranks: rank 0 carries them, the others start from zero (each rank's
        # own part, restored on every rank, was counted world-size times by the mean over ranks).
        self.window, self.epoch_sums = ({k: (v if self.info.is_main else 0.0) for k, v in meta[key].items()}
                                        for key in ("window", "epoch_sums"))
        self.train_seconds = float(meta["train_seconds"])
        if self.info.is_main:
            _truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        _logger.info("resumed from %s (step %d)", found, self.step)
        return self.step

    def _log(self, record: dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        for sink in self.sinks:
            sink.write(record)
        for f in self.on_log:
            f(dict(record))  # a copy: the record is also the history's

    def _reduce(self, sums: dict[str, float | Tensor], count: int) -> dict[str, float]:
        if not sums:
            return {}
        keys = sorted(sums)
        dev = self.info.device if self.info.device.type == "cuda" else torch.device("cpu")  # NCCL: CUDA only
        values = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=dev) for k in keys])
        values = distributed.mean_over_ranks(self.info, values) / max(count, 1)
        return dict(zip(keys, values.tolist()))

    # -- the loop ------------------------------------------------------------
    def run(self, resume: bool) -> TrainResult:
        resumed = self._resume() if resume else None
        if self.run_dir is not None and self.info.is_main:
            self.sinks = sinks.open_sinks(self.opts.log, self.run_dir, resumed)
        bar = progress(self.total, f"train {self.recipe.name}", "step", initial=self.step,
                       enabled=self.opts.progress and self.info.is_main)
        try:
            while self.step < self.total:
                self._epoch(self.step // self.spe, bar)
        finally:
            bar.close()
            sinks.close_all(self.sinks)  # a crashed run's records are on disk too
        if self.opts.bn_running_last:
            use_running_stats(self.model, False)
        exported = self.recipe.export(self.model).eval()
        seconds = self.train_seconds
        result = TrainResult(exported, self.history, self.step, seconds,
                             self.step * self.opts.batch_size / seconds if seconds else 0.0, self.run_dir, resumed)
        if self.run_dir is not None and self.info.is_main:
            _export(exported, self.run_dir, result, self.recipe, self.opts, self.classes)
        distributed.barrier(self.info)
        if self.info.enabled:
            # Free the DDP wrapper (its reducer holds process-group work) now, while the group
            # lives: left to interpreter exit, after destroy_process_group, a rank could abort
            # with "terminate called without an active exception" (seen twice in the suite).
            self.forward = None
            gc.collect()
        return result

    def _epoch(self, epoch: int, bar: Any) -> None:
        opts = self.opts
        if opts.bn_running_last:
            use_running_stats(self.model, epoch >= opts.epochs - opts.bn_running_last)
        self.model.train()
        # Wall time of training steps only (no evaluation, no checkpoint writes). The GPU is
        # synchronized only where the clock is read, so the host keeps queueing work ahead.
        mark = time.perf_counter()
        for x, y in self.batches.epoch(epoch, skip=self.step - epoch * self.spe):
            logs = self._train_step(x, y)
            for k, v in logs.items():
                self.window[k] = self.window.get(k, 0.0) + v
                self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
            self.step += 1
            bar.update(1)
            if self.step % opts.log_every == 0:
                record = self._reduce(self.window, opts.log_every)
                self.window = {}
                if not math.isfinite(record.get("loss", 0.0)):
                    raise FloatingPointError(f"the training loss became {record['loss']} by step {self.step}; "
                                             "lower the learning rate")
                self._log({"kind": "train", "step": self.step, "epoch": self.step / self.spe,
                           "lr": self.schedule.lr_at(self.step - 1), **record})
                bar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}")
            if self.on_step:
                metrics = {**logs, "lr": self.schedule.lr_at(self.step - 1)}
                for f in self.on_step:
                    f(self.step, metrics)
            if opts.checkpoint_every and self.step % opts.checkpoint_every == 0 and self.step % self.spe:
                mark = self._clock(mark)
                self._save()
                mark = time.perf_counter()
        self._clock(mark)
        self._end_epoch(epoch)

    def _clock(self, mark: float) -> float:
        if self.info.device.type == "cuda":
            torch.cuda.synchronize(self.info.device)
        now = time.perf_counter()
        self.train_seconds += now - mark
        return now

    def _train_step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        dev, opts = self.info.device, self.opts
        x = to_pixels(x.to(dev, non_blocking=True)).contiguous(memory_format=self.memory_format)
        y = y.to(dev, non_blocking=True)
        lr = self.schedule.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.recipe.prepare(self.model, x, y, _step_seed(opts.seed, self.step, self.info.rank))
        loss, logs = self.forward(batch)
        self.scaler.scale(loss).backward()
        if opts.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), opts.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        distributed.average_running_stats(self.info, self.model)  # every rank: the same running statistics
        self.optimizer.zero_grad(set_to_none=True)
        return {k: v.detach().float() for k, v in logs.items()}

    def _end_epoch(self, epoch: int) -> None:
        record = {"kind": "epoch", "epoch": epoch + 1, "step": self.step,
                  **{f"train_{k}": v for k, v in self._reduce(self.epoch_sums, self.spe).items()}}
        self.epoch_sums = {}
        if not math.isfinite(record.get("train_loss", 0.0)):
            raise FloatingPointError(f"the training loss became {record['train_loss']} in epoch {epoch + 1}; "
                                     "lower the learning rate")
        last = epoch + 1 == self.opts.epochs
        if self.evaluate is not None and self.info.is_main and ((epoch + 1) % self.opts.eval_every == 0 or last):
            try:
                record.update(self.evaluate(self.recipe.export(self.model).eval()))
            except (Exception, KeyboardInterrupt):  # an unreadable test image, a diverged model, Ctrl-C:
                self._save(every_rank=False)  # the epoch's training is kept: the same command continues after it
                raise
            finally:
                self.model.train()
        record["train_seconds"] = round(self.train_seconds, 3)
        self.history.append(record)
        self._log(record)
        _logger.info("epoch %d/%d: %s", epoch + 1, self.opts.epochs, ", ".join(sinks.metric_cells(record)))
        self._save()


def _floats(sums: dict[str, float | Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in sums.items()}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the metrics a killed run logged after its last checkpoint."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # torn by the kill: the write it belonged to is redone
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON; the metrics file is corrupted") from None
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{path}: line {i + 1} is not a metrics record (no 'step')")
        if record["step"] <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _export(model: nn.Module, run_dir: Path, result: TrainResult, recipe: Recipe, opts: TrainOptions,
            classes: list[str]) -> None:
    from robustlab.models.checkpoint import save_model, save_weights

    meta = {"recipe": recipe.config(), "train": opts.to_dict(), "steps": result.steps,
            "final": result.history[-1] if result.history else {}}
    if classes:  # an evaluation on a folder of other class names is refused by them (its labels would be shifted)
        meta["classes"] = classes
    if getattr(model, "robustlab_spec", None) is not None:
        save_model(model, run_dir, meta=meta)
    else:  # a model from elsewhere: its weights, and the metadata beside them
        save_weights(model, run_dir, meta=meta)
