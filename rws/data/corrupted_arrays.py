"""Precomputed corruption arrays in the CIFAR-10-C layout.

``<corruption>.npy`` holds 5*N images (N,H,W,3 uint8 per severity, severities 1..5 stacked) and
``labels.npy`` the N labels (or the 5*N repeated ones, as in the published archives).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rws.data.errors import DatasetNotFoundError


class CorruptedArrays:
    """Reader for a CIFAR-10-C / CIFAR-100-C style directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not (self.root / "labels.npy").is_file():
            raise DatasetNotFoundError(
                "corrupted arrays", self.root,
                "<root>/<corruption>.npy (5*N x H x W x 3 uint8, severities 1..5 stacked) and <root>/labels.npy",
                "download CIFAR-10-C from https://zenodo.org/record/2535967 and untar it, "
                "or point the path at such a directory",
            )
        names = [p.stem for p in self.root.glob("*.npy") if p.stem != "labels"]
        self.corruptions: list[str] = _hendrycks_order(names)

    def __repr__(self) -> str:
        return f"CorruptedArrays({str(self.root)!r}, {len(self.corruptions)} corruptions)"

    def load(self, corruption: str, severity: int, limit: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x float32 (N,3,H,W) in [0,1], y int64 (N,)) for one corruption at severity 1..5."""
        if corruption not in self.corruptions:
            raise ValueError(f"unknown corruption {corruption!r}; {self.root} has: {', '.join(self.corruptions)}")
        if not 1 <= int(severity) <= 5:
            raise ValueError(f"severity must be 1..5, got {severity}")
        # mmap: a CIFAR-10-C file is 150 MB and only a fifth of it is needed.
        arr = np.load(self.root / f"{corruption}.npy", mmap_mode="r")
        if arr.ndim != 4 or arr.shape[0] % 5 or arr.shape[-1] != 3:
            raise ValueError(f"{corruption}.npy: expected (5*N, H, W, 3), got {arr.shape}")
        n = arr.shape[0] // 5
        labels = np.load(self.root / "labels.npy")
        if len(labels) == 5 * n:
            labels = labels[(severity - 1) * n: severity * n]
        elif len(labels) != n:
            raise ValueError(f"labels.npy has {len(labels)} entries; expected {n} or {5 * n}")
        m = n if limit is None else min(int(limit), n)
        block = np.ascontiguousarray(arr[(severity - 1) * n: (severity - 1) * n + m])
        x = torch.from_numpy(block).permute(0, 3, 1, 2).float().div_(255.0)
        return x.contiguous(), torch.as_tensor(np.asarray(labels[:m]), dtype=torch.int64)


def _hendrycks_order(names: list[str]) -> list[str]:
    """Known corruptions in the benchmark's order, anything else sorted after them."""
    try:
        from rws.corruptions import CORRUPTIONS
        order = list(CORRUPTIONS)
    except Exception:  # rws.corruptions is optional for reading arrays
        order = []
    known = [c for c in order if c in names]
    return known + sorted(set(names) - set(known))
