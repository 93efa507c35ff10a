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
def _dilate(m: Tensor, square: bool) -> Tensor:
    """Binary dilation of a bool mask (B, 1, H, W) by a 3x3 square or a 4-neighbour cross."""
    p = F.pad(m, (1, 1, 1, 1))
    h, w = m.shape[-2:]
    rows = p[..., 0:h, 1:w + 1] | p[..., 1:h + 1, 1:w + 1] | p[..., 2:h + 2, 1:w + 1]
    if not square:
        return rows | p[..., 1:h + 1, 0:w] | p[..., 1:h + 1, 2:w + 2]
    pr = F.pad(rows, (1, 1))
    return pr[..., 0:w] | pr[..., 1:w + 1] | pr[..., 2:w + 2]


def _edges(mask: Tensor) -> Tensor:
    """Boundary pixels of a bool mask (stand-in for Canny on the thresholded liquid layer)."""
    return mask & _dilate(~mask, square=True)


def _distance(edges: Tensor, cap: int = 20) -> Tensor:
    """Approximate Euclidean distance (float) to the nearest edge pixel, truncated at ``cap``.

    Alternating 8- and 4-neighbour dilations give an octagonal metric, close to cv2's
    5x5 chamfer DIST_L2 at the distances that matter here (< 20 px).
    """
    dist = torch.where(edges, 0.0, float(cap))
    reached = edges
    for step in range(1, cap):
        grown = _dilate(reached, square=bool(step % 2))
        # Diagonal steps on every other iteration; 1.08 per step scales the octagon towards L2.
        dist = torch.where(grown & ~reached, step * 1.08, dist)
        reached = grown
        if bool(reached.all()):
            break
    return dist.clamp(max=cap)


def _distance_bits(edges: Tensor, cap: int = 20) -> Tensor:
    """:func:`_distance` with each mask row packed into the bits of one int64 (images <= 62 px
    wide): a dilation is a few shifts/ORs on (B, 1, H) integers, and the step counter is kept
    bit-sliced (ripple-carry adds), so only the final unpacking touches every pixel.

    Equal to :func:`_distance`: the distance is 1.08 * (number of steps a pixel stays unreached),
    capped, which is what the step-by-step assignment there produces.
    """
    b, _, h, w = edges.shape
    dev = edges.device
    cols = torch.arange(w, device=dev)
    full = (1 << w) - 1
    r = (edges.long() << cols).sum(-1)  # (B, 1, H)

    def horiz(v: Tensor) -> Tensor:
        return (v | (v << 1) | (v >> 1)) & full

    def vert(v: Tensor) -> Tensor:
        out = v.clone()
        out[..., 1:] |= v[..., :-1]
        out[..., :-1] |= v[..., 1:]
        return out

    # The not-yet-reached sets N_0 ⊇ N_1 ⊇ ... are nested, so count = #{s : p in N_s} has
    # bit j = XOR of N_s over s with (s + 1) % 2^j == 0 (about two XORs per step in all).
    nbits = max(1, (cap - 1).bit_length())
    counter = [torch.zeros_like(r) for _ in range(nbits)]
    for step in range(1, cap):
        todo = ~r & full  # N_{step-1}: pixels not yet reached after step - 1
        if not bool(todo.any()):
            break
        for k in range(nbits):
            if step % (1 << k) == 0:
                counter[k] ^= todo
        if step < cap - 1:
            r = vert(horiz(r)) if step % 2 else (horiz(r) | vert(r))
    cnt = torch.zeros(b, 1, h, w, device=dev)
    for k in range(nbits):
        cnt += ((counter[k].unsqueeze(-1) >> cols) & 1).float() * (1 << k)
    return (cnt.double() * 1.08).clamp_(max=cap).float()


def _equalize_u8(v: Tensor) -> Tensor:
    """cv2.equalizeHist per image on integer-valued (B, 1, H, W) tensors in 0..255."""
    b = v.shape[0]
    flat = v.reshape(b, -1).long().clamp(0, 255)
    hist = torch.zeros(b, 256, device=v.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    cdf = hist.cumsum(1)
    total = cdf[:, -1:]
    nz = (hist > 0).float()
    first = torch.gather(hist, 1, nz.argmax(1, keepdim=True))  # count of the lowest occupied level
    denom = (total - first).clamp_min(1)
    lut = torch.round((cdf - first) * 255 / denom).clamp(0, 255)
    # A constant image maps to itself in OpenCV.
    lut = torch.where(total - first > 0, lut, torch.arange(256, device=v.device).float().expand(b, 256))
    return torch.gather(lut, 1, flat).view_as(v)


def spatter(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:
    loc, scale, sigma, thresh, inten, mode = c
    b, _, h, w = x.shape
    liquid = ops.randn((b, 1, h, w), g, x.device, scale=float(scale)).add_(loc)
    liquid = ops.gaussian(liquid, float(sigma))
    liquid = liquid.masked_fill_(liquid < thresh, 0.0)
    if mode == 0:  # water drops with a shaded rim
        liq8 = liquid.mul(255).floor_().clamp_(0, 255)
        mask = _edges(liq8 > 0)
        dist = (_distance_bits(mask) if w <= 62 else _distance(mask)).to(x.dtype)
        dist = torch.floor(ops.box_blur3(dist))
        dist = _equalize_u8(dist)
        ker = torch.tensor([[-2.0, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = torch.round(ops.conv2d_same(dist, ker, "reflect101")).clamp(0, 255)
        dist = ops.box_blur3(dist)
        m = liq8 * dist
        m = m / m.amax((2, 3), keepdim=True).clamp_min(1e-12) * inten
        color = torch.tensor([175, 238, 238], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) / 255
        return torch.addcmul(x, m, color)
    # mud
    m = ops.gaussian((liquid > thresh).to(x.dtype), float(inten))
    m = torch.where(m < 0.8, torch.zeros_like(m), m)
    color = torch.tensor([63, 42, 20], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) / 255
    return x * (1 - m) + color * m
