"""Scanning image folders and decoding their files into uint8 tensors."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import torch

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def find_classes(split_dir: str | Path) -> list[str]:
    """Class names = sorted sub-directory names (torchvision's ImageFolder order)."""
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def scan_image_folder(split_dir: str | Path, classes: Sequence[str] | None = None
                      ) -> tuple[list[Path], list[int], list[str]]:
    """List ``split_dir/<class>/**/<image>`` as (files, labels, classes), sorted for determinism."""
    split_dir = Path(split_dir)
    classes = list(classes) if classes is not None else find_classes(split_dir)
    files: list[Path] = []
    labels: list[int] = []
    for idx, cls in enumerate(classes):
        cls_dir = split_dir / cls
        if not cls_dir.is_dir():
            continue  # a class absent from one split (e.g. a tiny test set) is allowed
        found = sorted(Path(dp) / f for dp, _, fs in os.walk(cls_dir) for f in fs if is_image(f))
        files.extend(found)
        labels.extend([idx] * len(found))
    return files, labels, classes


def resize_center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side -> ``size``, then a centered square crop; no-op when already size x size."""
    if img.shape[-2:] == (size, size):
        return img
    from torchvision.transforms.v2 import functional as F

    img = F.resize(img, size, antialias=True)
    return F.center_crop(img, [size, size])


def decode_file(path: str | Path, size: int | None = None) -> torch.Tensor:
    """One image file -> uint8 (3, H, W); grayscale/CMYK/RGBA all come out as RGB."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        img = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError:  # formats libjpeg/libpng can't read (e.g. some CMYK JPEGs): PIL fallback
        img = pil_to_tensor(path)
    return resize_center_crop(img, size) if size else img


def pil_to_tensor(path: str | Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        arr = np.array(im.convert("RGB"))
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def decode_files(paths: Sequence[Path], size: int, workers: int | None = None,
                 desc: str = "decoding") -> torch.Tensor:
    """Decode all ``paths`` into one uint8 (N, 3, size, size) tensor with a progress bar.

    Files go to a thread pool in chunks: the decoders release the GIL, and chunking keeps
    per-task overhead small for tiny (32 px) images.
    """
    from tqdm import tqdm

    n = len(paths)
    out = torch.empty((n, 3, size, size), dtype=torch.uint8)
    workers = workers or min(8, os.cpu_count() or 1)
    chunk = 512
    starts = list(range(0, n, chunk))

    def work(start: int) -> int:
        for i in range(start, min(start + chunk, n)):
            out[i] = decode_file(paths[i], size)
        return min(start + chunk, n) - start

    with tqdm(total=n, desc=desc, unit="img", disable=None, mininterval=1.0) as bar:
        if workers <= 1:
            for s in starts:
                bar.update(work(s))
        else:
            with ThreadPoolExecutor(workers) as ex:
                for done in ex.map(work, starts):
                    bar.update(done)
    return out
