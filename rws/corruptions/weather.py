"""Weather corruptions: snow, frost, fog (plasma fractal), spatter (water / mud)."""

from __future__ import annotations

import math
import os
from functools import lru_cache

import torch
import torch.nn.functional as F

from rws.corruptions import ops
from rws.corruptions.params import SCRIPT_SIZE

Tensor = torch.Tensor
Gen = torch.Generator | None

FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
# make_cifar_c / make_tinyimagenet_c shrink the textures by a fixed factor before the random crop.
_FROST_SHRINK = {"cifar": 0.2, "tiny_imagenet": 0.3}


# ----------------------------------------------------------------------------- snow
def snow(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:
    loc, scale, zoom, thresh, radius, sigma, blend = c
    b, _, h, w = x.shape
    layer = loc + scale * ops.randn((b, 1, h, w), g, x.device)
    trim = "center" if table in SCRIPT_SIZE else "topleft"
    layer = ops.apply_separable(layer, ops.zoom_matrix(h, zoom, trim, x.device),
                                ops.zoom_matrix(w, zoom, trim, x.device))
    layer = torch.where(layer < thresh, torch.zeros_like(layer), layer).clamp(0, 1)
    angles = ops.uniform((b,), -135.0, -45.0, g, torch.device("cpu"))
    layer = ops.motion_blur(layer, int(radius), float(sigma), angles)
    # The reference stores the flake layer as 8-bit.
    layer = torch.round(layer * 255) / 255
    x = blend * x + (1 - blend) * torch.maximum(x, ops.gray(x) * 1.5 + 0.5)
    return x + layer + torch.flip(layer, dims=(-2, -1))


# ----------------------------------------------------------------------------- frost
def frost_dir() -> str:
    """Folder with the frost textures, shipped by the imagecorruptions(-imaug) package."""
    try:
        import imagecorruptions
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise FileNotFoundError(
            "frost needs the frost texture images from the 'imagecorruptions' package "
            "(pip install imagecorruptions-imaug)") from e
    d = os.path.join(os.path.dirname(imagecorruptions.__file__), "frost")
    missing = [f for f in FROST_FILES if not os.path.isfile(os.path.join(d, f))]
    if missing:
        raise FileNotFoundError(f"frost textures missing in {d}: {missing}")
    return d


@lru_cache(maxsize=1)
def _frost_raw() -> tuple:
    import cv2

    d = frost_dir()
    return tuple(cv2.imread(os.path.join(d, f)) for f in FROST_FILES)  # BGR uint8


@lru_cache(maxsize=16)
def _frost_textures(table: str, h: int, w: int) -> tuple[Tensor, ...]:
    """Frost textures resized for (table, h, w), as RGB float in [0, 1] (CPU)."""
    import cv2
    import numpy as np

    out = []
    for img in _frost_raw():
        fh, fw = img.shape[:2]
        if table in _FROST_SHRINK:
            # make_cifar_c shrinks the textures to 20 % (make_tinyimagenet_c to 30 %); grow them if
            # that is too small.
            s = max(_FROST_SHRINK[table], (h + 1) / fh, (w + 1) / fw)
            img = cv2.resize(img, (0, 0), fx=s, fy=s)
        else:
            s = max(1.0, h / fh, w / fw) * 1.1
            img = cv2.resize(img, (int(np.ceil(fw * s)), int(np.ceil(fh * s))),
                             interpolation=cv2.INTER_CUBIC)
        t = torch.from_numpy(np.ascontiguousarray(img[..., ::-1])).permute(2, 0, 1).float() / 255
        out.append(t)
    return tuple(out)


def frost(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:
    b, _, h, w = x.shape
    tex = _frost_textures(table, h, w)
    # make_cifar_c (and make_tinyimagenet_c) draws among the first five textures only.
    n_tex = 5 if table in SCRIPT_SIZE else 6
    idx = ops.randint(n_tex, (b,), g).tolist()
    u = torch.rand((b, 2), generator=g, dtype=torch.float64).tolist()
    crops = []
    for i, (uy, ux) in zip(idx, u):
        t = tex[i]
        y0 = int(uy * (t.shape[1] - h))
        x0 = int(ux * (t.shape[2] - w))
        crops.append(t[:, y0:y0 + h, x0:x0 + w])
    fr = torch.stack(crops).to(x.device, x.dtype)
    return c[0] * x + c[1] * fr


# ----------------------------------------------------------------------------- fog
def plasma_fractal(b: int, mapsize: int, decay: float, g: Gen, device: torch.device) -> Tensor:
    """Batched diamond-square height map in [0, 1], shape (b, mapsize, mapsize)."""
    m = torch.zeros(b, mapsize, mapsize, device=device)
    step, wibble = mapsize, 100.0

    def wibbled(a: Tensor) -> Tensor:
        return a / 4 + wibble * ops.uniform(tuple(a.shape), -wibble, wibble, g, device)

    while step >= 2:
        half = step // 2
        corner = m[:, 0::step, 0::step]
        sq = corner + corner.roll(-1, 1)
        sq = sq + sq.roll(-1, 2)
        m[:, half::step, half::step] = wibbled(sq)
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled(dr + dr.roll(1, 1) + ul + ul.roll(-1, 2))
        m[:, half::step, 0::step] = wibbled(dr + dr.roll(1, 2) + ul + ul.roll(-1, 1))
        step //= 2
        wibble /= decay
    m = m - m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True)


def fog(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:
    b, _, h, w = x.shape
    size = 1 << max(0, math.ceil(math.log2(max(h, w))))
    if table in SCRIPT_SIZE:
        size = max(size, SCRIPT_SIZE[table])  # make_cifar_c always draws a 32x32 map (Tiny: 64x64)
    frac = plasma_fractal(b, size, float(c[1]), g, x.device)[:, :h, :w].unsqueeze(1).to(x.dtype)
    max_val = x.amax((1, 2, 3), keepdim=True)
    return (x + c[0] * frac) * max_val / (max_val + c[0])


# ----------------------------------------------------------------------------- spatter
def _dilate(m: Tensor) -> Tensor:
    """Binary dilation of a bool mask (B, 1, H, W) by a 3x3 square."""
    p = F.pad(m, (1, 1, 1, 1))
    h, w = m.shape[-2:]
    rows = p[..., 0:h, :] | p[..., 1:h + 1, :] | p[..., 2:h + 2, :]
    return rows[..., 0:w] | rows[..., 1:w + 1] | rows[..., 2:w + 2]


# OpenCV's Canny works in fixed point: tan(22.5 deg) * 2^15, rounded (CANNY_SHIFT = 15).
_CANNY_TG22 = 13573


def canny(img: Tensor, low: int, high: int) -> Tensor:
    """``cv2.Canny(img, low, high)`` (3x3 Sobel, L1 gradient) on integer-valued (B, 1, H, W) planes in
    0..255, as a bool edge map; equal to OpenCV's output pixel for pixel (tested).

    * Sobel derivatives with a replicated border (what Canny asks of cv2.Sobel), magnitude |gx| + |gy|;
    * non-maximum suppression in OpenCV's four sectors, decided in the same integer arithmetic
      (|gy| * 2^15 against |gx| * tan 22.5 and |gx| * tan 67.5), with its tie rule: strictly greater
      than the neighbour before, at least the one after (horizontal / vertical), strictly greater
      than both (diagonals); magnitudes outside the image count as 0;
    * hysteresis: a kept pixel with magnitude > ``low`` is an edge when 8-connected through such
      pixels to one with magnitude > ``high``, grown by repeated 3x3 dilations until stable.
    """
    b, _, h, w = img.shape
    v = img.to(torch.int32)
    p = ops.pad_replicate(v, (1, 1), (1, 1))

    def at(t: Tensor, dy: int, dx: int) -> Tensor:  # t padded by 1 on every side
        return t[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    gx = (at(p, -1, 1) - at(p, -1, -1)) + 2 * (at(p, 0, 1) - at(p, 0, -1)) + (at(p, 1, 1) - at(p, 1, -1))
    gy = (at(p, 1, -1) - at(p, -1, -1)) + 2 * (at(p, 1, 0) - at(p, -1, 0)) + (at(p, 1, 1) - at(p, -1, 1))
    ax = gx.abs()
    mag = ax + gy.abs()
    mp = F.pad(mag, (1, 1, 1, 1))
    ay = gy.abs() << 15
    tg22x = ax * _CANNY_TG22
    horiz = ay < tg22x
    vert = ay > tg22x + (ax << 16)
    same_sign = (gx ^ gy) >= 0
    keep = torch.where(
        horiz, (mag > at(mp, 0, -1)) & (mag >= at(mp, 0, 1)),
        torch.where(vert, (mag > at(mp, -1, 0)) & (mag >= at(mp, 1, 0)),
                    torch.where(same_sign, (mag > at(mp, -1, -1)) & (mag > at(mp, 1, 1)),
                                (mag > at(mp, -1, 1)) & (mag > at(mp, 1, -1)))))
    keep &= mag > low
    edge = keep & (mag > high)
    # Hysteresis: most kept pixels are already strong, so this settles in a few rounds.
    while True:
        grown = _dilate(edge) & keep
        if torch.equal(grown, edge):
            return edge
        edge = grown


# cv2.distanceTransform(DIST_L2, 5): a 5x5 chamfer mask with float32 weights 1 (axial), 1.4
# (diagonal) and 2.1969 (knight's move), summed in float32.
_CHAMFER = (1.0, 1.4, 2.1969)


def chamfer_distance(edges: Tensor, cap: float = 20.0) -> Tensor:
    """``min(cv2.distanceTransform(~edges, cv2.DIST_L2, 5), cap)`` for bool (B, 1, H, W) edge maps,
    float32.

    The chamfer distance is the cheapest path of mask steps to an edge pixel (outside the image
    counts as far, as in OpenCV). It is found by parallel relaxation instead of OpenCV's two
    sequential raster passes: every round lowers each pixel to the minimum over its 16 mask
    neighbours of (their value + step weight), in float32 like OpenCV. After k rounds every path of
    at most k steps is accounted for, and a path shorter than ``cap`` has fewer than ``cap`` steps,
    so ``ceil(cap)`` rounds (fewer when nothing changes) give the capped distance. Equal to OpenCV's
    output up to the last bit of float32 (the same steps summed in another order; tested), which
    has not changed the uint8 shading that :func:`water_rim` derives from it in any test case.
    Cost: up to ``cap`` rounds of ~12 elementwise passes over the batch.
    """
    a, d, k = _CHAMFER
    h, w = edges.shape[-2:]
    big = float(cap)
    # Distances live in the interior of a buffer with a 2-pixel border that stays at ``cap``.
    p = torch.full((*edges.shape[:-2], h + 4, w + 4), big, dtype=torch.float32, device=edges.device)
    dist = p[..., 2:h + 2, 2:w + 2]
    dist.masked_fill_(edges, 0.0)
    for _ in range(int(math.ceil(cap))):
        h1 = torch.minimum(p[..., 1:w + 1], p[..., 3:w + 3])  # columns j -+ 1, every padded row
        h2 = torch.minimum(p[..., 0:w], p[..., 4:w + 4])      # columns j -+ 2
        new = torch.minimum(p[..., 1:h + 1, 2:w + 2], p[..., 3:h + 3, 2:w + 2])
        new = torch.minimum(new, h1[..., 2:h + 2, :], out=new).add_(a)                   # axial
        diag = torch.minimum(h1[..., 1:h + 1, :], h1[..., 3:h + 3, :]).add_(d)
        knight = torch.minimum(h2[..., 1:h + 1, :], h2[..., 3:h + 3, :])
        knight = torch.minimum(knight, h1[..., 0:h, :], out=knight)
        knight = torch.minimum(knight, h1[..., 4:h + 4, :], out=knight).add_(k)
        new = torch.minimum(new, diag, out=new)
        new = torch.minimum(new, knight, out=new)
        if not bool((new < dist).any()):
            break
        torch.minimum(dist, new, out=dist)
    return dist.clone()


def _equalize_u8(v: Tensor) -> Tensor:
    """cv2.equalizeHist per image on integer-valued (B, 1, H, W) tensors in 0..255."""
    b = v.shape[0]
    flat = v.reshape(b, -1).long().clamp(0, 255)
    hist = torch.zeros(b, 256, device=v.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    cdf = hist.cumsum(1)
    total = cdf[:, -1:]
    nz = (hist > 0).float()
    first = torch.gather(hist, 1, nz.argmax(1, keepdim=True))  # count of the lowest occupied level
    # OpenCV: lut[i] = saturate_cast<uchar>(sum * scale), scale = 255.f / (total - first), in float32.
    # (a tensor numerator: torch's scalar / tensor multiplies by a reciprocal, off by an ulp at times)
    denom = (total - first).clamp_min(1)
    scale = torch.full_like(denom, 255.0) / denom
    lut = torch.round((cdf - first) * scale).clamp(0, 255)
    # A constant image maps to itself in OpenCV.
    lut = torch.where(total - first > 0, lut, torch.arange(256, device=v.device).float().expand(b, 256))
    return torch.gather(lut, 1, flat).view_as(v)


def water_rim(liq8: Tensor) -> Tensor:
    """The reference's water shading on the uint8 liquid layer ``liq8`` (B, 1, H, W), integer-valued
    float: Canny edges (50, 150), chamfer distance to them truncated at 20, 3x3 box blur truncated
    to uint8, histogram equalisation, the emboss kernel saturated to uint8, 3x3 box blur (all with
    cv2's reflect-101 border), rounded to uint8."""
    dist = chamfer_distance(canny(liq8, 50, 150), 20.0)
    # cv2.blur sums a float image in double and scales by 1/9 in double, then the result is stored
    # as float32 and truncated to uint8; float64 sums of nine float32 values are exact, so the
    # truncation falls on the same side as OpenCV's.
    ones = (1.0, 1.0, 1.0)
    dist = ops.conv_sep(dist.double(), ones, ones, "reflect101").mul_(1.0 / 9).float().floor_()
    dist = _equalize_u8(dist).to(liq8.dtype)
    ker = torch.tensor([[-2.0, -1, 0], [-1, 1, 1], [0, 1, 2]])
    dist = torch.round(ops.conv2d_same(dist, ker, "reflect101")).clamp_(0, 255)
    return torch.round(ops.box_blur3(dist))  # cv2.blur of a uint8 image rounds back to uint8


def water(x: Tensor, liquid: Tensor, intensity: float) -> Tensor:
    """Pale turquoise water on ``x`` from the thresholded liquid layer (B, 1, H, W) in [0, 1].

    Where the layer is empty the reference divides 0 by 0 (NaN, which its ``np.uint8`` turns into
    a black image); here the image is returned unchanged.
    """
    liq8 = liquid.mul(255).floor_().clamp_(0, 255)
    m = liq8 * water_rim(liq8)
    m = m / m.amax((2, 3), keepdim=True).clamp_min(1e-12) * intensity
    color = torch.tensor([175, 238, 238], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) / 255
    return torch.addcmul(x, m, color)


def spatter(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:
    loc, scale, sigma, thresh, inten, mode = c
    b, _, h, w = x.shape
    liquid = ops.randn((b, 1, h, w), g, x.device, scale=float(scale)).add_(loc)
    liquid = ops.gaussian(liquid, float(sigma))
    liquid = liquid.masked_fill_(liquid < thresh, 0.0)
    if mode == 0:  # water drops with a shaded rim
        return water(x, liquid, float(inten))
    # mud
    m = ops.gaussian((liquid > thresh).to(x.dtype), float(inten))
    m = torch.where(m < 0.8, torch.zeros_like(m), m)
    color = torch.tensor([63, 42, 20], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) / 255
    return x * (1 - m) + color * m
