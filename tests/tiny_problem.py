"""A tiny classifier and a separable synthetic problem it learns in seconds: the trained model the
attack tests (tests/test_attacks.py, tests/test_guards.py) attack."""

from __future__ import annotations

import torch
from torch import nn

K, SHAPE = 4, (3, 8, 8)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1))
        self.head = nn.Linear(32, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    patterns = torch.randint(0, 2, (K, *SHAPE), generator=g).float() * 2 - 1  # fixed class means
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    x = 0.5 + 0.06 * patterns[y] + 0.12 * torch.randn(n, *SHAPE, generator=g)
    return x.clamp(0, 1), y
