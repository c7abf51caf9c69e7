"""Evaluation strength and cost: ``rl.eval.evaluate`` (the documented default
call, protocol ``standard``) against AutoAttack's standard version
(torchattacks' implementation: APGD-CE, APGD-T, FAB-T, Square), on the same
images at the same ε, with a raw PyTorch PGD-100 loop as the cost unit.

Models, all built here on Fashion-MNIST (ε = 0.1 ≈ 25/255 by default):

* three adversarially trained models of different recipes and activations:
  ``madry`` (PGD-5 AT, ReLU), ``alp`` (adversarial logit pairing, ReLU),
  ``fast-silu`` (single-step fast AT with SiLU: SAT's activation);
* ``vanilla``: standard training (not robust);
* ``masked``: ``vanilla`` behind a 4-level input quantizer round(4x)/4, whose
  zero gradients fool gradient attacks (the masking case).

Every implementation is warmed up on a few images first, then, model by
model, timed in turn on the same images, ``--rounds`` times (the median
counts). The gap is robustlab − AutoAttack in accuracy points (positive:
robustlab's estimate is the weaker one); the speed ratio is AutoAttack's
seconds over robustlab's. Because a shared machine's load moves wall-clock
ratios, the model is also wrapped in a counter of the images it processes
(forward passes with gradient, which each imply a backward pass, and without):
the work ratio, AutoAttack's image-passes over robustlab's (a backward counted
as 2 forwards), is the same on any machine.

Run: ``python benchmarks/eval_strength.py [--n 500] [--rounds 3] [--md benchmarks/results/eval_strength_cpu.md]``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import robustlab as rl

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name -> (config, overrides)
    "madry": ("train_madry.yaml", []),
    "alp": ("train_alp.yaml", []),
    "fast-silu": ("train_sat.yaml", []),
    "vanilla": ("train_vanilla.yaml", []),
}


class Quantize(nn.Module):
    """round(levels·x)/levels: a front end with zero gradient almost everywhere."""

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.levels) / self.levels


class Counted(nn.Module):
    """The model, counting the images it sees: with gradient (each implies a
    backward pass) and without."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.grad = self.plain = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad += len(x)
        else:
            self.plain += len(x)
        return self.model(x)

    def take(self) -> float:
        """Work since the last call, in forward-pass units (backward = 2 forwards)."""
        work = 3 * self.grad + self.plain
        self.grad = self.plain = 0
        return work


def trained(name: str, cache: Path) -> nn.Module:
    from robustlab.app.config import load_config
    from robustlab.app.train import run_train

    config, overrides = MODELS[name]
    run = cache / name
    if not (run / "model.json").is_file():
        cfg, raw = load_config(ROOT / "configs" / config, overrides)
        run_train(cfg, raw, run)
    return rl.models.load_model(run).eval()


def raw_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 100) -> torch.Tensor:
    """The textbook loop: random start, α = 2.5·ε/steps, sign step, projection."""
    alpha = 2.5 * eps / steps
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_adv), y)
        (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    import torchattacks

    return torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)(x, y)


def timed(fn):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="test images per model")
    p.add_argument("--rounds", type=int, default=1, help="timed rounds per model (the median counts)")
    p.add_argument("--eps", default="25", help="budget (0-255 units, 16/255 or 0.1px)")
    p.add_argument("--models", default="madry,alp,fast-silu,vanilla,masked")
    p.add_argument("--cache", default=str(ROOT / "benchmarks" / ".cache" / "eval_strength"))
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--md", help="write a markdown table here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    eps = rl.units.parse_eps(args.eps)
    cache = Path(args.cache)
    test = rl.data.load_dataset("fashion_mnist", "test", limit=args.n)
    x, y = test.batch(slice(None))
    models = {}
    for name in args.models.split(","):
        if name == "masked":
            models[name] = nn.Sequential(Quantize(4), trained("vanilla", cache)).eval()
        else:
            models[name] = trained(name, cache)

    # Warm-up: every implementation once on a few images.
    w = models[next(iter(models))]
    rl.eval.evaluate(w, (x[:32], y[:32]), eps=eps)
    autoattack(w, x[:32], y[:32], eps)
    raw_pgd(w, x[:32], y[:32], eps)

    rows = []
    for name, plain in models.items():
        model = Counted(plain).eval()
        times: dict[str, list[float]] = {"ours": [], "aa": [], "pgd": []}
        for _ in range(args.rounds):  # interleaved round by round
            ev, t = timed(lambda: rl.eval.evaluate(model, (x, y), eps=eps))  # noqa: B023
            times["ours"].append(t)
            work_ours = model.take()
            x_aa, t = timed(lambda: autoattack(model, x, y, eps))  # noqa: B023
            times["aa"].append(t)
            work_aa = model.take()
            x_pgd, t = timed(lambda: raw_pgd(model, x, y, eps))  # noqa: B023
            times["pgd"].append(t)
            work_pgd = model.take()
        t_ours, t_aa, t_pgd = (statistics.median(times[k]) for k in ("ours", "aa", "pgd"))
        with torch.no_grad():
            aa_right = model(x_aa).argmax(1) == y
            pgd_acc = float((model(x_pgd).argmax(1) == y).float().mean())
        ours_right = torch.tensor([b is None for b in ev.per_sample["broken_by"]])
        row = {"model": name, "n": len(y), "eps_255": round(eps * 255, 2), "clean": ev.clean_accuracy,
               "robustlab": ev.robust_accuracy, "autoattack": float(aa_right.float().mean()),
               "pgd100_raw": pgd_acc, "both": float((ours_right & aa_right).float().mean()),
               "gap_points": round(100 * (ev.robust_accuracy - float(aa_right.float().mean())), 2),
               "robustlab_s": round(t_ours, 1), "autoattack_s": round(t_aa, 1), "pgd100_s": round(t_pgd, 1),
               "speedup_vs_aa": round(t_aa / t_ours, 2), "cost_in_pgd100": round(t_ours / t_pgd, 2),
               "work_ours": work_ours, "work_aa": work_aa, "work_pgd100": work_pgd,
               "work_ratio_vs_aa": round(work_aa / work_ours, 2), "rounds": args.rounds,
               "seconds": {k: [round(v, 1) for v in vs] for k, vs in times.items()},
               "fallback": ev.fallback, "per_attack": ev.per_attack,
               "warnings": [w_.split("]")[0] + "]" for w_ in ev.warnings]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    table = ["| model | clean | robustlab `standard` | AutoAttack | gap (pts) | raw PGD-100 | robustlab s | "
             "AutoAttack s | speed-up | work ratio | cost (× PGD-100) | Square fallback |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['model']} | {100 * r['clean']:.1f} | {100 * r['robustlab']:.1f} | "
                     f"{100 * r['autoattack']:.1f} | {r['gap_points']:+.1f} | {100 * r['pgd100_raw']:.1f} | "
                     f"{r['robustlab_s']} | {r['autoattack_s']} | {r['speedup_vs_aa']}× | {r['work_ratio_vs_aa']}× | "
                     f"{r['cost_in_pgd100']} | "
                     f"{'yes' if r['fallback']['used'] else 'no'} |")
    text = "\n".join(table)
    print(text)
    if args.md:
        Path(args.md).write_text(f"Fashion-MNIST, {args.n} test images, ε = {eps * 255:g}/255, "
                                 f"{torch.get_num_threads()} CPU threads, median of {args.rounds} round(s)\n\n"
                                 f"{text}\n")


if __name__ == "__main__":
    main()
