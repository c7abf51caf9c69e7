"""Datasets, on-disk formats, search paths and loaders."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import robustlab as rl
from robustlab.data import DataNotFoundError, load_dataset, make_loader, read_idx


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Keep the user's ~/.cache and $ROBUSTLAB_DATA out of these tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ROBUSTLAB_DATA", raising=False)


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def test_digits():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    x, y = test.batch(slice(None))
    assert x.shape == (360, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() == 0 and x.max() == 1 and set(y.tolist()) == set(range(10))
    assert test.info.num_classes == 10 and test.info.size == 8


def test_limit_size_and_channels():
    ds = load_dataset("digits", "test", limit=10, size=16, channels=3)
    x, _ = ds.batch(slice(None))
    assert x.shape == (10, 3, 16, 16) and ds.info.channels == 3 and len(ds.info.mean) == 3
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        load_dataset("digits", limit=0)
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("digits", "validation")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")


def test_loader_covers_every_sample_once_and_shuffles_reproducibly():
    ds = load_dataset("digits", "test")
    seen = torch.cat([y for _, y in make_loader(ds, 64)])
    assert torch.equal(seen, ds.labels)
    a = [y for _, y in make_loader(ds, 64, shuffle=True, seed=3)]
    b = [y for _, y in make_loader(ds, 64, shuffle=True, seed=3)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(torch.cat(a), ds.labels)
    assert sorted(torch.cat(a).tolist()) == sorted(ds.labels.tolist())
    assert len(make_loader(ds, 64)) == 6 and len(make_loader(ds, 64, drop_last=True)) == 5
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        make_loader(ds, 0)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files_from_data_dir(tmp_path, compress):
    rng = np.random.RandomState(0)
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for stem, n in (("train", 20), ("t10k", 12)):
        write_idx(folder / f"{stem}-images-idx3-ubyte", rng.randint(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{stem}-labels-idx1-ubyte", rng.randint(0, 10, (n,)), compress)
    ds = load_dataset("fashion_mnist", "test", data_dir=tmp_path, download=False)
    x, y = ds.batch(slice(None))
    assert x.shape == (12, 1, 28, 28) and len(y) == 12
    raw = read_idx(folder / ("t10k-images-idx3-ubyte" + (".gz" if compress else "")))
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(raw))


def test_truncated_idx(tmp_path):
    path = tmp_path / "bad"
    write_idx(path, np.zeros((4, 3, 3)), compress=False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(path)


def test_missing_data_names_the_paths_tried(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist", data_dir=tmp_path / "nowhere", download=False)
    msg = str(err.value)
    assert "Paths tried" in msg and str(tmp_path / "nowhere") in msg and "download=False" in msg
    for way in ("--data-dir", "data.data_dir=DIR", "defaults.data.data_dir=DIR", "data_dir=", "ROBUSTLAB_DATA"):
        assert way in msg  # each surface's own spelling: a study user is not left guessing the key
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_cifar_pickle_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.RandomState(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {b"data": rng.randint(0, 256, (4, 3072)).astype(np.uint8),
                         b"labels": rng.randint(0, 10, 4).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batches[name], f)
    train = load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    assert len(train) == 20 and train.info.channels == 3
    test = load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    x, y = test.batch(slice(None))
    expected = torch.from_numpy(batches["test_batch"][b"data"].reshape(4, 3, 32, 32))
    assert torch.equal((x * 255).round().to(torch.uint8), expected)
    assert y.tolist() == batches["test_batch"][b"labels"]


def _random_folder(root, classes, per_class, shape, seed):
    """ROOT/val/CLASS/i.png of uniform random RGB images."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    for cls in classes:
        (root / "val" / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.randint(0, 256, (*shape, 3)).astype(np.uint8)).save(root / "val" / cls / f"{i}.png")


def test_image_folder(tmp_path):
    _random_folder(tmp_path, ("cat", "dog"), 3, (40, 50), seed=0)
    ds = load_dataset(f"imagefolder:{tmp_path}", "test", size=32)
    assert len(ds) == 6 and ds.info.classes == ("cat", "dog") and ds.info.num_classes == 2
    x, y = next(iter(make_loader(ds, 6)))
    assert x.shape == (6, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(load_dataset(f"imagefolder:{tmp_path}", "test", size=32, limit=2)) == 2
    with pytest.raises(DataNotFoundError, match="no class folders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}", "test")


def test_a_grayscale_image_folder_gives_the_luminance_of_its_rgb_images(tmp_path):
    """channels=1 was refused; it reads each image as PIL's L (ITU-R 601-2 luma) for a 1-channel model."""
    _random_folder(tmp_path, ("a", "b"), 2, (37, 37), seed=1)
    rgb = next(iter(make_loader(load_dataset(f"imagefolder:{tmp_path}", "test", size=32), 4)))[0]
    gray_ds = load_dataset(f"imagefolder:{tmp_path}", "test", size=32, channels=1)
    gray = next(iter(make_loader(gray_ds, 4)))[0]
    # 37 px images: the 32 px evaluation resize (to 37) and crop only crop, so the two reads see the same pixels
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert gray.shape == (4, 1, 32, 32) and float((gray - luma).abs().max()) <= 1.01 / 255
    assert gray_ds.info.channels == 1 and len(gray_ds.info.mean) == len(gray_ds.info.std) == 1
    with pytest.raises(ValueError, match="RGB .3. or grayscale .1."):
        load_dataset(f"imagefolder:{tmp_path}", "test", channels=2)


def test_an_empty_imagefolder_root_or_class_folder_is_named(tmp_path, monkeypatch):
    """``imagefolder:`` scanned the working directory; an empty class folder gave torchvision's message, no path."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stray").mkdir()
    with pytest.raises(ValueError, match="give the dataset's root folder"):
        load_dataset("imagefolder:", "test")
    (tmp_path / "data" / "val" / "empty").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match=f"imagefolder: {tmp_path / 'data' / 'val'}: .*empty"):
        load_dataset(f"imagefolder:{tmp_path / 'data'}", "test")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_package():
    ds = rl.data.load_dataset("fashion_mnist", "test", download=False)
    assert len(ds) == 10000 and ds.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10


def test_hidden_files_and_folders_are_not_images_or_classes(tmp_path):
    """A macOS ``._x.png`` fork crashed the run and ``.hidden.jpg`` was counted; ``.ipynb_checkpoints`` was a class;
    GIFs were skipped without a word. Hidden entries are ignored, a GIF is read (its first frame), and the dataset
    pickles (a DataLoader worker started by spawn)."""
    import pickle

    from PIL import Image

    for cls in ("a", "b", ".ipynb_checkpoints"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.fromarray(np.full((20, 20, 3), 100, np.uint8)).save(tmp_path / "val" / cls / "0.png")
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(tmp_path / "val" / "a" / "1.gif")
    (tmp_path / "val" / "a" / "._2.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "val" / "b" / ".hidden.png")
    ds = load_dataset(f"imagefolder:{tmp_path}", "test", size=16)
    assert ds.info.classes == ("a", "b") and len(ds) == 3
    x, y = next(iter(make_loader(pickle.loads(pickle.dumps(ds)), 3)))
    assert y.tolist() == [0, 0, 1] and abs(float(x[1].mean()) - 200 / 255) < 0.02


def test_a_split_folder_with_only_hidden_folders_is_refused_naming_it(tmp_path):
    from PIL import Image

    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "a" / "0.png")
    (tmp_path / "val" / ".ipynb_checkpoints").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match=r"val holds no class folders"):
        load_dataset(f"imagefolder:{tmp_path}", "test", size=8)
    assert len(load_dataset(f"imagefolder:{tmp_path}", "train", size=8)) == 1


def test_a_flat_folder_of_images_says_its_images_need_class_folders(tmp_path):
    """ImageNet's validation images as downloaded: one folder of JPEGs, no
    class folders. The error counts them and says what layout is wanted."""
    from PIL import Image

    for root in (tmp_path / "imagenet" / "val", tmp_path / "flat"):
        root.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / f"ILSVRC2012_val_{i:08d}.JPEG")
        (root / "notes.txt").write_text("not an image")
    for name, folder in (("imagenet", tmp_path / "imagenet" / "val"), ("flat", tmp_path / "flat")):
        with pytest.raises(DataNotFoundError) as err:
            load_dataset(f"imagefolder:{tmp_path / name}", "test", size=8)
        assert f"{folder} holds 3 images itself, none in a class folder" in str(err.value)
        assert "val/n01440764/" in str(err.value)
    (tmp_path / "empty" / "val").mkdir(parents=True)  # nothing there: no word about images
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(f"imagefolder:{tmp_path / 'empty'}", "test", size=8)
    assert "images itself" not in str(err.value)
