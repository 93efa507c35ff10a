"""CIFAR-10/100 from the python pickles in torchvision's layout (read directly, no PIL).

The pickles are read with a restricted unpickler (``_CifarUnpickler``) that admits only the types the
format needs, so a tampered file is refused (naming it) instead of running code while it loads.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rws.data.errors import DatasetNotFoundError

_LAYOUT = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
         "batches.meta", "label_names", "labels"),
    100: ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def cifar_dir(root: str | Path, num_classes: int) -> Path:
    """Accept either the parent directory (torchvision's ``root``) or the batches directory itself."""
    root = Path(root).expanduser()
    sub = _LAYOUT[num_classes][0]
    return root if root.name == sub else root / sub


# The only globals a CIFAR python pickle needs: numpy arrays (rebuilt by _reconstruct up to protocol 4,
# by _frombuffer at protocol 5; numpy.core before numpy 2, numpy._core since) with their dtype, and
# _codecs.encode, which is how Python 3 writes bytes (an array's raw data) at protocols 0-2. Dicts, lists,
# str, bytes and numbers need no global. Anything else is refused: unpickling a global can run code
# (os.system, eval, ...) before a single value is checked.
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that admits only the types of the CIFAR python format (``_ALLOWED_GLOBALS``)."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="latin1")  # the original batches were written by Python 2
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"{self.path}: refused to unpickle {module}.{name}: a CIFAR python pickle holds only dicts, "
                f"lists, str, bytes, numbers and numpy arrays, so this file is not one (and loading it could "
                f"run code); replace it with the original from {CIFAR_URL}")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"{self.path}: refused a persistent id; not a CIFAR python pickle")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, path).load()
    except pickle.UnpicklingError as e:
        if str(path) in str(e):  # refused by _CifarUnpickler, already names the file
            raise
        raise pickle.UnpicklingError(f"{path}: not a readable CIFAR python pickle ({e})") from e
    except EOFError as e:
        raise pickle.UnpicklingError(f"{path}: truncated pickle (not a complete CIFAR python pickle)") from e
    if not isinstance(obj, dict):
        raise pickle.UnpicklingError(f"{path}: a CIFAR python pickle holds a dict, this one a {type(obj).__name__}")
    return obj


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
