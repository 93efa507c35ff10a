"""Blur corruptions: defocus, glass, motion, zoom, gaussian."""

from __future__ import annotations

from functools import lru_cache

import torch

from rws.corruptions import ops

Tensor = torch.Tensor
Gen = torch.Generator | None


@lru_cache(maxsize=32)
def _disk(radius: float, alias_blur: float) -> Tensor:
    """The reference's anti-aliased disk: a binary disk on a >=17x17 grid, Gaussian-blurred."""
    r = 8 if radius <= 8 else int(radius)
    ksize = 3 if radius <= 8 else 5
    ax = torch.arange(-r, r + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    d = ((xx ** 2 + yy ** 2) <= radius ** 2).double()
    d /= d.sum()
    # cv2.GaussianBlur with an explicit odd ksize and sigma, reflect-101 border.
    t = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    k1 = torch.exp(-t ** 2 / (2 * alias_blur ** 2))
    k1 /= k1.sum()
    out = ops.conv_sep(d.view(1, 1, *d.shape), k1, k1, "reflect101")[0, 0]
    return out.float()


def defocus_blur(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:
    return ops.conv2d_same(x, _disk(float(c[0]), float(c[1])), "reflect101")


def gaussian_blur(x: Tensor, c: float, g: Gen, table: str) -> Tensor:
    return ops.gaussian(x, float(c))


def glass_blur(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:
    """Blur, locally scramble pixels, blur again.

    The reference swaps pixels one by one in a sequential raster loop; here every pixel of the
    scrambled region reads from a random neighbour in one gather per iteration (same offset
    range [-delta, delta), same region), which is parallel but not a permutation.
    """
    sigma, delta, iters = float(c[0]), int(c[1]), int(c[2])
    b, ch, h, w = x.shape
    # The reference quantises to uint8 between the two blurs.
    y = torch.floor(ops.gaussian(x, sigma) * 255) / 255
    # make_cifar_c loops over a fixed 32 px grid; imagecorruptions over the image size.
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((ys > delta) & (ys <= h - delta) & (xs > delta) & (xs <= w - delta))
    for _ in range(iters):
        dy = ops.randint(2 * delta, (b, h, w), g).to(x.device) - delta
        dx = ops.randint(2 * delta, (b, h, w), g).to(x.device) - delta
        sy = torch.where(inside, ys + dy, ys.expand(b, h, w)).clamp(0, h - 1)
        sx = torch.where(inside, xs + dx, xs.expand(b, h, w)).clamp(0, w - 1)
        idx = (sy * w + sx).view(b, 1, h * w).expand(b, ch, h * w)
        y = y.reshape(b, ch, h * w).gather(2, idx).view(b, ch, h, w)
    return ops.gaussian(y, sigma)


def motion_blur(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:
    angles = ops.uniform((x.shape[0],), -45.0, 45.0, g, torch.device("cpu"))
    return ops.motion_blur(x, int(c[0]), float(c[1]), angles)


def zoom_blur(x: Tensor, c: list, g: Gen, table: str) -> Tensor:
    h, w = x.shape[-2:]
    trim = "center" if table == "cifar" else "topleft"
    out = torch.zeros_like(x)
    for z in c:
        out += ops.apply_separable(x, ops.zoom_matrix(h, z, trim, x.device),
                                   ops.zoom_matrix(w, z, trim, x.device))
    return (x + out) / (len(c) + 1)
