"""Training throughput: images/s of vanilla training, PGD-k adversarial training,
fast (PGD-1) adversarial training and AdvProp on the same model, as ratios to
vanilla — and robustlab's loop side by side with what users write today: a raw
PyTorch loop (with a hand-written PGD), torchattacks' PGD inside a raw loop,
and ART's ``AdversarialTrainerMadryPGD``.

Model: a CIFAR-shaped ResNet-18 (3×32×32, 10 classes; ``--width`` scales its
channels) on Fashion-MNIST resized to 3×32×32. Every implementation runs the
same number of SGD steps on the same batches; each is warmed up, then timed
round by round in a rotating order; medians are reported.

Data: robustlab trains from the in-memory dataset, which the loop moves to
the GPU once; the peers get the batches already on the device.

Cost model: a training step is one forward and one backward (data + weight
gradients); an attack step is one forward and a backward for the input
gradient only. So PGD-k AT costs at most k + 1 vanilla steps, and about
1 + 2k/3 where weight gradients are a third of the work. AdvProp with PGD-k
trains on two batches (clean through the main BNs, adversarial through the
auxiliary ones): about 2 + 2k/3.

Run: ``python benchmarks/train_throughput.py`` (``--device cuda`` on a GPU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import robustlab as rl
from robustlab._io import pick_device
from robustlab.train import recipes

EPS, ALPHA = 8 / 255, 2 / 255


def parse_args(argv=None):  # noqa: ANN001, ANN201
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, help="default 64 on CPU, 256 on GPU")
    p.add_argument("--width", type=float, help="ResNet-18 channel multiplier; default 0.25 on CPU, 1.0 on GPU")
    p.add_argument("--steps", type=int, help="SGD steps per timed round (default 3 on CPU, 20 on GPU)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pgd-steps", type=int, default=7, help="k of PGD-k adversarial training")
    p.add_argument("--peers", default="raw,torchattacks,art")
    p.add_argument("--amp", choices=("bf16", "fp16"), help="robustlab runs under this autocast (no peer does)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--data-dir")
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def make_model(width: float, info, routes: bool = False):  # noqa: ANN001, ANN201
    torch.manual_seed(0)
    return rl.models.create_model("resnet18_cifar", 10, in_channels=3, mean=info.mean, std=info.std, width=width,
                                  norm="mbn" if routes else None)


# -- peers: what users write today ----------------------------------------------

def raw_pgd(model, x, y, eps, alpha, steps):  # noqa: ANN001, ANN201
    """MadryLab-style PGD with a random start, model in eval mode."""
    was = model.training
    model.eval()
    delta = torch.empty_like(x).uniform_(-eps, eps)
    xa = (x + delta).clamp(0, 1)
    for _ in range(steps):
        xa.requires_grad_(True)
        g, = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
        xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    model.train(was)
    return xa.detach()


def raw_loop(model, batches, attack=None):  # noqa: ANN001, ANN201
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    model.train()
    for x, y in batches:
        if attack is not None:
            x = attack(model, x, y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def art_trainer(model, batch, steps, device):  # noqa: ANN001, ANN201
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), optimizer=opt, input_shape=(3, 32, 32),
                            nb_classes=10, clip_values=(0.0, 1.0),
                            device_type="gpu" if device.type == "cuda" else "cpu")
    return AdversarialTrainerMadryPGD(clf, nb_epochs=1, batch_size=batch, eps=EPS, eps_step=ALPHA, max_iter=steps,
                                      num_random_init=1)


# -- the benchmark -----------------------------------------------------------------

def main(argv=None) -> None:  # noqa: ANN001
    args = parse_args(argv)
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch_size or (256 if gpu else 64)
    width = args.width or (1.0 if gpu else 0.25)
    n_steps = args.steps or (20 if gpu else 6)
    k = args.pgd_steps
    data = rl.data.load_dataset("fashion_mnist", "train", limit=batch * n_steps, size=32, channels=3,
                                data_dir=args.data_dir)
    x_all, y_all = (t.to(device) for t in data.batch(slice(None)))
    if args.channels_last:
        x_all = x_all.contiguous(memory_format=torch.channels_last)
    batches = [(x_all[i: i + batch], y_all[i: i + batch]) for i in range(0, len(y_all), batch)]
    peers = set(args.peers.split(",")) if args.peers else set()

    opts = dict(epochs=1, batch_size=batch, lr=0.01, device=str(device), progress=False, log_every=10**6,
                amp=args.amp, channels_last=args.channels_last)
    pgd_kw = dict(eps=EPS, steps=k, step_size=ALPHA, targeted=False, clean_init_prob=0.0)
    tasks = {
        "vanilla": recipes.create("vanilla"),
        # The default: BN in testing mode during the attack (running statistics), as the
        # authors' releases and the peers.
        f"pgd{k}_at": recipes.create("madry", **pgd_kw),
        # The option: attack on the training graph's batch statistics (the former default).
        f"pgd{k}_at_batchstats": recipes.create("madry", bn_stats="batch", **pgd_kw),
        "fast_at": recipes.create("fast", eps=EPS),
        "advprop": recipes.create("advprop", steps=5),
    }
    models = {name: make_model(width, data.info, routes=bool(r.routes)).to(device) for name, r in tasks.items()}
    impls = {}
    for name, recipe in tasks.items():
        m = models[name]
        impls[f"robustlab {name}"] = lambda m=m, r=recipe: rl.train.fit(m, data, r, **opts).seconds
    raw_model = make_model(width, data.info).to(device)
    pgd = lambda m, x, y: raw_pgd(m, x, y, EPS, ALPHA, k)  # noqa: E731
    if "raw" in peers:
        impls["raw vanilla"] = lambda: _timed(lambda: raw_loop(raw_model, batches), device)
        impls[f"raw pgd{k}_at"] = lambda: _timed(lambda: raw_loop(raw_model, batches, pgd), device)
    if "torchattacks" in peers:
        import torchattacks

        ta = torchattacks.PGD(raw_model, eps=EPS, alpha=ALPHA, steps=k, random_start=True)
        impls[f"torchattacks pgd{k}_at"] = lambda: _timed(lambda: raw_loop(raw_model, batches,
                                                                             lambda m, x, y: ta(x, y)), device)
    if "art" in peers:
        trainer = art_trainer(make_model(width, data.info).to(device), batch, k, device)
        xs, ys = x_all.cpu().numpy(), y_all.cpu().numpy()
        impls[f"art pgd{k}_at"] = lambda: _timed(lambda: trainer.fit(xs, ys), device)

    for fn in impls.values():  # warm-up: allocator, cuDNN plans, first-call overheads
        fn()
    times: dict[str, list[float]] = {name: [] for name in impls}
    names = list(impls)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(impls[name]())
    images = batch * n_steps
    rate = {name: images / statistics.median(t) for name, t in times.items()}
    rows = []
    for name in names:
        task = name.split(" ", 1)[1]
        rows.append({"impl": name, "images_per_s": round(rate[name], 1),
                     "cost_vs_robustlab_vanilla": round(rate["robustlab vanilla"] / rate[name], 2),
                     "robustlab_speedup": round(rate[f"robustlab {task}"] / rate[name], 2)
                     if f"robustlab {task}" in rate else None})
    header = (f"device {device} ({torch.cuda.get_device_name(device) if gpu else f'{torch.get_num_threads()} threads'})"
              f", ResNet-18 width {width}, batch {batch}, {n_steps} steps x {args.rounds} rounds, PGD-{k}"
              f"{', amp ' + args.amp if args.amp else ''}{', channels_last' if args.channels_last else ''}")
    print(header)
    print(f"{'implementation':28s} {'img/s':>9s} {'cost (x vanilla)':>17s} {'robustlab speed-up':>19s}")
    for row in rows:
        sp = "" if row["robustlab_speedup"] is None or row["impl"].startswith("robustlab") else \
            f"{row['robustlab_speedup']:.2f}x"
        print(f"{row['impl']:28s} {row['images_per_s']:9.1f} {row['cost_vs_robustlab_vanilla']:16.2f}x {sp:>19s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "rows": rows, "times": times}, f, indent=1)


def _timed(fn, device: torch.device) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
