"""Write CIFAR-10-C-style arrays (``<corruption>.npy`` + ``labels.npy``) for any split."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rws.corruptions.api import corrupt, resolve_corruptions
from rws.utils.io import atomic_path


def _to_nchw_float(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.shape[-1] == 3 and t.shape[1] != 3:
        t = t.permute(0, 3, 1, 2)
    return t.float() / 255


def write_corrupted_arrays(x_uint8: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | Sequence[int],
                           out_dir: str | os.PathLike, corruptions: str | list[str] = "all",
                           table: str = "cifar", seed: int = 0, batch_size: int = 1000,
                           device: str | torch.device = "cpu") -> dict[str, Path]:
    """Corrupt every image at severities 1..5 and save ``<name>.npy`` (5N, H, W, 3) uint8.

    ``x_uint8`` is (N, H, W, 3) or (N, 3, H, W) uint8. Rows are severity-major, like CIFAR-10-C:
    rows [k*N, (k+1)*N) hold severity k+1. ``labels.npy`` holds the labels tiled 5 times.
    Each corruption has its own generator seeded from (seed, corruption index), so one file can be
    regenerated alone. Writes are atomic. Pixel values are truncated to uint8 (``floor(255·y)``), as
    the reference's ``np.uint8`` does.
    """
    from tqdm.auto import tqdm

    x = x_uint8.cpu().numpy() if isinstance(x_uint8, torch.Tensor) else np.asarray(x_uint8)
    if x.dtype != np.uint8 or x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
        raise ValueError(f"expected uint8 images (N, H, W, 3) or (N, 3, H, W), got {x.dtype} {x.shape}")
    y = np.asarray(labels.cpu().numpy() if isinstance(labels, torch.Tensor) else labels)
    if len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    names = resolve_corruptions(corruptions)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(x)
    written: dict[str, Path] = {}
    from rws.corruptions.params import CORRUPTIONS

    for name in tqdm(names, desc="corruptions", unit="type"):
        gen = torch.Generator().manual_seed(int(seed) * 1000 + CORRUPTIONS.index(name))
        sample = _to_nchw_float(x[:1])
        out = np.empty((5 * n, sample.shape[2], sample.shape[3], 3), dtype=np.uint8)
        for sev in range(1, 6):
            for i in range(0, n, batch_size):
                xb = _to_nchw_float(x[i:i + batch_size]).to(device)
                yb = corrupt(xb, name, sev, table=table, generator=gen)
                # Truncate like the reference's np.uint8(float array) (CIFAR-10-C, Tiny-ImageNet-C), not
                # round: rounding would sit +0.5 grey level above the published arrays on average.
                u8 = torch.floor(yb * 255).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                out[(sev - 1) * n + i:(sev - 1) * n + i + len(u8)] = u8
        path = out_dir / f"{name}.npy"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, out)
        written[name] = path
    lab = np.tile(y, 5)
    lab = lab.astype(np.uint8) if lab.size and lab.min() >= 0 and lab.max() < 256 else lab.astype(np.int64)
    path = out_dir / "labels.npy"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, lab)
    written["labels"] = path
    return written
