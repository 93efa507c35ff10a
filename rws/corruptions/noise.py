"""Noise corruptions: gaussian, shot (Poisson), impulse (salt & pepper), speckle."""

from __future__ import annotations

import torch

from rws.corruptions.ops import rand, randn

Tensor = torch.Tensor
Gen = torch.Generator | None


def gaussian_noise(x: Tensor, c: float, g: Gen, table: str) -> Tensor:
    return x + c * randn(tuple(x.shape), g, x.device)


def shot_noise(x: Tensor, c: float, g: Gen, table: str) -> Tensor:
    # Poisson draws are made on the CPU so the same generator gives the same image on any device.
    rate = (x.detach().float().cpu() * c).clamp_min(0)
    return torch.poisson(rate, generator=g).to(x.device) / c


def impulse_noise(x: Tensor, c: float, g: Gen, table: str) -> Tensor:
    # skimage 's&p': each value independently replaced with prob `amount`, half salt, half pepper.
    hit = rand(tuple(x.shape), g, x.device) < c
    salt = (rand(tuple(x.shape), g, x.device) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


def speckle_noise(x: Tensor, c: float, g: Gen, table: str) -> Tensor:
    return x + x * c * randn(tuple(x.shape), g, x.device)
