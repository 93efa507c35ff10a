"""rws.data: readers on tiny fake datasets, the decode cache, splits, batched augmentation,
configs; integration tests on the shared data are marked slow."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from rws.data import (
    CIFARDataModule,
    CorruptedArrays,
    DatasetNotFoundError,
    DigitsDataModule,
    ImageFolderDataModule,
    ImageNetDataModule,
    TensorImageDataset,
    TinyImageNetDataModule,
    passthrough_collate,
)
from rws.data import image_folder as image_folder_mod
from rws.data.splits import per_class_subset, random_subset, split_indices
from rws.data.transforms import random_crop_flip
from rws.config import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _save_img(path: Path, size: tuple[int, int], value: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    arr = np.clip(rng.normal(value, 5, shape), 0, 255).astype(np.uint8)
    Image.fromarray(arr, mode).save(path, quality=95)


def _image_folder(root: Path, classes=("cat", "ant", "bee"), n_train=6, n_test=2, size=(20, 16)) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        for c, cls in enumerate(classes):
            for i in range(n):
                ext = "png" if i % 2 else "jpg"
                _save_img(root / split / cls / f"{i:03d}.{ext}", size, 40 + 60 * c)
    return root


# -- ImageFolder + cache ------------------------------------------------------------------------

def test_image_folder_decodes_once_then_hits_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _image_folder(tmp_path / "tree")
    kw = dict(root=root, num_classes=3, image_size=16, cache_dir=tmp_path / "cache", val_size=3, seed=1)
    dm = ImageFolderDataModule(**kw)
    dm.setup()
    assert dm.classes == ["ant", "bee", "cat"]  # sorted folder names give the class index
    assert dm.split_sizes() == {"train": 15, "val": 3, "test": 6}
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32 and y.tolist() == [0, 0, 1, 1, 2, 2]
    # Class "ant" was drawn around 100, "cat" around 40: decoding kept the right pixels per label.
    assert abs(x[0].mean() * 255 - 100) < 10 and abs(x[-1].mean() * 255 - 40) < 10
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 2

    def no_decode(*a, **k):
        raise AssertionError("cache miss: decoded again")

    monkeypatch.setattr(image_folder_mod, "decode_files", no_decode)
    dm2 = ImageFolderDataModule(**kw)
    dm2.setup()
    assert torch.equal(next(iter(dm2.test_dataloader()))[0], x)
    assert dm2.fingerprint() == dm.fingerprint()
    # A changed file changes the key: the stale entry is not served.
    _save_img(root / "test" / "ant" / "000.jpg", (20, 16), 200)
    with pytest.raises(AssertionError, match="cache miss"):
        ImageFolderDataModule(**kw).setup()


def test_image_folder_infers_num_classes_and_resizes(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "tree", classes=("a", "b"), n_train=2, n_test=1, size=(40, 24))
    dm = ImageFolderDataModule(root=root, image_size=8, cache_dir=tmp_path / "c", val_size=0)
    assert dm.num_classes == 2 and dm.corruption_table == "cifar"
    dm.setup()
    assert next(iter(dm.train_dataloader()))[0].shape[1:] == (3, 8, 8)
    assert dm.val_dataloader() == []


def test_setup_test_reads_only_test(monkeypatch: pytest.MonkeyPatch) -> None:
    dm = DigitsDataModule()
    seen = []
    orig = dm._read
    monkeypatch.setattr(dm, "_read", lambda split: seen.append(split) or orig(split))
    dm.setup("test")
    assert seen == ["test"] and len(dm.dataset("test")) == 360
    next(iter(dm.calibration_batches(1, 4)))  # train loads on first use
    assert seen == ["test", "train"]


# -- Tiny-ImageNet --------------------------------------------------------------------------------

def _tiny_imagenet(root: Path) -> Path:
    wnids = ["n03", "n01", "n02"]  # unsorted on purpose: class index follows sorted order
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        for i in range(4):
            _save_img(root / "train" / w / "images" / f"{w}_{i}.JPEG", (12, 12), 30 * int(w[-1]))
    rows = []
    for i, w in enumerate(["n02", "n03", "n01", "n02"]):
        _save_img(root / "val" / "images" / f"val_{i}.JPEG", (12, 12), 30 * int(w[-1]), mode="L" if i == 1 else "RGB")
        rows.append(f"val_{i}.JPEG\t{w}\t0\t0\t5\t5")
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return root


def test_tiny_imagenet_layout(tmp_path: Path) -> None:
    root = _tiny_imagenet(tmp_path / "tin")
    dm = TinyImageNetDataModule(root=root, num_classes=3, image_size=12, cache_dir=tmp_path / "c", val_size=0)
    assert dm.corruption_table == "tiny_imagenet"
    dm.setup()
    assert dm.classes == ["n01", "n02", "n03"]
    x, y = next(iter(dm.test_dataloader()))
    assert y.tolist() == [1, 2, 0, 1]  # from val_annotations.txt via sorted wnids
    assert x.shape == (4, 3, 12, 12)  # the grayscale val_1 came out as RGB
    assert torch.allclose(x[1, 0], x[1, 1]) and torch.allclose(x[1, 1], x[1, 2])
    assert dm.split_sizes()["train"] == 12


def test_tiny_imagenet_missing_annotations(tmp_path: Path) -> None:
    root = _tiny_imagenet(tmp_path / "tin")
    (root / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="val_annotations.txt"):
        TinyImageNetDataModule(root=root, num_classes=3, cache_dir=tmp_path / "c").setup()


# -- CIFAR pickles --------------------------------------------------------------------------------

def _cifar(root: Path, num_classes: int, n: int = 20) -> Path:
    rng = np.random.default_rng(0)

    def dump(path: Path, obj: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(obj, f)

    key = "labels" if num_classes == 10 else "fine_labels"
    if num_classes == 10:
        d = root / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        dump(d / "batches.meta", {"label_names": CIFAR10_CLASSES})
    else:
        d = root / "cifar-100-python"
        files = ["train", "test"]
        dump(d / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    for f in files:
        labels = [i % num_classes for i in range(n)]
        data = np.repeat(np.asarray(labels, dtype=np.uint8)[:, None], 3072, axis=1)  # pixel value = label
        data[:, 1024:2048] = rng.integers(0, 256, (n, 1024))
        dump(d / f, {"data": data, key: labels})
    return root


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_pickles(tmp_path: Path, num_classes: int) -> None:
    n = 20 if num_classes == 10 else 200
    root = _cifar(tmp_path, num_classes, n)
    dm = CIFARDataModule(root=root, name=f"cifar{num_classes}", num_classes=num_classes, val_size=10, seed=0,
                         eval_batch_size=256)
    assert dm.mean == (0.4914, 0.4822, 0.4465) and dm.image_size == 32 and dm.corruption_table == "cifar"
    dm.setup()
    n_train = n * (5 if num_classes == 10 else 1)
    assert dm.split_sizes() == {"train": n_train - 10, "val": 10, "test": n}
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (n, 3, 32, 32)
    # Channel 0 holds the label: (N, 3072) rows were reshaped channel-first, not HWC.
    assert torch.equal((x[:, 0] * 255).round().long(), y[:, None, None].expand(-1, 32, 32))
    if num_classes == 10:
        assert dm.classes == CIFAR10_CLASSES


class _RunsCommand:
    """Unpickling this calls os.system (what a tampered CIFAR file could do)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


class _Evals:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("payload", ["os.system", "eval", "toplevel"])
def test_cifar_refuses_a_malicious_pickle(tmp_path: Path, payload: str) -> None:
    root = _cifar(tmp_path, 10)
    bad = root / "cifar-10-batches-py" / "data_batch_3"
    marker = tmp_path / "pwned"
    evil = _RunsCommand(f"touch {marker}") if payload != "eval" else _Evals()
    obj = evil if payload == "toplevel" else {"data": evil, "labels": [0]}
    bad.write_bytes(pickle.dumps(obj))
    dm = CIFARDataModule(root=root, name="cifar10", num_classes=10, val_size=10, seed=0)
    with pytest.raises(pickle.UnpicklingError) as e:
        dm.setup()
    msg = str(e.value)
    assert str(bad) in msg and "refused" in msg
    assert ("eval" if payload == "eval" else "system") in msg
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_cifar_pickle_protocols_load(tmp_path: Path, protocol: int) -> None:
    """Well-formed batches load at any protocol (numpy arrays go through _reconstruct, _frombuffer or
    _codecs.encode depending on it); a truncated file or a non-dict is refused naming the file."""
    from rws.data.cifar import read_cifar

    root = _cifar(tmp_path, 10)
    d = root / "cifar-10-batches-py"
    data = np.arange(4 * 3072, dtype=np.int64).reshape(4, 3072).astype(np.uint8)
    batch = {"batch_label": "testing batch 1 of 1", "data": data, "labels": [3, 1, 4, 1],
             "filenames": [b"a.png", b"b.png", b"c.png", b"d.png"]}
    (d / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    x, y, names = read_cifar(root, 10, train=False)
    assert torch.equal(x, torch.from_numpy(data.reshape(4, 3, 32, 32))) and y.tolist() == [3, 1, 4, 1]
    assert names == CIFAR10_CLASSES
    (d / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol)[:-20])
    with pytest.raises(pickle.UnpicklingError, match="test_batch"):
        read_cifar(root, 10, train=False)
    (d / "test_batch").write_bytes(pickle.dumps([data], protocol=protocol))
    with pytest.raises(pickle.UnpicklingError, match="test_batch: a CIFAR python pickle holds a dict"):
        read_cifar(root, 10, train=False)


def test_cifar_missing_says_how_to_get_it(tmp_path: Path) -> None:
    dm = CIFARDataModule(root=tmp_path / "nowhere", num_classes=10)
    with pytest.raises(DatasetNotFoundError) as e:
        dm.setup()
    msg = str(e.value)
    assert "nowhere" in msg and "cifar-10-batches-py" in msg and "download=true" in msg
    assert isinstance(e.value, FileNotFoundError)


def test_image_folder_missing_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as e:
        ImageFolderDataModule(root=tmp_path / "absent", num_classes=10, cache_dir=tmp_path).setup()
    msg = str(e.value)
    assert str(tmp_path / "absent") in msg and "train/<class>" in msg and "unpack.sh" in msg
    with pytest.raises(DatasetNotFoundError):  # inferring num_classes needs the folder at once
        ImageFolderDataModule(root=tmp_path / "absent")


# -- corrupted arrays -----------------------------------------------------------------------------

def test_corrupted_arrays(tmp_path: Path) -> None:
    n = 6
    for name in ("gaussian_noise", "fog"):
        arr = np.zeros((5 * n, 4, 4, 3), dtype=np.uint8)
        for s in range(5):
            arr[s * n:(s + 1) * n] = 50 * s  # value encodes the severity block
        np.save(tmp_path / f"{name}.npy", arr)
    np.save(tmp_path / "labels.npy", np.tile(np.arange(n), 5))
    ca = CorruptedArrays(tmp_path)
    assert set(ca.corruptions) == {"gaussian_noise", "fog"}
    x, y = ca.load("fog", 3)
    assert x.shape == (n, 3, 4, 4) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x, torch.full_like(x, 100 / 255)) and y.tolist() == list(range(n))
    assert ca.load("gaussian_noise", 5, limit=2)[0].shape[0] == 2
    with pytest.raises(ValueError, match="gaussian_noise"):
        ca.load("snow", 1)
    with pytest.raises(ValueError, match="severity"):
        ca.load("fog", 6)
    with pytest.raises(DatasetNotFoundError, match="labels.npy"):
        CorruptedArrays(tmp_path / "missing")


# -- splits and subsets ---------------------------------------------------------------------------

def test_split_deterministic_and_disjoint() -> None:
    tr, va = split_indices(100, 0.2, seed=3)
    tr2, va2 = split_indices(100, 0.2, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert len(va) == 20 and len(set(tr.tolist()) & set(va.tolist())) == 0
    assert sorted(tr.tolist() + va.tolist()) == list(range(100))
    assert not torch.equal(split_indices(100, 0.2, seed=4)[1], va)
    assert len(split_indices(100, 7, seed=0)[1]) == 7
    assert len(split_indices(100, None, seed=0)[1]) == 0
    with pytest.raises(ValueError):
        split_indices(100, 100, seed=0)


def test_subsets() -> None:
    y = torch.arange(100) % 4
    sub = per_class_subset(y, torch.arange(100), 5, seed=0)
    assert torch.bincount(y[sub]).tolist() == [5, 5, 5, 5]
    assert torch.equal(sub, per_class_subset(y, torch.arange(100), 5, seed=0))
    assert len(random_subset(torch.arange(100), 10, seed=0)) == 10
    assert len(random_subset(torch.arange(100), 500, seed=0)) == 100


def test_digits_datamodule() -> None:
    dm = DigitsDataModule(subset_per_class=5, val_size=100, test_per_class=3, batch_size=16, seed=2,
                          eval_batch_size=128)
    assert (dm.name, dm.num_classes, dm.image_size, dm.corruption_table) == ("digits", 10, 32, "cifar")
    assert len(dm.mean) == 3 and all(isinstance(v, float) for v in dm.std)
    dm.setup()
    assert dm.split_sizes() == {"train": 50, "val": 100, "test": 30}
    ys = torch.cat([y for _, y in dm.train_dataloader()])
    assert torch.bincount(ys).tolist() == [5] * 10
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (100, 3, 32, 32) and 0 <= x.min() and x.max() <= 1 and x.max() > 0.9
    # Val never overlaps train, and the fixed test split doesn't depend on the seed.
    full = DigitsDataModule(val_size=100, seed=2)
    full.setup()
    other = DigitsDataModule(val_size=100, seed=5)
    other.setup()
    assert torch.equal(next(iter(full.test_dataloader()))[1], next(iter(other.test_dataloader()))[1])
    assert not set(full.indices("train").tolist()) & set(full.indices("val").tolist())
    # Calibration batches: un-augmented, repeatable.
    a = list(dm.calibration_batches(2, 8))
    b = list(dm.calibration_batches(2, 8))
    assert len(a) == 2 and a[0][0].shape == (8, 3, 32, 32)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))


# -- batched dataset + augmentation ---------------------------------------------------------------

def test_batched_augmentation() -> None:
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(64) % 10
    plain = TensorImageDataset(x, y)
    xb, yb = plain.__getitems__([3, 5])
    assert torch.equal(xb, x[[3, 5]].float() / 255) and yb.tolist() == [3, 5]
    aug = TensorImageDataset(x, y, augment=True, seed=0)
    xa, _ = aug.__getitems__(list(range(64)))
    assert xa.shape == (64, 3, 32, 32) and xa.dtype == torch.float32 and 0 <= xa.min() and xa.max() <= 1
    assert not torch.equal(xa, x.float() / 255)
    assert torch.equal(xa, TensorImageDataset(x, y, augment=True, seed=0).__getitems__(list(range(64)))[0])
    # Each output is a shifted (maybe flipped) window of its own padded input.
    g = torch.Generator().manual_seed(1)
    small = torch.randint(1, 256, (32, 3, 6, 5), dtype=torch.uint8)
    out = random_crop_flip(small, 2, g)
    padded = torch.nn.functional.pad(small, (2, 2, 2, 2))
    windows = [padded[..., oy:oy + 6, ox:ox + 5] for oy in range(5) for ox in range(5)]
    for i in range(32):
        assert any(torch.equal(out[i], win[i]) or torch.equal(out[i], win[i].flip(-1)) for win in windows)
    assert any(not torch.equal(out[i], small[i]) for i in range(32))
    loader = DataLoader(aug, batch_size=16, shuffle=True, collate_fn=passthrough_collate)
    batches = list(loader)
    assert len(batches) == 4 and batches[0][0].shape == (16, 3, 32, 32)
    # Lightning swaps in a DistributedSampler under DDP; the batched path only sees indices.
    dl = DataLoader(aug, batch_size=8, sampler=DistributedSampler(aug, num_replicas=2, rank=1, shuffle=True),
                    collate_fn=passthrough_collate)
    assert sum(len(b[1]) for b in dl) == 32


def test_workers_give_batches(tmp_path: Path) -> None:
    dm = DigitsDataModule(num_workers=2, subset_per_class=10, batch_size=25, val_size=0.1)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert sum(len(y) for _, y in batches) == 100 and batches[0][0].shape == (25, 3, 32, 32)


def test_imagenet_lazy(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "inet", classes=("n1", "n2"), n_train=3, n_test=2, size=(40, 30))
    (root / "test").rename(root / "val")
    dm = ImageNetDataModule(root=root, num_classes=2, image_size=16, val_size=2, batch_size=4, num_workers=0)
    assert dm.corruption_table == "imagenet"
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    x, y = next(iter(dm.test_dataloader()))
    assert y.tolist() == [0, 0, 1, 1]


# -- configs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["digits", "cifar10", "cifar100", "cifar10_jpeg", "image_folder",
                                  "tiny_imagenet", "imagenet"])
def test_data_configs_instantiate(name: str, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    data = OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml")
    for key in ("_target_", "name", "num_classes", "image_size", "mean", "std", "corruption_table", "root",
                "batch_size", "eval_batch_size", "num_workers", "seed", "subset_per_class", "val_size", "augment"):
        assert key in data.keys(), f"{name}.yaml lacks {key}"
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path), "cache_dir": str(tmp_path / "cache")},
                            "data": data})
    if name == "image_folder":
        cfg.data.root, cfg.data.num_classes = str(tmp_path / "x"), 7
    dm = instantiate(cfg.data)  # no data on disk: construction alone must not need it
    assert (dm.name, dm.num_classes, dm.image_size, dm.corruption_table) == (
        cfg.data.name, cfg.data.num_classes, cfg.data.image_size, cfg.data.corruption_table)
    assert dm.mean == tuple(cfg.data.mean) and dm.std == tuple(cfg.data.std)
    assert dm.cache_dir == tmp_path / "cache"


# -- shared data (integration, ../shared/data) ---------------------------------------------------------------------------

def test_shared_cifar10_jpeg_label_order(shared_data_dir: Path) -> None:
    root = shared_data_dir / "cifar10-jpeg"
    dm = ImageFolderDataModule(root=root, name="cifar10_jpeg", num_classes=10, val_size=5000)
    dm.setup()
    assert dm.classes == CIFAR10_CLASSES
    assert dm.split_sizes() == {"train": 45000, "val": 5000, "test": 10000}
    x, y = next(iter(DataLoader(dm.dataset("test"), batch_size=10000, collate_fn=passthrough_collate)))
    assert x.shape == (10000, 3, 32, 32) and torch.bincount(y).tolist() == [1000] * 10
    # Label i holds the pixels of folder CIFAR10_CLASSES[i]: compare with a direct decode.
    for label in (0, 9):
        first = sorted((root / "test" / CIFAR10_CLASSES[label]).glob("*.jpg"))[0]
        i = int((y == label).nonzero()[0])
        assert torch.equal((x[i] * 255).round().to(torch.uint8), image_folder_mod.decode_file(first, 32))


def test_shared_tiny_imagenet_val(shared_data_dir: Path) -> None:
    root = shared_data_dir / "tiny-imagenet-200"
    dm = TinyImageNetDataModule(root=root, num_classes=200)
    dm.setup("test")
    wnids = sorted((root / "wnids.txt").read_text().split())
    ann = dict(line.split("\t")[:2] for line in (root / "val/val_annotations.txt").read_text().splitlines() if line)
    names = sorted(ann)
    _, y = next(iter(DataLoader(dm.dataset("test"), batch_size=len(names), collate_fn=passthrough_collate)))
    assert y.tolist() == [wnids.index(ann[n]) for n in names]
    gray = next(n for n in names if Image.open(root / "val/images" / n).mode == "L")
    i = names.index(gray)
    x, _ = dm.dataset("test").__getitems__([i])
    assert x.shape == (1, 3, 64, 64) and torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])


def test_class_subset_keeps_and_relabels_those_classes() -> None:
    from rws.data.digits import digits_splits

    raw_x, raw_y = digits_splits(32)["test"]
    dm = DigitsDataModule(class_subset=[7, 3], num_classes=2, val_size=0, augment=False)
    dm.setup()
    assert dm.classes == ["7", "3"]
    x, y = dm.dataset("test").x, dm.dataset("test").y
    # every test image of classes 7 and 3, in the original order, labelled by position in the subset
    keep = (raw_y == 7) | (raw_y == 3)
    assert torch.equal(x, raw_x[keep])
    assert torch.equal(y, (raw_y[keep] == 3).long())
    assert len(dm.dataset("train")) == int(((digits_splits(32)["train"][1] == 7)
                                            | (digits_splits(32)["train"][1] == 3)).sum())


@pytest.mark.parametrize(("subset", "num_classes", "match"), [
    ([0, 1], 3, "num_classes=2"), ([1, 1], 2, "distinct"), ([0, 12], 2, "10 classes"), ("01", 2, "list")])
def test_class_subset_errors_name_the_option(subset, num_classes: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dm = DigitsDataModule(class_subset=subset, num_classes=num_classes)
        dm.setup()


def test_class_subset_is_part_of_the_data_identity() -> None:
    """Results on one half of a dataset must never be resumed as results on the other half."""
    from rws.evaluation.sources import TestStream, data_identity

    a = DigitsDataModule(class_subset=[3, 7], num_classes=2)
    b = DigitsDataModule(class_subset=[1, 2], num_classes=2)
    whole = DigitsDataModule()
    assert data_identity(a)["class_subset"] == [3, 7] and data_identity(b)["class_subset"] == [1, 2]
    assert TestStream(a, 10).settings() != TestStream(b, 10).settings()
    assert data_identity(whole) == {"name": "digits", "test_subset": None, "test_per_class": None}  # as before
