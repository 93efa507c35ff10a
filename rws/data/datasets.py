"""torch Datasets: an in-memory uint8 one that hands out whole augmented batches, and a lazy
per-file one for datasets that don't fit in memory (ImageNet)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from rws.data.randaugment import augment_batch
from rws.data.transforms import default_padding, random_crop_flip, to_float


class TensorImageDataset(Dataset):
    """Images kept as one uint8 (N,3,H,W) tensor; ``__getitems__`` returns a stacked float batch.

    torch's DataLoader calls ``__getitems__(indices)`` when a dataset has it, so a plain
    ``DataLoader(ds, batch_size=..., shuffle=..., collate_fn=passthrough_collate)`` gets whole
    batches from one tensor gather + one batched augmentation, and samplers (including the
    DistributedSampler Lightning injects) still work because they only produce indices.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: bool = False,
                 padding: int | None = None, seed: int = 0, flip: bool = True,
                 policy: Callable[[Any], Any] | None = None) -> None:
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 (N,3,H,W), got {x.dtype} {tuple(x.shape)}")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self.x, self.y = x, y.to(torch.int64)
        self.augment = augment
        self.flip = bool(flip)
        self.policy = policy  # RandAugment (rws/data/randaugment.py), after crop and flip
        self.padding = default_padding(x.shape[-1]) if padding is None else int(padding)
        self.seed = int(seed)
        self._gen: torch.Generator | None = None
        self._gen_owner: int | None = None

    def __len__(self) -> int:
        return len(self.y)

    def _generator(self) -> torch.Generator:
        # Each DataLoader worker holds a copy of this object; seeding from the worker's seed
        # (drawn from the global RNG per epoch) keeps workers from repeating each other's crops.
        info = get_worker_info()
        owner = -1 if info is None else info.id
        if self._gen is None or self._gen_owner != owner:
            seed = self.seed if info is None else info.seed
            self._gen = torch.Generator().manual_seed(seed % (2**63))
            self._gen_owner = owner
        return self._gen

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = self.x[idx]
        if self.augment:
            x = random_crop_flip(x, self.padding, self._generator(), flip=self.flip)
            if self.policy is not None:
                x = augment_batch(self.policy, x)
        return to_float(x), self.y[idx]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([int(i)])
        return x[0], y[0]


def passthrough_collate(batch: Any) -> Any:
    """Collate for ``TensorImageDataset``: batches arrive stacked; single items get stacked."""
    if isinstance(batch, tuple) and len(batch) == 2 and torch.is_tensor(batch[0]) and batch[0].ndim == 4:
        return batch
    return default_collate(batch)


class FileImageDataset(Dataset):
    """One image file per item, decoded on access (PIL), for folders too large for memory."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int] | torch.Tensor,
                 transform: Callable[[Any], torch.Tensor]) -> None:
        self.files = list(files)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            img = im.convert("RGB")  # grayscale and CMYK JPEGs exist in ImageNet
        return self.transform(img), self.labels[i]


def imagenet_transforms(image_size: int, train: bool,
                        policy: Callable[[Any], Any] | None = None) -> Callable[[Any], torch.Tensor]:
    """The usual ImageNet recipe at ``image_size``: RandomResizedCrop+flip (then ``policy``, a
    RandAugment, on the PIL image), or resize(1.14x)+center crop."""
    from torchvision.transforms import v2

    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if train:
        return v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(),
                           *([policy] if policy is not None else []), *tail])
    return v2.Compose([v2.Resize(round(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size), *tail])
