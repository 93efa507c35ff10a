"""Blur corruptions: defocus, glass, motion, zoom, gaussian."""

from __future__ import annotations

from functools import lru_cache

import torch

from rws.corruptions import ops
from rws.corruptions.params import SCRIPT_SIZE

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


@lru_cache(maxsize=64)
def _disk_operators(radius: float, alias_blur: float, h: int, w: int) -> tuple[Tensor, Tensor]:
    # The anti-aliased disk has low exact rank (rows of a disk take few distinct widths, and the
    # Gaussian is separable): 3-7 separable terms reproduce it to float precision.
    return ops.lowrank_operators(_disk(radius, alias_blur), h, w, "reflect101")


def defocus_blur(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:
    # cv2.filter2D with the disk and a reflect-101 border, as a sum of separable terms.
    h, w = x.shape[-2:]
    mh_cat, mw_cat = _disk_operators(float(c[0]), float(c[1]), h, w)
    return ops.apply_lowrank(x, mh_cat.to(x.device), mw_cat.to(x.device))


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
    y = ops.gaussian(x, sigma).mul_(255).floor_().div_(255)
    # make_cifar_c loops over a fixed 32 px grid; imagecorruptions over the image size.
    # Region rows/cols delta < y <= h - delta: every offset in [-delta, delta) stays inside the
    # image there, so no clamping is needed and only those pixels need random draws.
    ys = torch.arange(delta + 1, h - delta + 1)
    xs = torch.arange(delta + 1, w - delta + 1)
    ys, xs = ys[ys < h], xs[xs < w]
    if len(ys) == 0 or len(xs) == 0 or delta <= 0:
        return ops.gaussian(y, sigma)
    inside = torch.zeros(h, w, dtype=torch.long)
    inside[ys.view(-1, 1), xs.view(1, -1)] = 1
    inside = inside.view(1, h * w)
    # One draw in [0, (2 delta)^2) per pixel = an independent (dy, dx) pair, as a flat offset.
    r = torch.arange(2 * delta) - delta
    offsets = (r.view(-1, 1) * w + r.view(1, -1)).reshape(-1)
    ident = torch.arange(h * w).view(1, h * w)
    # Each iteration reads y[idx_t]; compose the integer maps (cheap) and gather the floats once:
    # y_T = y_0[idx_1[idx_2[... idx_T]]].
    comp = None
    for _ in range(iters):
        k = (ops.rand((b, h * w), g, torch.device("cpu")) * offsets.numel()).long()
        idx = offsets.take(k).mul_(inside).add_(ident)
        comp = idx if comp is None else comp.gather(1, idx)
    idx = comp.to(x.device).view(b, 1, h * w).expand(b, ch, h * w)
    y = y.reshape(b, ch, h * w).gather(2, idx).view(b, ch, h, w)
    return ops.gaussian(y, sigma)


def motion_blur(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:
    angles = ops.uniform((x.shape[0],), -45.0, 45.0, g, torch.device("cpu"))
    return ops.motion_blur(x, int(c[0]), float(c[1]), angles)


def zoom_blur(x: Tensor, c: list, g: Gen, table: str) -> Tensor:
    h, w = x.shape[-2:]
    trim = "center" if table in SCRIPT_SIZE else "topleft"
    out = torch.zeros_like(x)
    for z in c:
        out += ops.apply_separable(x, ops.zoom_matrix(h, z, trim, x.device),
                                   ops.zoom_matrix(w, z, trim, x.device))
    return (x + out) / (len(c) + 1)
