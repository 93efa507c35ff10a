"""Datasets and LightningDataModules; see docs/data.md and the rws.data section of docs/CONTRACTS.md.

Names are imported lazily so that e.g. ``from rws.data import CorruptedArrays`` does not pay for
importing pytorch_lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "CIFARDataModule": "rws.data.datamodule",
    "DigitsDataModule": "rws.data.datamodule",
    "ImageDataModule": "rws.data.datamodule",
    "ImageFolderDataModule": "rws.data.datamodule",
    "ImageNetDataModule": "rws.data.datamodule",
    "TinyImageNetDataModule": "rws.data.datamodule",
    "CorruptedArrays": "rws.data.corrupted_arrays",
    "FileImageDataset": "rws.data.datasets",
    "TensorImageDataset": "rws.data.datasets",
    "passthrough_collate": "rws.data.datasets",
    "DatasetNotFoundError": "rws.data.errors",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from rws.data.corrupted_arrays import CorruptedArrays
    from rws.data.datamodule import (CIFARDataModule, DigitsDataModule, ImageDataModule, ImageFolderDataModule,
                                     ImageNetDataModule, TinyImageNetDataModule)
    from rws.data.datasets import FileImageDataset, TensorImageDataset, passthrough_collate
    from rws.data.errors import DatasetNotFoundError


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rws.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
