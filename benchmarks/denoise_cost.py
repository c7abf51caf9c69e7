"""Cost of the feature-denoising blocks of chapter 4: time and memory.

Two tables:
  ops    one DenoiseBlock of each op on a feature map, forward + backward,
         beside a plain 3×3 convolution of the same width for scale; on CUDA
         also the peak memory the block adds.
  model  a CIFAR ResNet-18 with 4 blocks after res2..res5 (§4.6.1) or one after
         every residual block with sub-sampling (§4.6.2), forward + backward
         time relative to the plain network (the price of Table 4.2's models).
Plus the three paths of Gaussian non-local means on a map whose full affinity
exceeds the memory bound: fused (the default, PyTorch's attention kernels),
unchunked and chunked (``fused=False``).

Every variant is warmed up, then timed round by round in rotating order; medians.
Run: ``python benchmarks/denoise_cost.py [--device cuda]``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

import robustlab as rl
from robustlab._io import pick_device
from robustlab.nn import DENOISE_OPS, DenoiseBlock


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fns: dict[str, Callable[[], None]], rounds: int, device: torch.device) -> dict[str, dict]:
    for f in fns.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            start = time.perf_counter()
            fns[k]()
            sync(device)
            times[k].append(time.perf_counter() - start)
    out = {k: {"seconds": statistics.median(v)} for k, v in times.items()}
    if device.type == "cuda":
        for k, f in fns.items():
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            f()
            out[k]["peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return out


def fwd_bwd(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()
    return run


def op_table(shape: tuple[int, ...], device: torch.device, rounds: int) -> str:
    n, c, h, w = shape
    x = torch.randn(shape, device=device, requires_grad=True)
    fns = {"3×3 conv (scale)": fwd_bwd(nn.Conv2d(c, c, 3, padding=1, bias=False).to(device), x)}
    for op in DENOISE_OPS:
        fns[op] = fwd_bwd(DenoiseBlock(c, op).to(device), x)
    fns["nonlocal_gaussian, subsample"] = fwd_bwd(DenoiseBlock(c, "nonlocal_gaussian", subsample=True).to(device), x)
    res = timed(fns, rounds, device)
    ref = res["3×3 conv (scale)"]["seconds"]
    mem = device.type == "cuda"
    lines = [f"\n## one block, forward + backward, feature map {tuple(shape)}",
             "| block | ms | × a 3×3 conv |" + (" extra peak MiB |" if mem else ""),
             "|---|---|---|" + ("---|" if mem else "")]
    for k, r in res.items():
        row = f"| {k} | {r['seconds'] * 1e3:.2f} | {r['seconds'] / ref:.2f} |"
        lines.append(row + (f" {r['peak_mib']:.0f} |" if mem else ""))
    return "\n".join(lines)


def model_table(device: torch.device, batch: int, width: float, rounds: int) -> str:
    torch.manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, device=device)
    variants = {"ResNet-18 (no blocks)": {}}
    for op in ("null", "nonlocal_dot", "nonlocal_gaussian", "bilateral_gaussian", "mean", "median"):
        variants[f"+4 {op}"] = {"denoise": op}
    variants["+all nonlocal_gaussian, subsample"] = {"denoise": "nonlocal_gaussian", "denoise_where": "all",
                                                     "subsample": True}
    fns, params = {}, {}
    for k, v in variants.items():
        subsample = v.pop("subsample", False)
        m = rl.models.create_model("resnet18_cifar", 10, width=width)
        if "denoise" in v:
            m = rl.nn.add_denoise_blocks(m, v["denoise"], v.get("denoise_where", "stages"), subsample=subsample)
        m = m.to(device).train()
        params[k] = rl.nn.count_parameters(m)
        fns[k] = fwd_bwd(m, x)
    res = timed(fns, rounds, device)
    ref = res["ResNet-18 (no blocks)"]["seconds"]
    lines = [f"\n## CIFAR ResNet-18 (width ×{width:g}), batch {batch}, forward + backward",
             "| model | ms | × plain | parameters |", "|---|---|---|---|"]
    for k, r in res.items():
        lines.append(f"| {k} | {r['seconds'] * 1e3:.1f} | {r['seconds'] / ref:.2f} | {params[k]:,} |")
    return "\n".join(lines)


def chunk_table(device: torch.device, shape: tuple[int, ...], rounds: int) -> str:
    n, c, h, w = shape
    x = torch.randn(shape, device=device, requires_grad=True)
    full = n * (h * w) ** 2 * 4 / 2**20
    bound = int(full * 2**20 / 4)  # a quarter of one affinity copy: forces several chunks
    fns = {
        "fused (default)": fwd_bwd(rl.nn.NonLocalDenoise(c).to(device), x),
        "unchunked (fused=False)": fwd_bwd(rl.nn.NonLocalDenoise(c, max_bytes=2**40, fused=False).to(device), x),
        f"chunked (fused=False, max_bytes = {bound / 2**20:.0f} MiB)":
            fwd_bwd(rl.nn.NonLocalDenoise(c, max_bytes=bound, fused=False).to(device), x),
    }
    res = timed(fns, rounds, device)
    lines = [f"\n## Gaussian non-local means on {tuple(shape)} (full affinity {full:.0f} MiB)",
             "| path | ms |" + (" extra peak MiB |" if device.type == "cuda" else ""),
             "|---|---|" + ("---|" if device.type == "cuda" else "")]
    for k, r in res.items():
        lines.append(f"| {k} | {r['seconds'] * 1e3:.1f} |" + (f" {r['peak_mib']:.0f} |" if "peak_mib" in r else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# denoising-block cost — {name}, torch {torch.__version__}, {args.rounds} rounds, median")
    print(op_table((32, 256, 28, 28) if cuda else (4, 64, 16, 16), device, args.rounds), flush=True)
    print(model_table(device, 256 if cuda else 32, 1.0 if cuda else 0.25, args.rounds), flush=True)
    print(chunk_table(device, (8, 64, 56, 56) if cuda else (2, 16, 48, 48), args.rounds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
