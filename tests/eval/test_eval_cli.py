"""`robustlab eval` and `robustlab report` on trained run directories."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import pytest
import torch

from robustlab.app.cli import main, out_of_memory_text

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train_vanilla.yaml"
TINY = ["data.name=digits", "train.epochs=2", "train.batch_size=64", "eval.attack=null", "data.eval_limit=64"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("a", 0), ("b", 1)):
        assert main(["train", str(CONFIG), *TINY, f"seed={seed}", "--out", str(root / name)]) == 0
    return root


def test_whitebox_and_corruption_write_results_and_report(runs, capsys):
    out = runs / "a" / "eval-all"
    assert main(["eval", "--checkpoint", str(runs / "a"), "--checkpoint", str(runs / "b"), "--data", "digits",
                 "--protocol", "all", "--eps", "25", "--step-size", "4", "--steps", "1,5,10", "--limit", "64",
                 "--targeted"]) == 0
    text = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    page = (out / "report.html").read_text()
    assert set(res["models"]) == {"a", "b"}  # every model named is evaluated, not only the first
    for name in ("a", "b"):
        m = res["models"][name]
        curve = m["whitebox"]["PGD untargeted"]["accuracy"]
        assert all(a >= b for a, b in zip(curve, curve[1:])) and "PGD targeted" in m["whitebox"]
        assert isinstance(m["sanity"]["warnings"], list)
        assert len(m["corruption"]["errors"]) == 15
        assert m["bn_statistics"]  # running statistics of the model's batch norms, plotted in the report
        assert f"{curve[-1]:.4f}" in page
    assert "sanity" in text
    assert set(res["transfer"]["success"]) == {"ifgsm", "mifgsm", "di2fgsm", "mdi2fgsm"}
    assert main(["report", str(runs / "a")]) == 0
    assert "eval-all" in (runs / "a" / "report.html").read_text()  # the training report includes the eval run


@pytest.mark.parametrize(("args", "match"), [
    (["--protocol", "transfer"], "at least two"),
    (["--steps", "a,b"], "--steps"),
    (["--protocol", "quick", "--steps", "5"], "--steps apply to --protocol whitebox (and all), not quick"),
    (["--targeted", "--restarts", "5"], "--restarts, --targeted apply to --protocol whitebox"),
    (["--eps", "-1"], "eps"),
    (["--eps", "300"], "above 255"),
    (["--protocol", "standard", "--batch-size", "0"], "--batch-size"),
    (["--weights", "missing.pt", "--model", "x.py:f"], "--weights"),
    (["--model", "x.py:f", "--weights", "a.pt", "--weights", "b.pt"], "give one per --model, in the same order (1"),
    (["--checkpoint", "/nonexistent/run"], "--checkpoint /nonexistent/run: no such run directory"),
    (["--option", "stepz=3"], "--option: protocol 'standard' has no option 'stepz'; options: p_init, queries"),
    (["--protocol", "quick", "--option", "steps=abc"], "--option: option steps must be a whole number >= 1"),
    (["--option", "queries=0"], "option queries must be a whole number >= 1"),
    (["--option", "steps"], "--option must be KEY=VALUE"),
    (["--option", "steps=3", "--option", "steps=4"], "--option steps is given twice"),
    (["--protocol", "whitebox", "--option", "steps=3"], "--option applies to the robust protocols"),
])
def test_eval_errors(runs, capsys, tmp_path, args, match):
    out = tmp_path / "out"
    assert main(["eval", "--checkpoint", str(runs / "a"), "--data", "digits", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert not out.exists()  # refused before anything is written


FACTORY = """
import torch
from torch import nn


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def not_a_model():
    return 3
"""


def _train_linear(path, steps=150):
    """A linear digits classifier saved as a state dict, for --weights."""
    import robustlab as rl

    train = rl.data.load_dataset("digits", "train")
    x, y = train.batch(slice(None))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def test_eval_a_user_factory_model(tmp_path, capsys):
    (tmp_path / "mine.py").write_text(FACTORY)
    _train_linear(tmp_path / "w.safetensors")
    out = tmp_path / "ev"
    args = ["eval", "--model", f"{tmp_path / 'mine.py'}:model", "--weights", str(tmp_path / "w.safetensors"),
            "--data", "digits", "--eps", "0.1", "--limit", "60", "--batch-size", "32", "--out", str(out), "-q"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    assert {"robust_accuracy", "clean_accuracy", "per_attack", "warnings"} <= set(res)
    assert res["eps"] == pytest.approx(0.1)  # a plain number below 1 is read as pixels
    assert res["clean_accuracy"] > 0.8 and res["robust_accuracy"] < res["clean_accuracy"]
    assert res["audit"]["linf_max"] <= 0.1 + 1e-6
    page = (out / "report.html").read_text()
    assert "<img" in page and "n=60" in page
    sha = hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()  # which weights were evaluated
    assert res["models"]["model"]["weights"] == {"source": "file", "file": str((tmp_path / "w.safetensors").resolve()),
                                                 "sha256": sha}
    assert f"weights: model: file, w.safetensors, sha256 {sha[:12]}" in page
    # The same command again reuses the finished state; another --eps into the same DIR is refused.
    assert main(args) == 0
    other = [a if a != "0.1" else "0.2" for a in args]
    assert main(other) == 2
    assert "holds another run" in capsys.readouterr().err
    # The weights are known by their contents: a copy under another name is the same run, an edit in place not.
    import shutil

    shutil.copy(tmp_path / "w.safetensors", tmp_path / "copy.safetensors")
    assert main([a.replace("w.safetensors", "copy.safetensors") for a in args]) == 0
    _train_linear(tmp_path / "w.safetensors", steps=5)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds another run (its config differs in " in err and "weights_sha256: [" in err
    # A factory that does not return a module is refused by name.
    assert main(["eval", "--model", f"{tmp_path / 'mine.py'}:not_a_model", "--data", "digits",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "not a torch.nn.Module" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # Two of your own models, each with its weights (one --weights per --model, in order), in one evaluation.
    two = tmp_path / "two"
    assert main(["eval", "--model", f"{tmp_path / 'mine.py'}:model", "--weights", str(tmp_path / "w.safetensors"),
                 "--model", f"{tmp_path / 'mine.py'}:model", "--data", "digits", "--protocol", "quick",
                 "--limit", "60", "--out", str(two), "-q"]) == 2  # one --weights for two --model: which one?
    assert "or one --weights per --model" in capsys.readouterr().err and not two.exists()
    torch.manual_seed(1)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
               .state_dict().items()}, str(tmp_path / "untrained.safetensors"))
    assert main(["eval", "--model", f"{tmp_path / 'mine.py'}:model", "--weights", str(tmp_path / "copy.safetensors"),
                 "--model", f"{tmp_path / 'mine.py'}:model", "--weights", str(tmp_path / "untrained.safetensors"),
                 "--data", "digits", "--protocol", "quick", "--limit", "60", "--out", str(two), "-q"]) == 0
    models = json.loads((two / "results.json").read_text())["models"]
    assert len(models) == 2
    trained, untrained = (m["clean_accuracy"] for m in models.values())
    assert trained == pytest.approx(res["clean_accuracy"]) and untrained < 0.5  # each its own weights


def test_l2_budgets_reach_every_protocol_and_plain_l2_numbers_are_pixels(runs, tmp_path):
    """--norm l2 used to run L∞ curves and transfer attacks; --eps 3 --norm l2 was 3/255."""
    out = tmp_path / "l2"
    assert main(["-q", "eval", "--checkpoint", str(runs / "a"), "--checkpoint", str(runs / "b"), "--data", "digits",
                 "--protocol", "all", "--norm", "l2", "--eps", "1", "--step-size", "0.25", "--steps", "1,4",
                 "--limit", "32", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["eps"] == 1.0 and res["norm"] == "l2"  # a plain number under l2: pixels
    for m in res["models"].values():
        assert all(c["config"]["norm"] == "l2" and c["config"]["eps"] == 1.0
                   for name, c in m["whitebox"].items() if name != "worst case")
    configs = res["transfer"]["attack_configs"]
    assert set(configs) == {"ifgsm", "mifgsm", "di2fgsm", "mdi2fgsm"}
    assert all(c["norm"] == "l2" and c["eps"] == 1.0 for c in configs.values())


def test_a_large_linf_budget_is_evaluated_not_refused_for_its_checklist_step(trained_model, digits):
    import robustlab as rl

    ev = rl.eval.evaluate(trained_model, (digits[0][:16], digits[1][:16]), eps=0.6, protocol="quick")
    assert ev.robust_accuracy <= ev.clean_accuracy and ev.audit["within_budget"]


def test_evaluations_of_one_run_with_other_options_get_folders_of_their_own(runs, capsys):
    """The default RUN/eval-PROTOCOL holds one evaluation; another ε goes to
    RUN/eval-PROTOCOL-2 instead of being refused, and the first command
    run again reuses its own folder."""
    model = runs / "b"
    args = ["eval", "--checkpoint", str(model), "--data", "digits", "--protocol", "corruption", "--limit", "16"]
    assert main([*args, "--eps", "8"]) == 0
    assert main([*args, "--eps", "4"]) == 0
    first = json.loads((model / "eval-corruption" / "results.json").read_text())
    second = json.loads((model / "eval-corruption-2" / "results.json").read_text())
    assert (first["eps_255"], second["eps_255"]) == pytest.approx((8, 4))
    assert main([*args, "--eps", "8"]) == 0  # the same evaluation again: its own folder, no third one
    assert not (model / "eval-corruption-3").exists()


def test_protocol_options_from_the_command_line_shrink_the_attacks(runs, capsys, tmp_path):
    """--option KEY=VALUE reaches the protocol: the standard cascade at 3 steps per stage (2 per targeted
    stage) makes fewer model calls than at its default 100, and the run records and reports them."""
    calls = {}
    for name, extra in (("small", ["--option", "steps=3", "--option", "target_steps=2"]), ("default", [])):
        out = tmp_path / name
        assert main(["eval", "--checkpoint", str(runs / "a"), "--data", "digits", "--limit", "32", "--eps", "8",
                     "--fallback", "off", "--out", str(out), *extra]) == 0
        res = json.loads((out / "results.json").read_text())
        calls[name] = res["models"]["a"]["model_calls"]
        opts = res["models"]["a"]["options"]
        if extra:
            assert (opts["steps"], opts["target_steps"]) == (3, 2)
            assert "3 steps per stage (2 per targeted stage)" in (out / "report.html").read_text()
        else:
            assert opts["steps"] == 100
    capsys.readouterr()
    assert calls["small"] < calls["default"]
    # quick: the α it ran (2.5·ε/steps by default) in results and report; a Square fallback says its queries
    out = tmp_path / "quick"
    assert main(["eval", "--checkpoint", str(runs / "a"), "--data", "digits", "--limit", "16", "--eps", "8",
                 "--protocol", "quick", "--option", "steps=4", "--fallback", "on", "--option", "queries=7",
                 "--out", str(out)]) == 0
    opts = json.loads((out / "results.json").read_text())["models"]["a"]["options"]
    assert opts["step_size"] == pytest.approx(2.5 * 8 / 255 / 4)
    page = (out / "report.html").read_text()
    assert "α = 5/255" in page and "Square fallback: 7 queries" in page and "PGD-20" not in page


def test_running_out_of_memory_is_one_line_and_the_same_folder_continues(runs, tmp_path, capsys,
                                                                                  monkeypatch):
    """A device out of memory is said in one line (exit 1, no traceback): a
    robust protocol has halved the batch size down to 1 by then, a curve
    protocol names the option to lower; the batch size is no part of the run's identity
    (results do not depend on it), so the smaller one continues in its folder."""
    import robustlab.app.evaluate as app_eval

    real = app_eval.evaluate

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.6 GiB total)")

    out = tmp_path / "ev"
    args = ["eval", "--model", str(runs / "a"), "--data", "digits", "--limit", "32", "--protocol", "quick",
            "--device", "cpu", "--out", str(out)]
    monkeypatch.setattr(app_eval, "evaluate", out_of_memory)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "robustlab eval: error: the device ran out of memory (CUDA out of memory. Tried to allocate" in err
    assert "did not fit even one image at a time" in err and "Traceback" not in err  # halved from 250 to 1
    assert err.count("continuing at --batch-size") == 7 and "continuing at --batch-size 1 " in err
    monkeypatch.setattr(app_eval, "evaluate", real)
    assert main([*args, "--batch-size", "16"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 32
    weights = runs / "a" / "model.safetensors"
    assert results["models"]["a"]["weights"] == {"source": "run", "file": str(weights.resolve()),
                                                 "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    for command, option in (("attack", "did not fit even one image at a time"), ("train", "train.batch_size"),
                            ("study", "study key batch_size"), ("eval", "smaller --batch-size (it was 128)")):
        assert option in out_of_memory_text(argparse.Namespace(command=command, batch_size=128, protocol="whitebox"),
                                            torch.OutOfMemoryError("oom"))


def test_mean_and_std_normalize_once(runs, tmp_path):
    """--mean/--std: a named network's own Normalize takes them (wrapping it
    would normalize twice), your factory's model is wrapped, a robustlab run
    (which normalizes itself) is refused."""
    from types import SimpleNamespace

    from robustlab.app.evaluate import EvalSpec, load_models
    from robustlab.models import Normalize

    (tmp_path / "mine.py").write_text(FACTORY)
    info = SimpleNamespace(num_classes=10, channels=1, mean=(0.1,), std=(0.2,), classes=())
    for name, key in (("smallcnn", "smallcnn"), (f"{tmp_path / 'mine.py'}:model", "model")):
        spec = EvalSpec(models=[name], data="digits", mean=[0.3], std=[0.4])
        model = load_models(spec, info, torch.device("cpu"))[0][key]
        layers = [m for m in model.modules() if isinstance(m, Normalize)]
        assert [(m.mean.flatten().tolist(), m.std.flatten().tolist()) for m in layers] == \
            [([pytest.approx(0.3)], [pytest.approx(0.4)])], name
    with pytest.raises(ValueError, match="--mean/--std: .* is a robustlab model"):
        load_models(EvalSpec(models=[str(runs / "a")], data="digits", mean=[0.3], std=[0.4]), info,
                    torch.device("cpu"))
