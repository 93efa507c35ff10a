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


def glass_source_map(b: int, h: int, w: int, delta: int, iters: int, g: Gen) -> Tensor:
    """Flat source index (B, H*W) of every pixel after the reference's ``iters`` scrambling passes.

    The reference walks the region ``delta < y <= h - delta``, ``delta < x <= w - delta`` in reverse
    raster order (last row first, right to left) and at each pixel p draws an offset (dy, dx) in
    [-delta, delta)^2 and "swaps" p with t = p + (dy, dx) through numpy views
    (``x[p], x[t] = x[t], x[p]``): the first assignment overwrites x[p] before the view of it is
    read back, so the pair becomes a copy x[p] <- x[t], and pixels chain: when t was already visited
    in the same pass (t is inside the region and later in raster order: dy > 0, or dy = 0 and
    dx > 0), x[t] already holds t's new value, i.e. the pixel t copied from. This is the published
    datasets' behaviour (CIFAR-10-C, ImageNet-C, Tiny-ImageNet-C), and it lets pixels drift further
    than a swap would.

    Same result without the sequential loop: p reads old[src(p)] with src(p) = src(t) if t was
    visited before p, else t. Each pass links every such p to t (the others to themselves) and
    follows the links by pointer jumping (``link <- link[link]`` until nothing changes: a few rounds,
    chains being geometric, a handful of pixels long) over the whole batch at once; the passes
    compose as integer maps, so the pixels are gathered once at the end.
    One float32 uniform per region pixel and pass picks one of the (2 delta)^2 offsets (exactly
    uniform for delta = 1, 2, 4, within 2e-6 otherwise), drawn in the reference's visiting order.
    """
    y0, y1, x0, x1 = _glass_region(h, w, delta)
    ident = torch.arange(h * w).view(1, h, w)
    if delta <= 0 or y1 <= y0 or x1 <= x0:
        return ident.view(1, h * w).expand(b, h * w)
    # Small tables (32-64 px images) are kept; ImageNet-sized ones (up to ~50 MB) are rebuilt per call.
    small = (2 * delta) ** 2 * h * w <= 1 << 20
    target, link_to = (_glass_tables_cached if small else _glass_tables)(h, w, delta)
    n, area = target.shape
    comp = None
    for _ in range(iters):
        u = ops.rand((b, area), g, torch.device("cpu"))  # draw j is for the j-th pixel visited
        k = (u * n).long().flip(1)                        # region pixels in raster order
        link = ident.expand(b, h, w).clone()
        link[:, y0:y1, x0:x1] = link_to.gather(0, k).view(b, y1 - y0, x1 - x0)
        src = ident.expand(b, h, w).clone()
        src[:, y0:y1, x0:x1] = target.gather(0, k).view(b, y1 - y0, x1 - x0)
        link = link.view(b, h * w)
        while True:
            nxt = link.gather(1, link)
            if torch.equal(nxt, link):
                break
            link = nxt
        src = src.view(b, h * w).gather(1, link)
        comp = src if comp is None else comp.gather(1, src)
    return comp if comp is not None else ident.view(1, h * w).expand(b, h * w)


def _glass_region(h: int, w: int, delta: int) -> tuple[int, int, int, int]:
    """Rows y0..y1-1 and columns x0..x1-1 the reference scrambles: delta < y <= h - delta."""
    return delta + 1, max(delta + 1, h - delta + 1), delta + 1, max(delta + 1, w - delta + 1)


def _glass_tables(h: int, w: int, delta: int) -> tuple[Tensor, Tensor]:
    """(target, link_to), each (n_offsets, region size), region pixels in raster order: the flat
    index of t = p + (dy, dx) for every offset, and t where t was visited before p (inside the
    region and later in raster order: dy > 0, or dy = 0 and dx > 0), p itself otherwise."""
    y0, y1, x0, x1 = _glass_region(h, w, delta)
    py = torch.arange(y0, y1).view(1, -1, 1)
    px = torch.arange(x0, x1).view(1, 1, -1)
    r = torch.arange(2 * delta) - delta
    dy = r.view(-1, 1).expand(-1, 2 * delta).reshape(-1, 1, 1)  # the (dy, dx) pairs, dy-major
    dx = r.view(1, -1).expand(2 * delta, -1).reshape(-1, 1, 1)
    ty, tx = py + dy, px + dx
    target = ty * w + tx
    later = (dy > 0) | ((dy == 0) & (dx > 0))
    visited = later & (ty < y1) & (tx >= x0) & (tx < x1)
    link_to = torch.where(visited, target, py * w + px)
    return target.reshape(len(dy), -1).contiguous(), link_to.reshape(len(dy), -1).contiguous()


_glass_tables_cached = lru_cache(maxsize=16)(_glass_tables)


def glass_blur(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:
    """Blur, quantise to uint8, scramble pixels locally (the reference's chained copies, see
    :func:`glass_source_map`), blur again."""
    sigma, delta, iters = float(c[0]), int(c[1]), int(c[2])
    b, ch, h, w = x.shape
    # The reference quantises to uint8 between the two blurs.
    y = ops.gaussian(x, sigma).mul_(255).floor_().div_(255)
    idx = glass_source_map(b, h, w, delta, iters, g)
    idx = idx.to(x.device).view(b, 1, h * w).expand(b, ch, h * w)
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
