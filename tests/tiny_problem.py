"""A tiny classifier and a separable synthetic problem it learns in seconds: the trained model the
attack tests (tests/test_attacks.py, tests/test_guards.py) attack; and ``fit_images``, the short
training loop the tests that need a real image model (small_cnn on the embedded digits) share."""

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


def train_tiny(n_test: int = 128) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """TinyNet trained on 1,024 blob points (seed 0, Adam, 120 steps; 100 % test accuracy), in eval mode,
    with ``n_test`` held-out points. Seeds the global RNG: callers that must not disturb it fork it."""
    torch.manual_seed(0)
    model = TinyNet()
    x, y = blobs(1024, 1)
    opt = torch.optim.Adam(model.parameters(), 1e-2, foreach=False)  # foreach is slow for tiny models on CPU
    for _ in range(120):
        idx = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    xt, yt = blobs(n_test, 2)
    return model, xt, yt


def fit_images(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int) -> nn.Module:
    """Adam (``lr``) on shuffled batches of 64 (a generator seeded with ``seed``) for ``epochs``; the
    model is left in eval mode with its gradients cleared."""
    opt = torch.optim.Adam(model.parameters(), lr, foreach=False)  # foreach is slow for small models on CPU
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()
