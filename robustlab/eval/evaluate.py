"""``evaluate``: the robustness of any model on any data, from one call.

>>> ev = rl.eval.evaluate(model, loader, eps=8/255)
>>> ev.robust_accuracy, ev.clean_accuracy, ev.per_attack, ev.warnings

The model is any ``nn.Module`` taking [0, 1] pixels and returning logits;
the data a DataLoader, any iterable of ``(x, y)`` batches, a Dataset or an
``(x, y)`` tensor pair. The evaluation streams: at most ``batch_size`` images
are attacked at a time (default: the loader's batch size), the model is never
called with more, and a sample that breaks leaves its slot to the next one
(:mod:`robustlab.attacks.cascade`), so the cost follows the samples that
resist. Nothing concatenates the whole data; memory is flat in its size.

Before the attacks, the gradient-masking checks (:mod:`.sanity`: unbounded
attack, black-box vs white-box, noise, loss growth) run on the first images;
when they flag the model (or ``fallback=True``) the ``standard`` protocol
adds a gradient-free Square Attack on the survivors, and the result says so
and why. Every result audits itself (max perturbation,
NaN count, pixel range, as AutoAttack's final report).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from robustlab._checks import channel_mismatch, check_batch, check_label_range, error_line
from robustlab.attacks.base import check_logits
from robustlab.attacks.cascade import CLEAN_WRONG, SURVIVED, Cascade, Outcome, model_forward, wrong_classes_by_rank
from robustlab.eval import protocols
from robustlab.eval.sanity import run_sanity_checks
from robustlab.nn.state import float32_io, inference_state
from robustlab.units import budget_text, to_255

_logger = logging.getLogger(__name__)

DEFAULT_BATCH = 256  # slots when the data carry no batch size of their own
CHECKLIST_IMAGES = 100
EXAMPLES = 8  # images kept for the report's grid
STATE_VERSION = 1


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate`.

    ``per_attack[name]``: robust accuracy after the protocol's attacks up to
    and including ``name`` (the cascade runs each on the points still robust,
    so the figures fall monotonically to ``robust_accuracy``).
    ``per_sample``: for each sample (in data order) ``clean_correct``,
    ``broken_by`` (attack name, ``"clean"`` or None) and ``broken_at`` (the
    attack's iteration, -1 if never broken). ``seconds``, ``model_calls``
    and ``iterations``: the evaluation's whole cost, a resumed one's earlier
    calls included (as its ``state`` file records them)."""

    protocol: str
    eps: float
    norm: str
    n: int
    clean_accuracy: float
    robust_accuracy: float
    per_attack: dict[str, float]
    warnings: list[str]
    audit: dict[str, Any]
    seconds: float
    options: dict[str, Any]
    fallback: dict[str, Any]
    per_sample: dict[str, list]
    curve: dict[str, Any] | None = None
    model_calls: int = 0
    iterations: int = 0
    examples: dict[str, Tensor] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("examples")
        d["eps_255"] = to_255(self.eps)
        return d

    def summary(self) -> str:
        parts = ", ".join(f"{k} {100 * v:.1f}%" for k, v in self.per_attack.items())
        fb = " (Square fallback: " + self.fallback["reason"] + ")" if self.fallback.get("used") else ""
        return (f"{self.protocol} at {budget_text(self.eps, self.norm)} on {self.n} images: clean "
                f"{100 * self.clean_accuracy:.1f}%, robust {100 * self.robust_accuracy:.1f}% [{parts}]{fb} "
                f"in {self.seconds:.1f} s")

    def save(self, path: str | Path) -> Path:
        from robustlab._io import write_json

        path = Path(path)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Evaluation:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a saved evaluation ({err})") from None
        d.pop("eps_255", None)
        known = set(cls.__dataclass_fields__) - {"examples"}
        missing = sorted(known - set(d) - {"curve", "model_calls", "iterations"})
        if missing:
            raise ValueError(f"{path}: not a saved evaluation (missing {missing})")
        return cls(**{k: v for k, v in d.items() if k in known})


# -- data ------------------------------------------------------------------------

def _pair(item: Any, where: str) -> tuple[Tensor, Tensor]:
    if isinstance(item, dict):
        keys = sorted(map(str, item))
        x_key = next((k for k in ("image", "images", "pixel_values", "img", "x") if k in item), "image")
        y_key = next((k for k in ("label", "labels", "target", "targets", "y") if k in item), "label")
        raise TypeError(f"{where}: batches must be (x, y) pairs; got a dict with keys {keys} (a Hugging Face "
                        f"dataset's rows): pass pairs, e.g. ((b[{x_key!r}], b[{y_key!r}]) for b in loader)")
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise TypeError(f"{where}: batches must be (x, y) pairs; got {type(item).__name__}")
    x, y = (_tensor(t) for t in item[:2])
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
        raise TypeError(f"{where}: batches must be (x, y) pairs of tensors (or numpy arrays); got "
                        f"({type(x).__name__}, {type(y).__name__})")
    if y.dim() == 0:
        raise TypeError(f"{where}: batches must be (x, y) pairs of a batch of images and its labels; got one image "
                        f"{tuple(x.shape)} and one label: an iterable of single samples (a zip, a generator, a "
                        "DataLoader with batch_size=None) is no batch; pass list(...) of them, a Dataset, or a "
                        "DataLoader with a batch_size")
    if not torch.is_floating_point(y) and y.dtype not in (torch.long, torch.bool):
        y = y.long()  # int32, int16, uint8 labels: the losses index with int64
    if x.dtype in (torch.float16, torch.bfloat16, torch.float64):
        x = x.float()  # half-precision or numpy's float64 images: attacked in float32 (the model casts as it needs)
    return x, y


def _tensor(value: Any) -> Any:
    """A numpy array, Python number or list of numbers as a tensor; anything else as it is."""
    if isinstance(value, Tensor) or not (isinstance(value, (int, float, list)) or hasattr(value, "__array__")):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        return value


def _samples(data: Any) -> bool:
    """Whether a list or tuple holds (image, label) samples (a Dataset as a list), not (x, y) batches."""
    first = data[0] if isinstance(data, (list, tuple)) and len(data) else None
    if not isinstance(first, (tuple, list)) or len(first) < 2:  # (image, label) or (image, label, index, ...)
        return False
    label = _tensor(first[1])
    return isinstance(label, Tensor) and label.dim() == 0


def _tensor_pair(data: Any) -> bool:
    """Whether ``data`` is (x, y) tensors (or arrays), or (x, y, extra, ...) of equal lengths."""
    if not isinstance(data, (tuple, list)) or len(data) < 2 or _samples(data):
        return False
    if not (isinstance(data[0], Tensor) or hasattr(data[0], "__array__")) or isinstance(_tensor(data[1]),
                                                                                         (tuple, list)):
        return False
    if len(data) == 2:
        return True
    x, y = (_tensor(t) for t in data[:2])  # (x, y, index): the first two, as a DataLoader's batches are read
    return (isinstance(x, Tensor) and isinstance(y, Tensor) and x.dim() == 4 and y.dim() == 1
            and len(x) == len(y))


def batch_source(data: Any, batch_size: int | None) -> tuple[Iterable[tuple[Tensor, Tensor]], int]:
    """(iterable of (x, y) batches, slot count) for any supported data form."""
    if isinstance(data, Mapping):
        raise TypeError(f"data: a dict (keys {sorted(map(str, data))}) is not (x, y); pass the images and the "
                        "labels as a pair, e.g. (d['image'], d['label'])")
    if (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (list, tuple)) and data[0]
            and isinstance(data[0][0], Tensor) and data[0][0].dim() == 3):
        raise TypeError(f"data: x is a {type(data[0]).__name__} of {len(data[0])} images; stack them into one "
                        "(N, C, H, W) tensor: (torch.stack(x), torch.as_tensor(y))")
    if _tensor_pair(data):  # (x, y) tensors or arrays, or (x, y, index, ...)
        x, y = (torch.as_tensor(t) for t in data[:2])
        if y.dim() == 0 and x.dim() in (3, 4):  # one sample: (image, label), or a batch of one and its label
            x, y = (x[None] if x.dim() == 3 else x), y[None]
        size = batch_size or DEFAULT_BATCH
        if x.dim() == 0 or len(x) != len(y):
            raise ValueError(f"data: x and y must hold the same number of samples; got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        return ((x[i: i + size], y[i: i + size]) for i in range(0, len(y), size)), size
    if isinstance(data, DataLoader):
        size = batch_size or data.batch_size or DEFAULT_BATCH
        return data, size
    if isinstance(data, Dataset) or _samples(data) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")
                                                       and not isinstance(data, (list, tuple))):
        size = batch_size or DEFAULT_BATCH
        if hasattr(data, "batch") and callable(data.batch):  # in-memory datasets: slice, no collation
            return ((data.batch(slice(i, i + size))) for i in range(0, len(data), size)), size
        return DataLoader(data, batch_size=size, shuffle=False), size
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Tensor)):
        return data, batch_size or DEFAULT_BATCH
    raise TypeError(f"data must be a DataLoader, an iterable of (x, y) batches, a Dataset or an (x, y) tensor "
                    f"pair; got {type(data).__name__}")


class _Labels:
    """What the labels read so far look like: how many, which classes, and
    whether they come in label order (a class-sorted dataset, as an ImageFolder is)."""

    def __init__(self) -> None:
        self.n, self.classes, self.ordered, self.last = 0, set(), True, -1

    def see(self, y: Tensor) -> None:
        ys = y.detach().flatten().cpu()
        if len(ys):
            self.ordered &= bool((ys[1:] >= ys[:-1]).all()) and int(ys[0]) >= self.last
            self.last = int(ys[-1])
            self.classes.update(ys.unique().tolist())
            self.n += len(ys)

    def warning(self, limit: int | None, num_classes: int) -> str | None:
        """A warning when ``limit`` cut a class-sorted stream to a few of its classes."""
        k = len(self.classes)
        if limit is None or self.n < limit or not self.ordered or k >= 0.5 * min(num_classes, self.n):
            return None
        return (f"[data] the first {self.n} samples (limit={limit}) hold only {k} of the model's {num_classes} "
                "classes, in label order: the data looks sorted by class (an ImageFolder is), so they are not a "
                "sample of it; pass a class-mixed subset (rl.data.load_dataset(..., limit=N) takes every k-th "
                "image) or a loader shuffled with a seeded generator")


def _readable(source: Iterable[Any]) -> Iterator[Any]:
    """``source``'s items; a Dataset of PIL images (no ``ToTensor``), which
    the DataLoader cannot collate, is named as such instead of torch's own error."""
    items = iter(source)
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except TypeError as err:
            if "PIL" not in str(err):
                raise
            raise TypeError("data: the Dataset yields PIL images, which a DataLoader cannot batch; add "
                            "torchvision.transforms.ToTensor() (pixels in [0, 1]) to its transform") from None
        yield item


def _chunks(source: Iterable[Any], size: int, limit: int | None, labels: _Labels | None = None
            ) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(first index, x, y) in pieces of at most ``size``, up to ``limit`` samples
    (``labels`` sees every label yielded)."""
    start = 0
    for b, item in enumerate(_readable(source)):
        x, y = _pair(item, f"data batch {b}")
        for i in range(0, len(y), size):
            xs, ys = x[i: i + size], y[i: i + size]
            if limit is not None and start + len(ys) > limit:
                xs, ys = xs[: limit - start], ys[: limit - start]
            if len(ys):
                if labels is not None:
                    labels.see(ys)
                yield start, xs, ys
            start += len(ys)
            if limit is not None and start >= limit:
                return


# -- checks ----------------------------------------------------------------------

def _check_args(eps: Any, norm: str, protocol: str, batch_size: Any, limit: Any, fallback: Any, seed: Any,
                checklist: Any) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise TypeError(f"eps must be a number in [0, 1] pixel units (e.g. 8/255); got {eps!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be a whole number in [0, 2**63); got {seed!r}")
    if not isinstance(checklist, bool):
        raise ValueError(f"checklist must be True or False; got {checklist!r}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0 (pixel units, e.g. 8/255); got {eps!r}")
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2'; got {norm!r}")
    if eps > 1 and norm == "linf":  # L2 budgets above 1 are real (ImageNet's ε = 3)
        raise ValueError(f"eps must be in pixel units [0, 1] for L∞; got {eps!r}: for ε = {eps:g} in 0-255 units "
                         f"pass eps={eps:g}/255")
    protocols.get(protocol)
    for key, v in (("batch_size", batch_size), ("limit", limit)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{key} must be a whole number >= 1 or None; got {v!r}")
    if fallback not in (None, True, False):
        raise ValueError(f"fallback must be None (decided by the checklist), True or False; got {fallback!r}")


def output_warnings(z: Tensor, z_again: Tensor, z_alone: Tensor | None = None) -> list[str]:
    """AutoAttack's checks on a model's outputs, as warnings (errors are raised by
    the caller); ``z_alone``: the first image's logits computed on it alone."""
    out = []
    rows = z.sum(1)
    if bool(((z >= 0) & (z <= 1)).all()) and bool(torch.allclose(rows, torch.ones_like(rows), atol=1e-3)):
        out.append("[probabilities] the model's outputs look like probabilities (rows in [0, 1] summing to 1): "
                   "attack losses on probabilities saturate; return logits")
    if not torch.allclose(z, z_again, rtol=1e-4, atol=1e-5):
        out.append("[randomness] two forward passes on the same images differ: the model is randomized; "
                   "gradient attacks need expectation over transformation (EOT) and results vary with the seed")
    elif z_alone is not None and not torch.allclose(z[:1], z_alone, rtol=1e-3, atol=1e-3 * float(z.abs().max())):
        out.append("[batch] an image's logits change with the other images of its batch (a BatchNorm using batch "
                   "statistics: track_running_stats=False, or a layer kept in training mode): every result "
                   "depends on batch_size and on which images share a call")
    return out


def _check_logits(z: Any, n: int) -> Tensor:
    check_logits(z, n)
    if z.shape[1] < 2:
        raise ValueError(f"model must return at least 2 class logits; got {z.shape[1]}")
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"model returned {int((~torch.isfinite(z)).sum())} NaN or infinite logits on clean images")
    return z


# -- the evaluation --------------------------------------------------------------

RECORDS = ("index", "clean", "stage", "step", "recorded")  # _Tally's parallel per-sample lists


@dataclass
class _Tally:
    """Per-sample records of the samples done, in a resumable form."""

    index: list[int] = field(default_factory=list)
    clean: list[bool] = field(default_factory=list)
    stage: list[int] = field(default_factory=list)
    step: list[int] = field(default_factory=list)
    recorded: list[list[bool]] = field(default_factory=list)
    linf_max: float = 0.0
    l2_max: float = 0.0
    nan: int = 0
    pixel_min: float = math.inf
    pixel_max: float = -math.inf
    # what the calls before this one spent (a resumed evaluation reports its whole cost, not this call's alone)
    calls: int = 0
    iterations: int = 0
    seconds: float = 0.0

    def add_clean_wrong(self, idx: Tensor, n_rec: int) -> None:
        k = len(idx)
        self.index += idx.tolist()
        self.clean += [False] * k
        self.stage += [CLEAN_WRONG] * k
        self.step += [0] * k
        self.recorded += [[False] * n_rec] * k

    def add(self, out: Outcome, n_rec: int) -> None:
        k = len(out.index)
        xa = out.x_adv  # the audit first: a Ctrl-C between the two parts re-attacks samples, never skips an audit
        self.linf_max = max(self.linf_max, float(out.linf.max()))
        self.l2_max = max(self.l2_max, float(out.l2.max()))
        self.nan += int(torch.isnan(xa).sum())
        self.pixel_min = min(self.pixel_min, float(xa.min()))
        self.pixel_max = max(self.pixel_max, float(xa.max()))
        self.index += out.index.tolist()
        self.clean += [True] * k
        self.stage += out.stage.tolist()
        self.step += out.step.tolist()
        self.recorded += out.recorded[:, :n_rec].tolist() if out.recorded is not None else [[]] * k

    def state(self) -> dict[str, Any]:
        """The records as saved: the samples every list holds (a Ctrl-C may
        stop an update between two lists; the rest are attacked again)."""
        d = asdict(self)
        n = min(len(d[k]) for k in RECORDS)
        return {**d, **{k: d[k][:n] for k in RECORDS}}


def _fingerprint(**kw: Any) -> str:
    return hashlib.sha256(json.dumps(kw, sort_keys=True, default=str).encode()).hexdigest()[:16]


@torch.no_grad()
def _digest(model: nn.Module, x0: Tensor, y0: Tensor) -> dict[str, Any]:
    """What a saved state must have been made on: the model (each tensor's shape
    and sum, to 6 digits: equal on CPU and GPU, and under a wrapper) and the
    data's first sample (another dataset, or a loader that reorders it, starts
    elsewhere)."""
    tensors = list(model.state_dict().values())
    floats = [t.detach().double().sum() for t in tensors if t.is_floating_point()]
    sums = torch.stack(floats).tolist() if floats else []
    model_key = [list(t.shape) for t in tensors] + [f"{v:.6g}" for v in sums]
    return {"model": _fingerprint(tensors=model_key),
            "data": [f"{float(x0[0].double().sum()):.6g}", list(x0.shape[1:]), int(y0[0])]}


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    eps: float,
    norm: str = "linf",
    protocol: str = "standard",
    fallback: bool | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    limit: int | None = None,
    options: dict[str, Any] | None = None,
    checklist: bool = True,
    state: str | Path | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Evaluation:
    """Clean and robust accuracy of ``model`` on ``data`` under ``protocol``.

    Args:
        model: any ``nn.Module`` from [0, 1] images (N, C, H, W) to logits (N, K);
            float64, float16 or bfloat16 weights compute in their precision on
            images cast to it, the attacks staying in float32.
        data: a DataLoader, an iterable of (x, y) batches, a Dataset, or (x, y) tensors.
        eps: the budget in pixel units (8/255); L∞ values above 1 are refused.
        norm: ``linf`` or ``l2``.
        protocol: ``standard`` | ``thesis`` | ``quick`` (:mod:`.protocols`).
        fallback: None: Square Attack runs when the masking checklist flags the
            model (``standard`` only); True: always; False: never.
        batch_size: slots attacked at once and the largest model call
            (default: the loader's batch size, else 256).
        seed: every random start and target is keyed on (seed, sample index).
        limit: evaluate the first ``limit`` samples.
        options: protocol options (``steps``, ``targets``, ``restarts``,
            ``queries``, ``step_size`` for ``thesis``).
        checklist: run the gradient-masking checklist on the first images.
        state: a JSON file the evaluation saves its progress to; an
            evaluation started with the same file and settings resumes,
            skipping the samples already done.
        progress: called after each step of the attack cascade with a dict of
            counts: ``done`` (samples finished, ``resumed`` of them from
            ``state``), ``active`` (samples under attack), ``waiting`` (read,
            correctly classified, not yet attacked), ``calls`` (model calls so
            far), ``evaluations`` (model evaluations summed over samples) and
            ``evaluations_left`` (at most how many the active samples still
            need: :meth:`Cascade.evaluations_left`).
    """
    if isinstance(eps, Tensor) and eps.numel() == 1 or type(eps).__module__ == "numpy":  # a numpy or torch scalar
        eps = float(eps)
    _check_args(eps, norm, protocol, batch_size, limit, fallback, seed, checklist)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    proto = protocols.get(protocol)
    proto.resolve(options)  # unknown options fail before any work
    model = float32_io(model)
    unordered = _unordered(data, state)
    source, capacity = batch_source(data, batch_size)
    label_max = _check_in_memory(data, limit)
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    start_time = time.perf_counter()
    with inference_state(model):
        ev = _evaluate(model, source, capacity, eps=eps, norm=norm, protocol=protocol, fallback=fallback,
                       device=device, seed=seed, limit=limit, options=options, checklist=checklist,
                       state=Path(state) if state is not None else None, progress=progress, start_time=start_time,
                       label_max=label_max)
    ev.warnings[:0] = [w for w in (unordered, *_data_warnings(data, eps, norm, limit)) if w is not None]
    return ev


def _check_in_memory(data: Any, limit: int | None) -> int | None:
    """Data held in memory ((x, y) tensors, a TensorDataset) checked whole
    before any attack: an out-of-range label or pixel late in it would
    otherwise stop the evaluation after everything before it was attacked.
    Returns the largest label, for the class-count check; None for streamed data."""
    if _tensor_pair(data):
        x, y = (_tensor(t) for t in data[:2])
    elif isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        x, y = data.tensors[:2]
    else:
        return None
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)) or x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
        return None  # a form batch_source reads otherwise (one sample), or refuses with its own message
    x, y = (x, y) if limit is None else (x[:limit], y[:limit])
    if x.dtype in (torch.float16, torch.bfloat16, torch.float64):
        x = x.float()
    return check_batch(x, {"y": y if torch.is_floating_point(y) or y.dtype == torch.bool else y.long()},
                       name="data images")["y"]


def _unordered(data: Any, state: str | Path | None) -> str | None:
    """A warning for a DataLoader that shuffles without a generator (its order,
    so each sample's keyed random start, changes from run to run); with a
    ``state`` to resume it is refused: a resumed run would skip other samples
    than the ones it did."""
    from torch.utils.data import RandomSampler

    if not (isinstance(data, DataLoader) and isinstance(data.sampler, RandomSampler)
            and data.generator is None and data.sampler.generator is None):
        return None
    if state is not None:
        raise ValueError("data: a DataLoader with shuffle=True and no generator yields its samples in a new order "
                         "on every run, so a resumed evaluation (state=) would skip other samples than it did; "
                         "pass shuffle=False, or a seeded generator=torch.Generator().manual_seed(0)")
    return ("[data] the DataLoader shuffles with no seeded generator: the samples, and so the result, differ from "
            "run to run; pass shuffle=False (or generator=torch.Generator().manual_seed(0)) to reproduce it")


def model_output(model: nn.Module, x: Tensor) -> Any:
    """``model(x)``, or a ValueError saying what of the data the model does
    not take (its input size, channels, dtype), instead of the error from
    deep inside its layers."""
    try:
        return model(x)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, AssertionError) as err:  # another input size, dtype or layout than the model's
        hint = channel_mismatch(model, x, name="data images")
        if hint is not None:
            raise ValueError(hint) from None
        first = error_line(err)
        precision = any(w in first.lower() for w in ("dtype", "half", "double", "bfloat", "scalar type"))
        advice = ("weights of one precision (model.float())" if precision else
                  "the images it takes (their size: --image-size, data.size or load_dataset(size=); its channels)")
        raise ValueError(f"model: it fails on the data's {tuple(x.shape[1:])} images ({first}); give it "
                         f"{advice}") from None


def _probe(model: nn.Module, x0: Tensor, y0: Tensor) -> tuple[Tensor, list[str]]:
    """Check the first batch and the model's outputs on it: (clean logits, warnings)."""
    check_batch(x0, {"y": y0}, name="data images")
    with torch.no_grad():
        z0 = _check_logits(model_output(model, x0), len(y0))
        alone = _check_logits(model(x0[:1]), 1) if len(x0) > 1 else None
        return z0, _image_warnings(x0) + output_warnings(z0, model(x0), alone)


def _image_warnings(x0: Tensor) -> list[str]:
    """What valid [0, 1] images may still get wrong: divided by 255 twice (the
    brightest pixel of the first batch at most 1/255), or channels-last
    (N, H, W, C) data a model that flattens its input takes without error."""
    out = []
    top = float(x0.max())
    if top <= 1 / 255 + 1e-6:
        out.append(f"[data] the first images' brightest pixel is {top:.3g} (at most 1/255): were they divided by "
                   "255 twice? Images are [0, 1] pixels")
    if x0.shape[1] not in (1, 2, 3, 4) and x0.shape[-1] in (1, 3, 4):
        out.append(f"[data] images of shape {tuple(x0.shape[1:])} look channels-last (H, W, C); models take "
                   "(N, C, H, W): pass x.permute(0, 3, 1, 2)")
    return out


def _data_warnings(data: Any, eps: float, norm: str, limit: int | None) -> list[str]:
    """Warnings known before any work: a DataLoader that drops its last
    partial batch (``drop_last=True``: images not evaluated), and an L∞ budget
    of half the pixel range or more (``eps=1`` meant as 1/255)."""
    out = []
    if isinstance(data, DataLoader) and data.drop_last and data.batch_size and hasattr(data.dataset, "__len__"):
        n = len(data.dataset) if limit is None else min(limit, len(data.dataset))
        kept = len(data.dataset) // data.batch_size * data.batch_size
        if kept < n:
            out.append(f"[data] the DataLoader drops its last partial batch (drop_last=True): {n - kept} of {n} "
                       "images are not evaluated; pass drop_last=False")
    if norm == "linf" and eps >= 0.5:
        out.append(f"[budget] ε = {255 * eps:.4g}/255 (eps={eps:g}) lets the attack move every pixel across "
                   f"half the range or more; for {eps:g} in 0-255 units pass eps={eps:g}/255")
    return out


def _checklist(model: nn.Module, x0: Tensor, y0: Tensor, z0: Tensor, *, protocol: str, fallback: bool | None,
               eps: float, norm: str, seed: int, capacity: int, device: torch.device, run: bool
               ) -> tuple[dict[str, Any] | None, bool, str, list[str]]:
    """The masking checklist on the correctly classified ones of the first
    :data:`CHECKLIST_IMAGES` images ``x0`` (a misclassified one cannot show its
    loss growing; the same images whatever the batch size, and the model never
    called with more than ``capacity``), and what it decides: (report, whether
    Square runs, why, warnings)."""
    sanity, warnings = None, []
    right = z0.argmax(1) == y0
    if run and not bool(right.any()):
        warnings.append(f"[checklist] none of the first {len(y0)} images is classified correctly: the masking "
                        "checklist did not run")
    elif run:
        xs, ys = x0[right], y0[right]
        report = run_sanity_checks(model, [(xs, ys)], eps=eps, steps=10, queries=100, noise_draws=2, limit=len(ys),
                                   seed=seed, device=device, norm=norm, sweeps=False, batch_size=capacity)
        sanity = report.as_dict()
        warnings = [str(w) for w in report.warnings]
    flagged = bool(sanity and sanity["warnings"])
    default = protocols.get(protocol).fallback_default
    use = fallback if fallback is not None else (default if default is not None else flagged)
    reason = ("fallback=True" if fallback else
              "the masking checklist flagged: " + ", ".join(w["check"] for w in sanity["warnings"])
              if use and sanity else "")
    if flagged and not use:
        warnings.append("[fallback] masking is suspected but no gradient-free attack ran "
                        f"(protocol {protocol!r}, fallback={fallback}): the robust accuracy may be overstated")
    return sanity, use, reason, warnings


class _Feeder:
    """Moves samples from the data into the cascade's free slots and the
    finished ones into the tally: clean-wrong samples never enter, samples
    a resumed state already holds are skipped, and a few images are kept for
    the report."""

    def __init__(self, model: nn.Module, casc: Cascade, tally: _Tally, n_rec: int, num_classes: int,
                 device: torch.device) -> None:
        self.model, self.casc, self.tally, self.n_rec = model, casc, tally, n_rec
        self.num_classes, self.device = num_classes, device
        self.done = set(tally.index)
        self.pending: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self.examples: dict[int, Tensor] = {}
        self.clean: dict[int, Tensor] = {}
        self.attacked: set[int] = set()
        self.wrong: dict[int, Tensor] = {}
        self.labels: dict[int, int] = {}

    @property
    def waiting(self) -> int:
        return sum(len(p[1]) for p in self.pending)

    def admit(self, start: int, x: Tensor, y: Tensor, z: Tensor | None = None) -> None:
        """Classify a chunk of the data (``z``: its logits if already known) and queue the correct ones."""
        idx = torch.arange(start, start + len(y), device=self.device)
        if self.done:
            keep = torch.tensor([int(i) not in self.done for i in idx.tolist()], device=self.device)
            x, y, idx = x[keep], y[keep], idx[keep]
            z = None if z is None else z[keep]
            if not len(y):
                return
        maxima = check_batch(x, {"y": y}, name=f"data images {start}-{start + len(y) - 1}")
        check_label_range("data labels", 0, maxima["y"], self.num_classes)
        if z is None:
            with torch.no_grad():
                z = _check_logits(self.model(x), len(y))
        right = z.argmax(1) == y
        for j, i in enumerate(idx.tolist()):  # the report's grid: the first images attacked, ...
            if bool(right[j]) and len(self.attacked) < EXAMPLES:
                self.attacked.add(i)
                self.clean[i], self.labels[i] = x[j].detach().cpu(), int(y[j])
            elif not bool(right[j]) and len(self.wrong) < EXAMPLES:  # ... else wrong ones, their own example
                self.wrong[i], self.labels[i] = x[j].detach().cpu(), int(y[j])
        self.tally.add_clean_wrong(idx[~right].cpu(), self.n_rec)
        top = wrong_classes_by_rank(z, y)
        if bool(right.any()):
            self.pending.append((x[right], y[right], idx[right], top[right]))

    def refill(self) -> None:
        while self.pending and self.casc.free > 0:
            x, y, idx, top = self.pending.pop(0)
            k = self.casc.free
            self.casc.feed(x[:k], y[:k], idx[:k], top[:k])
            if len(y) > k:
                self.pending.insert(0, (x[k:], y[k:], idx[k:], top[k:]))

    def absorb(self, out: Outcome) -> None:
        self.tally.add(out, self.n_rec)
        for j, i in enumerate(out.index.tolist()):
            if i in self.attacked:
                self.examples[i] = out.x_adv[j].detach().cpu()

    def grid(self) -> dict[str, Tensor] | None:
        """The report's grid: the first :data:`EXAMPLES` images the attacks
        had to work on (a class-sorted folder's first images may all be
        misclassified as they are), filled up with misclassified ones when
        fewer were correct; their ``index``, ``clean`` and ``adversarial``
        images, label ``y`` and the model's ``adv_pred`` on the adversarial one."""
        adversarial = dict(self.examples)
        clean = {i: self.clean[i] for i in adversarial}
        for i, image in list(self.wrong.items())[: EXAMPLES - len(adversarial)]:
            adversarial[i] = clean[i] = image
        keys = sorted(adversarial)
        if not keys:
            return None
        adv = torch.stack([adversarial[k] for k in keys])
        with torch.no_grad():
            pred = self.model(adv.to(self.device)).argmax(1).cpu()
        return {"index": torch.tensor(keys), "clean": torch.stack([clean[k] for k in keys]), "adversarial": adv,
                "y": torch.tensor([self.labels[k] for k in keys]), "adv_pred": pred}


def _evaluate(model: nn.Module, source: Iterable[Any], capacity: int, *, eps: float, norm: str, protocol: str,
              fallback: bool | None, device: torch.device, seed: int, limit: int | None,
              options: dict[str, Any] | None, checklist: bool, state: Path | None,
              progress: Callable[[dict[str, Any]], None] | None, start_time: float,
              label_max: int | None = None) -> Evaluation:
    labels = _Labels()
    chunks = _chunks(source, capacity, limit, labels)
    first = next(chunks, None)
    if first is None:
        raise ValueError("data yielded no samples")
    x0, y0 = first[1].to(device), first[2].to(device)
    diameter = float(x0[0].numel()) ** 0.5  # the L2 distance between an all-black and an all-white image
    if norm == "l2" and eps > diameter:
        raise ValueError(f"eps: an L2 budget of {eps:g} is above the largest distance between two "
                         f"{tuple(x0.shape[1:])} images ({diameter:.4g}); give a budget in pixels below it")
    z0, warnings = _probe(model, x0, y0)
    check_label_range("data labels", 0, int(y0.max()) if label_max is None else label_max, z0.shape[1])
    head = [(first[0], x0, y0, z0), *(_more_first_samples(model, chunks, len(y0), device, z0.shape[1])
                                      if checklist else [])]
    xh, yh, zh = (torch.cat([h[k] for h in head])[:CHECKLIST_IMAGES] for k in (1, 2, 3))
    sanity, use_fallback, reason, more = _checklist(model, xh, yh, zh, protocol=protocol, fallback=fallback, eps=eps,
                                                    norm=norm, seed=seed, capacity=capacity, device=device,
                                                    run=checklist)
    warnings += more
    stages, opts = protocols.stages_for(protocol, eps, options, fallback=use_fallback)
    fp = _fingerprint(protocol=protocol, eps=eps, norm=norm, options=opts, fallback=use_fallback, seed=seed,
                      stages=[asdict(s) for s in stages], limit=limit, **(_digest(model, x0, y0) if state else {}))
    casc = Cascade(model_forward(model), stages, eps=eps, norm=norm, capacity=capacity, seed=seed,
                   num_classes=z0.shape[1])
    feed = _Feeder(model, casc, _resume(state, fp), max((len(s.record) for s in stages), default=0),
                   z0.shape[1], device)
    resumed = len(feed.done)
    for start, xb, yb, zb in head:
        feed.admit(start, xb, yb, zb)
    try:
        _stream(feed, casc, chunks, state, fp, progress, resumed, start_time)
    except (KeyboardInterrupt, torch.OutOfMemoryError):  # the samples done so far are kept: a call resumes after them
        if state is not None:
            _save_state(state, fp, feed.tally, casc, start_time)
        raise
    if state is not None:
        _save_state(state, fp, feed.tally, casc, start_time)
    sorted_subset = labels.warning(limit, z0.shape[1])
    if sorted_subset is not None:
        warnings.append(sorted_subset)
    return _result(feed.tally, stages, protocol, eps, norm, opts, warnings, sanity, use_fallback, reason, casc,
                   feed.grid(), time.perf_counter() - start_time)


def _more_first_samples(model: nn.Module, chunks: Iterator[tuple[int, Tensor, Tensor]], have: int,
                        device: torch.device, num_classes: int) -> list[tuple[int, Tensor, Tensor, Tensor]]:
    """The chunks after the first up to :data:`CHECKLIST_IMAGES` samples, checked
    and classified: (first index, x, y, clean logits) each, the checklist's pool
    whatever the batch size."""
    out = []
    while have < CHECKLIST_IMAGES:
        nxt = next(chunks, None)
        if nxt is None:
            break
        xb, yb = nxt[1].to(device), nxt[2].to(device)
        maxima = check_batch(xb, {"y": yb}, name=f"data images {nxt[0]}-{nxt[0] + len(yb) - 1}")
        check_label_range("data labels", 0, maxima["y"], num_classes)
        with torch.no_grad():
            out.append((nxt[0], xb, yb, _check_logits(model(xb), len(yb))))
        have += len(yb)
    return out


def _stream(feed: _Feeder, casc: Cascade, chunks: Iterator[tuple[int, Tensor, Tensor]], state: Path | None,
            fp: str, progress: Callable[[dict[str, Any]], None] | None, resumed: int, start_time: float) -> None:
    """Attack the data to its end: read chunks as slots free up, step the
    cascade, report progress and save the state every 30 s."""
    device = feed.device
    exhausted, last_save = False, time.perf_counter()

    def report() -> None:
        if progress is not None:
            progress({"done": len(feed.tally.index), "active": len(casc.pool), "calls": casc.calls,
                      "waiting": feed.waiting, "resumed": resumed, "evaluations": casc.iterations,
                      "evaluations_left": casc.evaluations_left()})

    if resumed:  # the saved samples count as done from the start (all of them, for a finished evaluation)
        report()
    while True:
        while not exhausted and feed.waiting < casc.free:  # read no further than the free slots need
            nxt = next(chunks, None)
            exhausted = nxt is None
            if nxt is not None:
                feed.admit(nxt[0], nxt[1].to(device), nxt[2].to(device))
        feed.refill()
        if not len(casc.pool):
            break
        out = casc.step()
        if out is not None:
            feed.absorb(out)
        report()  # after every step: a long attack (2000 iterations) shows its calls growing
        if out is not None and state is not None and time.perf_counter() - last_save > 30:
            _save_state(state, fp, feed.tally, casc, start_time)
            last_save = time.perf_counter()


def _resume(state: Path | None, fp: str) -> _Tally:
    """The tally a saved state holds (empty without one); refuses a state of other settings."""
    if state is None or not state.is_file():
        return _Tally()
    try:
        saved = json.loads(state.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"state: {state} is not a saved evaluation state ({err})") from None
    if saved.get("version") != STATE_VERSION or saved.get("fingerprint") != fp:
        raise ValueError(f"state: {state} holds an evaluation with other settings (protocol, eps, options, seed "
                         "or limit), of another model (its weights) or on other data (the first sample differs: "
                         "another dataset, or a loader that reorders it); use another file or delete it")
    return _Tally(**saved["tally"])


def _save_state(path: Path, fp: str, tally: _Tally, casc: Cascade, start_time: float) -> None:
    """The tally, with the cost so far (the earlier calls' and this one's)."""
    from robustlab._io import write_json

    spent = {"calls": tally.calls + casc.calls, "iterations": tally.iterations + casc.iterations,
             "seconds": tally.seconds + time.perf_counter() - start_time}
    write_json(path, {"version": STATE_VERSION, "fingerprint": fp, "tally": {**tally.state(), **spent}})


def _result(tally: _Tally, stages: list, protocol: str, eps: float, norm: str, opts: dict[str, Any],
            warnings: list[str], sanity: dict[str, Any] | None, used: bool, reason: str, casc: Cascade,
            examples: dict[str, Tensor] | None, seconds: float) -> Evaluation:
    order = sorted(range(len(tally.index)), key=tally.index.__getitem__)
    stage = [tally.stage[i] for i in order]
    step = [tally.step[i] for i in order]
    n = len(order)
    clean = sum(tally.clean) / n
    names = [s.name for s in stages]
    per_attack, alive = {}, sum(1 for s in stage if s != CLEAN_WRONG)
    for k, name in enumerate(names):
        alive -= sum(1 for s in stage if s == k)
        if stages[k].target != "top" or stages[k].target_rank < (casc.num_classes or 0):  # a rank K-1 classes
            per_attack[name] = alive / n  # of a K-class model do not reach was skipped: not listed as run
    thesis = protocol == "thesis"
    curve = None
    robust = sum(1 for s in stage if s == SURVIVED) / n
    if thesis:
        rec_steps = list(stages[0].record)
        recorded = [tally.recorded[i] for i in order]
        final = [sum(1 for r in recorded if r[j]) / n for j in range(len(rec_steps))]
        best = [sum(1 for s, t in zip(stage, step) if s == SURVIVED or (s == 0 and t > N) or s > 0) / n
                for N in rec_steps]
        curve = {"steps": rec_steps, "final_accuracy": final, "best_accuracy": best}
        per_attack[names[0]] = final[-1]
        robust = final[-1]
        if used:  # survivors of every iterate that Square then broke
            robust -= sum(1 for s in stage if s == len(stages) - 1) / n
            per_attack["square"] = robust
    audit = {"linf_max": tally.linf_max, "linf_max_255": to_255(tally.linf_max), "l2_max": tally.l2_max,
             "nan_count": tally.nan, "pixel_min": tally.pixel_min if math.isfinite(tally.pixel_min) else None,
             "pixel_max": tally.pixel_max if math.isfinite(tally.pixel_max) else None,
             "within_budget": (tally.linf_max if norm == "linf" else tally.l2_max) <= eps + 1e-6}
    if not audit["within_budget"] or tally.nan:
        warnings = [*warnings, f"[audit] adversarial images leave the budget or hold NaNs: {audit}"]
    label = {k: name for k, name in enumerate(names)} | {CLEAN_WRONG: "clean", SURVIVED: None}
    per_sample = {"clean_correct": [tally.clean[i] for i in order], "broken_by": [label[s] for s in stage],
                  "broken_at": [t if s >= 0 else (0 if s == CLEAN_WRONG else -1) for s, t in zip(stage, step)]}
    opts_out = {**{k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()}, "stages": names,
                "batch_size": casc.capacity, "seed": casc.seed, "sanity": sanity}
    return Evaluation(protocol=protocol, eps=eps, norm=norm, n=n, clean_accuracy=clean, robust_accuracy=robust,
                      per_attack=per_attack, warnings=warnings, audit=audit, seconds=round(tally.seconds + seconds, 3),
                      options=opts_out, fallback={"used": used, "reason": reason}, per_sample=per_sample,
                      curve=curve, model_calls=tally.calls + casc.calls, iterations=tally.iterations + casc.iterations,
                      examples=examples)
