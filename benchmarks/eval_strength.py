"""Evaluation strength: robustlab's white-box evaluation against AutoAttack
(standard version, torchattacks' implementation: APGD-CE, APGD-T, FAB-T,
Square) on an adversarially trained model, same images, same ε.

The model is a run directory of ``robustlab train`` (``--checkpoint``), by
default ``configs/train_madry.yaml`` trained here first. robustlab's number is
the per-image worst case of its PGD runs (cross-entropy and C&W-margin losses,
untargeted and targeted, each with ``--restarts`` random starts, early-stopped); AutoAttack's is its robust
accuracy. A gradient-based evaluation that matches AutoAttack within a point
or two is doing its job; a large gap means robustlab's default evaluation
overestimates robustness.

Run: ``python benchmarks/eval_strength.py [--checkpoint RUN_DIR] [--n 200]``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import robustlab as rl
from robustlab._io import pick_device
from robustlab.eval.whitebox import robustness_curve, worst_case


def main(argv=None) -> None:  # noqa: ANN001
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="run directory of an adversarially trained model")
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--eps", default="25", help="budget, 0-255 units (Fashion-MNIST: 25 ≈ 0.1)")
    p.add_argument("--n", type=int, default=200, help="test images")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--losses", default="ce,cw", help="PGD losses whose worst case is taken (ce, cw)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    eps = rl.units.parse_eps(args.eps)
    run = Path(args.checkpoint) if args.checkpoint else Path("runs/eval-strength-madry")
    if not (run / "model.json").is_file():
        from robustlab.app.config import load_config
        from robustlab.app.train import run_train

        cfg, raw = load_config(Path(__file__).resolve().parents[1] / "configs" / "train_madry.yaml")
        run_train(cfg, raw, run)
    model = rl.models.load_model(run).to(device).eval()
    x, y = (t.to(device) for t in rl.data.load_dataset(args.data, "test", limit=args.n).batch(slice(None)))
    clean = rl.eval.accuracy(model, x, y)

    start = time.perf_counter()
    losses = args.losses.split(",")
    curves = [robustness_curve(model, [(x, y)], steps=[args.steps], eps=eps,
                               step_size=max(2.5 * eps / args.steps, eps / 40), targeted=t, restarts=args.restarts,
                               device=device, loss=loss)
              for loss in losses for t in (False, True)]
    ours = worst_case(curves)
    t_ours = time.perf_counter() - start

    import torchattacks

    start = time.perf_counter()
    aa = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=int(y.max()) + 1, seed=0)
    x_aa = aa(x, y)
    t_aa = time.perf_counter() - start
    aa_acc = rl.eval.accuracy(model, x_aa, y)
    aa_right = (rl.eval.predict(model, x_aa) == y).cpu()
    both = float(((ours.broken_at > args.steps) & aa_right).float().mean())

    out = {"checkpoint": str(run), "n": len(y), "eps_255": eps * 255, "clean": clean,
           "robustlab_worst_case": ours.accuracy[0],
           **{f"robustlab_{c.config['loss']}_{'targeted' if c.config['targeted'] else 'untargeted'}": c.accuracy[0]
              for c in curves},
           "robustlab_seconds": round(t_ours, 1),
           "autoattack": aa_acc, "autoattack_seconds": round(t_aa, 1), "worst_of_both": both}
    print(json.dumps(out, indent=1))
    print(f"gap (robustlab − AutoAttack): {100 * (ours.accuracy[0] - aa_acc):+.1f} points "
          f"on {len(y)} images at ε = {eps * 255:g}/255; robustlab {t_ours:.0f} s, AutoAttack {t_aa:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
