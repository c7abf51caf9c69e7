"""Pretrained weights through create_model: timm's and torchvision's caches,
local files, the offline error, head replacement and the checkpoint round
trip. Nothing is downloaded: every cache is a tmp directory filled with
random-init weights saved under a fixed seed, the Hugging Face hub is in
offline mode and torch hub's downloader raises as without a network."""
from __future__ import annotations

import hashlib
import json
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import save_file

from robustlab.app.cli import main
from robustlab.models import create_model, load_model, save_model
from robustlab.models.pretrained import PretrainedUnavailableError, replace_head

TV_FILE = "resnet18-f37072fd.pth"  # the basename of ResNet18_Weights.IMAGENET1K_V1.url
HF_REPO = "timm/resnet18.a1_in1k"  # timm's default resnet18 weights on the Hugging Face hub
X = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches under tmp_path, offline."""
    import huggingface_hub.constants

    torch_home, hf_home = tmp_path / "torch", tmp_path / "hf"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these when imported; its downloads use the constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return SimpleNamespace(torch=torch_home / "hub" / "checkpoints", hf=hf_home / "hub")


def _random_state(builder, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in builder().state_dict().items()}


def _timm_state() -> dict[str, torch.Tensor]:
    import timm

    return _random_state(lambda: timm.create_model("resnet18", num_classes=1000))


def _tv_state() -> dict[str, torch.Tensor]:
    import torchvision

    return _random_state(lambda: torchvision.models.resnet18(weights=None))


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _assert_loaded(model, state, skip=()):
    net = model.net.state_dict()
    for k, v in state.items():
        if not k.startswith(skip):
            assert torch.equal(net[k], v), k


@pytest.fixture()
def timm_file(tmp_path):
    path = tmp_path / "timm_resnet18.safetensors"
    state = _timm_state()
    save_file(state, str(path))
    return path, state


@pytest.fixture()
def tv_cached(caches):
    """torchvision's resnet18 weights file in the torch hub cache, as a download leaves it."""
    caches.torch.mkdir(parents=True)
    state = _tv_state()
    torch.save(state, caches.torch / TV_FILE)
    return caches.torch / TV_FILE, state


def test_timm_pretrained_from_a_local_file(caches, timm_file):
    path, state = timm_file
    model = create_model("timm:resnet18", 1000, pretrained=True, pretrained_cfg_overlay={"file": str(path)}).eval()
    _assert_loaded(model, state)
    torch.manual_seed(1)
    fresh = create_model("timm:resnet18", 1000).eval()
    assert not torch.allclose(model(X), fresh(X))
    record = model.robustlab_spec["pretrained"]
    assert record["source"] == "timm" and record["name"] == "resnet18" and record["tag"] == "a1_in1k"
    assert record["file"] == str(path.resolve()) and record["sha256"] == _sha256(path)
    assert fresh.robustlab_spec["pretrained"] is None
    assert "pretrained" not in model.robustlab_spec["kwargs"]  # a weights option, not the architecture's


def test_timm_pretrained_from_the_hugging_face_cache(caches):
    """timm's own path: hf_hub_download finds the file in the (offline) cache."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = caches.hf / ("models--" + HF_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    state = _timm_state()
    save_file(state, str(snapshot / "model.safetensors"))
    model = create_model("timm:resnet18", 1000, pretrained=True)
    _assert_loaded(model, state)
    record = model.robustlab_spec["pretrained"]
    assert Path(record["file"]) == snapshot / "model.safetensors"
    assert record["sha256"] == _sha256(snapshot / "model.safetensors")


def test_timm_other_num_classes_gets_a_fresh_head(caches, timm_file):
    path, state = timm_file
    model = create_model("timm:resnet18", 10, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    _assert_loaded(model, state, skip=("fc.",))
    assert model.net.fc.out_features == 10 and model.robustlab_spec["pretrained"]["new_head"] == "fc"
    assert model(X).shape == (2, 10)


@pytest.mark.parametrize("how", [{"weights": "DEFAULT"}, {"weights": "IMAGENET1K_V1"},
                                 {"weights": "ResNet18_Weights.IMAGENET1K_V1"}, {"pretrained": True}],
                         ids=lambda d: str(next(iter(d.values()))))
def test_torchvision_weights_from_the_torch_hub_cache(tv_cached, how):
    path, state = tv_cached
    model = create_model("tv:resnet18", 1000, **how).eval()
    _assert_loaded(model, state)
    torch.manual_seed(1)
    assert not torch.allclose(model(X), create_model("tv:resnet18", 1000).eval()(X))
    record = model.robustlab_spec["pretrained"]
    assert record == {"source": "torchvision", "name": "resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1",
                      "new_head": None, "file": str(path), "sha256": _sha256(path)}


def test_torchvision_other_num_classes_replaces_the_last_linear(tv_cached):
    _, state = tv_cached
    model = create_model("tv:resnet18", 7, weights="DEFAULT")
    _assert_loaded(model, state, skip=("fc.",))
    assert (model.net.fc.in_features, model.net.fc.out_features) == (512, 7)
    assert not torch.equal(model.net.fc.weight, state["fc.weight"][:7])
    assert model.robustlab_spec["pretrained"]["new_head"] == "fc" and model(X).shape == (2, 7)


def test_replace_head_refuses_a_net_without_a_linear_classifier():
    import torchvision

    net = torchvision.models.squeezenet1_0(weights=None)  # its classifier is a 1×1 convolution
    with pytest.raises(ValueError, match="cannot find the classifier"):
        replace_head(net, 10, "squeezenet1_0", 1000)
    mobilenet = torchvision.models.mobilenet_v3_small(weights=None)  # classifier[-1], after another Linear
    assert replace_head(mobilenet, 10, "mobilenet_v3_small", 1000) == "classifier.3"
    assert mobilenet.classifier[3].out_features == 10 and mobilenet.classifier[0].out_features == 1024


def _untrusted() -> None:
    raise AssertionError("a pickled payload ran")


class _Payload:
    def __reduce__(self):
        return (_untrusted, ())


def test_torchvision_cache_file_with_pickled_code_is_refused(caches):
    caches.torch.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(1), "x": _Payload()}, caches.torch / TV_FILE)
    with pytest.raises(ValueError, match="tensors-only weights file.*UnpicklingError") as err:
        create_model("tv:resnet18", weights="DEFAULT")
    assert str(caches.torch / TV_FILE) in str(err.value)


def test_offline_without_a_cache_names_the_cache_and_the_local_alternatives(caches):
    with pytest.raises(PretrainedUnavailableError) as err:
        create_model("timm:resnet18", pretrained=True)
    message = str(err.value)
    assert str(caches.hf) in message and "weights=PATH" in message and "pretrained_cfg_overlay" in message
    with pytest.raises(PretrainedUnavailableError) as err:
        create_model("tv:resnet18", weights="DEFAULT")
    message = str(err.value)
    assert str(caches.torch) in message and "weights=PATH" in message and "URLError" in message
    assert isinstance(err.value, FileNotFoundError)  # the CLI's usage errors


@pytest.mark.parametrize("name,kwargs,match", [
    ("tv:resnet18", {"weights": "IMAGENET9K_V1"}, r"weights: .*DEFAULT, IMAGENET1K_V1"),
    ("tv:resnet18", {"weights": "ResNet50_Weights.IMAGENET1K_V2"}, "not a weights file nor resnet18's"),
    ("timm:resnet18", {"weights": "DEFAULT"}, "are for tv: models; timm's own weights: pretrained=True"),
    ("smallcnn", {"weights": "DEFAULT"}, "not a state-dict file"),
    ("smallcnn", {"pretrained": True}, "smallcnn has no pretrained weights"),
    ("tv:resnet18", {"pretrained": True, "weights": "w.pt"}, "either pretrained=True or weights"),
    ("tv:resnet18", {"pretrained": "yes"}, "pretrained must be true or false"),
])
def test_bad_weights_arguments(caches, name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **kwargs)


def test_timm_overlay_file_missing(caches, tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained_cfg_overlay"):
        create_model("timm:resnet18", pretrained=True, pretrained_cfg_overlay={"file": str(tmp_path / "no.pt")})


def test_save_load_round_trip_needs_no_download(caches, tv_cached, timm_file, tmp_path):
    """load_model rebuilds the architecture only: with the caches and the file
    emptied and the network off, the outputs are identical."""
    tv = create_model("tv:resnet18", 10, weights="DEFAULT").eval()
    path, _ = timm_file
    tm = create_model("timm:resnet18", 10, pretrained=True, pretrained_cfg_overlay={"file": str(path)}).eval()
    save_model(tv, tmp_path / "tv")
    save_model(tm, tmp_path / "timm")
    tv_cached[0].unlink()
    path.unlink()
    for model, directory in ((tv, "tv"), (tm, "timm")):
        loaded = load_model(tmp_path / directory)
        assert torch.equal(loaded(X), model(X))
        assert loaded.robustlab_spec["pretrained"] is None  # rebuilt, not reloaded


def test_load_model_ignores_weight_options_in_spec_kwargs(caches, tmp_path):
    torch.manual_seed(0)
    model = create_model("tv:resnet18", 10).eval()
    model.robustlab_spec["kwargs"] = {"pretrained": True, "weights": "DEFAULT"}  # would download if passed on
    save_model(model, tmp_path / "ckpt")
    assert torch.equal(load_model(tmp_path / "ckpt")(X), model(X))


@pytest.mark.parametrize("model", [{"name": "timm:resnet18", "pretrained": True},
                                   {"name": "tv:resnet18", "weights": "DEFAULT"}], ids=lambda m: m["name"])
def test_train_config_reaches_create_model(caches, tmp_path, capsys, model):
    """`model: {name, pretrained/weights}` goes through `robustlab train` to
    create_model; offline, the error is a clean usage error (exit 2)."""
    config = Path(__file__).resolve().parents[2] / "configs" / "train_vanilla.yaml"
    raw = yaml.safe_load(config.read_text())
    raw["model"] = model
    raw["data"] = {**raw.get("data", {}), "name": "digits", "limit": 64, "eval_limit": 32}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path), "train.epochs=1", "train.batch_size=16", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "robustlab train: error:" in err and "are not in the cache" in err and "weights=PATH" in err


@pytest.fixture()
def hf_cached(caches):
    """timm's resnet18 weights in the (offline) Hugging Face cache, as timm's download leaves them."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = caches.hf / ("models--" + HF_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    state = _timm_state()
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    return state


def test_resolve_model_reads_default_as_timms_pretrained_weights(hf_cached):
    from robustlab.models import resolve_model

    _assert_loaded(resolve_model("timm:resnet18", weights="DEFAULT", num_classes=1000), hf_cached)


@pytest.fixture()
def thousand_classes(tmp_path):
    """An ImageFolder of 1000 classes (one 8×8 image each): ImageNet's number."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for k in range(1000):
        (tmp_path / "folder" / f"c{k:04d}").mkdir(parents=True)
        pixels = torch.randint(0, 256, (8, 8, 3), dtype=torch.uint8, generator=gen).numpy()
        Image.fromarray(pixels).save(tmp_path / "folder" / f"c{k:04d}" / "0.png")
    return tmp_path / "folder"


def test_eval_of_torchvision_and_timm_default_weights(tv_cached, hf_cached, thousand_classes, tmp_path, capsys):
    """`--weights DEFAULT` loads each library's own weights (no "[weights]"
    warning), and the run is keyed on the files they were read from."""
    out = tmp_path / "run"
    assert main(["eval", "--model", "tv:resnet18", "--weights", "DEFAULT", "--model", "timm:resnet18",
                 "--weights", "DEFAULT", "--data", f"imagefolder:{thousand_classes}", "--image-size", "32",
                 "--protocol", "quick", "--limit", "4", "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["models"]) == {"resnet18", "resnet18-2"} and results["n"] == 4
    for per_model in results["models"].values():
        assert not [w for w in per_model["warnings"] if w.startswith("[weights]")]
    assert results["models"]["resnet18"]["weights"]["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert results["models"]["resnet18-2"]["weights"]["source"] == "timm"
    hashes = yaml.safe_load((out / "config.yaml").read_text())["weights_sha256"]
    assert hashes == [_sha256(tv_cached[0]), results["models"]["resnet18-2"]["weights"]["sha256"]]
    assert len(hashes[1]) == 64  # the Hugging Face cache's file


@pytest.mark.parametrize("command", ["eval", "attack"])
def test_pretrained_weights_with_a_fresh_head_are_refused_before_any_run(tv_cached, tmp_path, capsys, command):
    """The 1000-category weights on 10-class digits would get a freshly
    initialized classifier: right for fine-tuning, meaningless to evaluate or
    attack."""
    out = tmp_path / "run"
    assert main([command, "--model", "tv:resnet18", "--weights", "DEFAULT", "--data", "digits", "--limit", "4",
                 "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"robustlab {command}: error: weights:" in err and "freshly initialized, untrained" in err
    assert "data's 10" in err and "Traceback" not in err and not out.exists()


def test_eval_warns_of_a_named_network_with_random_weights(tmp_path, capsys):
    """A named network given no weights is evaluated, with a warning heading
    its results; the user's own factory and a run directory get none."""
    factory = tmp_path / "mine.py"
    factory.write_text("import robustlab as rl\n\ndef net():\n"
                       "    return rl.models.create_model('smallcnn', 10, in_channels=1, width=4)\n")
    out = tmp_path / "run"
    assert main(["eval", "--model", "smallcnn", "--model", f"{factory}:net", "--data", "digits", "--limit", "8",
                 "--protocol", "quick", "--device", "cpu", "--out", str(out)]) == 0
    models = json.loads((out / "results.json").read_text())["models"]
    assert models["smallcnn"]["warnings"][0].startswith("[weights] smallcnn is randomly initialized")
    assert models["smallcnn"]["weights"] == {"source": "random"} and models["net"]["weights"] == {"source": "factory"}
    assert "weights: smallcnn: randomly initialized (no weights given); net: as its factory built it" in \
        (out / "report.html").read_text()
    assert not [w for w in models["net"]["warnings"] if w.startswith("[weights]")]
    assert "smallcnn is randomly initialized" in capsys.readouterr().err


def test_training_from_pretrained_weights_says_its_classifier_is_new(tv_cached, caplog):
    """Fine-tuning 1000-category weights on 10 classes replaces the classifier:
    right for training, and said (eval and attack refuse it instead)."""
    from robustlab.app.config import load_config
    from robustlab.app.train import build_model, build_recipe

    config = Path(__file__).resolve().parents[2] / "configs" / "train_vanilla.yaml"
    cfg, _ = load_config(config, ["model.name=tv:resnet18", "model.weights=DEFAULT"])
    info = SimpleNamespace(num_classes=10, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    with caplog.at_level("INFO", logger="robustlab"):
        model = build_model(cfg, info, build_recipe(cfg))
    _assert_loaded(model, tv_cached[1], skip=("fc.",))
    assert "torchvision pretrained weights loaded; its classifier (fc) is freshly initialized for the data's 10 " \
        "classes" in caplog.text


def test_default_weights_on_a_folder_of_some_imagenet_classes_keep_their_head(tv_cached, tmp_path):
    """torchvision's ImageNet weights on a folder of three wnid classes were refused (their head would be
    replaced): they keep their 1000 outputs and are scored over the three classes' own, the same
    predictions as torchvision's network read at those indices. A weights file of 1000 outputs too."""
    import torchvision
    from PIL import Image

    import robustlab as rl

    wnids, indices = ("n01440764", "n02102040", "n15075141"), [0, 217, 999]
    gen = torch.Generator().manual_seed(1)
    for w in wnids:
        (tmp_path / "folder" / "val" / w).mkdir(parents=True)
        for i in range(4):
            pixels = torch.randint(0, 256, (40, 40, 3), dtype=torch.uint8, generator=gen).numpy()
            Image.fromarray(pixels).save(tmp_path / "folder" / "val" / w / f"{i}.png")
    data = f"imagefolder:{tmp_path / 'folder'}"
    out = tmp_path / "run"
    assert main(["-q", "eval", "--model", "tv:resnet18", "--weights", "DEFAULT", "--data", data, "--image-size",
                 "32", "--protocol", "quick", "--option", "steps=1", "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["models"]["resnet18"]["outputs"]["indices"] == indices

    x, y = rl.data.load_tensors(rl.data.load_dataset(data, "test", size=32))
    net = torchvision.models.resnet18()
    net.load_state_dict(tv_cached[1])
    reference = rl.models.normalized(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).eval()
    with torch.no_grad():
        right = (reference(x)[:, indices].argmax(1) == y).float().mean().item()
    assert results["clean_accuracy"] == pytest.approx(right, abs=1e-6)

    file = tmp_path / "resnet18.safetensors"
    save_file(tv_cached[1], str(file))
    out = tmp_path / "attack"
    assert main(["-q", "attack", "--model", "tv:resnet18", "--weights", str(file), "--data", data, "--split", "test",
                 "--image-size", "32", "--steps", "1", "--device", "cpu", "--out", str(out)]) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["outputs"]["indices"] == indices and record["clean_accuracy"] == pytest.approx(right, abs=1e-6)


def test_fine_tuning_on_some_imagenet_classes_starts_from_their_pretrained_rows(tv_cached, tmp_path, caplog):
    """On a folder of three wnid classes the classifier was freshly initialized: it now keeps the pretrained
    rows of those classes, so the model to fine-tune starts as torchvision's network read at their indices
    (and a run trained from it is evaluated on the same classes)."""
    import torchvision

    import robustlab as rl
    from robustlab.app.config import load_config
    from robustlab.app.train import build_model, build_recipe

    indices = [0, 217, 999]
    info = SimpleNamespace(num_classes=3, channels=3, mean=(0.5,) * 3, std=(0.5,) * 3,
                           classes=("n01440764", "n02102040", "n15075141"))
    config = Path(__file__).resolve().parents[2] / "configs" / "train_vanilla.yaml"
    cfg, _ = load_config(config, ["model.name=tv:resnet18", "model.weights=DEFAULT"])
    with caplog.at_level("INFO", logger="robustlab"):
        model = build_model(cfg, info, build_recipe(cfg)).eval()
    net = torchvision.models.resnet18()
    net.load_state_dict(tv_cached[1])
    reference = rl.models.normalized(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).eval()
    with torch.no_grad():
        assert torch.allclose(model(X), reference(X)[:, indices], atol=1e-5)
    assert model.robustlab_spec["num_classes"] == 3
    assert "its classifier (fc) keeps their rows of the data's 3 classes" in caplog.text
    # other classes than ImageNet's: a fresh head, as before
    plain = SimpleNamespace(**{**vars(info), "classes": ("a", "b", "c")})
    assert not torch.allclose(build_model(cfg, plain, build_recipe(cfg)).eval()(X), reference(X)[:, indices])

    saved = tmp_path / "model"
    save_model(model, saved)
    with torch.no_grad():
        assert torch.equal(load_model(saved).eval()(X), model(X))
