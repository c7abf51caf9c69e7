"""`robustlab eval` that runs out of device memory goes on at half the batch
size, after the images it had finished, to the same results as a run at the
smaller batch size from the start."""
from __future__ import annotations

import json
import warnings

from safetensors.torch import save_file

from robustlab.app.cli import main

FACTORY = """
import torch

import robustlab as rl


class Fragile(torch.nn.Module):
    # a model that does not fit on the device when attacked more than 10 images at a time
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        if x.shape[0] > 10 and torch.is_grad_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def plain():
    return rl.models.create_model("smallcnn", 10, in_channels=1, mean=(0.3054,), std=(0.3759,), width=16)


def fragile():
    return Fragile(plain())
"""


def _fragile_and_plain(trained_model, tmp_path) -> None:
    """FACTORY in tmp_path/nets.py, and the trained weights for its plain and fragile models."""
    (tmp_path / "nets.py").write_text(FACTORY)
    state = {k: v.contiguous() for k, v in trained_model.state_dict().items()}
    save_file(state, str(tmp_path / "plain.safetensors"))
    save_file({f"net.{k}": v for k, v in state.items()}, str(tmp_path / "fragile.safetensors"))


def test_eval_out_of_memory_goes_on_at_a_smaller_batch(trained_model, tmp_path, caplog):
    _fragile_and_plain(trained_model, tmp_path)
    results = {}
    for name, batch in (("fragile", "32"), ("plain", "8")):
        out = tmp_path / name
        assert main(["eval", "--model", f"{tmp_path / 'nets.py'}:{name}", "--weights",
                     str(tmp_path / f"{name}.safetensors"), "--data", "digits", "--limit", "24", "--protocol",
                     "quick", "--eps", "0.1", "--batch-size", batch, "--device", "cpu", "--out", str(out)]) == 0
        results[name] = json.loads((out / "results.json").read_text())
    fragile, plain = results["fragile"]["models"]["fragile"], results["plain"]["models"]["plain"]
    assert fragile["batch_size"] == 8 and "batch_size" not in plain
    assert plain["clean_accuracy"] > 0.9 and plain["robust_accuracy"] < plain["clean_accuracy"]
    for key in ("clean_accuracy", "robust_accuracy", "per_attack", "n"):
        assert fragile[key] == plain[key], key
    said = [r.getMessage() for r in caplog.records if "ran out of memory" in r.getMessage()]
    assert len(said) == 2 and "continuing at --batch-size 16" in said[0] and "at --batch-size 8" in said[1]


def test_activation_bytes_count_what_one_image_keeps_for_the_backward_pass():
    """Each storage once (Flatten is a view of ReLU's output), parameters not at all, and the two gradients
    of the largest activation in flight: conv and ReLU outputs of 4 x 8 x 8 floats, the input of 8 x 8,
    the 10 logits."""
    import torch

    from robustlab.app.evaluate import activation_bytes

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(256, 10))
    assert activation_bytes(net, torch.rand(3, 1, 8, 8)) == 4 * (256 + 256 + 64 + 10 + 2 * 256)


def test_activation_bytes_see_functional_calls_and_models_without_submodules():
    """A ``forward`` of functional calls: the leaf modules' outputs alone would miss the ReLUs' (and a model
    with no submodules would count only its logits)."""
    import torch
    import torch.nn.functional as F

    from robustlab.app.evaluate import activation_bytes

    class Functional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(256, 10)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).flatten(1))

    class Bare(torch.nn.Module):  # no submodules: parameters used through functional calls
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(4, 1, 3, 3))
            self.fc = torch.nn.Parameter(torch.randn(10, 256))

        def forward(self, x):
            return F.linear(F.relu(F.conv2d(x, self.weight, padding=1)).flatten(1), self.fc)

    x = torch.rand(3, 1, 8, 8)
    # the conv output as a leaf's (freed after the ReLU, whose output the linear layer keeps), input, logits
    assert activation_bytes(Functional(), x) == 4 * (256 + 256 + 64 + 10 + 2 * 256)
    # the conv output is freed unseen: the ReLU's output (kept), the input, the logits
    assert activation_bytes(Bare(), x) == 4 * (256 + 64 + 10 + 2 * 256)
    # a TorchScript module takes no hooks: what autograd saves is seen all the same
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; models still use it
        scripted = torch.jit.script(Bare())
    assert activation_bytes(scripted, x) == 4 * (256 + 64 + 10 + 2 * 256)


def test_on_the_cpu_eval_attacks_at_a_batch_that_fits_in_memory(trained_model, tmp_path, monkeypatch, caplog):
    """Out of memory, the OS kills the process without a word: the default batch of 250 at 224 px of a ResNet-50
    needs about 23 GiB. eval lowers it to fit half the memory available, and says so."""
    import torch

    import robustlab.app.evaluate as app_eval

    x = torch.rand(1, 1, 8, 8)
    per_image = app_eval.activation_bytes(trained_model, x)
    monkeypatch.setattr(app_eval, "available_memory", lambda: 24 * per_image)  # room for 12 images' activations
    asked = []
    real = app_eval.evaluate

    def spy(*args, **kwargs):
        asked.append(kwargs["batch_size"])
        return real(*args, **kwargs)

    monkeypatch.setattr(app_eval, "evaluate", spy)
    save_file({k: v.contiguous() for k, v in trained_model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "nets.py").write_text(FACTORY)
    out = tmp_path / "run"
    assert main(["eval", "--model", f"{tmp_path / 'nets.py'}:plain", "--weights", str(tmp_path / "w.safetensors"),
                 "--data", "digits", "--limit", "16", "--protocol", "quick", "--option", "steps=2", "--device", "cpu",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert asked == [12] and results["batch_size"] == 12 and results["models"]["plain"]["batch_size"] == 12
    assert any("--batch-size 250 would take about" in r.getMessage() and "evaluating at --batch-size 12"
               in r.getMessage() for r in caplog.records)
    caplog.clear()  # 12 images fit in one batch: nothing to lower, and nothing said
    assert main(["-q", "eval", "--model", f"{tmp_path / 'nets.py'}:plain", "--weights", str(tmp_path / "w.safetensors"),
                 "--data", "digits", "--limit", "12", "--protocol", "quick", "--option", "steps=2", "--device", "cpu",
                 "--out", str(tmp_path / "few")]) == 0
    assert asked[-1] == 250 and "batch_size" not in json.loads((tmp_path / "few" / "results.json").read_text())
    assert not [r for r in caplog.records if "[memory]" in r.getMessage()]
    monkeypatch.setattr(app_eval, "available_memory", lambda: None)  # not known: the batch asked for
    assert main(["-q", "eval", "--model", f"{tmp_path / 'nets.py'}:plain", "--weights", str(tmp_path / "w.safetensors"),
                 "--data", "digits", "--limit", "16", "--protocol", "quick", "--option", "steps=2", "--device", "cpu",
                 "--out", str(tmp_path / "again")]) == 0
    assert asked[-1] == 250 and "batch_size" not in json.loads((tmp_path / "again" / "results.json").read_text())


def test_on_the_cpu_attack_runs_at_a_batch_that_fits_in_memory(trained_model, tmp_path, monkeypatch):
    import torch

    import robustlab.app.evaluate as app_eval

    per_image = app_eval.activation_bytes(trained_model, torch.rand(1, 1, 8, 8))
    monkeypatch.setattr(app_eval, "available_memory", lambda: 10 * per_image)
    save_file({k: v.contiguous() for k, v in trained_model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "nets.py").write_text(FACTORY)
    out = tmp_path / "attack"
    assert main(["-q", "attack", "--model", f"{tmp_path / 'nets.py'}:plain", "--weights",
                 str(tmp_path / "w.safetensors"), "--data", "digits", "--limit", "12", "--steps", "2", "--device",
                 "cpu", "--out", str(out)]) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["batch_size"] == 5 and record["summary"]["n"] == 12


def test_attack_out_of_memory_goes_on_at_a_smaller_batch(trained_model, tmp_path, caplog):
    """The batch that ran out is attacked again in halves, the batches after it at that size: the adversarial
    images are those of a run at that size from the start."""
    import torch
    from safetensors.torch import load_file

    _fragile_and_plain(trained_model, tmp_path)
    runs = {}
    for name, batch in (("fragile", "32"), ("plain", "8")):
        out = tmp_path / name
        assert main(["attack", "--model", f"{tmp_path / 'nets.py'}:{name}", "--weights",
                     str(tmp_path / f"{name}.safetensors"), "--data", "digits", "--limit", "40", "--attack", "pgd",
                     "--eps", "0.1", "--steps", "3", "--no-random-start", "--batch-size", batch, "--device", "cpu",
                     "--out", str(out)]) == 0
        runs[name] = (json.loads((out / "results.json").read_text()), load_file(str(out / "adversarial.safetensors")))
    (fragile, fragile_x), (plain, plain_x) = runs["fragile"], runs["plain"]
    assert fragile["batch_size"] == 8 and "batch_size" not in plain and fragile["n"] == plain["n"] == 40
    assert plain["clean_accuracy"] > 0.9 and plain["adversarial_accuracy"] < plain["clean_accuracy"]
    assert fragile["adversarial_accuracy"] == plain["adversarial_accuracy"]
    assert fragile_x.keys() == plain_x.keys()
    for key in fragile_x:
        assert torch.equal(fragile_x[key], plain_x[key]), key
    said = [r.getMessage() for r in caplog.records if "ran out of memory" in r.getMessage()]
    assert len(said) == 2 and "continuing at --batch-size 16" in said[0] and "at --batch-size 8" in said[1]

