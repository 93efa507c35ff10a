"""LightningDataModules for every dataset config in conf/data/.

All of them share one flow: read the train and test splits (uint8 tensors, or file lists for
ImageNet), carve a seeded val split from train, optionally subsample, then serve
``(x float32 (B,3,H,W) in [0,1], y int64)`` batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from rws.data import splits
from rws.data.cache import default_cache_dir, load_or_decode
from rws.data.cifar import download_cifar, read_cifar
from rws.data.datasets import FileImageDataset, TensorImageDataset, imagenet_transforms, passthrough_collate
from rws.data.digits import digits_splits
from rws.data.errors import SHARED_HINT, DatasetNotFoundError
from rws.data.image_folder import find_classes, scan_image_folder
from rws.data.randaugment import build_randaugment
from rws.data.tiny_imagenet import read_wnids, scan_tiny_imagenet

log = logging.getLogger("rws.data")

Floats3 = tuple[float, float, float]
IMAGENET_MEAN: Floats3 = (0.485, 0.456, 0.406)
IMAGENET_STD: Floats3 = (0.229, 0.224, 0.225)


def _triple(v: Sequence[float] | float, what: str) -> Floats3:
    vals = [float(v)] * 3 if isinstance(v, (int, float)) else [float(a) for a in v]
    if len(vals) != 3:
        raise ValueError(f"{what} needs 3 values (one per RGB channel), got {vals}")
    return (vals[0], vals[1], vals[2])


class ImageDataModule(pl.LightningDataModule):
    """Base class. Subclasses implement ``_read(split)`` for split in {"train", "test"}."""

    default_name = "images"
    default_num_classes: int | None = None
    default_image_size = 32
    default_mean: Floats3 = (0.5, 0.5, 0.5)
    default_std: Floats3 = (0.25, 0.25, 0.25)
    default_corruption_table: str | None = None  # None: by image size ("cifar" up to 32 px)

    def __init__(
        self,
        root: str | Path | None = None,
        name: str | None = None,
        num_classes: int | None = None,
        image_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        corruption_table: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        subset_per_class: int | None = None,
        val_size: int | float | None = 0.1,
        augment: bool = True,
        flip: bool = True,
        test_subset: int | float | None = None,
        test_per_class: int | None = None,
        cache_dir: str | Path | None = None,
        pin_memory: bool = False,
        padding: int | None = None,
        download: bool = False,
        decode_workers: int | None = None,
        randaugment: str | None = None,
        class_subset: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser() if root is not None else None
        self.name = name or self.default_name
        self.image_size = int(image_size or self.default_image_size)
        nc = num_classes if num_classes is not None else self.default_num_classes
        self.num_classes: int = int(nc) if nc is not None else self._infer_num_classes()
        self.mean = _triple(mean if mean is not None else self.default_mean, "mean")
        self.std = _triple(std if std is not None else self.default_std, "std")
        table = corruption_table or self.default_corruption_table or (
            "cifar" if self.image_size <= 32 else "imagenet")
        if table not in ("cifar", "tiny_imagenet", "imagenet"):
            raise ValueError(f"corruption_table must be 'cifar', 'tiny_imagenet' or 'imagenet', got {table!r}")
        self.corruption_table = table
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.subset_per_class = subset_per_class
        self.val_size = val_size
        self.augment = bool(augment)
        self.flip = bool(flip)
        # Built now so a bad policy string fails before any data is read.
        self.randaugment = randaugment or None
        self.policy = build_randaugment(self.randaugment, self.image_size, self.mean)
        self.test_subset = test_subset
        self.test_per_class = test_per_class
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.pin_memory = bool(pin_memory)
        self.padding = padding
        self.download = bool(download)
        self.decode_workers = decode_workers
        # A task made of some of the dataset's classes (e.g. two halves of CIFAR-10 as two datasets
        # sharing one θ_init, docs/rws_experiments.md "Transfer"): labels become positions in this list.
        self.class_subset = splits.check_class_subset(class_subset, self.num_classes, self.name)
        self.classes: list[str] = []
        self.cache_keys: dict[str, str] = {}
        self._read_cache: dict[str, tuple[Any, torch.Tensor, list[str]]] = {}
        self._sets: dict[str, Dataset] = {}
        self._index: dict[str, torch.Tensor] = {}

    # -- to implement -------------------------------------------------------------------------
    def _read(self, split: str) -> tuple[Any, torch.Tensor, list[str]]:
        """(uint8 (N,3,S,S) tensor or list of files, int64 labels, class names) for train/test."""
        raise NotImplementedError

    def _infer_num_classes(self) -> int:
        raise ValueError(f"{type(self).__name__} needs num_classes")

    def _dataset(self, data: Any, y: torch.Tensor, idx: torch.Tensor, train: bool) -> Dataset:
        """The Dataset for ``idx`` of one split; ``train`` turns augmentation on."""
        return TensorImageDataset(data[idx], y[idx], augment=train and self.augment,
                                  padding=self.padding, seed=self.seed, flip=self.flip, policy=self.policy)

    # -- Lightning hooks ----------------------------------------------------------------------
    def _read_once(self, split: str) -> tuple[Any, torch.Tensor, list[str]]:
        if split not in self._read_cache:
            data, y, classes = self._read(split)
            if self.class_subset is not None:
                data, y, classes = splits.select_classes(data, y, classes, self.class_subset, self.name)
            self._read_cache[split] = (data, y, classes)
        return self._read_cache[split]

    def prepare_data(self) -> None:
        # Runs on one process per node: downloading and decoding into the cache happen here so
        # DDP ranks don't all decode at once; setup() then hits the cache.
        fn = getattr(getattr(self.trainer, "state", None), "fn", None)
        fn = str(getattr(fn, "value", fn) or "")  # TrainerFn is a str enum: "fit", "test", ...
        wanted = ("test",) if fn in ("test", "predict") else ("train", "test")
        for split in wanted:
            if split not in self._sets:  # Lightning calls this again before test(); skip what is built
                self._read_once(split)

    def setup(self, stage: str | None = None) -> None:
        """Build the splits; ``stage="test"``/``"predict"`` reads only the test split (train,
        val and calibration data then load on first use)."""
        if stage not in ("test", "predict"):
            self._setup_train()
        self._setup_test()

    def _check_classes(self, classes: list[str]) -> None:
        if len(classes) != self.num_classes:
            raise ValueError(f"{self.name}: config says num_classes={self.num_classes} but the data has "
                             f"{len(classes)} classes")
        self.classes = list(classes)

    def _setup_train(self) -> None:
        if "train" in self._sets:
            return
        x_tr, y_tr, classes = self._read_once("train")
        self._read_cache.pop("train")  # the datasets below own the (sub)tensors; don't keep two copies
        self._check_classes(classes)
        train_idx, val_idx = splits.split_indices(len(y_tr), self.val_size, self.seed)
        train_idx = splits.per_class_subset(y_tr, train_idx, self.subset_per_class, self.seed)
        self._index.update(train=train_idx, val=val_idx)
        train = self._dataset(x_tr, y_tr, train_idx, train=True)
        if isinstance(train, TensorImageDataset):  # same images without augmentation, no second copy
            calib: Dataset = TensorImageDataset(train.x, train.y, augment=False)
        else:
            calib = self._dataset(x_tr, y_tr, train_idx, train=False)
        self._sets.update(train=train, val=self._dataset(x_tr, y_tr, val_idx, train=False), calib=calib)
        log.info("%s: %d train / %d val", self.name, len(train_idx), len(val_idx))

    def _setup_test(self) -> None:
        if "test" in self._sets:
            return
        x_te, y_te, classes = self._read_once("test")
        self._read_cache.pop("test")
        self._check_classes(classes)
        test_idx = torch.arange(len(y_te))
        test_idx = splits.per_class_subset(y_te, test_idx, self.test_per_class, self.seed)
        test_idx = splits.random_subset(test_idx, self.test_subset, self.seed)
        self._index["test"] = test_idx
        self._sets["test"] = self._dataset(x_te, y_te, test_idx, train=False)
        log.info("%s: %d test", self.name, len(test_idx))

    def _loader(self, key: str, batch_size: int, shuffle: bool, generator: torch.Generator | None = None
                ) -> DataLoader:
        if key not in self._sets:
            self._setup_test() if key == "test" else self._setup_train()
        ds = self._sets[key]
        tensor = isinstance(ds, TensorImageDataset)
        return DataLoader(
            ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
            collate_fn=passthrough_collate if tensor else None, pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0, generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        self._setup_train()
        if len(self._index["val"]) == 0:
            return []  # val_size=0: Lightning skips validation
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def calibration_batches(self, n_batches: int, batch_size: int | None = None
                            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``n_batches`` shuffled, un-augmented training batches (same ones for the same seed)."""
        gen = torch.Generator().manual_seed(self.seed + 12345)
        loader = self._loader("calib", int(batch_size or self.batch_size), shuffle=True, generator=gen)
        for i, batch in enumerate(loader):
            if i >= n_batches:
                break
            yield batch

    def dataset(self, split: str) -> Dataset:
        """The Dataset behind a loader: "train" (augmented), "val", "test" or "calib" (train, plain)."""
        if split not in ("train", "val", "test", "calib"):
            raise ValueError(f"split must be train, val, test or calib; got {split!r}")
        self._setup_test() if split == "test" else self._setup_train()
        return self._sets[split]

    def indices(self, split: str) -> torch.Tensor:
        """Indices into the source split (train for train/val, test for test) that a split uses."""
        self.dataset(split)
        return self._index["train" if split == "calib" else split]

    def split_sizes(self) -> dict[str, int]:
        self.setup()
        return {k: len(v) for k, v in self._index.items()}

    def fingerprint(self) -> str:
        """A short hash of what the model saw: dataset, cache keys and the exact split indices."""
        self.setup()
        h = hashlib.sha256(json.dumps({"name": self.name, "classes": self.classes, "keys": self.cache_keys,
                                       "size": self.image_size}, sort_keys=True).encode())
        for k in ("train", "val", "test"):
            h.update(k.encode() + self._index[k].numpy().tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r}, num_classes={self.num_classes}, "
                f"image_size={self.image_size})")


class DigitsDataModule(ImageDataModule):
    """scikit-learn's 1797 handwritten digits, 32x32 RGB; no root, no download."""

    default_name = "digits"
    default_num_classes = 10
    # Measured on the training split at 32 px (ink on black, so mostly dark).
    default_mean = (0.3054, 0.3054, 0.3054)
    default_std = (0.3240, 0.3240, 0.3240)

    def _read(self, split: str) -> tuple[Any, torch.Tensor, list[str]]:
        x, y = digits_splits(self.image_size)[split]
        return x, y, [str(i) for i in range(10)]


class CIFARDataModule(ImageDataModule):
    """CIFAR-10 / CIFAR-100 from torchvision's python pickles (``download: true`` fetches them)."""

    default_name = "cifar10"
    default_num_classes = 10
    default_mean = (0.4914, 0.4822, 0.4465)
    default_std = (0.2470, 0.2435, 0.2616)

    _downloaded = False

    def prepare_data(self) -> None:
        if self.download and not self._downloaded:
            download_cifar(self._root(), self.num_classes)
            self._downloaded = True
        super().prepare_data()

    def _root(self) -> Path:
        if self.root is None:
            raise ValueError(f"{self.name}: data.root is not set")
        return self.root

    def _read(self, split: str) -> tuple[Any, torch.Tensor, list[str]]:
        if self.download and not self._downloaded:  # setup() without prepare_data() (e.g. by hand)
            download_cifar(self._root(), self.num_classes)
            self._downloaded = True
        return read_cifar(self._root(), self.num_classes, train=split == "train")


class ImageFolderDataModule(ImageDataModule):
    """Any ``root/{train,test}/<class>/*.jpg`` tree, decoded once into the uint8 cache."""

    default_name = "image_folder"
    layout = "<root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg (class index = sorted class names)"

    def __init__(self, *args: Any, train_split: str = "train", test_split: str = "test", **kw: Any) -> None:
        self.train_split, self.test_split = train_split, test_split
        super().__init__(*args, **kw)

    def _missing(self, path: Path) -> DatasetNotFoundError:
        return DatasetNotFoundError(self.name, path, self.layout.replace("train", self.train_split, 1)
                                    .replace("test", self.test_split, 1), SHARED_HINT)

    def _split_dir(self, split: str) -> Path:
        if self.root is None:
            raise ValueError(f"{self.name}: data.root is not set")
        d = self.root / (self.train_split if split == "train" else self.test_split)
        if not d.is_dir():
            raise self._missing(d)
        return d

    def _infer_num_classes(self) -> int:
        classes = find_classes(self._split_dir("train"))
        if not classes:
            raise self._missing(self._split_dir("train"))
        return len(classes)

    def _read(self, split: str) -> tuple[Any, torch.Tensor, list[str]]:
        classes = find_classes(self._split_dir("train"))
        d = self._split_dir(split)
        files, labels, _ = scan_image_folder(d, classes)
        if not files:
            raise self._missing(d)
        x, y, key = load_or_decode(d, files, labels, self.image_size, self.cache_dir,
                                   tag=f"{self.name}-{d.name}", workers=self.decode_workers)
        self.cache_keys[split] = key
        return x, y, classes


class TinyImageNetDataModule(ImageDataModule):
    """Tiny-ImageNet-200 (64 px); its labelled val split is the test set, val is carved from train."""

    default_name = "tiny_imagenet"
    default_num_classes = 200
    default_image_size = 64
    default_corruption_table = "tiny_imagenet"  # make_tinyimagenet_c.py's values (Tiny-ImageNet-C)
    default_mean = (0.4802, 0.4481, 0.3975)
    default_std = (0.2770, 0.2691, 0.2821)

    def _read(self, split: str) -> tuple[Any, torch.Tensor, list[str]]:
        if self.root is None:
            raise ValueError(f"{self.name}: data.root is not set")
        files, labels, wnids = scan_tiny_imagenet(self.root, "train" if split == "train" else "val")
        x, y, key = load_or_decode(self.root, files, labels, self.image_size, self.cache_dir,
                                   tag=f"{self.name}-{split}", workers=self.decode_workers)
        self.cache_keys[split] = key
        return x, y, wnids

    def _infer_num_classes(self) -> int:
        return len(read_wnids(self.root or Path(".")))


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-style train/val folders, decoded lazily per item (too big for the uint8 cache)."""

    default_name = "imagenet"
    default_image_size = 224
    default_corruption_table = "imagenet"
    default_mean = IMAGENET_MEAN
    default_std = IMAGENET_STD
    layout = "<root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (val sorted into class folders)"

    def __init__(self, *args: Any, test_split: str = "val", **kw: Any) -> None:
        super().__init__(*args, test_split=test_split, **kw)

    def _read(self, split: str) -> tuple[Any, torch.Tensor, list[str]]:
        classes = find_classes(self._split_dir("train"))
        files, labels, _ = scan_image_folder(self._split_dir(split), classes)
        if not files:
            raise self._missing(self._split_dir(split))
        return files, torch.as_tensor(labels, dtype=torch.int64), classes

    def _dataset(self, data: Any, y: torch.Tensor, idx: torch.Tensor, train: bool) -> Dataset:
        files = [data[i] for i in idx.tolist()]
        return FileImageDataset(files, y[idx], imagenet_transforms(self.image_size, train and self.augment,
                                                                      self.policy))
