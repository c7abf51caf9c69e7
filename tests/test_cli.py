"""The command line: `robustlab attack` and `robustlab demo`."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from robustlab.app.cli import main
from robustlab.models import save_model


@pytest.fixture()
def checkpoint(tmp_path, trained_model):
    return save_model(trained_model, tmp_path / "model")


def test_attack_writes_results_and_examples(tmp_path, checkpoint, capsys):
    out = tmp_path / "run"
    rc = main(["attack", "--model", str(checkpoint), "--data", "digits", "--limit", "100", "--attack", "pgd",
               "--eps", "32", "--steps", "5", "--batch-size", "64", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["n"] == 100 and res["attack"]["name"] == "pgd"
    assert res["attack"]["eps_255"] == pytest.approx(32) and res["attack"]["steps"] == 5
    assert res["clean_accuracy"] > 0.9 and res["adversarial_accuracy"] < res["clean_accuracy"]
    s = res["summary"]
    assert s["linf_max_255"] <= 32 + 1e-3 and s["eps_violations"] == 0 and s["nan_count"] == 0
    assert 0 <= s["pixel_min"] and s["pixel_max"] <= 1
    t = load_file(str(out / "adversarial.safetensors"))
    assert t["x_adv"].shape == (100, 1, 8, 8)
    assert t["success"].float().mean().item() == pytest.approx(s["success_rate"])
    table = capsys.readouterr().out.splitlines()
    row = next(line.split() for line in table if line.split()[:1] == ["pgd"])
    # percentages as eval prints them; success over the images right before the attack, not all of them
    assert row[1:5] == ["100", f"{100 * res['clean_accuracy']:.1f}", f"{100 * res['adversarial_accuracy']:.1f}",
                        f"{100 * res['success_rate_on_correct']:.1f}"]
    assert all(len(line) <= 100 for line in table)
    assert res["clean_accuracy"] == 1 or res["success_rate_on_correct"] != s["success_rate"]  # the two differ
    import yaml

    config = yaml.safe_load((out / "config.yaml").read_text())  # what ran, as train and eval runs record it
    assert (config["attack"], config["eps"], config["steps"], config["limit"]) == ("pgd", "32", 5, 100)


def test_attack_thesis_notation_and_options(tmp_path, checkpoint):
    out = tmp_path / "run"
    rc = main(["attack", "--model", str(checkpoint), "--data", "digits", "--limit", "32", "--attack", "m-di2-fgsm",
               "--eps", "16/255", "--p", "0.3", "--targeted", "--early-stop", "--no-save", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    a = res["attack"]
    assert a["eps"] == pytest.approx(16 / 255) and a["p"] == 0.3 and a["targeted"] and a["early_stop"]
    assert a["steps"] == 20  # N = min(ε + 4, 1.25ε) for ε = 16
    assert not (out / "adversarial.safetensors").exists()



@pytest.mark.parametrize(("flags", "eps", "step"), [
    (["--eps", "0.03"], 0.03, None), (["--eps", "8", "--step-size", "0.5/255"], 8 / 255, 0.5 / 255),
    (["--eps", "0.1", "--step-size", "0.02"], 0.1, 0.02), (["--eps", "8", "--step-size", "2"], 8 / 255, 2 / 255),
    (["--eps", "0.03px", "--step-size", "1/255"], 0.03, 1 / 255), (["--norm", "l2", "--eps", "3"], 3.0, None),
])
def test_attack_reads_eps_as_eval_does(flags, eps, step):
    """``robustlab attack --eps 0.03`` attacked at 0.03/255 while ``robustlab eval --eps 0.03`` used 0.03 px, and
    ``--eps 0.1 --step-size 0.02`` stepped by 0.02/255, 1300 times less than meant."""
    from robustlab.app.cli import attack_kwargs, build_parser

    kw = attack_kwargs(build_parser().parse_args(["attack", "--model", "m", *flags]))
    assert kw["eps"] == pytest.approx(eps) and kw.get("step_size") == (None if step is None else pytest.approx(step))


def test_attack_writes_a_report_with_its_grid_and_numbers(tmp_path, checkpoint, capsys):
    """robustlab attack renders report.html itself: the numbers of results.json
    as percentages with n, and a grid of clean / adversarial / perturbation
    images kept even with --no-save (examples.safetensors, a few images)."""
    import re

    out = tmp_path / "run"
    assert main(["attack", "--model", str(checkpoint), "--data", "digits", "--limit", "40", "--attack", "pgd",
                 "--eps", "32", "--steps", "5", "--no-save", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    assert not (out / "adversarial.safetensors").exists()
    kept = load_file(str(out / "examples.safetensors"))
    assert kept["clean"].shape == kept["adversarial"].shape == (8, 1, 8, 8)
    assert float((kept["adversarial"] - kept["clean"]).abs().max()) <= 32 / 255 + 1e-6
    res = json.loads((out / "results.json").read_text())
    page = (out / "report.html").read_text()
    for key in ("clean_accuracy", "adversarial_accuracy"):
        assert f"{100 * res[key]:.1f}%" in page
    assert page.count("n=40") >= 3
    alts = re.findall(r'<img[^>]* alt="([^"]*)"', page)
    assert sum(a.startswith("adversarial example") for a in alts) == 8
    assert sum(a.startswith("perturbation") for a in alts) == 8
    assert "ε = 32/255" in page and "5 steps" in page

@pytest.mark.parametrize("argv,match", [
    (["--attack", "deepfool"], "unknown attack 'deepfool'"),
    (["--eps", "-3"], "--eps must be finite and >= 0"),
    (["--eps", "abc"], "--eps must be a number"),
    (["--attack", "fgsm", "--steps", "3"], "fgsm is a single step"),
    (["--attack", "cw", "--norm", "l2"], "--norm does not apply to cw (C&W bounds no ε"),
    (["--attack", "cw", "--eps", "8"], "--eps does not apply to cw"),  # the API ignores it; the CLI says so
    (["--attack", "fgsm", "--confidence", "3", "--lr", "0.1"], "--confidence, --lr do not apply to fgsm"),
])
def test_attack_bad_arguments(tmp_path, checkpoint, capsys, argv, match):
    out = tmp_path / "run"
    rc = main(["attack", "--model", str(checkpoint), "--data", "digits", "--out", str(out), *argv])
    assert rc == 2
    assert match in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


def test_an_unbounded_attack_says_so_in_the_table_and_the_report(tmp_path, checkpoint, capsys):
    """GD (§7.5.4) drops PGD's projection: its accuracy is no robust accuracy at its ε."""
    out = tmp_path / "gd"
    assert main(["attack", "--model", str(checkpoint), "--data", "digits", "--limit", "32", "--attack", "gd",
                 "--steps", "3", "--out", str(out)]) == 0
    assert "gd is not ε-bounded" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert "bounds the random start only (no projection)" in page and "this attack is not ε-bounded" in page
    pgd = tmp_path / "pgd"
    assert main(["attack", "--model", str(checkpoint), "--data", "digits", "--limit", "32", "--steps", "3",
                 "--out", str(pgd)]) == 0
    assert "not ε-bounded" not in capsys.readouterr().out + (pgd / "report.html").read_text()


def test_attack_missing_model(tmp_path, capsys):
    rc = main(["attack", "--model", str(tmp_path / "none"), "--data", "digits", "--out", str(tmp_path / "o")])
    assert rc == 2 and "unknown model" in capsys.readouterr().err


def test_demo_runs_on_digits(tmp_path, capsys):
    rc = main(["demo", "--data", "digits", "--out", str(tmp_path / "demo"), "--limit", "128"])
    assert rc == 0
    text = capsys.readouterr().out
    for name in ("fgsm", "mdi2fgsm", "pgd-es", "B %", "success %"):
        assert name in text
    res = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert len(res["records"]) == 9
    assert (tmp_path / "demo" / "model_A" / "model.safetensors").is_file()


def test_demo_trains_over_few_steps_and_a_failed_demo_leaves_no_folder(tmp_path, monkeypatch):
    # 256 images at batch 64: four steps, where OneCycleLR divides by zero
    assert main(["demo", "--data", "digits", "--out", str(tmp_path / "demo"), "--train-limit", "256",
                 "--limit", "32"]) == 0
    assert len(json.loads((tmp_path / "demo" / "results.json").read_text())["records"]) == 9

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("robustlab.app.demo.attack_dataset", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["demo", "--data", "digits", "--out", str(tmp_path / "runs" / "demo"), "--limit", "32"])
    assert not (tmp_path / "runs").exists()  # nothing to refuse a demo with other options


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "robustlab", "--help"], capture_output=True, text=True, check=True)
    assert "attack" in out.stdout and "demo" in out.stdout
    torch.manual_seed(0)


def test_attack_from_a_config_file(tmp_path, checkpoint):
    cfg = tmp_path / "atk.yaml"
    out = tmp_path / "run"
    cfg.write_text(f"model: {checkpoint}\ndata: digits\nlimit: 40\nattack: pgd\neps: 24\nsteps: 3\n"
                   f"clean-init-prob: 0\nout: {out}\nno_save: true\n")
    assert main(["attack", "--config", str(cfg), "--steps", "4"]) == 0  # flags win over the file
    a = json.loads((out / "results.json").read_text())["attack"]
    assert a["eps_255"] == pytest.approx(24) and a["steps"] == 4 and a["clean_init_prob"] == 0


def test_bad_config(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epsilon: 8\n")
    assert main(["attack", "--config", str(cfg)]) == 2
    assert "unknown option(s) ['epsilon']" in capsys.readouterr().err
    assert main(["attack", "--config", str(tmp_path / "none.yaml")]) == 2
    assert main(["attack", "--data", "digits"]) == 2
    assert "--model is required" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["attack_pgd.yaml", "attack_mdi2fgsm.yaml"])
def test_shipped_configs_parse(name):
    from pathlib import Path

    from robustlab.app.cli import apply_config, attack_kwargs, build_parser
    from robustlab.attacks import create

    path = Path(__file__).parent.parent / "configs" / name
    parser = build_parser()
    argv = ["attack", "--config", str(path)]
    args = apply_config(parser, argv, parser.parse_args(argv))
    atk = create(args.attack, **attack_kwargs(args))
    assert args.model == "runs/demo/model_A" and args.data == "fashion_mnist"
    assert atk.name in ("pgd", "mdi2fgsm")


def test_list(capsys):
    assert main(["list", "denoise"]) == 0
    assert "nonlocal_gaussian" in capsys.readouterr().out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(k in out for k in ("attacks:", "activations:", "models:", "datasets:"))


def test_attack_through_a_route(tmp_path, capsys):
    """An AdvProp-style model is attacked through the BN route asked for."""
    import torch

    import robustlab as rl

    torch.manual_seed(0)
    model = rl.models.create_model("smallcnn", 10, in_channels=1, width=4, norm="mbn").train()
    with rl.nn.route(model, "adv"):  # give the routes different statistics
        model(torch.rand(32, 1, 8, 8) * 4)
    ckpt = rl.models.save_model(model.eval(), tmp_path / "mbn")
    outs = {}
    for r in ("clean", "adv"):
        out = tmp_path / r
        assert main(["attack", "--model", str(ckpt), "--data", "digits", "--limit", "16", "--attack", "fgsm",
                     "--eps", "8", "--route", r, "--out", str(out)]) == 0
        outs[r] = load_file(str(out / "adversarial.safetensors"))["x_adv"]
        assert json.loads((out / "results.json").read_text())["route"] == r
    assert not torch.equal(outs["clean"], outs["adv"])
    assert main(["attack", "--model", str(ckpt), "--data", "digits", "--route", "aux", "--out",
                 str(tmp_path / "x")]) == 2
    assert "route must be one of" in capsys.readouterr().err
    assert main(["attack", "--model", str(ckpt), "--data", "digits", "--act", "silu", "--out",
                 str(tmp_path / "y")]) == 2
    assert "records its own architecture" in capsys.readouterr().err


def test_named_model_with_architecture_flags(tmp_path):
    out = tmp_path / "run"
    assert main(["attack", "--model", "smallcnn", "--data", "digits", "--limit", "8", "--attack", "fgsm",
                 "--act", "silu", "--norm-layer", "gn", "--denoise", "mean", "--no-save", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["architecture"] == {"act": "silu", "norm": "gn", "denoise": "mean"}
    assert results["weights_record"] == {"source": "random"}  # which weights were attacked: none
    assert "weights: randomly initialized (no weights given)" in (out / "report.html").read_text()


def test_help_imports_no_torch():
    """`robustlab --help` answers fast because building the parser imports no torch."""
    import subprocess
    import sys

    code = ("import sys; from robustlab.app.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("argv", [["-q", "list", "attacks"], ["list", "attacks", "-q"], ["list", "-v", "attacks"]])
def test_quiet_and_verbose_before_or_after_the_subcommand(argv, capsys):
    from robustlab.app.cli import main

    assert main(argv) == 0
    assert "pgd" in capsys.readouterr().out
