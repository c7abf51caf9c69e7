"""How well ``robustlab.app.evaluate.activation_bytes`` predicts the memory of
an attack's forward and backward pass on the CPU, per image.

For each torchvision network (random weights, eval mode, 224 px), a fresh
process per (network, batch) measures the peak resident memory
(``ru_maxrss``) of one forward and backward pass to the input, as an attack
step takes it, above the resident memory after a batch-1 no-grad forward
(weights and allocator warm; Linux's ``/proc/self/statm``); the estimate is one image's, as ``robustlab eval`` and
``attack`` take it before lowering ``--batch-size`` to fit half the memory
available. Alongside, the sum of the leaf modules' outputs (the estimate
before it counted what autograd saves). Ratios above 1 over-estimate (safe);
``memory_batch`` keeps half the memory free for those below.
Run: ``python benchmarks/memory_estimate.py [--batches 8,16] [--out FILE.md]``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

NETWORKS = ("resnet50", "vit_b_16", "efficientnet_b0", "convnext_tiny")

_PEAK = """
import json, resource, sys
import torch, torchvision
torch.set_num_threads(2)
name, batch = sys.argv[1], int(sys.argv[2])
net = getattr(torchvision.models, name)().eval()
for p in net.parameters():
    p.requires_grad_(False)
x = torch.rand(batch, 3, 224, 224)
with torch.no_grad():
    net(x[:1])
import gc, os
gc.collect()
with open("/proc/self/statm") as f:  # resident now, after the warm-up (its own transient peak may be higher)
    base = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
xx = x.clone().requires_grad_(True)
loss = torch.nn.functional.cross_entropy(net(xx), torch.zeros(batch, dtype=torch.long))
torch.autograd.grad(loss, xx)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps((peak - base) * 1024 / batch))
"""


def leaf_outputs(net, x) -> int:
    """The bytes of the leaf modules' outputs on one forward pass, per image."""
    import torch

    total = [0]

    def count(_m, _i, out) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * out.element_size()

    hooks = [m.register_forward_hook(count) for m in net.modules() if not any(True for _ in m.children())]
    with torch.enable_grad():
        net(x.clone().requires_grad_(True))
    for h in hooks:
        h.remove()
    return total[0] // len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="8,16", help="batch sizes measured (comma-separated)")
    parser.add_argument("--networks", default=",".join(NETWORKS), help="torchvision networks")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args()
    import torch
    import torchvision

    from robustlab.app.evaluate import activation_bytes

    batches = [int(b) for b in args.batches.split(",")]
    mib = 2**20
    lines = ["| network | estimate MiB/img | leaf outputs MiB/img | measured MiB/img (batch " +
             ", ".join(map(str, batches)) + ") | estimate / measured |", "|---|---|---|---|---|"]
    for name in args.networks.split(","):
        net = getattr(torchvision.models, name)().eval()
        x = torch.rand(1, 3, 224, 224)
        estimate, leaves = activation_bytes(net, x), leaf_outputs(net, x)
        measured = [json.loads(subprocess.run([sys.executable, "-c", _PEAK, name, str(b)], check=True,
                                              capture_output=True, text=True).stdout) for b in batches]
        ratios = ", ".join(f"{estimate / m:.2f}" for m in measured)
        lines.append(f"| {name} | {estimate / mib:.0f} | {leaves / mib:.0f} | "
                     f"{', '.join(f'{m / mib:.0f}' for m in measured)} | {ratios} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(f"`python benchmarks/memory_estimate.py --batches {args.batches}`, CPU, "
                                  f"torch {torch.__version__}\n\n{text}\n")


if __name__ == "__main__":
    main()
