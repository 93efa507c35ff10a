"""AugMix (Hendrycks et al., ICLR 2020), batched on float tensors, on any device.

    aug = augmix_batch(x, generator)                 # x: (B, 3, H, W) in [0, 1] -> same shape, in [0, 1]
    aug1, aug2 = augmix_views(x, generator)          # the two views of the Jensen-Shannon consistency loss

Semantics follow the reference implementation (google-research/augmix, ``augmentations.py`` and
``cifar.py::aug``), one image at a time there, the whole batch at once here:

- ``width`` chains per image; each chain applies ``depth`` ops (``depth=-1``: uniform in {1, 2, 3},
  drawn per chain and image), each op drawn uniformly from ``ops`` per image and step;
- chain weights ``w ~ Dirichlet(alpha, ..., alpha)`` and skip weight ``m ~ Beta(alpha, alpha)`` per
  image; ``out = (1 - m) * x + m * sum_i w_i * chain_i(x)`` (mixed in float, like the reference,
  which mixes after ``ToTensor``);
- the ops are the paper's list without those that overlap the test corruptions (``AUGMIX_OPS``; the
  excluded ``EXCLUDED_OPS`` brightness, color, contrast and sharpness are not implemented at all);
- magnitudes: ``level ~ U(0.1, severity)`` per op application, then the reference's
  ``int_parameter`` / ``float_parameter`` (``level * maxval / 10``, truncated for integer ones):
  posterize keeps ``4 - int(level * 4 / 10)`` bits, solarize inverts values ``>= 256 - int(level * 256 / 10)``,
  rotate ``int(level * 30 / 10)`` degrees, shear ``level * 0.3 / 10``, translate
  ``int(level * (size / 3) / 10)`` pixels; rotate, shear and translate get a random sign;
- pixel semantics are PIL's: every op works on 8-bit values as ``ImageOps`` / ``Image.transform`` do
  (autocontrast's and equalize's look-up tables, posterize's bit mask, solarize's threshold: bit for
  bit; geometric ops as PIL's affine transform with bilinear resampling, pixel-centre coordinates,
  edge replication inside the image and black outside, the value truncated to uint8: PIL's value up to
  1 grey level on < 0.5 % of a rotated or sheared image's pixels, integer translations exact; see
  :func:`affine`).

Why 8-bit values inside the chains (the input is rounded to 8 bits once per chain, and every op returns
8-bit values as PIL's do): equalize and autocontrast are defined on the 256-bin histogram and posterize
on the bit pattern, so the ops only have their reference meaning on 8-bit values; with them the ops
reproduce PIL (tests/test_augmix.py compares each op with PIL) at no measurable cost (the chains run on
uint8 tensors, a quarter of float32's memory), and a chain of several ops rounds where PIL's does.
The skip term uses the unrounded input, so a non-8-bit input loses nothing outside the augmented part.

Randomness comes only from the ``torch.Generator`` passed in (its device decides where the draws are
made; the draws are moved to ``x``'s device), so a batch is repeatable per generator state and never
touches the global RNG.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

AUGMIX_OPS: tuple[str, ...] = ("autocontrast", "equalize", "posterize", "rotate", "solarize",
                               "shear_x", "shear_y", "translate_x", "translate_y")
# In the AugMix paper's full list, left out because they overlap the test corruptions (CIFAR-10-C /
# ImageNet-C brightness, contrast, saturate; and sharpness ~ blur); the reference's
# ``augmentations_all`` (--all-ops) has them, the paper's results do not use them.
EXCLUDED_OPS: tuple[str, ...] = ("brightness", "color", "contrast", "sharpness")
GEOMETRIC_OPS: frozenset[str] = frozenset({"rotate", "shear_x", "shear_y", "translate_x", "translate_y"})


def resolve_ops(ops: str | Sequence[str] | None) -> tuple[str, ...]:
    """``None``/"all" -> AUGMIX_OPS; otherwise the given names, checked."""
    if ops is None or ops == "all":
        return AUGMIX_OPS
    names = (ops,) if isinstance(ops, str) else tuple(str(o) for o in ops)
    if not names:
        raise ValueError(f"AugMix needs at least one op; valid ops: {', '.join(AUGMIX_OPS)}")
    for name in names:
        if name in EXCLUDED_OPS:
            raise ValueError(f"AugMix op {name!r} is excluded: it overlaps the test corruptions "
                             f"(excluded: {', '.join(EXCLUDED_OPS)}); valid ops: {', '.join(AUGMIX_OPS)}")
        if name not in AUGMIX_OPS:
            raise ValueError(f"unknown AugMix op {name!r}; valid ops: {', '.join(AUGMIX_OPS)}")
    return names


# --------------------------------------------------------------------------------------------------
# The ops on uint8 batches (N, C, H, W), one argument per image, with PIL's semantics.
# --------------------------------------------------------------------------------------------------

def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 levels, rounded to nearest (k/255 in float32 comes back as k)."""
    return (x.float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def autocontrast(img: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast`` (cutoff 0): per image and channel, [lo, hi] -> [0, 255] with PIL's
    look-up table ``int(v * 255 / (hi - lo) - lo * 255 / (hi - lo))`` (float64, truncated); a flat
    channel is left as it is."""
    n, c = img.shape[:2]
    lo = img.reshape(n, c, -1).amin(2).double()[..., None, None]
    hi = img.reshape(n, c, -1).amax(2).double()[..., None, None]
    flat = hi <= lo
    # A true division (``255.0 / tensor`` would multiply by a reciprocal and miss PIL's value by an ulp).
    scale = torch.full_like(hi, 255.0) / torch.where(flat, torch.ones_like(hi), hi - lo)
    offset = -lo * scale
    out = (img.double() * scale + offset).trunc_().clamp_(0, 255)
    return torch.where(flat, img.double(), out).to(torch.uint8)


def equalize(img: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize``: per image and channel, PIL's histogram look-up table
    ``lut[i] = (step // 2 + #pixels below i) // step`` with ``step = (#pixels - #pixels in the
    highest occupied bin) // 255``; identity when one bin is occupied or ``step == 0``."""
    n, c, h, w = img.shape
    flat = img.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=img.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    bins = torch.arange(256, device=img.device)
    occupied = hist > 0
    last = torch.where(occupied, bins, torch.full_like(bins, -1)).amax(1, keepdim=True)
    step = (h * w - hist.gather(1, last)) // 255
    below = hist.cumsum(1) - hist
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp_(0, 255)
    identity = (occupied.sum(1, keepdim=True) <= 1) | (step == 0)
    lut = torch.where(identity, bins.expand_as(lut), lut)
    return lut.gather(1, flat).to(torch.uint8).reshape(n, c, h, w)


def posterize(img: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """``ImageOps.posterize``: keep the ``bits`` (1..8, per image) high bits."""
    bits = bits.to(img.device, torch.long).reshape(-1, 1, 1, 1)
    mask = (255 - ((1 << (8 - bits)) - 1)).to(torch.uint8)
    return img & mask


def solarize(img: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``ImageOps.solarize``: values ``>= threshold`` (per image; 256 inverts nothing) become ``255 - v``."""
    thr = threshold.to(img.device, torch.int16).reshape(-1, 1, 1, 1)
    return torch.where(img.to(torch.int16) >= thr, 255 - img, img)


def shift(img: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """An integer translation as PIL's affine transform makes it (data ``(1, 0, dx, 0, 1, dy)``): output
    (x, y) reads input (x + dx, y + dy), black where that is outside the image. Exact (no interpolation:
    the bilinear weights are 0 at integer offsets)."""
    n, c, h, w = img.shape
    dev = img.device
    xs = torch.arange(w, device=dev) + dx.to(dev, torch.long).reshape(n, 1, 1)
    ys = torch.arange(h, device=dev).reshape(1, h, 1) + dy.to(dev, torch.long).reshape(n, 1, 1)
    valid = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    index = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).reshape(n, 1, h * w).expand(n, c, h * w)
    out = img.reshape(n, c, h * w).gather(2, index).reshape(n, c, h, w)
    return out * valid.unsqueeze(1).to(out.dtype)


def affine(img: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``Image.transform(size, Image.AFFINE, matrix, resample=Image.BILINEAR)`` per image.

    ``matrix`` (N, 6) maps output to input coordinates as PIL's data does:
    ``x_in = a*x + b*y + c``, ``y_in = d*x + e*y + f`` at output pixel centres (x + 0.5, y + 0.5),
    computed in float64 as PIL does (so the inside/outside decision is PIL's). Like PIL's bilinear
    filter: an output pixel whose source point lies outside the image is 0 (black); inside, the four
    neighbours of (x_in - 0.5, y_in - 0.5) are read with their indices clipped to the image
    (``grid_sample``'s border padding is the same clipping), interpolated, and the value is truncated
    to uint8. Integer translations (and the identity) are exact shifts (:func:`shift`). Otherwise the
    interpolation runs in float32 with 2e-4 added before truncation (so that an exact integer value
    stays that integer): PIL's value up to 1 grey level on the pixels whose value lies within ~2e-4
    below an integer, or where PIL truncates its own float64 rounding error (192.99999999999997 -> 192
    where the exact value is 193): 0.01-0.5 % of a rotated or sheared 32x32 image's pixels
    (tests/test_augmix.py: max 1, mean < 0.01). float64 interpolation (bit-exact up to PIL's own
    rounding) cost 1.6-2x the time on the CPU at 64x64, and float64 is slow on most GPUs.
    """
    n, c, h, w = img.shape
    if n == 0:
        return img
    dev = img.device
    matrix = matrix.to(torch.float64)
    integer_shift = ((matrix[:, [0, 1, 3, 4]] == torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64,
                                                               device=matrix.device)).all(1)
                     & (matrix[:, [2, 5]] == matrix[:, [2, 5]].round()).all(1))
    if integer_shift.any():
        out = torch.empty_like(img)
        rows = integer_shift.nonzero().flatten()
        out[rows.to(dev)] = shift(img[rows.to(dev)], matrix[rows, 2], matrix[rows, 5])
        rest = (~integer_shift).nonzero().flatten()
        if len(rest):
            out[rest.to(dev)] = affine(img[rest.to(dev)], matrix[rest])
        return out
    a = matrix.to(dev).reshape(n, 6, 1, 1)
    yy, xx = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float64) + 0.5,
                            torch.arange(w, device=dev, dtype=torch.float64) + 0.5, indexing="ij")
    x_in = a[:, 0] * xx + a[:, 1] * yy + a[:, 2]
    y_in = a[:, 3] * xx + a[:, 4] * yy + a[:, 5]
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
    # grid_sample (align_corners=False) reads pixel coordinate ((g + 1) * size - 1) / 2 = x_in - 0.5.
    grid = torch.stack([x_in * (2.0 / w) - 1, y_in * (2.0 / h) - 1], -1).float()
    value = F.grid_sample(img.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    value = value.add_(2e-4).floor_().clamp_(0, 255).mul_(inside.unsqueeze(1))
    return value.to(torch.uint8)


def rotate_matrix(degrees: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """PIL's ``Image.rotate(degrees)`` (counter-clockwise about the centre (w/2, h/2), no expand) as
    affine data, per image: the same float64 arithmetic as PIL, including its rounding of cos/sin to
    15 decimals (computed in Python per distinct angle)."""
    deg = degrees.detach().to("cpu", torch.float64)
    out = torch.empty(len(deg), 6, dtype=torch.float64)
    cx, cy = width / 2, height / 2
    for value in deg.unique().tolist():
        angle = -math.radians(value)
        a, b, d, e = (round(math.cos(angle), 15), round(math.sin(angle), 15),
                      round(-math.sin(angle), 15), round(math.cos(angle), 15))
        c = a * -cx + b * -cy + 0.0 + cx
        f = d * -cx + e * -cy + 0.0 + cy
        out[deg == value] = torch.tensor([a, b, c, d, e, f], dtype=torch.float64)
    return out


def _affine_rows(kind: str, value: torch.Tensor) -> torch.Tensor:
    v = value.to(torch.float64)
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    cols = {"shear_x": (one, v, zero, zero, one, zero), "shear_y": (one, zero, zero, v, one, zero),
            "translate_x": (one, zero, v, zero, one, zero), "translate_y": (one, zero, zero, zero, one, v)}[kind]
    return torch.stack(cols, 1)


# --------------------------------------------------------------------------------------------------
# Levels -> op arguments (the reference's int_parameter / float_parameter), and op application.
# --------------------------------------------------------------------------------------------------

def op_arguments(name: str, level: torch.Tensor, sign: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The argument of op ``name`` for sampled ``level`` in [0.1, severity) and ``sign`` (+-1) per image:
    posterize -> bits kept, solarize -> threshold, rotate -> integer degrees, shear -> factor,
    translate -> integer pixels (relative to the image size as the reference's IMAGE_SIZE / 3),
    autocontrast/equalize -> 0 (no argument). float64 on ``level``'s device."""
    level = level.to(torch.float64)
    sign = sign.to(level.device, torch.float64)
    if name == "posterize":
        return 4 - (level * 4 / 10).floor()
    if name == "solarize":
        return 256 - (level * 256 / 10).floor()
    if name == "rotate":
        return sign * (level * 30 / 10).floor()
    if name in ("shear_x", "shear_y"):
        return sign * (level * 0.3 / 10)
    if name == "translate_x":
        return sign * (level * (width / 3) / 10).floor()
    if name == "translate_y":
        return sign * (level * (height / 3) / 10).floor()
    return torch.zeros_like(level)


def op_matrix(name: str, argument: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Affine data (N, 6) of a geometric op with its arguments (see :func:`op_arguments`)."""
    if name == "rotate":
        return rotate_matrix(argument, width, height)
    return _affine_rows(name, argument)


_POINT_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "autocontrast": lambda img, _: autocontrast(img),
    "equalize": lambda img, _: equalize(img),
    "posterize": lambda img, arg: posterize(img, arg.long()),
    "solarize": lambda img, arg: solarize(img, arg.long()),
}


def apply_op(img: torch.Tensor, name: str, argument: torch.Tensor) -> torch.Tensor:
    """One op on a uint8 batch with its per-image arguments (from :func:`op_arguments`)."""
    if name in GEOMETRIC_OPS:
        return affine(img, op_matrix(name, argument, img.shape[-1], img.shape[-2]))
    return _POINT_OPS[name](img, argument)


# --------------------------------------------------------------------------------------------------
# Random draws from a torch.Generator.
# --------------------------------------------------------------------------------------------------

def _gamma(concentration: float, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Gamma(concentration, 1) samples (float64, on the generator's device) by Marsaglia & Tsang's
    method (boosted by U^(1/a) for a < 1): torch.distributions cannot take a generator."""
    a = float(concentration)
    if a <= 0:
        raise ValueError(f"AugMix alpha must be > 0, got {concentration}")
    dev = generator.device
    count = math.prod(shape)
    boost = a < 1
    a_eff = a + 1.0 if boost else a
    d = a_eff - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    out = torch.empty(count, dtype=torch.float64, device=dev)
    todo = torch.arange(count, device=dev)
    while len(todo):
        z = torch.randn(len(todo), generator=generator, dtype=torch.float64, device=dev)
        u = torch.rand(len(todo), generator=generator, dtype=torch.float64, device=dev)
        v = (1 + c * z) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp(min=1e-300)))
        out[todo[ok]] = (d * v)[ok]
        todo = todo[~ok]
    if boost:
        u = torch.rand(count, generator=generator, dtype=torch.float64, device=dev)
        out = out * u.pow(1.0 / a)
    return out.reshape(shape)


def sample_dirichlet(alpha: float, n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """(n, k) rows ~ Dirichlet(alpha, ..., alpha) (float64, rows sum to 1)."""
    g = _gamma(alpha, (n, k), generator)
    return g / g.sum(1, keepdim=True)


def sample_beta(alpha: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) ~ Beta(alpha, alpha) (float64)."""
    g = _gamma(alpha, (n, 2), generator)
    return g[:, 0] / g.sum(1)


# --------------------------------------------------------------------------------------------------
# AugMix.
# --------------------------------------------------------------------------------------------------

def _check(x: torch.Tensor, width: int, depth: int, severity: float) -> None:
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"AugMix takes float (B, 3, H, W) images in [0, 1], got {tuple(x.shape)} {x.dtype}")
    if int(width) < 1:
        raise ValueError(f"AugMix width must be >= 1, got {width}")
    if int(depth) == 0 or int(depth) < -1:
        raise ValueError(f"AugMix depth must be -1 (uniform in 1..3) or >= 1, got {depth}")
    if not 0.1 < float(severity) <= 10:
        raise ValueError(f"AugMix severity must be in (0.1, 10], got {severity}")


def augment_chains(u8: torch.Tensor, generator: torch.Generator, depth: int = -1, severity: float = 3,
                   ops: Sequence[str] | None = None) -> torch.Tensor:
    """One random op chain per image of a uint8 batch (N, 3, H, W): ``depth`` ops (-1: uniform in
    {1, 2, 3} per image), each op uniform over ``ops`` per image and step, levels ~ U(0.1, severity)."""
    names = resolve_ops(ops)
    n, _, h, w = u8.shape
    gdev, dev = generator.device, u8.device
    depths = (torch.randint(1, 4, (n,), generator=generator, device=gdev) if int(depth) == -1
              else torch.full((n,), int(depth), device=gdev))
    out = u8
    for step in range(int(depths.max()) if n else 0):
        which = torch.randint(len(names), (n,), generator=generator, device=gdev)
        level = 0.1 + (float(severity) - 0.1) * torch.rand(n, generator=generator, dtype=torch.float64, device=gdev)
        sign = torch.where(torch.rand(n, generator=generator, dtype=torch.float64, device=gdev) > 0.5, -1.0, 1.0)
        which = torch.where(depths > step, which, torch.full_like(which, -1)).cpu()
        new = out.clone()
        geo_rows, geo_mats = [], []
        for k, name in enumerate(names):
            rows_cpu = (which == k).nonzero().flatten()
            if not len(rows_cpu):
                continue
            rows = rows_cpu.to(dev)
            arg = op_arguments(name, level[rows_cpu.to(gdev)], sign[rows_cpu.to(gdev)], w, h)
            if name in GEOMETRIC_OPS:
                geo_rows.append(rows)
                geo_mats.append(op_matrix(name, arg.cpu(), w, h))
            else:
                new[rows] = _POINT_OPS[name](out[rows], arg.to(dev))
        if geo_rows:  # every geometric op of this step in one warp
            rows = torch.cat(geo_rows)
            new[rows] = affine(out[rows], torch.cat(geo_mats))
        out = new
    return out


def augmix_batch(x: torch.Tensor, generator: torch.Generator, width: int = 3, depth: int = -1,
                 severity: float = 3, alpha: float = 1.0, ops: Sequence[str] | None = None) -> torch.Tensor:
    """AugMix of every image of ``x`` (float (B, 3, H, W) in [0, 1]), each with its own chains,
    ops, magnitudes and mixing weights: ``(1 - m) x + m sum_i w_i chain_i(x)``,
    ``w ~ Dirichlet(alpha)``, ``m ~ Beta(alpha, alpha)``. Same shape, dtype and device as ``x``."""
    _check(x, width, depth, severity)
    n = len(x)
    width = int(width)
    ws = sample_dirichlet(alpha, n, width, generator).to(x.device, torch.float32)
    m = sample_beta(alpha, n, generator).to(x.device, torch.float32)
    # Chain i of image j is row i * n + j: all chains of the batch go through the ops together.
    chains = augment_chains(to_uint8(x).repeat(width, 1, 1, 1), generator, depth, severity, ops)
    chains = chains.reshape(width, n, *x.shape[1:]).float().div_(255.0)
    mix = torch.einsum("kn,knchw->nchw", ws.t().contiguous(), chains)
    m = m.reshape(n, 1, 1, 1)
    return ((1 - m) * x.float() + m * mix).clamp_(0, 1).to(x.dtype)


def augmix_views(x: torch.Tensor, generator: torch.Generator, width: int = 3, depth: int = -1,
                 severity: float = 3, alpha: float = 1.0,
                 ops: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent AugMix views of ``x`` (the reference's ``aug(x), aug(x)``), made in one pass."""
    both = augmix_batch(torch.cat([x, x]), generator, width, depth, severity, alpha, ops)
    return both[: len(x)], both[len(x):]
