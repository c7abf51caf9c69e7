"""Nothing executes from a data file, downloads are verified, exports are
checksummed (issue 14, parts 1 and 3)."""
from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import robustlab as rl
from robustlab.data import sources
from robustlab.models.checkpoint import META, WEIGHTS

PACKAGE = Path(rl.__file__).parent


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ROBUSTLAB_DATA", raising=False)


# ---------------------------------------------------------------- CIFAR batches


def _s(b: bytes) -> bytes:  # a Python 2 str: SHORT_BINSTRING or BINSTRING
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)


def _int(v: int) -> bytes:
    return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)


def py2_cifar_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """The bytes Python 2's cPickle (protocol 2) writes for a CIFAR batch: a dict
    of str keys, a uint8 ndarray through numpy.core.multiarray._reconstruct and
    a list of ints, exactly as in cifar-10-batches-py."""
    n = data.shape[0]
    dtype = (b"cnumpy\ndtype\n" + _s(b"u1") + _int(0) + _int(1) + b"\x87R"
             + b"(" + _int(3) + _s(b"|") + b"NNN" + b"J\xff\xff\xff\xff" * 2 + _int(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02" + _int(0) + b"\x85" + _s(b"b")
             + b"\x87R(" + _int(1) + _int(n) + b"M\x00\x0c\x86" + dtype + b"\x89" + _s(data.tobytes()) + b"tb")
    labels_ = b"](" + b"".join(_int(v) for v in labels) + b"e"
    return (b"\x80\x02}(" + _s(b"data") + array + _s(b"labels") + labels_
            + _s(b"batch_label") + _s(b"testing batch 1 of 1") + b"u.")


def cifar_folder(root: Path, writer=None) -> tuple[Path, dict[str, tuple[np.ndarray, list[int]]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data, labels = rng.randint(0, 256, (3, 3072)).astype(np.uint8), rng.randint(0, 10, 3).tolist()
        batches[name] = (data, labels)
        (folder / name).write_bytes(writer(data, labels) if writer else py2_cifar_batch(data, labels))
    return folder, batches


def test_python2_cifar_batch_loads(tmp_path):
    _, batches = cifar_folder(tmp_path)
    test = rl.data.load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    x, y = test.batch(slice(None))
    data, labels = batches["test_batch"]
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(data.reshape(3, 3, 32, 32)))
    assert y.tolist() == labels
    assert len(rl.data.load_dataset("cifar10", "train", data_dir=tmp_path, download=False)) == 15


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_cifar_batch_loads(tmp_path, protocol):
    def write(data, labels):
        return pickle.dumps({b"data": data, b"labels": labels, b"filenames": [b"a.png"] * 3}, protocol=protocol)

    _, batches = cifar_folder(tmp_path, write)
    x, y = rl.data.load_dataset("cifar10", "test", data_dir=tmp_path, download=False).batch(slice(None))
    assert y.tolist() == batches["test_batch"][1]


class SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class OpenPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("payload", [SystemPayload, OpenPayload])
@pytest.mark.parametrize("where", ["top", "inside_dict", "inside_labels"])
def test_planted_pickle_never_runs(tmp_path, payload, where):
    marker = tmp_path / "marker"
    evil = payload(marker)
    # The payload works under plain pickle (so the test would catch a reader that runs it).
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(payload(probe)))
    assert probe.exists()
    folder, _ = cifar_folder(tmp_path / "data")
    data = np.zeros((3, 3072), np.uint8)
    obj = {"top": evil, "inside_dict": {b"data": data, b"labels": [0, 1, 2], b"x": evil},
           "inside_labels": {b"data": data, b"labels": [0, evil, 2]}}[where]
    (folder / "test_batch").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(ValueError, match="test_batch is not a plain CIFAR batch") as err:
        rl.data.load_dataset("cifar10", "test", data_dir=tmp_path / "data", download=False)
    assert str(folder / "test_batch") in str(err.value)
    assert not marker.exists()


def test_object_array_is_refused(tmp_path):
    folder, _ = cifar_folder(tmp_path)
    batch = {b"data": np.array([[b"x"] * 3072] * 3, dtype=object), b"labels": [0, 1, 2]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match="not a plain CIFAR batch"):
        rl.data.load_dataset("cifar10", "test", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("content, fragment", [
    (b"not a pickle at all", "not a plain CIFAR batch"),
    (py2_cifar_batch(np.zeros((3, 3072), np.uint8), [0, 1, 2])[:100], "not a plain CIFAR batch"),
    (pickle.dumps([1, 2, 3]), "expected a dict with b'data'"),
    (pickle.dumps({b"data": np.zeros((3, 3072), np.uint8)}), "expected a dict with b'data' and b'labels'"),
    (pickle.dumps({b"data": np.zeros((3, 3072), np.float32), b"labels": [0, 1, 2]}), r"uint8 \(N, 3072\)"),
    (pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}), r"uint8 \(N, 3072\)"),
    (pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}), "list of 3 class indices"),
    (pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, 10]}), r"in \[0, 10\)"),
    (pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1, -1]}), "class indices"),
])
def test_malformed_cifar_batches(tmp_path, content, fragment):
    folder, _ = cifar_folder(tmp_path)
    (folder / "test_batch").write_bytes(content)
    with pytest.raises(ValueError, match=fragment):
        rl.data.load_dataset("cifar10", "test", data_dir=tmp_path, download=False)


# ---------------------------------------------------------------- downloads


def idx_gz(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture()
def mirror(tmp_path):
    """A local file:// mirror of MNIST-format test files (5 images)."""
    root = tmp_path / "mirror"
    root.mkdir()
    idx_gz(root / "t10k-images-idx3-ubyte.gz", np.arange(5 * 28 * 28).reshape(5, 28, 28) % 256)
    idx_gz(root / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    return root


def _point_mnist_at(monkeypatch, mirror: Path) -> None:
    monkeypatch.setitem(sources.IDX_SOURCES, "mnist", {**sources.IDX_SOURCES["mnist"], "system": (),
                                                       "urls": (mirror.as_uri() + "/",)})


def test_download_with_matching_checksum(tmp_path, monkeypatch, mirror):
    _point_mnist_at(monkeypatch, mirror)
    for stem in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        digest = hashlib.sha256((mirror / stem).read_bytes()).hexdigest()
        monkeypatch.setitem(sources.CHECKSUMS, ("mnist", stem), ("sha256", digest))
    ds = rl.data.load_dataset("mnist", "test", data_dir=tmp_path / "data", download=True)
    assert len(ds) == 5
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_download_checksum_mismatch_deletes_the_file(tmp_path, monkeypatch, mirror):
    """The real table's MD5 cannot match the fake mirror's files."""
    _point_mnist_at(monkeypatch, mirror)
    actual = hashlib.md5((mirror / "t10k-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    expected = sources.CHECKSUMS[("mnist", "t10k-images-idx3-ubyte.gz")][1]
    with pytest.raises(sources.ChecksumError) as err:
        rl.data.load_dataset("mnist", "test", data_dir=tmp_path / "data", download=True)
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and expected in msg and actual in msg
    assert isinstance(err.value, ValueError)
    assert list((tmp_path / "data" / "mnist").iterdir()) == []  # neither the file nor a .part is left


def test_cifar_download_mismatch(tmp_path, monkeypatch):
    fake = tmp_path / "cifar-10-python.tar.gz"
    fake.write_bytes(b"not the CIFAR archive")
    monkeypatch.setitem(sources.CIFAR_SOURCES, "cifar10", ("cifar-10-batches-py", fake.as_uri()))
    with pytest.raises(sources.ChecksumError, match="c58f30108f718f92721af3b95e74349a"):
        rl.data.load_dataset("cifar10", "test", data_dir=tmp_path / "data", download=True)
    assert list((tmp_path / "data").iterdir()) == []


def test_download_refuses_http_and_unlisted_files(tmp_path):
    with pytest.raises(sources.ChecksumError, match="https only"):
        sources._download("http://example.com/t10k-images-idx3-ubyte.gz", tmp_path / "t10k-images-idx3-ubyte.gz",
                          "mnist")
    with pytest.raises(sources.ChecksumError, match="no published checksum for other.gz"):
        sources._download("https://example.com/other.gz", tmp_path / "other.gz", "mnist")
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_cached_download_is_refused(tmp_path, monkeypatch, mirror):
    """A file already at the download target is checked too (and left for the user)."""
    _point_mnist_at(monkeypatch, mirror)
    target = tmp_path / "data" / "mnist"
    target.mkdir(parents=True)
    (target / "t10k-images-idx3-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(sources.ChecksumError, match="delete the file to download it again"):
        sources._download("https://example.com/x", target / "t10k-images-idx3-ubyte.gz", "mnist")


def test_every_source_is_https_and_every_download_has_a_checksum():
    urls = [u for s in sources.IDX_SOURCES.values() for u in s["urls"]] + [u for _, u in sources.CIFAR_SOURCES.values()]
    assert urls and all(u.startswith("https://") for u in urls)
    for name in sources.IDX_SOURCES:
        for stems in sources._IDX_FILES.values():
            assert all((name, s + ".gz") in sources.CHECKSUMS for s in stems)
    for name, (_, url) in sources.CIFAR_SOURCES.items():
        assert (name, Path(url).name) in sources.CHECKSUMS


# ---------------------------------------------------------------- no deserialization of code in the package


def _unsafe_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if func in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "dill.loads", "joblib.load",
                    "marshal.load", "marshal.loads", "shelve.open", "pickle.Unpickler"):
            found.append(func)
        elif func == "torch.load" and kw.get("weights_only") != "True":
            found.append("torch.load without weights_only=True")
        elif func in ("np.load", "numpy.load") and kw.get("allow_pickle", "False") != "False":
            found.append("np.load(allow_pickle=...)")
    return found


def test_no_code_deserialization_in_the_package():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        bad = _unsafe_calls(tree)
        if "from pickle import" in text or "yaml.load(" in text or "yaml.unsafe_load" in text:
            bad.append("pickle/yaml import or unsafe yaml load")
        # pickle.Unpickler may only be subclassed by the restricted CIFAR reader.
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b) for b in node.bases):
                if node.name != "CifarUnpickler" or path.name != "sources.py":
                    bad.append(f"unpickler {node.name}")
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = bad
    assert offenders == {}


def test_the_rule_catches_what_it_should():
    bad = _unsafe_calls(ast.parse(
        "pickle.load(f)\npickle.loads(b)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
        "np.load(p, allow_pickle=True)\n"))
    assert len(bad) == 5
    assert _unsafe_calls(ast.parse("torch.load(p, weights_only=True)\nnp.load(p)\nnp.load(p, mmap_mode='r')\n")) == []


# ---------------------------------------------------------------- checksummed exports


@pytest.fixture()
def export(tmp_path):
    torch.manual_seed(0)
    model = rl.models.create_model("smallcnn", 10, in_channels=1, width=4, act="silu").eval()
    directory = rl.models.save_model(model, tmp_path / "m", meta={"note": "x"})
    return model, directory


def test_export_records_the_sha256(export):
    model, d = export
    doc = json.loads((d / META).read_text())
    assert doc["sha256"] == hashlib.sha256((d / WEIGHTS).read_bytes()).hexdigest()
    loaded = rl.models.load_model(d)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
    for p in (d / META, d / WEIGHTS):  # either file names the checkpoint
        assert torch.equal(rl.models.load_model(p)(x), model(x))


def _rewrite_weights(d: Path, fn, *, fix_digest: bool) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(d / WEIGHTS), framework="pt") as f:
        header = f.metadata()
    state = fn(load_file(str(d / WEIGHTS)))
    save_file(state, str(d / WEIGHTS), metadata=header)
    if fix_digest:  # a tamperer who also updates model.json
        doc = json.loads((d / META).read_text())
        doc["sha256"] = hashlib.sha256((d / WEIGHTS).read_bytes()).hexdigest()
        (d / META).write_text(json.dumps(doc))


def _nan(state, value=float("nan")):
    k = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[k] = state[k].clone()
    state[k].view(-1)[0] = value
    return state


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(export, value):
    _, d = export
    _rewrite_weights(d, lambda s: _nan(s, value), fix_digest=True)
    with pytest.raises(ValueError, match="non-finite weights") as err:
        rl.models.load_model(d)
    assert str(d / WEIGHTS) in str(err.value)


def test_nan_weights_without_a_new_digest(export):
    _, d = export
    _rewrite_weights(d, _nan, fix_digest=False)
    with pytest.raises(ValueError, match="sha256"):
        rl.models.load_model(d)


def test_flipped_byte_and_truncation(export):
    _, d = export
    w = d / WEIGHTS
    good = w.read_bytes()
    flipped = bytearray(good)
    flipped[-5] ^= 0x01  # inside the last tensor's data: safetensors alone would load it
    w.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupted or truncated: its sha256") as err:
        rl.models.load_model(d)
    assert str(w) in str(err.value)
    w.write_bytes(good[: len(good) - 100])
    with pytest.raises(ValueError, match=f"{w.name} is corrupted or truncated"):
        rl.models.load_model(d)
    w.write_bytes(good)
    rl.models.load_model(d)


def _edit_spec(d: Path, fn) -> None:
    doc = json.loads((d / META).read_text())
    fn(doc)
    (d / META).write_text(json.dumps(doc))


@pytest.mark.parametrize("edit, fragment", [
    (lambda doc: doc["spec"].update(act="gelu"), r"was edited.*act: 'gelu' in model.json, 'silu'"),
    (lambda doc: doc["spec"].update(act="swish2"), r"spec.act must be null or one of"),
    (lambda doc: doc["spec"].update(num_classes=12), r"was edited.*num_classes"),
    (lambda doc: doc["spec"].update(num_classes=1), r"spec.num_classes must be an integer >= 2"),
    (lambda doc: doc["spec"].update(num_classes="10"), r"spec.num_classes must be an integer"),
    (lambda doc: doc["spec"].update(norm="ln"), r"spec.norm must be null or one of"),
    (lambda doc: doc["spec"].update(denoise="blur"), r"spec.denoise must be null or one of"),
    (lambda doc: doc["spec"].update(denoise_where="some"), r"spec.denoise_where must be one of"),
    (lambda doc: doc["spec"].update(name="resnet_huge"), r"spec.name must be a built-in model name"),
    (lambda doc: doc["spec"].update(std=[0.0]), r"spec.std must be a list of positive numbers"),
    (lambda doc: doc["spec"].update(mean="0.5"), r"spec.mean must be a non-empty list"),
    (lambda doc: doc["spec"].update(extra=1), r"spec has unknown key\(s\) extra"),
    (lambda doc: doc["spec"].pop("num_classes"), r"spec is missing the key\(s\) num_classes"),
    (lambda doc: doc["spec"].pop("name"), r"spec is missing the key\(s\) name"),
    (lambda doc: doc.pop("spec"), r"no robustlab model spec"),
    (lambda doc: doc.update(spec=None, dense={"task": "segmentation"}), r"a dense \(ch. 2\) model"),
    (lambda doc: doc.update(spec=[1, 2]), r"spec must be a JSON object"),
    (lambda doc: doc.pop("sha256"), r"records no sha256"),
    (lambda doc: doc.update(sha256="0" * 64), r"its sha256 .* differs from 0000"),
])
def test_edited_model_json_is_refused(export, edit, fragment):
    _, d = export
    _edit_spec(d, edit)
    with pytest.raises(ValueError, match=fragment) as err:
        rl.models.load_model(d)
    assert "model.json" in str(err.value) or "model.safetensors" in str(err.value)


def test_model_json_that_is_not_json(export):
    _, d = export
    (d / META).write_text('{"spec": {"name": "smallcnn",')
    with pytest.raises(ValueError, match=f"{d / META} is not valid JSON"):
        rl.models.load_model(d)
    (d / META).write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list"):
        rl.models.load_model(d)


def test_exports_of_other_tools(tmp_path):
    from safetensors.torch import save_file

    d = tmp_path / "hf"
    d.mkdir()
    save_file({"w": torch.zeros(2)}, str(d / WEIGHTS))
    with pytest.raises(ValueError, match=r"no model.json.*exported by another tool.*save_model"):
        rl.models.load_model(d)
    # A model.json beside it, but not robustlab's: {"spec": None} (a model not from create_model).
    (d / META).write_text(json.dumps({"spec": None, "meta": {}}))
    with pytest.raises(ValueError, match="no robustlab model spec.*expects a directory written by"):
        rl.models.load_model(d)
    # A robustlab-looking model.json with the right digest but weights whose header carries no spec.
    model = rl.models.create_model("smallcnn", 10, in_channels=1, width=4)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / WEIGHTS))
    digest = hashlib.sha256((d / WEIGHTS).read_bytes()).hexdigest()
    (d / META).write_text(json.dumps({"spec": json.loads(json.dumps(model.robustlab_spec)), "sha256": digest}))
    with pytest.raises(ValueError, match="carries no robustlab spec in its header"):
        rl.models.load_model(d)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        rl.models.load_model(tmp_path / "empty")


def test_weights_files_run_no_code(tmp_path):
    """create_model(weights=...) reads .pt files with weights_only=True: a pickled payload is refused."""
    marker = tmp_path / "marker"
    torch.save({"w": SystemPayload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil.pt holds a pickled \S*system, not only tensors; robustlab never"):
        rl.models.create_model("smallcnn", 10, in_channels=1, width=4, weights=tmp_path / "evil.pt")
    assert not marker.exists()
    model = rl.models.create_model("smallcnn", 10, in_channels=1, width=4)
    torch.save(_nan(dict(model.net.state_dict())), tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="nan.pt holds non-finite weights"):
        rl.models.create_model("smallcnn", 10, in_channels=1, width=4, weights=tmp_path / "nan.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="weights: .*other.pt does not fit smallcnn"):
        rl.models.create_model("smallcnn", 10, in_channels=1, width=4, weights=tmp_path / "other.pt")


def test_a_damaged_weights_file_never_gets_the_advice_to_unpickle_it(tmp_path):
    """A random .pt got torch's 'Re-running torch.load with weights_only set to False will likely succeed': the
    advice the project forbids. A safetensors file named .pt is read by its contents."""
    from safetensors.torch import save_file

    from robustlab.models.factory import load_state_dict

    (tmp_path / "garbage.pt").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "text.pt").write_bytes(b"not weights at all\n" * 20)
    for name in ("garbage.pt", "text.pt"):
        with pytest.raises(ValueError, match="is not a readable weights file: neither safetensors") as err:
            load_state_dict(tmp_path / name)
        assert "weights_only" not in str(err.value) and "False" not in str(err.value)
    save_file({"w": torch.ones(2)}, str(tmp_path / "st.pt"))
    assert torch.equal(load_state_dict(tmp_path / "st.pt")["w"], torch.ones(2))


def test_the_config_yaml_loader_is_a_safe_loader():
    """safe_yaml reads 5e-4 as a number with a SafeLoader subclass: no Python object is ever built."""
    import yaml

    from robustlab._io import _loader, safe_yaml

    assert issubclass(_loader(), yaml.SafeLoader)
    with pytest.raises(yaml.YAMLError):
        safe_yaml("!!python/object/apply:os.system ['true']")
    assert safe_yaml("lr: 5e-4") == {"lr": 0.0005}


@pytest.mark.parametrize("payload", [SystemPayload, OpenPayload])
def test_a_plain_pickle_as_weights_never_runs_and_is_named(tmp_path, payload, recwarn):
    """pickle.dump of objects given as --weights: refused without running, and without torch's warning about
    its protocol before an 'Unsupported operand' error."""
    from robustlab.models.factory import load_state_dict

    marker = tmp_path / "marker"
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"fc.weight": payload(marker)}, protocol=4))
    with pytest.raises(ValueError, match="is a plain Python pickle of objects.*never unpickles"):
        load_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()
    assert not [w for w in recwarn if "pickle" in str(w.message).lower()]
