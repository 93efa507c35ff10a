"""RandAugment from timm (``data.randaugment``), for the in-memory uint8 batches and the file datasets.

    data.randaugment=rand-m9-n2-p0.5     # the adapters paper: 2 ops, magnitude 9, each with p 0.5

The value is timm's own policy string (``timm.data.rand_augment_transform``: ``m`` magnitude, ``n``
ops per image, ``p`` probability of each op, ``mstd`` magnitude noise, ``inc`` increasing ops), so
its meaning is timm's and not a re-implementation. timm's ops work on PIL images: an in-memory
batch goes through PIL one image at a time (CPU work in the DataLoader workers).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

Policy = Callable[[Image.Image], Image.Image]


def build_randaugment(config: str | None, image_size: int, mean: Sequence[float]) -> Policy | None:
    """timm's RandAugment for ``config`` (None or "" for none). The fill colour of geometric ops is
    the dataset mean and translations reach 45 % of the image, as in timm's own training transforms."""
    if config in (None, "", "none"):
        return None
    from timm.data import rand_augment_transform

    if not isinstance(config, str) or not config.startswith("rand"):
        raise ValueError(f"data.randaugment must be a timm RandAugment string such as 'rand-m9-n2-p0.5' "
                         f"(or null), got {config!r}")
    hparams: dict[str, Any] = {"translate_const": int(image_size * 0.45),
                               "img_mean": tuple(int(round(255 * m)) for m in mean)}
    try:
        return rand_augment_transform(config, hparams)
    except (AssertionError, ValueError, KeyError) as e:
        raise ValueError(f"data.randaugment {config!r} is not a valid timm RandAugment string "
                         f"(e.g. 'rand-m9-n2-p0.5': m magnitude, n ops, p probability per op): {e}") from None


def augment_batch(policy: Policy, x: torch.Tensor) -> torch.Tensor:
    """``policy`` on each image of a uint8 (N, 3, H, W) batch; returns a uint8 batch of the same shape.
    timm draws the ops from numpy's global RNG and probabilities/magnitudes from Python's ``random``;
    Lightning's ``seed_everything(workers=True)`` seeds both per DataLoader worker."""
    out = torch.empty_like(x)
    for i, img in enumerate(x.permute(0, 2, 3, 1).numpy()):
        out[i] = torch.from_numpy(np.array(policy(Image.fromarray(img)), dtype=np.uint8)).permute(2, 0, 1)
    return out
