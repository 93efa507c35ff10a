"""The embedded default dataset: scikit-learn's handwritten digits at CIFAR size.

1797 real 8x8 digits from 43 writers ship inside the scikit-learn wheel, so the default config
runs anywhere with no download, has CIFAR's 10 classes and trains in seconds on a CPU.
"""

from __future__ import annotations

import functools

import torch

DIGITS_TEST_SIZE = 360  # ~20%, fixed: the test split never depends on the run's seed
DIGITS_SPLIT_SEED = 20240501


def load_digits_uint8(image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as uint8 (N, 3, S, S) (bilinear upsampling, gray -> RGB) and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # 0..16 ink levels
    x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return x, torch.as_tensor(d.target, dtype=torch.int64)


@functools.lru_cache(maxsize=2)  # tensors are only ever indexed (copied), never written
def digits_splits(image_size: int = 32) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train": ..., "test": ...} with a fixed permutation, the same on every machine."""
    x, y = load_digits_uint8(image_size)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    test, train = perm[:DIGITS_TEST_SIZE].sort().values, perm[DIGITS_TEST_SIZE:].sort().values
    return {"train": (x[train], y[train]), "test": (x[test], y[test])}
