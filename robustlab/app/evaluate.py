"""``robustlab eval``: evaluate any model — a run directory, ``timm:NAME``,
``tv:NAME`` or the user's own ``file.py:factory`` — on a dataset, and write
``results.json`` + ``report.html`` into a run directory.

Robust-accuracy protocols (``standard``, ``thesis``, ``quick``) run
:func:`robustlab.eval.evaluate` on every model named, streamed in batches.
The curve and comparison protocols run on every model too: ``whitebox``
(robustness curves against PGD iterations with the masking checklist),
``transfer`` (I-FGSM, MI-FGSM, DI²-FGSM, M-DI²-FGSM between every pair of
models), ``corruption`` (15 corruptions × 5 severities) and ``all``.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from robustlab._checks import check_number, error_line, model_channels
from robustlab._io import pick_device, sha256_file, write_tensors
from robustlab._progress import Progress, duration, progress
from robustlab.app.rundir import RunDir, fingerprint_of, first_free
from robustlab.data import dataset_info, load_dataset, make_loader
from robustlab.data.info import class_difference, imagenet_wnids, subset_indices
from robustlab.eval import protocols as protocol_registry
from robustlab.eval.analysis import bn_statistics
from robustlab.eval.evaluate import evaluate
from robustlab.eval.transfer import transfer_matrix
from robustlab.eval.whitebox import whitebox_protocol
from robustlab.models.resolve import is_checkpoint_spec, is_factory_spec, normalized, resolve_model
from robustlab.models.subset import class_subset
from robustlab.nn.norm import route, route_names
from robustlab.units import budget_text

ROBUST = tuple(protocol_registry.robust_names())
CURVES = ("whitebox", "transfer", "corruption", "all")
PROTOCOLS = ROBUST + CURVES
TRANSFER_ATTACKS = ("ifgsm", "mifgsm", "di2fgsm", "mdi2fgsm")

_logger = logging.getLogger(__name__)


@dataclass
class EvalSpec:
    """Everything ``robustlab eval`` was asked, checked before any work."""

    models: list[str]
    data: str
    protocol: str = "standard"
    eps: float = 8 / 255
    norm: str = "linf"
    weights: str | list[str] | None = None  # a list: one per model, in order (the first len(weights) models)
    mean: list[float] | None = None
    std: list[float] | None = None
    limit: int | None = None
    batch_size: int = 250
    workers: int = 0
    fallback: bool | None = None
    seed: int = 0
    route: str | None = None
    data_dir: str | None = None
    image_size: int | None = None
    device: str = "auto"
    out: str | None = None
    # curve protocols
    steps: list[int] = field(default_factory=lambda: [10, 20, 50, 100, 200])
    step_size: float = 1 / 255
    targeted: bool = False
    restarts: int = 1
    # robust protocols: their options (rl.eval.protocols; --option KEY=VALUE), None: the protocol's own
    options: dict[str, Any] | None = None

    def check(self) -> None:
        if not self.models:
            raise ValueError("give a model: --model SPEC (run directory, timm:NAME, tv:NAME, file.py:factory)")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}; got {self.protocol!r}")
        if self.protocol == "transfer" and len(self.models) < 2:
            raise ValueError("--protocol transfer needs at least two models (repeat --model)")
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"--norm must be linf or l2; got {self.norm!r}")
        if self.norm == "linf" and not 0 < self.eps <= 1:
            raise ValueError(f"--eps must be in (0, 255] (0-255 units) or (0, 1] pixels for L∞; got {self.eps}")
        for key in ("batch_size", "limit", "restarts", "image_size"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise ValueError(f"--{key.replace('_', '-')} must be >= 1; got {v}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0; got {self.workers}")
        check_number(self.seed, "--seed", low=0, high=2**63 - 1, integer=True)
        if isinstance(self.weights, str) and len(self.models) > 1:
            raise ValueError("--weights applies to one model; give one --model with it, or one --weights per "
                             "--model")
        if isinstance(self.weights, list) and len(self.weights) > len(self.models):
            raise ValueError(f"--weights: {len(self.weights)} files for {len(self.models)} models")
        if (self.mean is None) != (self.std is None):
            raise ValueError("--mean and --std must be given together")
        if self.mean is not None and (not self.mean or len(self.mean) != len(self.std)):
            raise ValueError(f"--mean and --std must give one value per channel each; got {self.mean} and "
                             f"{self.std}")
        if self.mean is not None and (max(self.mean) > 1 or max(self.std) > 1 or min(self.std) <= 0):
            raise ValueError(f"--mean and --std are statistics of [0, 1] pixels (0.485,0.456,0.406 and "
                             f"0.229,0.224,0.225), std > 0; got {self.mean} and {self.std}: divide 0-255 values "
                             "by 255")
        if any(s < 1 for s in self.steps):
            raise ValueError(f"--steps must be iteration counts >= 1; got {self.steps}")
        if self.options:
            if self.protocol not in ROBUST:
                raise ValueError(f"--option applies to the robust protocols ({', '.join(ROBUST)}), not "
                                 f"{self.protocol}; its own flags set it (--steps, --step-size, --restarts)")
            try:  # a key the protocol has not, a value of the wrong kind: refused before any loading
                protocol_registry.stages_for(self.protocol, self.eps, self.options, fallback=True)
            except (TypeError, ValueError) as err:
                raise ValueError(f"--option: {err}") from None


def _names(specs: list[str]) -> list[str]:
    out: list[str] = []
    for spec in specs:
        base = Path(spec.split(":")[-1] if ":" in spec and not Path(spec).exists() else spec).name or spec
        name, k = base, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out.append(name)
    return out


def grayscale_folder(data: str, info: Any, models: Iterable[nn.Module]) -> bool:
    """Whether ``data`` is an ImageFolder read as RGB while every model's first
    convolution takes one channel (a network trained with ``data.channels: 1``):
    the folder is then read as grayscale for it."""
    return (str(data).startswith("imagefolder:") and info.channels == 3
            and {model_channels(m) for m in models} == {1})


def trained_classes(model_spec: str) -> list[str] | None:
    """The class names a run or model directory was trained on, as its
    ``model.json`` records them (None: not a directory, or none recorded)."""
    path = Path(model_spec)
    meta_path = path / "model.json" if path.is_dir() else None
    if meta_path is None or not meta_path.is_file():
        return None
    from robustlab._io import read_json_mapping

    trained = (read_json_mapping(meta_path, "a robustlab model.json").get("meta") or {}).get("classes")
    return [str(c) for c in trained] if trained else None


def check_trained_classes(model_spec: str, info: Any) -> None:
    """Refuse data whose class names are not among those the model (a run or
    model directory) was trained on, as its ``model.json`` records them: an
    ImageFolder numbers its classes by sorted name, so one renamed folder
    shifts every label and the accuracy is that of a permutation. Data of
    some of the trained classes, or of all in another order, is scored over
    those classes' outputs (:func:`class_map`)."""
    trained = trained_classes(model_spec)
    if not trained or not info.classes or subset_indices(info.classes, trained) is not None:
        return
    if list(trained) != list(info.classes):
        raise ValueError(f"data: its classes differ from the {len(trained)} that {model_spec} was trained on "
                         f"({class_difference(trained, info.classes, 'training', 'the data')}); a label would "
                         "mean another class: evaluate on folders named as in training")


def imagenet_subset(info: Any) -> bool:
    """Whether the data's classes are some of ImageNet-1k's, named by wnid
    (Imagenette, ImageNet-100, ImageNet-A), not all of them in their order."""
    return subset_indices(getattr(info, "classes", None) or (), imagenet_wnids()) is not None


def build_model(model_spec: str, weights: str | None, info: Any, **kwargs: Any) -> nn.Module:
    """:func:`resolve_model` for the data ``info``: a named network gets one
    output per class of the data, or ImageNet-1k's 1000 when the data's
    classes are ImageNet wnids and its weights are ImageNet's (``DEFAULT``, or
    a file of 1000 outputs); :func:`class_map` then scores it over the data's
    classes. ``kwargs`` go to :func:`resolve_model`."""
    def build(n: int) -> nn.Module:
        return resolve_model(model_spec, weights=weights, num_classes=n, in_channels=info.channels,
                             data_stats=(info.mean, info.std), **kwargs)

    named = not is_checkpoint_spec(model_spec) and not is_factory_spec(model_spec)
    imagenet = named and weights is not None and info.num_classes != 1000 and imagenet_subset(info)
    if imagenet and weights == "DEFAULT":
        return build(1000)
    try:
        return build(info.num_classes)
    except ValueError as err:
        if not imagenet or "mis-shaped" not in str(err):
            raise
        try:
            return build(1000)
        except ValueError:
            raise err from None


def class_map(model_spec: str, model: nn.Module, data: Any, device: torch.device) -> dict[str, Any] | None:
    """Which of the model's outputs are the data's classes, when the data holds
    some of them (or all in another order): a run's trained classes by name,
    an ImageNet-1k model's 1000 by wnid. ``{"of", "outputs", "indices"}``:
    output ``j`` of the scored model is the model's ``indices[j]``
    (:class:`~robustlab.models.ClassSubset`); None: the outputs are the
    data's classes as they are."""
    info = dataset_info(data)
    classes = list(getattr(info, "classes", None) or [])
    trained = trained_classes(model_spec)
    if not classes or (trained is None and not imagenet_subset(info)):
        return None  # the common case costs no forward pass
    if trained is not None:
        indices, of = subset_indices(classes, trained), "the classes it was trained on"
    else:
        indices, of = subset_indices(classes, imagenet_wnids()), "ImageNet-1k"
    outputs = output_count(model, data, device)
    if indices is None or outputs != (len(trained) if trained is not None else 1000):
        return None
    return {"of": of, "outputs": outputs, "indices": list(indices)}


def scored(name: str, model: nn.Module, mapping: dict[str, Any] | None) -> nn.Module:
    """``model`` scored over the outputs ``mapping`` keeps (:func:`class_map`), said in the log."""
    if mapping is None:
        return model
    k = len(mapping["indices"])
    _logger.info("model %s: scored over the %d outputs of the data's classes, of its %d (%s)", name, k,
                 mapping["outputs"], mapping["of"])
    return class_subset(model, mapping["indices"])


def _pretrained(model: nn.Module) -> dict[str, Any] | None:
    """What :func:`~robustlab.models.create_model` recorded of the weights it loaded (None: none)."""
    return (getattr(model, "robustlab_spec", None) or {}).get("pretrained")


def check_trained_head(model_spec: str, model: nn.Module, info: Any) -> None:
    """Refuse a model whose pretrained classifier was replaced by a freshly
    initialized one because the data has another number of classes (what
    fine-tuning wants): evaluating or attacking it measures an untrained head."""
    record = _pretrained(model) or {}
    if record.get("new_head"):
        what = record.get("weights") or record.get("tag") or record.get("name")
        raise ValueError(f"weights: {model_spec}'s pretrained weights ({record.get('source')}: {what}) were made "
                         f"for another number of classes than the data's {info.num_classes}, so its classifier "
                         f"({record['new_head']}) would be a freshly initialized, untrained one: evaluate or attack "
                         "it on data of the weights' classes, or fine-tune it first (robustlab train, model.weights)")


def weights_record(model_spec: str, weights: str | None, model: nn.Module) -> dict[str, Any]:
    """Which weights a model holds, for its results: a run's
    ``model.safetensors`` (the sha256 its ``model.json`` records, checked when
    it was loaded), the library's pretrained weights or a local file (its path
    and sha256); ``{"source": "factory"}`` for a factory's network given no
    file (it loads its own, or none), ``{"source": "random"}`` for a named
    network (built-in, ``timm:``, ``tv:``) given none."""
    from robustlab._io import read_json_mapping
    from robustlab.models.checkpoint import META, WEIGHTS

    if is_checkpoint_spec(model_spec):
        folder = Path(model_spec) if Path(model_spec).is_dir() else Path(model_spec).parent
        sha = read_json_mapping(folder / META, "a robustlab model.json").get("sha256")
        return {"source": "run", "file": str((folder / WEIGHTS).resolve()), "sha256": sha}
    record = _pretrained(model)
    if record is not None:
        return dict(record)
    if weights is not None and Path(weights).is_file():
        return {"source": "file", "file": str(Path(weights).resolve()), "sha256": sha256_file(Path(weights))}
    return {"source": "factory" if is_factory_spec(model_spec) else "random"}


def untrained_warning(model_spec: str, weights: dict[str, Any]) -> str | None:
    """The warning heading the results of a network with random weights
    (``weights``: its :func:`weights_record`)."""
    if weights["source"] != "random":
        return None
    return (f"[weights] {model_spec} is randomly initialized (no --weights given): its accuracy is that of an "
            "untrained network; give --weights FILE (a state dict, .safetensors or .pt/.pth), or DEFAULT for "
            "torchvision's or timm's pretrained weights")


def load_models(spec: EvalSpec, info: Any, device: torch.device) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """Every model named, in eval mode on ``device`` (errors name the spec), and
    what its results say about it: ``weights`` (:func:`weights_record`) and a
    ``warning`` for one built with random weights (:func:`untrained_warning`)."""
    models, about = {}, {}
    weights = spec.weights if isinstance(spec.weights, list) else [spec.weights] if spec.weights else []
    for i, (name, s) in enumerate(zip(_names(spec.models), spec.models)):
        check_trained_classes(s, info)
        if spec.mean is not None and is_checkpoint_spec(s):
            raise ValueError(f"--mean/--std: {s} is a robustlab model, which takes [0, 1] pixels and normalizes "
                             "them itself with the statistics it was trained with; drop --mean and --std")
        # a named network's own Normalize takes them (wrapping it would normalize twice); a factory's is wrapped
        stats = {"mean": spec.mean, "std": spec.std} if spec.mean is not None and not is_factory_spec(s) else {}
        file = weights[i] if i < len(weights) else None
        model = build_model(s, file, info, **stats)
        check_trained_head(s, model, info)
        record = weights_record(s, file, model)
        if not stats:
            model = normalized(model, spec.mean, spec.std)
        about[name] = {"weights": record, "warning": untrained_warning(s, record)}
        if about[name]["warning"] is not None:
            _logger.warning("model %s: %s", name, about[name]["warning"])
        models[name] = model.to(device).eval()
    return models, about


def output_count(model: nn.Module, data: Any, device: torch.device) -> int:
    """How many outputs ``model`` gives on the data's first image."""
    x = torch.as_tensor(data[0][0])[None].float().to(device)
    with torch.no_grad():
        return int(model(x).shape[-1])


def class_count_warning(outputs: int, info: Any) -> str | None:
    """A folder of fewer classes than the model has outputs: its labels are the
    folder's class indices (sorted names), right only if they are the model's
    first classes in that order (an ImageNet model on a 3-class folder is not)."""
    classes = list(getattr(info, "classes", None) or [])
    if not classes or outputs == len(classes):
        return None
    shown = ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")
    return (f"[data] the model has {outputs} outputs and the data {len(classes)} classes ({shown}): label i is "
            f"the folder's i-th class by sorted name, read as the model's output i; right only if those are the "
            "model's first classes in that order")


def model_warnings(name: str, model: nn.Module, data: Any, device: torch.device,
                   about: dict[str, Any]) -> list[str]:
    """The warnings about a model itself that head its results: random weights,
    and more outputs than the data has classes."""
    extra = class_count_warning(output_count(model, data, device), dataset_info(data))
    return [w for w in (about[name]["warning"], extra) if w is not None]


class SamplesDone:
    """``evaluate``'s progress callback (cumulative counts after each cascade
    step) as a :mod:`robustlab._progress` loop of samples, whose eta follows
    the model evaluations (:func:`work_done`), not the samples finished."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar

    def __call__(self, d: dict[str, Any]) -> None:
        if d.get("resumed", 0) > self.bar.initial:  # the samples a saved state already holds: done, not timed
            self.bar.skip(d["resumed"] - self.bar.initial)
        if self.bar.total:
            self.bar.estimate(work_done(d, self.bar.total))
        self.bar.set_postfix(active=d["active"], calls=d["calls"])
        self.bar.update(d["done"] - self.bar.n)  # last: a line it logs shows these figures


def work_done(d: dict[str, Any], total: int) -> float:
    """The share of an evaluation's model evaluations done, from ``evaluate``'s
    progress counts ``d`` on ``total`` samples.

    Samples finish in bursts: the ones an attack breaks leave at once, the
    robust ones only after every attack (2000 iterations under ``thesis``), so
    a rate of samples finished swings by a factor of ten within a batch.
    Model evaluations run at a steady rate instead. The samples under attack
    need at most ``evaluations_left`` more (all of them surviving); a sample
    not yet attacked is counted at the mean cost of the ones started here
    (what they used plus what the active ones may still need), so the
    estimate leans late while robust samples are in the pool and corrects
    itself as the pool turns over."""
    started = d["done"] - d.get("resumed", 0) + d["active"]
    spent, bound = d["evaluations"], d["evaluations_left"]
    if started <= 0 or spent + bound <= 0:
        return d["done"] / total
    unread = max(total - d["done"] - d["active"] - d["waiting"], 0)
    left = bound + (unread + d["waiting"]) * (spent + bound) / started
    return spent / (spent + left) if spent + left > 0 else 1.0


def _robust(models: dict[str, nn.Module], data: Any, spec: EvalSpec, run: RunDir, device: torch.device,
            quiet: bool, about: dict[str, Any], batch: int) -> dict[str, Any]:
    per_model: dict[str, Any] = {}
    for name, model in models.items():
        path = run.ensure()
        _logger.info("model %s: %s evaluation of %d images", name, spec.protocol, len(data))
        with route(model, spec.route), progress(len(data), f"eval {name}", "sample", enabled=not quiet) as bar:
            def attempt(size: int, model: nn.Module = model, state: Path = path / f"state-{name}.json", bar: Any = bar
                    ) -> Any:  # called at once: the defaults only bind this iteration's values
                return evaluate(model, make_loader(data, size, num_workers=spec.workers), eps=spec.eps,
                                norm=spec.norm, protocol=spec.protocol, fallback=spec.fallback, batch_size=size,
                                device=device, seed=spec.seed, state=state, progress=SamplesDone(bar),
                                options=spec.options)

            ev, batch = at_fitting_batch(attempt, batch, device, f"model {name}",
                                         " after the images already evaluated")  # its state: the images done
        _logger.info("model %s: clean %.1f%%, robust %.1f%% (n = %d) in %s", name, 100 * ev.clean_accuracy,
                     100 * ev.robust_accuracy, ev.n, duration(ev.seconds))
        if ev.examples is not None:
            write_tensors(path / f"examples-{name}.safetensors", ev.examples)
        per_model[name] = ev.to_dict()
        per_model[name]["warnings"] = [*model_warnings(name, model, data, device, about),
                                       *per_model[name]["warnings"]]
        per_model[name]["weights"] = about[name]["weights"]
        if about[name]["outputs"] is not None:
            per_model[name]["outputs"] = about[name]["outputs"]
        if batch != spec.batch_size:  # memory_batch's, or it ran out of memory at the one asked for
            per_model[name]["batch_size"] = batch
    results: dict[str, Any] = {"models": per_model}
    if len(per_model) == 1:  # one model: its figures at the top level too
        only = next(iter(per_model.values()))
        results.update({k: only[k] for k in ("robust_accuracy", "clean_accuracy", "per_attack", "warnings",
                                              "audit", "fallback", "n", "seconds", "curve")})
    return results


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """The bytes of the activations an attack keeps for its backward pass, per
    image of ``x`` (one or more images), from one forward pass: every tensor
    autograd saves for the backward pass (so also those of functional calls
    such as ``F.relu`` in a ``forward`` and the insides of a leaf module such
    as ``nn.MultiheadAttention``) and every output of a leaf module, each
    storage counted once, parameters and buffers not at all.

    Against the peak memory of a forward and backward pass on the CPU at
    batch 8-16 (224 px, torchvision's networks; ``benchmarks/
    memory_estimate.py``) it says 94 MiB an image for ResNet-50 (measured
    97-102), 132 for ViT-B/16 (102-114), 94 for EfficientNet-B0 (98-100)
    and 113 for ConvNeXt-T (68-103): at most a tenth under, which the half of
    the memory :func:`memory_batch` leaves free covers, as it covers the
    0.4 GB or so a process takes once whatever the batch."""
    skip = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    held: dict[int, Any] = {}  # by address, each storage kept alive so that no later tensor reuses its address

    def note(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            held.setdefault(storage.data_ptr(), storage)
        return t

    def output(_module: nn.Module, _inputs: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            note(out)

    hooks = [m.register_forward_hook(output) for m in model.modules()
             if not any(True for _ in m.children()) and not isinstance(m, torch.jit.ScriptModule)]  # no hooks there
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(note, lambda t: t):
            out = model(x.detach().clone().requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    if isinstance(out, torch.Tensor):  # held until the loss is taken
        note(out)
    sizes = [s.nbytes() for s in held.values()]
    # the backward pass holds them and the gradients of the largest activation and of its input
    return (sum(sizes) + 2 * max(sizes, default=0)) // max(len(x), 1)


def available_memory() -> int | None:
    """The bytes of memory the OS can still give (Linux's ``MemAvailable``,
    else the free physical pages); None where neither is known."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_batch(models: Iterable[nn.Module], data: Any, batch: int, device: torch.device) -> int:
    """The batch size to attack at on the CPU: ``batch``, or less when its
    activations (:func:`activation_bytes`, the largest model's) would take
    more than half the memory available. Out of memory on the CPU the OS
    kills the process without a word (on a GPU, :func:`smaller_batch` goes on
    at half the batch instead): 250 images of a 224-px ResNet-50 need about
    23 GiB."""
    free = available_memory() if device.type == "cpu" else None
    if free is None or not len(data):
        return batch
    x = torch.as_tensor(data[0][0])[None].float()
    try:
        per_image = max((activation_bytes(m, x) for m in models), default=0)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, AssertionError, ValueError, TypeError):  # evaluate says what of the data it does not take
        return batch
    fits = max(int(free // 2 // per_image), 1) if per_image else batch
    if fits >= min(batch, len(data)):  # no batch is larger than the data
        return batch
    _logger.warning("[memory] --batch-size %d would take about %.1f GiB for its attacks' activations (%.0f MiB an "
                    "image), more than half of the %.1f GiB of memory available: evaluating at --batch-size %d",
                    batch, batch * per_image / 2**30, per_image / 2**20, free / 2**30, fits)
    return fits


def smaller_batch(batch: int, device: torch.device) -> int:
    """The batch size to go on with after ``batch`` ran out of memory on
    ``device`` (half of it), with the memory the failed batch held handed
    back to the device."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return max(batch // 2, 1)


_T = TypeVar("_T")


def at_fitting_batch(run: Callable[[int], _T], batch: int, device: torch.device, what: str, after: str = ""
                     ) -> tuple[_T, int]:
    """``run(batch)``; when it runs out of device memory, ``run`` again at
    half the batch (:func:`smaller_batch`), down to 1, with a warning naming
    ``what`` (``after``: what the smaller batch goes on from). Returns its
    result and the batch size it ran at; out of memory at 1 is raised."""
    while True:
        try:
            return run(batch), batch
        except torch.OutOfMemoryError as err:
            if batch == 1:
                raise
            first = error_line(err, 120, "out of memory")
        # out of the handler: the traceback's frames, and the tensors they hold, are released
        batch = smaller_batch(batch, device)
        _logger.warning("%s: the device ran out of memory (%s); continuing at --batch-size %d%s", what, first, batch,
                        after)


def _batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i: i + size], y[i: i + size]) for i in range(0, len(y), size)]


def _whitebox(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opts: dict[str, Any], device: torch.device
              ) -> dict[str, Any]:
    res = whitebox_protocol(model, _batches(x, y, opts["batch_size"]), steps=opts["steps"], eps=opts["eps"],
                            step_size=opts["step_size"], losses=("ce", "cw"),
                            targeted=(False, True) if opts["targeted"] else (False,), restarts=opts["restarts"],
                            seed=opts["seed"], device=device, norm=opts["norm"])
    curves = {name: c.as_dict() for name, c in res["curves"].items()}
    curves["worst case"] = res["worst"].as_dict()
    return {"whitebox": curves, "sanity": res["sanity"].as_dict()}


def _transfer(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, opts: dict[str, Any],
              device: torch.device) -> dict[str, Any]:
    from robustlab.attacks import create

    def attack(name: str, resize_back: bool) -> Any:
        atk = create(name, eps=opts["eps"], norm=opts["norm"], seed=opts["seed"])
        if resize_back and atk.diversity is not None:
            atk.diversity.resize_back = True
        return atk

    loader = _batches(x, y, opts["batch_size"])
    fixed = [name for name, m in models.items() if not takes_larger_inputs(m, x[:1].to(device))]
    if fixed:
        _logger.warning("transfer: %s take(s) only %d×%d inputs: the input-diversity attacks made on them resize "
                        "their padded images back (InputDiversity(resize_back=True))", ", ".join(fixed),
                        *x.shape[-2:])
    out: dict[str, Any] = {}
    for source, model in models.items():  # one source at a time: the same images count (every model's correct)
        back = source in fixed
        attacks = {a: (lambda a=a, back=back: attack(a, back)) for a in TRANSFER_ATTACKS}
        part = transfer_matrix(attacks, {source: model}, models, loader, device=device)
        if not out:
            out = part
        else:
            for key in ("success", "accuracy"):
                for a in part[key]:
                    out[key][a].update(part[key][a])
    out["resize_back"] = fixed
    out["attack_configs"] = {a: attack(a, False).config() for a in TRANSFER_ATTACKS}  # ε, norm, steps, as run
    return {"transfer": out}


def takes_larger_inputs(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model`` runs on ``x`` zero-padded to the size input diversity
    makes (§3.4.1: 330/299 of it); False for a model of one input size."""
    from robustlab.attacks.diversity import DIVERSITY_SCALE

    h, w = x.shape[-2:]
    big = x.new_zeros(*x.shape[:-2], math.ceil(h * DIVERSITY_SCALE), math.ceil(w * DIVERSITY_SCALE))
    try:
        with torch.no_grad():
            model(big)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, AssertionError):  # timm's ViTs assert their input size
        return False
    return True


def _corruption(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean_accuracy: float) -> dict[str, Any]:
    from robustlab.eval.corruption import corruption_errors, mce

    errors = corruption_errors(model, x, y)
    return {"corruption": {"clean_error": 1.0 - clean_accuracy, "mce_vs_alexnet": mce(errors),
                           "mean_error": sum(sum(s.values()) / len(s) for s in errors.values()) / len(errors),
                           "errors": errors}}


def run_eval(spec: EvalSpec, *, quiet: bool = False) -> dict[str, Any]:
    """Evaluate every model of ``spec`` on its data's test split."""
    spec.check()
    dev = pick_device(spec.device)
    test = load_dataset(spec.data, "test", data_dir=spec.data_dir, limit=spec.limit, size=spec.image_size)
    info = dataset_info(test)
    models, about = load_models(spec, info, dev)
    if grayscale_folder(spec.data, info, models.values()):
        test = load_dataset(spec.data, "test", data_dir=spec.data_dir, limit=spec.limit, size=spec.image_size,
                            channels=1)
        info = dataset_info(test)
    for (name, model), s in zip(list(models.items()), spec.models):  # on the data as read for them
        about[name]["outputs"] = class_map(s, model, test, dev)
        models[name] = scored(name, model, about[name]["outputs"])
    config = {k: v for k, v in asdict(spec).items() if k not in ("out", "device")}
    files = [spec.weights] if isinstance(spec.weights, str) else list(spec.weights or [])
    if files:  # the weights are known by their contents: a copy elsewhere is the same run, an edit in place is not
        config["weights_sha256"] = [a["weights"].get("sha256") for a in list(about.values())[:len(files)]]
    # how it runs is no part of what it computes (every random start is keyed on the sample, not its batch):
    # after running out of memory, the same command with a smaller --batch-size resumes in the same folder
    identity = {k: v for k, v in config.items() if k not in ("weights", "batch_size", "workers")}
    out = spec.out
    if out is None and Path(spec.models[0]).is_dir():  # RUN/eval-PROTOCOL, or -2, -3 … for other options
        out = first_free(Path(spec.models[0]) / f"eval-{spec.protocol}", "eval", fingerprint_of(identity))
    run = RunDir(out, "eval", fingerprint_of(identity), config=config)
    start = time.perf_counter()
    results: dict[str, Any] = {"kind": "eval", "protocol": spec.protocol, "data": spec.data, "n": len(test),
                               "eps": spec.eps, "eps_255": spec.eps * 255, "norm": spec.norm,
                               "model_specs": spec.models, "route": spec.route,
                               "classes": list(info.classes) or None}  # the report names the classes
    fresh = not run.reused and not run.path.exists()
    batch = memory_batch(models.values(), test, spec.batch_size, dev)
    if batch != spec.batch_size:
        results["batch_size"] = batch
    with run:
        run.write_config(config)
        try:
            if spec.protocol in ROBUST:
                results.update(_robust(models, test, spec, run, dev, quiet, about, batch))
            else:
                results.update(_curves(models, test, replace(spec, batch_size=batch), dev, about))
        except (ValueError, TypeError):  # refused on the data or the model's outputs: no half-written run
            if fresh and {p.name for p in run.path.iterdir()} <= {"config.yaml", "run.json", ".lock"}:
                run.discard()  # with the parents made for it (a saved evaluation state stays: it resumes)
            raise
        results["seconds"] = round(time.perf_counter() - start, 2)
        return run.finish(results)


def _curves(models: dict[str, nn.Module], test: Any, spec: EvalSpec, device: torch.device,
            about: dict[str, Any]) -> dict[str, Any]:
    """The curve and comparison protocols, on every model named."""
    from robustlab.data import load_tensors
    from robustlab.eval.metrics import predict

    x, y = load_tensors(test, workers=spec.workers)  # on the CPU; every protocol moves its batches
    opts = {"eps": spec.eps, "norm": spec.norm, "step_size": spec.step_size, "steps": spec.steps,
            "targeted": spec.targeted,
            "restarts": spec.restarts, "batch_size": spec.batch_size, "seed": spec.seed}
    per_model: dict[str, Any] = {}
    for name, model in models.items():
        res: dict[str, Any] = {}
        with route(model, spec.route):
            right = sum(int((predict(model, xb.to(device), spec.batch_size).cpu() == yb).sum())
                        for xb, yb in _batches(x, y, spec.batch_size))
            res["clean_accuracy"] = right / len(y)
            _logger.info("model %s: clean accuracy %.1f%% on %d images", name, 100 * res["clean_accuracy"], len(y))
            if spec.protocol in ("whitebox", "all"):
                _logger.info("model %s: whitebox curves, PGD steps %s", name, spec.steps)
                res.update(_whitebox(model, x, y, opts, device))
            if spec.protocol in ("corruption", "all"):
                _logger.info("model %s: 15 corruptions × 5 severities", name)
                with torch.no_grad():
                    res.update(_corruption(model, x, y, res["clean_accuracy"]))
                _logger.info("model %s: corruption mean error %.1f%%", name, 100 * res["corruption"]["mean_error"])
        extra = model_warnings(name, model, test, device, about)
        if extra:
            res["warnings"] = extra
        res["weights"] = about[name]["weights"]
        if about[name]["outputs"] is not None:
            res["outputs"] = about[name]["outputs"]
        res["routes"] = list(route_names(model))
        stats = bn_statistics(model)
        if stats:  # Fig. 6.5: running statistics per route (or of the plain BNs)
            res["bn_statistics"] = stats
        per_model[name] = res
    out: dict[str, Any] = {"models": per_model, "options": opts}
    if len(per_model) == 1:
        out.update(next(iter(per_model.values())))
    if spec.protocol in ("transfer", "all") and len(models) > 1:
        _logger.info("transfer: %s between %d models", ", ".join(TRANSFER_ATTACKS), len(models))
        out.update(_transfer(models, x, y, opts, device))
    return out


def format_eval_summary(results: dict[str, Any]) -> str:
    """What ``robustlab eval`` prints: every line within 100 columns
    (:mod:`robustlab.app.summary`); the full figures are in the report."""
    from robustlab.app.summary import clip, path_lines, wrap_items, wrap_words
    from robustlab.report.html import outputs_text

    lines = [clip(f"{results['protocol']} on {results['data']} ({results['n']} images), "
                  f"{budget_text(results['eps'], results['norm'])}:")]
    for name, r in results.get("models", {}).items():
        line = f"  {name}: clean {100 * r['clean_accuracy']:.1f}%"
        if "robust_accuracy" in r:
            line += f", robust {100 * r['robust_accuracy']:.1f}%"
            if r.get("fallback", {}).get("used"):
                line += " (with Square fallback)"
        lines.append(clip(line))
        if r.get("outputs"):
            lines += wrap_words(outputs_text(r["outputs"]), "    ")
        after = [f"{attack} {100 * acc:.1f}%" for attack, acc in (r.get("per_attack") or {}).items()]
        if after:
            lines += wrap_items("    after ", after, indent="      ")
        for cname, c in (r.get("whitebox") or {}).items():
            lines += wrap_items(f"    {cname} (accuracy after N steps): ",
                                [f"{s}: {100 * a:.1f}%" for s, a in zip(c["steps"], c["accuracy"])], indent="      ")
        lines += [x for w in r.get("warnings") or [] for x in wrap_words(f"warning: {w}", "    ")]
        if r.get("sanity"):
            warns = r["sanity"]["warnings"]
            lines += ([x for w in warns for x in wrap_words(f"sanity: [{w['check']}] {w['message']}", "    ")]
                      if warns else ["    sanity: no gradient-masking symptom"])
        if r.get("corruption"):
            c = r["corruption"]
            lines.append(f"    corruption: mean error {100 * c['mean_error']:.1f}%, "
                         f"mCE vs AlexNet {c['mce_vs_alexnet']:.1f}")
    if results.get("transfer"):
        from robustlab.report.format import counted_nothing

        n = results["transfer"].get("n")
        success = results["transfer"]["success"]
        if counted_nothing(n):  # the rates are 0 / 0
            lines += wrap_words("transfer: no image is classified correctly by every model (n = 0), so no "
                                "success rate is measured; evaluate more images", "  ")
            success = {}
        elif n is not None:
            lines.append(f"  transfer success on the {n} images every model classifies correctly:")
        for attack, by_src in success.items():
            lines += wrap_items(f"  transfer {attack} (success): ", [f"{s}→{t} {100 * v:.0f}%" for s, row in
                                                                     by_src.items() for t, v in row.items()],
                                sep="; ")
        fixed = results["transfer"].get("resize_back")
        if fixed:
            lines.append(clip(f"  transfer: input diversity resized back on {', '.join(fixed)} (one input size)"))
    lines += path_lines("report", results["report"])
    return "\n".join(lines)
