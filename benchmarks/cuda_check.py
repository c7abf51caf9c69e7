"""CUDA code paths of the attack core, for a machine with a GPU.

The test suite runs on CPU; this script checks what only a GPU exercises:
every registered attack on CUDA tensors (ε-ball, range, seeded determinism
with a CUDA generator), agreement with the CPU result, per-sample early stop,
a channels_last model and input, mixed-precision forward passes
(``autocast="bf16"``/``"fp16"``) and a ``torch.compile``d model. It prints one
line per check and exits non-zero if any fails.

Run: ``python benchmarks/cuda_check.py``.
"""
from __future__ import annotations

import sys
import time
import traceback

import torch

import robustlab as rl

RESULTS: list[tuple[str, bool, str]] = []


def check(name: str):  # noqa: ANN201
    def wrap(fn):  # noqa: ANN001, ANN202
        start = time.perf_counter()
        try:
            detail = fn() or ""
            RESULTS.append((name, True, detail))
        except Exception as err:  # noqa: BLE001 - report every failure, keep going
            traceback.print_exc()
            RESULTS.append((name, False, f"{type(err).__name__}: {err}"))
        print(f"{'PASS' if RESULTS[-1][1] else 'FAIL'} {name} ({time.perf_counter() - start:.1f}s) {RESULTS[-1][2]}",
              flush=True)
        return fn
    return wrap


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = False
    train = rl.data.load_dataset("digits", "train")
    x, y = rl.data.load_dataset("digits", "test").batch(slice(0, 256))
    torch.manual_seed(0)
    model = rl.models.create_model("smallcnn", 10, in_channels=1, mean=train.info.mean, std=train.info.std, width=16)
    rl.train.fit_classifier(model, rl.data.make_loader(train, 64, shuffle=True), epochs=6, device=dev)
    xc, yc = x.to(dev), y.to(dev)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, clean acc "
          f"{rl.eval.accuracy(model, xc, yc):.3f}")

    @check("every attack on CUDA: ε-ball, [0, 1], seeded determinism")
    def _():  # noqa: ANN202
        for name in rl.attacks.names():
            kw = {"steps": 20, "binary_search_steps": 2} if name in ("cw", "dcw") else {"eps": 32 / 255}
            a = rl.attacks.create(name, seed=1, **kw).run(model, xc, yc)
            b = rl.attacks.create(name, seed=1, **kw).run(model, xc, yc)
            assert a.x_adv.is_cuda and torch.equal(a.x_adv, b.x_adv), name
            assert 0 <= float(a.x_adv.min()) and float(a.x_adv.max()) <= 1, name
            if name not in ("gd", "cw", "dcw"):
                assert float(a.linf.max()) <= 32 / 255 + 1e-6, name
        return f"{len(rl.attacks.names())} attacks"

    @check("CUDA equals CPU for I-FGSM and MI-FGSM (deterministic)")
    def _():  # noqa: ANN202
        out = []
        for name in ("ifgsm", "mifgsm"):
            atk = rl.attacks.create(name, eps=32 / 255, step_size=2 / 255, steps=10)
            g = atk(model, xc, yc).cpu()
            c = atk(model.cpu(), x, y)
            model.to(dev)
            frac = float((g != c).float().mean())
            assert frac < 0.01, f"{name}: {frac:.4f} of pixels differ"
            out.append(f"{name} {frac:.2e} pixels differ")
        return ", ".join(out)

    @check("early stop keeps remaining trajectories on CUDA")
    def _():  # noqa: ANN202
        kw = {"eps": 24 / 255, "steps": 10, "clean_init_prob": 0.0, "seed": 3}
        fixed = rl.attacks.create("pgd", **kw).run(model, xc, yc)
        early = rl.attacks.create("pgd", early_stop=True, **kw).run(model, xc, yc)
        stay = early.steps == 10
        assert torch.allclose(early.x_adv[stay], fixed.x_adv[stay], atol=1e-5)
        assert bool((early.success | ~fixed.success).all())
        return f"mean steps {early.steps.float().mean():.2f} of 10"

    @check("channels_last model and input")
    def _():  # noqa: ANN202
        m = rl.models.create_model("resnet18_cifar", 10).to(dev).eval().to(memory_format=torch.channels_last)
        xi = torch.rand(64, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
        yi = torch.randint(0, 10, (64,), device=dev)
        a = rl.attacks.create("mdi2fgsm", eps=8 / 255, seed=0)(m, xi, yi)
        b = rl.attacks.create("mdi2fgsm", eps=8 / 255, seed=0)(m, xi.contiguous(), yi)
        assert float((a - xi).abs().max()) <= 8 / 255 + 1e-6
        return f"max |channels_last − contiguous| = {float((a - b).abs().max()):.2e}"

    @check("autocast bf16 / fp16 forward")
    def _():  # noqa: ANN202
        out = []
        full = rl.eval.accuracy(model, rl.attacks.create("pgd", eps=32 / 255, steps=10, seed=0)(model, xc, yc), yc)
        for mode in ("bf16", "fp16"):
            adv = rl.attacks.create("pgd", eps=32 / 255, steps=10, seed=0, autocast=mode)(model, xc, yc)
            assert adv.dtype == torch.float32 and float((adv - xc).abs().max()) <= 32 / 255 + 1e-6
            acc = rl.eval.accuracy(model, adv, yc)
            assert abs(acc - full) < 0.1, (mode, acc, full)
            out.append(f"{mode} acc {acc:.3f}")
        return f"fp32 acc {full:.3f}, " + ", ".join(out)

    @check("torch.compile'd model under PGD")
    def _():  # noqa: ANN202
        m = rl.models.create_model("resnet18_cifar", 10).to(dev).eval()
        cm = torch.compile(m)
        xi, yi = torch.rand(128, 3, 32, 32, device=dev), torch.randint(0, 10, (128,), device=dev)
        start = time.perf_counter()
        fg_c = rl.attacks.create("fgsm", eps=8 / 255)(cm, xi, yi)
        torch.cuda.synchronize()
        first = time.perf_counter() - start
        fg_e = rl.attacks.create("fgsm", eps=8 / 255)(m, xi, yi)
        agree = float((fg_c == fg_e).float().mean())  # fused kernels round differently
        assert agree > 0.95, agree
        atk = rl.attacks.create("pgd", eps=8 / 255, step_size=2 / 255, steps=10, seed=0, clean_init_prob=0.0)
        loss = {}
        times = {}
        for label, mod in (("eager", m), ("compiled", cm)):
            adv = atk(mod, xi, yi)
            assert float((adv - xi).abs().max()) <= 8 / 255 + 1e-6
            with torch.no_grad():
                loss[label] = float(torch.nn.functional.cross_entropy(m(adv), yi))
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(5):
                atk(mod, xi, yi)
            torch.cuda.synchronize()
            times[label] = (time.perf_counter() - start) / 5
        assert abs(loss["compiled"] - loss["eager"]) < 0.1 * abs(loss["eager"]) + 0.05, loss
        return (f"compile {first:.1f}s; FGSM pixels agreeing {agree:.4f}; PGD loss eager {loss['eager']:.3f} vs "
                f"compiled {loss['compiled']:.3f}; PGD-10 batch 128: eager {times['eager'] * 1e3:.1f} ms, "
                f"compiled {times['compiled'] * 1e3:.1f} ms")

    @check("denoising ops on CUDA equal CPU; fused and chunked non-local stay under the affinity")
    def _():  # noqa: ANN202
        torch.manual_seed(0)
        x = torch.randn(2, 16, 12, 12)
        for op in rl.nn.DENOISE_OPS:
            block = rl.nn.DenoiseBlock(16, op)
            torch.nn.init.normal_(block.bn.weight)  # leave the identity so the op matters
            cpu = block(x)
            gpu = block.to(dev)(x.to(dev)).cpu()
            assert torch.allclose(cpu, gpu, atol=1e-4), (op, float((cpu - gpu).abs().max()))
        n, c, h, w = 4, 64, 56, 56
        full = n * (h * w) ** 2 * 4
        xg = torch.randn(n, c, h, w, device=dev, requires_grad=True)
        peaks, outs = {}, {}
        torch.manual_seed(1)
        block = rl.nn.NonLocalDenoise(c).to(dev)
        for label, fused, bound in (("fused", True, None), ("unchunked", False, 2**40),
                                    ("chunked", False, full // 8)):
            block.fused, block.max_bytes = fused, bound
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            y = block(xg)
            y.sum().backward()
            torch.cuda.synchronize()
            peaks[label] = (torch.cuda.max_memory_allocated() - base) / 2**20
            outs[label] = (y.detach(), xg.grad)
            xg.grad = None
        assert peaks["fused"] < full / 2**20 and peaks["chunked"] < full / 2**20 < peaks["unchunked"], peaks
        for label in ("fused", "chunked"):
            for a, b in zip(outs[label], outs["unchunked"]):
                assert torch.allclose(a, b, atol=1e-4, rtol=1e-3), (label, float((a - b).abs().max()))
        return (f"affinity {full / 2**20:.0f} MiB; extra peak unchunked {peaks['unchunked']:.0f} MiB, "
                f"chunked (bound {full / 8 / 2**20:.0f} MiB) {peaks['chunked']:.0f} MiB, "
                f"fused {peaks['fused']:.0f} MiB; outputs and gradients agree")

    @check("mixture BN routes and export on CUDA")
    def _():  # noqa: ANN202
        m = rl.models.create_model("resnet20_cifar", 10, norm="mbn", act="silu", denoise="nonlocal_dot").to(dev)
        m.train()
        with rl.nn.route(m, "adv"):
            m(torch.rand(64, 3, 32, 32, device=dev) * 2)
        m.eval()
        xi = torch.rand(8, 3, 32, 32, device=dev)
        exported = rl.nn.drop_routes(m, keep="adv")
        with rl.nn.route(m, "adv"):
            assert torch.equal(exported(xi), m(xi))
            adv = rl.attacks.create("pgd", eps=8 / 255, steps=5, seed=0)(m, xi)
        with torch.no_grad():
            assert not torch.equal(m(xi), exported(xi))  # the clean route differs
        return f"PGD through the adv route: L∞ {float((adv - xi).abs().max()) * 255:.2f}/255"

    failed = [n for n, ok, _ in RESULTS if not ok]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
