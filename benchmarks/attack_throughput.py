"""Attack throughput: robustlab side by side with a raw PyTorch loop, torchattacks,
ART and foolbox, in one process.

Model: a CIFAR-shaped ResNet-18 (3×32×32 input, 10 classes; ``--width`` scales
its channels, 1.0 = the usual 64–512) trained briefly on Fashion-MNIST resized
to 3×32×32, so it is accurate and not robust. Every implementation attacks the
same batch with the same budget (L∞, ε = 8/255, α = 2/255, 10 steps); each is
warmed up, then timed round by round in a rotating order, and the median per
implementation is reported with its ratio to the raw loop (PGD) or to
robustlab.

Tasks:
  pgd10       fixed-step PGD-10 with random start.
  mifgsm      MI-FGSM, 10 steps, μ = 1.
  di2fgsm     DI²-FGSM, 10 steps, p = 0.5.
  robust_acc  robust accuracy of ``--eval-images`` test images (4 batches)
              under PGD-10 at the thesis's ε = 16/255 (``--eval-eps``), α = ε/4:
              robustlab's ``eval.robust_accuracy`` with per-sample early
              stopping over one pool, model calls micro-batched at the batch
              size, vs. each implementation's fixed-step PGD batch by batch.

Run: ``python benchmarks/attack_throughput.py`` (``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import robustlab as rl
from robustlab._io import pick_device

CACHE = Path(__file__).parent / ".cache"
Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def parse_args(argv=None):  # noqa: ANN001, ANN201
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, help="default 64 on CPU, 256 on GPU")
    p.add_argument("--width", type=float, help="ResNet-18 channel multiplier; default 0.25 on CPU, 1.0 on GPU")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tasks", default="pgd10,mifgsm,di2fgsm,robust_acc")
    p.add_argument("--peers", default="raw,torchattacks,art,foolbox")
    p.add_argument("--eval-eps", type=float, default=16, help="robust_acc budget, 0-255 units")
    p.add_argument("--eval-images", type=int, help="robust_acc images (default 4 batches)")
    p.add_argument("--train-images", type=int, default=10000)
    p.add_argument("--data-dir", help="where Fashion-MNIST is looked for first")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- the model -----------------------------------------------------------------

def trained_resnet18(width: float, n_train: int, device: torch.device, data_dir: str | None):  # noqa: ANN201
    info = rl.data.load_dataset("fashion_mnist", "test", limit=8, size=32, channels=3, data_dir=data_dir).info
    model = rl.models.create_model("resnet18_cifar", 10, in_channels=3, mean=info.mean, std=info.std, width=width)
    widths = tuple(stage[0].conv1.out_channels for stage in model.net.layers)
    path = CACHE / f"resnet18_w{width:g}_n{n_train}.pt"
    if path.is_file():
        model.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        train = rl.data.load_dataset("fashion_mnist", "train", limit=n_train, size=32, channels=3, data_dir=data_dir)
        start = time.perf_counter()
        rl.train.fit_classifier(model, rl.data.make_loader(train, 128, shuffle=True), epochs=1, lr=5e-3,
                                device=device)
        print(f"trained ResNet-18 (widths {widths}) on {n_train} images in {time.perf_counter() - start:.0f}s",
              file=sys.stderr)
        CACHE.mkdir(exist_ok=True)
        torch.save(model.net.state_dict(), path)
    return model.to(device).eval(), widths


# -- implementations -----------------------------------------------------------

def raw_pgd(model, eps, alpha, steps) -> Fn:  # noqa: ANN001
    """The loop a user writes by hand (Madry et al.)."""
    def run(x, y):  # noqa: ANN001, ANN202
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(model(x_adv), y)
            (g,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + alpha * g.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
        return x_adv
    return run


def raw_mifgsm(model, eps, alpha, steps, mu=1.0) -> Fn:  # noqa: ANN001
    def run(x, y):  # noqa: ANN001, ANN202
        x_adv, g = x.clone(), torch.zeros_like(x)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
            g = mu * g + grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True)
            x_adv = x_adv.detach() + alpha * g.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
        return x_adv
    return run


def art_attack(cls, model, eps, alpha, steps, batch, device, **kw):  # noqa: ANN001, ANN003, ANN201
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(3, 32, 32),
                            nb_classes=10, clip_values=(0.0, 1.0),
                            device_type="gpu" if device.type == "cuda" else "cpu")
    atk = cls(estimator=clf, norm=np.inf, eps=eps, eps_step=alpha, max_iter=steps, batch_size=batch,
              verbose=False, **kw)

    def run(x, y):  # noqa: ANN001, ANN202
        adv = atk.generate(x=x.cpu().numpy(), y=np.eye(10, dtype=np.float32)[y.cpu().numpy()])
        return torch.from_numpy(adv).to(x.device)
    return run


def implementations(task, model, args, device):  # noqa: ANN001, ANN201
    eps, alpha, steps, b = 8 / 255, 2 / 255, 10, args.batch_size
    if task == "robust_acc":
        eps = args.eval_eps / 255
        alpha = eps / 4
    peers = set(args.peers.split(","))
    impls: dict[str, Fn] = {}
    if task in ("pgd10", "robust_acc"):
        ours = rl.attacks.create("pgd", eps=eps, step_size=alpha, steps=steps, clean_init_prob=0.0)
        impls["robustlab"] = lambda x, y: ours(model, x, y)
        if task == "robust_acc":
            es = rl.attacks.create("pgd", eps=eps, step_size=alpha, steps=steps, clean_init_prob=0.0,
                                   early_stop=True, micro_batch=b)
            impls["robustlab early-stop"] = impls["_es"] = es  # runs on the whole pool at once
        if "raw" in peers:
            impls["raw loop"] = raw_pgd(model, eps, alpha, steps)
        if "torchattacks" in peers:
            import torchattacks
            ta = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
            impls["torchattacks"] = lambda x, y: ta(x, y)
        if "foolbox" in peers:
            import foolbox as fb
            fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=device)
            fa = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)
            impls["foolbox"] = lambda x, y: fa(fmodel, x, y, epsilons=eps)[1]
        if "art" in peers:
            from art.attacks.evasion import ProjectedGradientDescentPyTorch
            impls["ART"] = art_attack(ProjectedGradientDescentPyTorch, model, eps, alpha, steps, b, device,
                                      num_random_init=1)
    elif task == "mifgsm":
        ours = rl.attacks.create("mifgsm", eps=eps, step_size=alpha, steps=steps, mu=1.0)
        impls["robustlab"] = lambda x, y: ours(model, x, y)
        if "raw" in peers:
            impls["raw loop"] = raw_mifgsm(model, eps, alpha, steps)
        if "torchattacks" in peers:
            import torchattacks
            ta = torchattacks.MIFGSM(model, eps=eps, alpha=alpha, steps=steps, decay=1.0)
            impls["torchattacks"] = lambda x, y: ta(x, y)
        if "art" in peers:
            from art.attacks.evasion import MomentumIterativeMethod
            impls["ART"] = art_attack(MomentumIterativeMethod, model, eps, alpha, steps, b, device, decay=1.0)
    elif task == "di2fgsm":
        ours = rl.attacks.create("di2fgsm", eps=eps, step_size=alpha, steps=steps, p=0.5)
        impls["robustlab"] = lambda x, y: ours(model, x, y)
        batch_draw = rl.attacks.create("di2fgsm", eps=eps, step_size=alpha, steps=steps,
                                       diversity=rl.attacks.InputDiversity(0.5, per_sample=False))
        impls["robustlab per-batch draw"] = lambda x, y: batch_draw(model, x, y)
        if "torchattacks" in peers:
            import torchattacks
            ta = torchattacks.DIFGSM(model, eps=eps, alpha=alpha, steps=steps, decay=0.0,
                                     resize_rate=330 / 299, diversity_prob=0.5)
            impls["torchattacks"] = lambda x, y: ta(x, y)
    return impls


# -- timing --------------------------------------------------------------------

def time_task(task, impls, model, x, y, rounds, device, batch):  # noqa: ANN001, ANN201
    """Median seconds per call; robust_acc calls cover all of x, batch by batch
    except the early-stopping pool, and include the accuracy forward pass."""
    eval_acc = task == "robust_acc"

    def call(name):  # noqa: ANN001, ANN202
        fn = impls[name]
        sync(device)
        start = time.perf_counter()
        if not eval_acc:
            adv = fn(x, y)
            acc = None
        elif name == "robustlab early-stop":
            res = impls["_es"].run(model, x, y)
            adv, acc = res.x_adv, float((~res.success).float().mean())
            steps_mean[name] = float(res.steps.float().mean())
        else:
            adv = torch.cat([fn(x[i: i + batch], y[i: i + batch]) for i in range(0, len(y), batch)])
            acc = rl.eval.accuracy(model, adv, y, batch_size=batch)
        sync(device)
        return time.perf_counter() - start, acc, adv

    names = [n for n in impls if not n.startswith("_")]
    steps_mean: dict[str, float] = {}
    for n in names:  # warm-up
        call(n)
    times = {n: [] for n in names}
    accs = {n: [] for n in names}
    linf = {}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t, acc, adv = call(n)
            times[n].append(t)
            if acc is not None:
                accs[n].append(acc)
            linf[n] = float((adv - x).abs().max()) * 255
    memory = {}
    if device.type == "cuda":
        for n in names:
            torch.cuda.reset_peak_memory_stats()
            call(n)
            memory[n] = torch.cuda.max_memory_allocated() / 2**20
    return {n: {"seconds": statistics.median(times[n]), "all_seconds": times[n],
                "robust_acc": statistics.mean(accs[n]) if accs[n] else None,
                "linf_255": linf[n], "peak_mib": memory.get(n), "steps_mean": steps_mean.get(n)} for n in names}


def report(task, res, batch):  # noqa: ANN001, ANN201
    ref_name = "raw loop" if task == "pgd10" and "raw loop" in res else "robustlab"
    ref = res[ref_name]["seconds"]
    ta = res.get("torchattacks", {}).get("seconds")
    acc_col, mem_col = task == "robust_acc", bool(res[ref_name]["peak_mib"])
    head = "| implementation | s/call | img/s | ratio | vs torchattacks |"
    head += (" robust acc | mean steps |" if acc_col else "") + (" peak MiB |" if mem_col else "")
    rule = "|---|---|---|---|---|" + ("---|---|" if acc_col else "") + ("---|" if mem_col else "")
    lines = [f"\n## {task} ({batch} images per call; ratio = time / {ref_name})", head, rule]
    for name, r in sorted(res.items(), key=lambda kv: kv[1]["seconds"]):
        row = f"| {name} | {r['seconds']:.4f} | {batch / r['seconds']:.0f} | {r['seconds'] / ref:.3f} | "
        row += f"{ta / r['seconds']:.2f}× |" if ta else "– |"
        if task == "robust_acc":
            row += f" {r['robust_acc']:.3f} |" + (f" {r['steps_mean']:.2f} |" if r["steps_mean"] else " 10 |")
        if r["peak_mib"]:
            row += f" {r['peak_mib']:.0f} |"
        lines.append(row)
    return "\n".join(lines)


def main(argv=None) -> int:  # noqa: ANN001
    args = parse_args(argv)
    device = pick_device(args.device)
    args.batch_size = args.batch_size or (256 if device.type == "cuda" else 64)
    args.width = args.width or (1.0 if device.type == "cuda" else 0.25)
    torch.manual_seed(0)
    model, widths = trained_resnet18(args.width, args.train_images, device, args.data_dir)
    n_eval = args.eval_images or 4 * args.batch_size
    test = rl.data.load_dataset("fashion_mnist", "test", limit=max(n_eval, args.batch_size), size=32, channels=3,
                                data_dir=args.data_dir)
    x_all, y_all = (t.to(device) for t in test.batch(slice(None)))
    x, y = x_all[: args.batch_size], y_all[: args.batch_size]
    header = (f"# attack throughput — {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}"
              f" ({torch.get_num_threads()} threads), torch {torch.__version__}, ResNet-18 widths {widths}, "
              f"clean accuracy {rl.eval.accuracy(model, x, y):.3f}, {args.rounds} rounds, median")
    print(header)
    results = {"header": header, "batch_size": args.batch_size, "tasks": {}}
    for task in args.tasks.split(","):
        impls = implementations(task, model, args, device)
        xt, yt = (x_all[:n_eval], y_all[:n_eval]) if task == "robust_acc" else (x, y)
        res = time_task(task, impls, model, xt, yt, args.rounds, device, args.batch_size)
        results["tasks"][task] = res
        print(report(task, res, len(yt)), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
