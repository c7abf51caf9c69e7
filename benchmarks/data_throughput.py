"""Data pipeline throughput: robustlab's ImageFolder training stream against the
torchvision loop users write, in one process.

robustlab, the path ``fit`` takes for an ImageFolder:
``load_dataset("imagefolder:ROOT", "train", size=224,
augment="random_resized_crop")`` streamed by ``EpochBatches(dataset, B,
workers=N)`` (one persistent DataLoader, 4 batches prefetched per worker,
pinned memory on CUDA, crops drawn from (seed, epoch, index), uint8 batches),
each batch moved to the device and scaled by ``to_pixels`` — inside the timing.

torchvision: ``ImageFolder(root, transform=Compose([RandomResizedCrop(224),
RandomHorizontalFlip(), ToTensor()]))`` in ``DataLoader(batch_size=B,
shuffle=True, num_workers=N, persistent_workers=N > 0)`` (pinned memory on
CUDA, as PyTorch's ImageNet example), float batches moved to the device.

Both decode with PIL and crop with the same torchvision transforms; what
differs is around them: the per-sample RNG fork and seed, uint8 instead of
float out of the workers (a quarter of the bytes through shared memory), the
scaling on the device, and the prefetch depth.

Data: a generated ImageFolder in a temporary directory (``--classes`` ×
``--per-class`` JPEGs, quality 90, 300–500 px a side, smooth random content:
noise upsampled at three scales plus fine grain, so the files are about the
size of photos rather than incompressible), or ``--root`` for a real one.

Protocol, per worker count: each pipeline runs one warm-up epoch (workers
start, the page cache fills, and every batch is checked: (B, 3, 224, 224),
float in [0, 1] after ``to_pixels``), then ``--rounds`` rounds in rotating
order, each one epoch of ``--batches`` batches over the same subset of the
folder (every k-th image; ``load_dataset``'s ``limit``). A round is a whole
epoch because a pipeline stopped mid-epoch keeps its workers decoding the
prefetched batches, which would run in the background of the other's round.
Medians are reported. Then a memory pass, one more epoch each, sampling the
resident set (and the proportional set size, which counts pages shared
between the processes once) of the main process plus that pipeline's workers
after every batch; the workers' own peaks (VmHWM) cover the timed rounds too.

With CUDA (``--gpu-smoke-cpu`` runs it tiny on the CPU, to check the code
path): PGD-k adversarial training of ResNet-50 at 224 px on synthetic data,
``rl.train.fit`` with the madry recipe in bf16 autocast + channels_last (and
in fp32) against the fp32 eager raw loop of ``train_throughput.py``.

Run: ``python benchmarks/data_throughput.py`` (``--workers 0,2,8``).
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

import robustlab as rl
from robustlab.train.batches import EpochBatches, to_pixels

SIZE = 224
RESULTS = Path(__file__).parent / "results"


def parse_args(argv=None):  # noqa: ANN001, ANN201
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", help="an ImageFolder (ROOT/train/CLASS/IMAGE or ROOT/CLASS/IMAGE); default: generated")
    p.add_argument("--classes", type=int, default=10, help="generated folder: classes")
    p.add_argument("--per-class", type=int, default=100, help="generated folder: JPEGs per class")
    p.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=15, help="batches per round (one epoch of that many)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto", help="where batches go (to_pixels runs there)")
    p.add_argument("--threads", type=int, help="torch intra-op threads of the main process (default: torch's)")
    p.add_argument("--out", help="markdown results (default benchmarks/results/data_throughput_{cpu,cuda}.md)")
    p.add_argument("--no-at", action="store_true", help="skip the GPU adversarial-training comparison")
    p.add_argument("--gpu-smoke-cpu", action="store_true",
                   help="run the adversarial-training comparison tiny on the CPU (a code-path check, not a benchmark)")
    p.add_argument("--at-batch", type=int, default=128)
    p.add_argument("--at-steps", type=int, default=10, help="SGD steps per timed round")
    p.add_argument("--at-rounds", type=int, default=5)
    p.add_argument("--at-pgd-steps", type=int, default=3)
    return p.parse_args(argv)


# -- the data -------------------------------------------------------------------------

def smooth_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8: noise upsampled at three scales plus grain (photo-like JPEG sizes)."""
    from PIL import Image

    img = np.zeros((height, width, 3), np.float32)
    for cells, amp in ((4, 0.5), (16, 0.3), (64, 0.15)):
        small = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
        img += amp * np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32)
    img += rng.normal(0.0, 8.0, img.shape)
    return np.clip(img / 0.95, 0, 255).astype(np.uint8)


def make_image_folder(root: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """ROOT/train/class_XX/img_XXXX.jpg, random sizes 300–500 px a side."""
    from PIL import Image

    for c in range(classes):
        folder = root / "train" / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, c, i])
            w, h = (int(v) for v in rng.integers(300, 501, size=2))
            Image.fromarray(smooth_image(rng, w, h)).save(folder / f"img_{i:04d}.jpg", "JPEG", quality=90)
    return root


def train_folder(root: Path) -> Path:
    return root / "train" if (root / "train").is_dir() else root


def subset_indices(n: int, limit: int) -> list[int] | None:
    """``load_dataset``'s ``limit``: every k-th image (None: all of them)."""
    return None if limit >= n else [int(i * n / limit) for i in range(limit)]


def folder_stats(folder: Path, indices: list[int] | None) -> str:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    samples = ImageFolder(str(folder)).samples
    paths = [samples[i][0] for i in (indices if indices is not None else range(len(samples)))]
    kib = [os.path.getsize(p) / 1024 for p in paths]
    dims = np.array([Image.open(p).size for p in paths])
    return (f"{len(paths)} JPEGs, mean {statistics.mean(kib):.0f} KiB ({min(kib):.0f}–{max(kib):.0f}), "
            f"mean {dims[:, 0].mean():.0f}×{dims[:, 1].mean():.0f} px")


# -- the two pipelines --------------------------------------------------------------------

@dataclass
class Pipeline:
    """``epoch(e)`` yields (batch as the loader gives it, pixels on the device, labels)."""

    name: str
    epoch: Callable[[int], Iterator[tuple[Tensor, Tensor, Tensor]]]
    loader: Callable[[], DataLoader | None]

    def worker_pids(self) -> list[int]:
        it = getattr(self.loader(), "_iterator", None)  # persistent workers: kept between epochs
        return [w.pid for w in getattr(it, "_workers", [])]

    def close(self) -> None:
        loader = self.loader()
        it = getattr(loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
            loader._iterator = None


def robustlab_pipeline(root: Path, batch: int, workers: int, device: torch.device, limit: int) -> Pipeline:
    data = rl.data.load_dataset(f"imagefolder:{root}", "train", size=SIZE, augment="random_resized_crop",
                                limit=limit)
    batches = EpochBatches(data, batch, seed=0, workers=workers, device=device)

    def epoch(e: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for x, y in batches.epoch(e):  # what the training step does with them (loop.py)
            yield x, to_pixels(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)

    return Pipeline("robustlab", epoch, lambda: batches._loader)


def torchvision_pipeline(root: Path, batch: int, workers: int, device: torch.device,
                         indices: list[int] | None) -> Pipeline:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    transform = T.Compose([T.RandomResizedCrop(SIZE), T.RandomHorizontalFlip(), T.ToTensor()])
    ds = ImageFolder(str(train_folder(root)), transform=transform)
    if indices is not None:
        ds = Subset(ds, indices)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0,
                        pin_memory=device.type == "cuda")

    def epoch(e: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for x, y in loader:
            yield x, x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return Pipeline("torchvision", epoch, lambda: loader)


# -- measuring -------------------------------------------------------------------------------

def check_batch(name: str, raw: Tensor, x: Tensor, y: Tensor, batch: int, classes: int) -> None:
    if tuple(x.shape) != (batch, 3, SIZE, SIZE) or x.dtype != torch.float32:
        raise AssertionError(f"{name}: pixels {tuple(x.shape)} {x.dtype}; expected ({batch}, 3, {SIZE}, {SIZE}) "
                             "float32")
    lo, hi = float(x.min()), float(x.max())
    if not 0.0 <= lo <= hi <= 1.0:
        raise AssertionError(f"{name}: pixels in [{lo}, {hi}], not in [0, 1]")
    if tuple(y.shape) != (batch,) or int(y.min()) < 0 or int(y.max()) >= classes:
        raise AssertionError(f"{name}: labels {tuple(y.shape)} in [{int(y.min())}, {int(y.max())}]")


def run_epoch(p: Pipeline, epoch: int, device: torch.device,
              each: Callable[[Tensor, Tensor, Tensor], None] | None = None) -> tuple[float, int]:
    """(seconds, images) of one whole epoch."""
    n = 0
    start = time.perf_counter()
    for raw, x, y in p.epoch(epoch):
        n += len(y)
        if each is not None:
            each(raw, x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, n


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(key + ":")), 0)
    except OSError:
        return 0


def _pss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("Pss:")), None)
    except OSError:
        return None


@dataclass
class Memory:
    """Peaks of (main process + a pipeline's workers), sampled after each batch (MiB)."""

    rss: float = 0.0
    pss: float | None = None
    workers_hwm: float = 0.0
    pids: Callable[[], list[int]] = field(default=lambda: [])

    def sample(self, *_: object) -> None:
        procs = [os.getpid(), *self.pids()]
        self.rss = max(self.rss, sum(_status_kib(p, "VmRSS") for p in procs) / 1024)
        pss = [_pss_kib(p) for p in procs]
        if all(v is not None for v in pss):
            self.pss = max(self.pss or 0.0, sum(pss) / 1024)
        self.workers_hwm = sum(_status_kib(p, "VmHWM") for p in procs[1:]) / 1024


def measure_workers(args: argparse.Namespace, root: Path, workers: int, device: torch.device,
                    n_images: int, classes: int) -> list[dict]:
    batch = args.batch_size
    indices = subset_indices(n_images, args.batches * batch)
    pipes = [robustlab_pipeline(root, batch, workers, device, args.batches * batch),
             torchvision_pipeline(root, batch, workers, device, indices)]
    info = {}
    for p in pipes:  # warm-up epoch, every batch checked
        first: list[Tensor] = []

        def check(raw: Tensor, x: Tensor, y: Tensor, p: Pipeline = p, first: list = first) -> None:
            check_batch(p.name, raw, x, y, batch, classes)
            if not first:
                first.append(raw)

        run_epoch(p, 0, device, check)
        raw = first[0]
        info[p.name] = {"dtype": str(raw.dtype).replace("torch.", ""), "mib_batch": raw.nbytes / 2**20}
    times: dict[str, list[float]] = {p.name: [] for p in pipes}
    for r in range(args.rounds):
        for p in pipes[r % len(pipes):] + pipes[: r % len(pipes)]:
            seconds, n = run_epoch(p, 1 + r, device)
            times[p.name].append(n / seconds)
    rows = []
    for p in pipes:
        mem = Memory(pids=p.worker_pids)
        run_epoch(p, 1 + args.rounds, device, mem.sample)
        p.close()
        rates = times[p.name]
        rows.append({"workers": workers, "impl": p.name, "img_s": statistics.median(rates), "min": min(rates),
                     "max": max(rates), **info[p.name], "rss": mem.rss, "pss": mem.pss,
                     "workers_hwm": mem.workers_hwm})
    rows[0]["ratio"] = rows[0]["img_s"] / rows[1]["img_s"]
    return rows


# -- PGD adversarial training on the GPU ---------------------------------------------------------

def adversarial_training(device: torch.device, *, arch: str = "tv:resnet50", size: int = 224, batch: int = 128,
                         steps: int = 10, rounds: int = 5, pgd_steps: int = 3,
                         num_classes: int = 1000) -> tuple[str, list[dict]]:
    """PGD-k AT img/s on synthetic data: ``rl.train.fit`` (madry; bf16 autocast + channels_last, and fp32)
    against the fp32 eager raw loop of train_throughput.py. Both attack on running BN statistics (eval
    mode) with a random start, untargeted, ε = 8/255, α = 2/255; same SGD settings."""
    sys.path.insert(0, str(Path(__file__).parent))
    from train_throughput import ALPHA, EPS, raw_loop, raw_pgd

    from robustlab.train import recipes

    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch * steps, 3, size, size, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch * steps,), generator=g).to(device)
    batches = [(x[i: i + batch], y[i: i + batch]) for i in range(0, len(y), batch)]

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return rl.models.create_model(arch, num_classes).to(device)

    recipe = recipes.create("madry", eps=EPS, steps=pgd_steps, step_size=ALPHA, targeted=False,
                            clean_init_prob=0.0, bn_stats="running")
    opts = dict(epochs=1, batch_size=batch, lr=0.01, device=str(device), progress=False, log_every=10**6)

    def fit(m: torch.nn.Module, **kw: object) -> Callable[[], float]:
        return lambda: rl.train.fit(m, (x, y), recipe, **opts, **kw).seconds

    def raw(m: torch.nn.Module) -> Callable[[], float]:
        def run() -> float:
            start = time.perf_counter()
            raw_loop(m, batches, lambda m, xb, yb: raw_pgd(m, xb, yb, EPS, ALPHA, pgd_steps))
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start
        return run

    impls = {"robustlab fit, bf16 autocast + channels_last": fit(model(), amp="bf16", channels_last=True),
             "robustlab fit, fp32": fit(model()),
             "raw loop, fp32 eager": raw(model())}
    for fn in impls.values():  # warm-up: cuDNN plans, allocator, first-call overheads
        fn()
    times: dict[str, list[float]] = {name: [] for name in impls}
    names = list(impls)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(impls[name]())
    raw_rate = batch * steps / statistics.median(times["raw loop, fp32 eager"])
    rows = [{"impl": name, "img_s": batch * steps / statistics.median(t),
             "ratio": batch * steps / statistics.median(t) / raw_rate} for name, t in times.items()]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    header = (f"{arch} at {size} px, {num_classes} classes, {where}, batch {batch}, {steps} steps x {rounds} rounds, "
              f"PGD-{pgd_steps} (eps 8/255, alpha 2/255, eval-mode attack), synthetic data on the device; medians")
    return header, rows


# -- the report ------------------------------------------------------------------------------------

def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import PIL
    import torchvision

    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}; torch {torch.__version__}, "
            f"torchvision {torchvision.__version__}, Pillow {PIL.__version__}, Python {platform.python_version()}")


def command() -> str:
    exe = os.path.relpath(sys.executable)
    return shlex.join([exe if not exe.startswith("..") else "python", *sys.argv])


def data_table(rows: list[dict]) -> list[str]:
    lines = ["| workers | pipeline | img/s (median) | rounds min–max | robustlab / torchvision | batch out of the "
             "loader | MiB / batch | peak RSS main + workers (MiB) | peak PSS (MiB) | workers' VmHWM sum (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"**{r['ratio']:.2f}×**" if "ratio" in r else ""
        pss = f"{r['pss']:.0f}" if r["pss"] is not None else "–"
        hwm = f"{r['workers_hwm']:.0f}" if r["workers"] else "–"
        lines.append(f"| {r['workers']} | {r['impl']} | {r['img_s']:.1f} | {r['min']:.1f}–{r['max']:.1f} | {ratio} | "
                     f"{r['dtype']} | {r['mib_batch']:.1f} | {r['rss']:.0f} | {pss} | {hwm} |")
    return lines


def at_table(header: str, rows: list[dict]) -> list[str]:
    lines = [header, "", "| implementation | img/s | ratio to the raw fp32 loop |", "|---|---|---|"]
    lines += [f"| {r['impl']} | {r['img_s']:.1f} | {r['ratio']:.2f}× |" for r in rows]
    return lines


def main(argv=None) -> None:  # noqa: ANN001
    args = parse_args(argv)
    from robustlab._io import pick_device

    device = pick_device(args.device)
    load = os.getloadavg()[0]
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = [int(w) for w in args.workers.split(",")]
    tmp = None
    try:
        if args.root:
            root = Path(args.root).expanduser()
        else:
            tmp = Path(tempfile.mkdtemp(prefix="robustlab_data_bench_"))
            start = time.perf_counter()
            root = make_image_folder(tmp, args.classes, args.per_class)
            print(f"generated {args.classes}x{args.per_class} JPEGs in {time.perf_counter() - start:.0f}s: {root}")
        folder = train_folder(root)
        from torchvision.datasets import ImageFolder

        base = ImageFolder(str(folder))
        n_images, classes = len(base), len(base.classes)
        if n_images < args.batches * args.batch_size:
            args.batches = n_images // args.batch_size
            print(f"{n_images} images: {args.batches} batches per round")
        data = folder_stats(folder, subset_indices(n_images, args.batches * args.batch_size))
        rows = []
        for n in workers:
            rows += measure_workers(args, root, n, device, n_images, classes)
            print("\n".join(data_table(rows[-2:])[2:]), flush=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    at: list[str]
    if args.no_at:
        at = ["Not run (`--no-at`)."]
    elif args.gpu_smoke_cpu:
        header, at_rows = adversarial_training(torch.device("cpu"), size=64, batch=4, steps=2, rounds=1, pgd_steps=2)
        at = ["CPU smoke run (`--gpu-smoke-cpu`: tiny sizes, checks the code path; not a measurement):", "",
              *at_table(header, at_rows)]
    elif torch.cuda.is_available():
        header, at_rows = adversarial_training(torch.device("cuda"), batch=args.at_batch, steps=args.at_steps,
                                               rounds=args.at_rounds, pgd_steps=args.at_pgd_steps)
        at = at_table(header, at_rows)
    else:
        at = ["Not run: no CUDA device (`torch.cuda.is_available()` is False)."]
        print("\nPGD adversarial training (ResNet-50, bf16 + channels_last vs fp32): skipped, no CUDA device")

    kind = "cuda" if device.type == "cuda" else "cpu"
    title = torch.cuda.get_device_name(device) if kind == "cuda" else "CPU"
    lines = [
        f"# Data pipeline throughput — {title} (`benchmarks/data_throughput.py`)", "",
        f"Machine: {machine()}; main-process torch threads: {torch.get_num_threads()}; 1-minute load average "
        f"{load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.", "",
        f"Command: `{command()}`", "",
        f"Data: {'`' + str(args.root) + '`' if args.root else 'generated ImageFolder'} ({classes} classes), "
        f"{data}; batch {args.batch_size}, batches to {device}, {args.batches} batches per round (one epoch), "
        f"1 warm-up epoch + {args.rounds} rounds in rotating order, then a memory pass; "
        f"RandomResizedCrop({SIZE}) + flip. robustlab: uint8 batches, `to_pixels` on the device (timed); "
        "torchvision: `ToTensor()` float batches.", "",
        *data_table(rows), "",
        "Peak RSS sums the resident sets sampled after every batch (pages shared between the processes count "
        "once per process); PSS divides shared pages among them. With 0 workers the batch never crosses a "
        "process boundary.", "",
        "## PGD adversarial training", "", *at, "",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    out = Path(args.out) if args.out else RESULTS / f"data_throughput_{kind}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
