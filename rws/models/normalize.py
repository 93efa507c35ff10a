"""The pixel-space wrapper every rws model is returned in."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalized(nn.Module):
    """Classifier that takes pixels in [0, 1] and standardizes them itself.

    Keeping mean/std inside the model lets corruptions and attacks work in pixel space (their
    epsilons and clamps are defined there). The buffers are non-persistent so the state dict holds
    only ``net.*`` keys: weight arithmetic (signatures, soups) never touches the normalization.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float] = (0.5, 0.5, 0.5),
                 std: Sequence[float] = (0.5, 0.5, 0.5)) -> None:
        super().__init__()
        mean_l, std_l = [float(m) for m in mean], [float(s) for s in std]
        if len(mean_l) != 3 or len(std_l) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got mean={mean_l} std={std_l}")
        if min(std_l) <= 0:
            raise ValueError(f"std must be positive, got {std_l}")
        mean_t = torch.tensor(mean_l, dtype=torch.float32)
        std_t = torch.tensor(std_l, dtype=torch.float32)
        self.net = net
        self.register_buffer("mean", mean_t.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
