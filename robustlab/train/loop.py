"""The one training loop; recipes decide how a batch becomes a loss.

    for each step:  lr ← schedule(step)
                    batch ← recipe.prepare(model, x, y)      (attacks, augmentations)
                    loss  ← recipe.loss(model, batch)         (one DDP forward)
                    backward, clip, optimizer step

Around it: AMP, channels_last, metrics to ``metrics.jsonl``, a progress bar,
atomic checkpoints every N steps and at every epoch end, bit-exact resume,
DDP through ``torchrun`` (see :mod:`robustlab.train.distributed`), and the
running-statistics switch for the last epochs (§6.4.3).
"""
from __future__ import annotations

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
from robustlab._io import atomic_write_text, write_json
from robustlab.nn.norm import use_running_stats
from robustlab.train import distributed
from robustlab.train.batches import EpochBatches, as_dataset, on_device
from robustlab.train.checkpoint import latest_checkpoint, load_checkpoint, restore, save_checkpoint
from robustlab.train.options import TrainOptions, make_optimizer
from robustlab.train.recipes import Recipe
from robustlab.train.schedule import LRSchedule, scaled_lr

_logger = logging.getLogger(__name__)

Evaluate = Callable[[nn.Module], dict[str, float]]


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


def fit(
    model: nn.Module,
    data: object,
    recipe: Recipe | None = None,
    *,
    options: TrainOptions | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    evaluate: Evaluate | None = None,
    on_step: Sequence[Callable[[int], None]] = (),
    **overrides: Any,
) -> TrainResult:
    """Train ``model`` on ``data`` with ``recipe`` (vanilla if None).

    Args:
        model: any classifier taking [0, 1] images (normalization inside).
        data: a Dataset of (image, label) or an ``(images, labels)`` tuple.
        recipe: from :func:`robustlab.train.recipes.create`.
        options: :class:`TrainOptions`; keyword ``overrides`` replace fields
            (``fit(model, data, epochs=3, lr=0.05)``).
        out: run directory for ``metrics.jsonl``, checkpoints and the exported
            model (``model.safetensors`` + ``model.json`` when the model was
            made by ``create_model``). Nothing is written without it.
        resume: continue from the newest checkpoint in ``out`` (bit for bit on
            CPU); starts afresh if there is none.
        evaluate: ``evaluate(model) -> {name: value}`` run on rank 0 after
            every ``eval_every`` epochs, the model in eval mode; logged.
        on_step: callables ``f(step)`` run after every optimizer step.
    """
    opts = options or TrainOptions()
    if overrides:
        opts = TrainOptions.from_dict({**opts.to_dict(), **overrides})
    recipe = recipe or Recipe()
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must come from robustlab.train.recipes.create; got {type(recipe).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    recipe.check_model(model)
    dataset = as_dataset(data)
    info = distributed.setup(opts.device)
    if opts.amp == "fp16" and info.device.type != "cuda":
        raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' or none on CPU")
    batches = EpochBatches(on_device(dataset, info.device), opts.batch_size, rank=info.rank, world=info.world_size,
                           seed=opts.seed, workers=opts.workers)
    x0, y0 = next(batches.epoch(0))
    check_batch(x0, {"y": y0})  # pixels in [0, 1], integer labels: refused before any work
    run_dir = Path(out) if out is not None else None
    if run_dir is not None and info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    recipe.label_smoothing = opts.label_smoothing
    return _Trainer(model, recipe, opts, batches, info, run_dir, evaluate, on_step).run(resume)


class _Trainer:
    def __init__(self, model: nn.Module, recipe: Recipe, opts: TrainOptions, batches: EpochBatches,
                 info: distributed.Dist, run_dir: Path | None, evaluate: Evaluate | None,
                 on_step: Sequence[Callable[[int], None]]) -> None:
        self.recipe, self.opts, self.batches, self.info = recipe, opts, batches, info
        self.run_dir, self.evaluate, self.on_step = run_dir, evaluate, on_step
        self.memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
        self.model = model.to(info.device, memory_format=self.memory_format)
        if opts.sync_bn and info.enabled and info.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.spe = batches.steps_per_epoch
        self.total = opts.epochs * self.spe
        base = scaled_lr(opts.lr, opts.batch_size, opts.base_batch)
        self.schedule = LRSchedule(base, self.spe, opts.epochs, opts.schedule, opts.milestones, opts.gamma,
                                   opts.decay_every, opts.warmup_epochs)
        params = [p for p in self.model.parameters() if p.requires_grad]
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
    def _meta(self) -> dict[str, Any]:
        return {"epoch": self.step // self.spe, "steps_per_epoch": self.spe, "batch_size": self.opts.batch_size,
                "world_size": self.info.world_size, "history": self.history,
                "window": _floats(self.window), "epoch_sums": _floats(self.epoch_sums),
                "train_seconds": self.train_seconds, "recipe": self.recipe.config()}

    def _save(self) -> None:
        if self.run_dir is not None and self.info.is_main:
            save_checkpoint(self.run_dir, self.step, model=self.model, optimizer=self.optimizer, scaler=self.scaler,
                            meta=self._meta(), keep=self.opts.keep_checkpoints)

    def _resume(self) -> int | None:
        if self.run_dir is None:
            raise ValueError("resume=True needs the run directory: pass out=")
        found = latest_checkpoint(self.run_dir)
        if not distributed.broadcast_flag(self.info, found is not None):
            _logger.info("no checkpoint in %s: starting afresh", self.run_dir)
            return None
        found = found or latest_checkpoint(self.run_dir)  # ranks share the run directory
        tensors, meta = load_checkpoint(found)
        for key, mine in (("steps_per_epoch", self.spe), ("batch_size", self.opts.batch_size),
                          ("world_size", self.info.world_size)):
            if meta.get(key) != mine:
                raise ValueError(f"checkpoint {found} was written with {key}={meta.get(key)}; this run has {mine}")
        restore(tensors, meta, model=self.model, optimizer=self.optimizer, scaler=self.scaler)
        self.step, self.history = int(meta["step"]), list(meta["history"])
        self.window, self.epoch_sums = dict(meta["window"]), dict(meta["epoch_sums"])
        self.train_seconds = float(meta["train_seconds"])
        if self.info.is_main:
            _truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        _logger.info("resumed from %s (step %d)", found, self.step)
        return self.step

    def _log(self, record: dict[str, Any]) -> None:
        if self.run_dir is not None and self.info.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

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
        bar = _progress(self.total, self.step, self.opts.progress and self.info.is_main, self.recipe.name)
        try:
            while self.step < self.total:
                self._epoch(self.step // self.spe, bar)
        finally:
            bar.close()
        if self.opts.bn_running_last:
            use_running_stats(self.model, False)
        exported = self.recipe.export(self.model).eval()
        seconds = self.train_seconds
        result = TrainResult(exported, self.history, self.step, seconds,
                             self.step * self.opts.batch_size / seconds if seconds else 0.0, self.run_dir, resumed)
        if self.run_dir is not None and self.info.is_main:
            _export(exported, self.run_dir, result, self.recipe, self.opts)
        distributed.barrier(self.info)
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
            for f in self.on_step:
                f(self.step)
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
        x = x.to(dev, non_blocking=True).contiguous(memory_format=self.memory_format)
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
            finally:
                self.model.train()
        record["train_seconds"] = round(self.train_seconds, 3)
        self.history.append(record)
        self._log(record)
        _logger.info("epoch %d: %s", epoch + 1, {k: v for k, v in record.items() if k != "kind"})
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


def _progress(total: int, done: int, enabled: bool, name: str) -> Any:
    from tqdm.auto import tqdm

    # disable=None: tqdm shows the bar only on a terminal (no carriage-return noise in CI logs)
    return tqdm(total=total, initial=done, disable=None if enabled else True, desc=f"train {name}", unit="step",
                dynamic_ncols=True, leave=False)


def _export(model: nn.Module, run_dir: Path, result: TrainResult, recipe: Recipe, opts: TrainOptions) -> None:
    from robustlab._io import write_tensors
    from robustlab.models.checkpoint import save_model

    meta = {"recipe": recipe.config(), "train": opts.to_dict(), "steps": result.steps,
            "final": result.history[-1] if result.history else {}}
    if getattr(model, "robustlab_spec", None) is not None:
        save_model(model, run_dir, meta=meta)
    else:  # a model from elsewhere: its weights, and the metadata beside them
        write_tensors(run_dir / "model.safetensors", model.state_dict())
        write_json(run_dir / "model.json", {"spec": None, "meta": meta})
