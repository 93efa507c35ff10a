"""CIFAR-10/100 from the python pickles in torchvision's layout (read directly, no PIL)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from rws.data.errors import DatasetNotFoundError

_LAYOUT = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
         "batches.meta", "label_names", "labels"),
    100: ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
}


def cifar_dir(root: str | Path, num_classes: int) -> Path:
    """Accept either the parent directory (torchvision's ``root``) or the batches directory itself."""
    root = Path(root).expanduser()
    sub = _LAYOUT[num_classes][0]
    return root if root.name == sub else root / sub


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def read_cifar(root: str | Path, num_classes: int, train: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(x uint8 (N,3,32,32), y int64 (N,), class names) for one split."""
    if num_classes not in _LAYOUT:
        raise ValueError(f"CIFAR has 10 or 100 classes, got {num_classes}")
    sub, train_files, test_files, meta_file, names_key, labels_key = _LAYOUT[num_classes]
    d = cifar_dir(root, num_classes)
    files = [d / f for f in (train_files if train else test_files)]
    missing = [f for f in [*files, d / meta_file] if not f.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-{num_classes}", d,
            f"{d}/{{{','.join(train_files + test_files + [meta_file])}}} (torchvision's python pickles; "
            f"missing: {', '.join(m.name for m in missing)})",
            f"set data.download=true to fetch it with torchvision into {d.parent}, or point data.root "
            f"at a directory containing {sub}/",
        )
    xs, ys = [], []
    for f in files:
        batch = _unpickle(f)
        xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.extend(batch[labels_key])
    names = list(_unpickle(d / meta_file)[names_key])
    return torch.from_numpy(np.concatenate(xs)), torch.as_tensor(ys, dtype=torch.int64), names


def download_cifar(root: str | Path, num_classes: int) -> None:
    """Fetch with torchvision (needs internet); a no-op when the files are already there."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if num_classes == 10 else datasets.CIFAR100
    root = cifar_dir(root, num_classes).parent
    for train in (True, False):
        cls(str(root), train=train, download=True)
