"""Shared batched tensor helpers: border handling, filters, resampling matrices, HSV, RNG.

All functions take ``(B, C, H, W)`` float tensors. Borders work for any pad width (ImageNet-sized
kernels on 32 px images): edge replication by block copies, reflect-101 by ``F.pad`` when the pad
is smaller than the image and by index gathering otherwise.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- randomness
# All draws come from the (CPU) torch generator in sequence, so a seed gives the same numbers on
# any device and, for per-value draws, whatever the batch split (write_corrupted_arrays relies on
# it). numpy's PCG64 makes uniforms ~2-3x faster, but seeding it once per call from the torch
# generator would tie the images to the batch boundaries, so it is not used.
def rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    # Drawn on the CPU so a seed gives the same numbers whichever device the images live on.
    return torch.rand(shape, generator=generator, dtype=torch.float32).to(device)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
          scale: float = 1.0) -> Tensor:
    """Normals with standard deviation ``scale`` (the scaling fused into the draw)."""
    out = torch.empty(shape, dtype=torch.float32)
    return out.normal_(0.0, scale, generator=generator).to(device)


def uniform(shape: tuple[int, ...], lo: float, hi: float, generator: torch.Generator | None,
            device: torch.device) -> Tensor:
    return lo + (hi - lo) * rand(shape, generator, device)


def randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    return torch.randint(high, shape, generator=generator)


# ----------------------------------------------------------------------------- borders
def border_index(n: int, before: int, after: int, mode: str, device: torch.device) -> Tensor:
    """Source index for each padded position.

    ``replicate``: edge value (scipy/skimage 'nearest'); ``reflect101``: mirror about the edge
    pixel (cv2 BORDER_DEFAULT); ``symmetric``: mirror including the edge (scipy 'reflect').
    """
    i = torch.arange(-before, n + after, device=device)
    if mode == "replicate":
        return i.clamp(0, n - 1)
    if mode == "reflect101":
        if n == 1:
            return torch.zeros_like(i)
        period = 2 * (n - 1)
        i = i.remainder(period)
        return torch.where(i >= n, period - i, i)
    if mode == "symmetric":
        period = 2 * n
        i = i.remainder(period)
        return torch.where(i >= n, period - 1 - i, i)
    raise ValueError(f"unknown border mode {mode!r}")


def pad_replicate(x: Tensor, ph: tuple[int, int], pw: tuple[int, int]) -> Tensor:
    """Edge-replicating pad of (..., H, W) by block copies (centre, edge columns, edge rows),
    several times faster on the CPU than F.pad's replication kernel or index gathers."""
    h, w = x.shape[-2:]
    (t, bo), (le, ri) = ph, pw
    out = x.new_empty(*x.shape[:-2], h + t + bo, w + le + ri)
    out[..., t:t + h, le:le + w] = x
    if le:
        out[..., t:t + h, :le] = x[..., :, :1]
    if ri:
        out[..., t:t + h, le + w:] = x[..., :, w - 1:]
    if t:
        out[..., :t, :] = out[..., t:t + 1, :]
    if bo:
        out[..., t + h:, :] = out[..., t + h - 1:t + h, :]
    return out


def pad2d(x: Tensor, ph: tuple[int, int], pw: tuple[int, int], mode: str) -> Tensor:
    h, w = x.shape[-2:]
    if mode == "replicate":
        return pad_replicate(x, ph, pw)
    if x.dim() == 4 and x.is_floating_point() and mode == "reflect101" and max(ph) < h and max(pw) < w:
        # F.pad's native kernel is much faster than index_select along the last axis; its
        # 'reflect' is reflect-101 and needs pads < size.
        return F.pad(x, (pw[0], pw[1], ph[0], ph[1]), mode="reflect")
    x = x.index_select(-2, border_index(h, ph[0], ph[1], mode, x.device))
    return x.index_select(-1, border_index(w, pw[0], pw[1], mode, x.device))


# ----------------------------------------------------------------------------- filters
@lru_cache(maxsize=64)
def _gauss1d(sigma: float, truncate: float) -> tuple[float, ...]:
    # scipy.ndimage.gaussian_filter1d's kernel: radius = int(truncate * sigma + 0.5)
    r = int(truncate * sigma + 0.5)
    w = [math.exp(-0.5 * (k / sigma) ** 2) for k in range(-r, r + 1)]
    s = sum(w)
    return tuple(v / s for v in w)


@lru_cache(maxsize=256)
def filter_matrix(n: int, kernel: tuple[float, ...], mode: str) -> Tensor:
    """(n, n) matrix of a 1-D correlation with ``kernel`` including the border rule.

    Small images make a dense matrix product much faster than a convolution with a
    batch of single-channel planes, and it handles borders of any width exactly.
    """
    k = len(kernel)
    r = (k - 1) // 2
    src = border_index(n, r, k - 1 - r, mode, torch.device("cpu"))
    m = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(n)
    for t, wt in enumerate(kernel):
        m.index_put_((rows, src[rows + t]), torch.full((n,), float(wt), dtype=torch.float64), accumulate=True)
    return m.float()


def conv_sep(x: Tensor, kh: Tensor | tuple, kw: Tensor | tuple, mode: str) -> Tensor:
    """Separable correlation with 1-D kernels ``kh`` (rows) and ``kw`` (columns)."""
    kh = tuple(float(v) for v in kh)
    kw = tuple(float(v) for v in kw)
    h, w = x.shape[-2:]
    return apply_separable(x, filter_matrix(h, kh, mode), filter_matrix(w, kw, mode))


def gaussian(x: Tensor, sigma: float | tuple[float, float], mode: str = "replicate",
             truncate: float = 4.0) -> Tensor:
    """skimage.filters.gaussian over the two spatial axes (default border 'nearest')."""
    sh, sw = (sigma, sigma) if not isinstance(sigma, tuple) else sigma
    if sh <= 0 and sw <= 0:
        return x
    kh = _gauss1d(float(sh), truncate) if sh > 0 else (1.0,)
    kw = _gauss1d(float(sw), truncate) if sw > 0 else (1.0,)
    return conv_sep(x, kh, kw, mode)


def conv2d_same(x: Tensor, kernel: Tensor, mode: str = "reflect101") -> Tensor:
    """cv2.filter2D-style correlation of every channel with one 2-D kernel.

    Done by FFT on the border-padded image: large kernels (17x17 and up) on a big batch of small
    planes are much faster this way than with conv2d.
    """
    kernel = kernel.to(x.device, x.dtype)
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    if kh * kw <= 9:
        # A few shifted adds beat conv2d on thousands of single-channel planes.
        y = pad2d(x, ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), mode)
        out = torch.zeros_like(x)
        for i, j in torch.nonzero(kernel).tolist():
            out.add_(y[..., i:i + h, j:j + w], alpha=float(kernel[i, j]))
        return out
    return fft_correlate(pad2d(x, ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), mode),
                         kernel.view(1, 1, kh, kw))


@lru_cache(maxsize=128)
def _fft_size(n: int) -> int:
    best = 1 << (n - 1).bit_length()
    p3 = 1
    while p3 < best:
        m = p3
        while m < n:
            m *= 2
        best = min(best, m)
        p3 *= 3
    return best


def fft_correlate(xp: Tensor, kernel: Tensor) -> Tensor:
    """'valid' correlation of padded planes (B, C, H+kh-1, W+kw-1) with kernels (B|1, 1, kh, kw)."""
    hp, wp = xp.shape[-2:]
    kh, kw = kernel.shape[-2:]
    # 2^a 3^b sizes: padded sizes such as 94 = 2 * 47 would hit pocketfft's slow prime path.
    fh, fw = _fft_size(hp), _fft_size(wp)
    fx = torch.fft.rfft2(xp, s=(fh, fw))
    # Correlation = convolution with the flipped kernel; the circular wrap only reaches the
    # first kh-1 rows / kw-1 columns, which are cropped away.
    fk = torch.fft.rfft2(torch.flip(kernel, (-2, -1)), s=(fh, fw))
    y = torch.fft.irfft2(fx * fk, s=(fh, fw))
    return y[..., kh - 1:hp, kw - 1:wp]


def box_blur3(x: Tensor) -> Tensor:
    """cv2.blur(x, (3, 3)) with the default reflect-101 border."""
    k = (1.0 / 3,) * 3
    return conv_sep(x, k, k, "reflect101")


# ----------------------------------------------------------------------------- resampling
def zoom_matrix(n: int, zoom: float, trim: str, device: torch.device) -> Tensor:
    return _zoom_matrix(n, float(zoom), trim).to(device)


@lru_cache(maxsize=256)
def _zoom_matrix(n: int, zoom: float, trim: str) -> Tensor:
    """(n, n) matrix of the reference's ``clipped_zoom`` along one axis.

    Crops the central ceil(n / zoom) pixels, resizes them to round(crop * zoom) with linear
    interpolation in scipy.ndimage.zoom's corner-aligned convention, and keeps n pixels
    (from the top-left for imagecorruptions, centred for make_cifar_c).
    """
    crop = int(math.ceil(n / zoom))
    top = (n - crop) // 2
    out = int(round(crop * zoom))
    start = (out - n) // 2 if trim == "center" else 0
    o = torch.arange(start, start + n, dtype=torch.float64)
    src = o * (crop - 1) / (out - 1) if out > 1 else torch.zeros_like(o)
    src = src.clamp(0, crop - 1)
    lo = src.floor().long().clamp(max=crop - 1)
    hi = (lo + 1).clamp(max=crop - 1)
    frac = src - lo
    m = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(n)
    m.index_put_((rows, lo + top), 1 - frac, accumulate=True)
    m.index_put_((rows, hi + top), frac, accumulate=True)
    return m.float()


def apply_separable(x: Tensor, mh: Tensor, mw: Tensor) -> Tensor:
    """Apply row matrix ``mh`` (H_out, H) and column matrix ``mw`` (W_out, W) to every channel."""
    # One flat GEMM over all rows, then one batched (H_out, H) @ (H, W_out) product per plane:
    # no transposed copies, contiguous output.
    b, c, h, w = x.shape
    y = (x.reshape(-1, w) @ mw.to(x).T).view(b * c, h, -1)
    return torch.matmul(mh.to(x), y).view(b, c, mh.shape[0], -1)


def apply_lowrank(x: Tensor, mh_cat: Tensor, mw_cat: Tensor) -> Tensor:
    """sum_r A_r X B_r^T for every plane X, from ``mh_cat`` = [A_r rows interleaved]: (H_out, H*R)
    with column index h*R + r, and ``mw_cat`` = (W, R*W_out) with column index r*W_out + j.

    A rank-R separable expansion of a 2-D filter (including its border rule) in two GEMMs.
    """
    b, c, h, w = x.shape
    r = mh_cat.shape[1] // h
    y = (x.reshape(-1, w) @ mw_cat.to(x)).view(b * c, h * r, -1)
    return torch.matmul(mh_cat.to(x), y).view(b, c, mh_cat.shape[0], -1)


def lowrank_operators(kernel: Tensor, h: int, w: int, mode: str, rtol: float = 1e-9) -> tuple[Tensor, Tensor]:
    """(mh_cat, mw_cat) for :func:`apply_lowrank` equal to the 2-D correlation with ``kernel``
    on (h, w) images with the ``mode`` border (SVD; terms below ``rtol`` of the largest dropped)."""
    k = kernel.double().cpu()
    u, s, vh = torch.linalg.svd(k)
    rank = max(1, int((s > s[0] * rtol).sum()))
    mh = torch.stack([filter_matrix(h, tuple((u[:, i] * s[i]).tolist()), mode) for i in range(rank)])
    mw = torch.stack([filter_matrix(w, tuple(vh[i].tolist()), mode) for i in range(rank)])
    # y[(h, r), j] = sum_w x[h, w] mw[r, j, w]  ->  mw_cat[w, r*W + j]
    mw_cat = mw.reshape(rank * w, w).T.contiguous()
    # out[i, j] = sum_{h, r} mh[r, i, h] y[h*R + r, j]
    mh_cat = mh.permute(1, 2, 0).reshape(h, h * rank).contiguous()
    return mh_cat, mw_cat


@lru_cache(maxsize=256)
def pil_resize_matrix(n_in: int, n_out: int, kind: str) -> Tensor:
    """(n_out, n_in) weights of PIL's 'box' or 'nearest' resize along one axis."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    scale = n_in / n_out
    if kind == "nearest":
        src = [min(int((o + 0.5) * scale), n_in - 1) for o in range(n_out)]
        m[torch.arange(n_out), torch.tensor(src)] = 1.0
        return m.float()
    # PIL's box filter samples pixel centres that fall inside a box of width max(scale, 1).
    fscale = max(scale, 1.0)
    support = 0.5 * fscale
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        for i in range(lo, hi):
            t = (i - centre + 0.5) / fscale
            if -0.5 < t <= 0.5:
                m[o, i] = 1.0
        m[o] /= m[o].sum()
    return m.float()


# ----------------------------------------------------------------------------- colour
def rgb_to_hsv(x: Tensor) -> Tensor:
    """skimage.color.rgb2hsv on (B, 3, H, W)."""
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    mn, _ = x.min(1)
    delta = v - mn
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    d = delta.clamp_min(1e-12)
    # Later assignments win ties, as in skimage (blue over green over red).
    h = torch.where(v == r, (g - b) / d, torch.zeros_like(v))
    h = torch.where(v == g, 2.0 + (b - r) / d, h)
    h = torch.where(v == b, 4.0 + (r - g) / d, h)
    h = torch.where(delta > 0, (h / 6.0).remainder(1.0), torch.zeros_like(h))
    return torch.stack((h, s, v), 1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long().remainder(6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = torch.zeros_like(x)
    for k, (rr, gg, bb) in enumerate(choices):
        sel = (i == k).unsqueeze(1)
        out = torch.where(sel, torch.stack((rr, gg, bb), 1), out)
    return out


def gray(x: Tensor) -> Tensor:
    """cv2 RGB2GRAY weights, (B, 1, H, W)."""
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


# ----------------------------------------------------------------------------- motion blur
def motion_blur(x: Tensor, radius: int, sigma: float, angles_deg: Tensor) -> Tensor:
    """One-sided Gaussian line blur along a per-sample angle (ImageMagick -motion-blur).

    Tap i (i = 0..2*radius) reads the pixel at offset (ceil(i*sin a - .5), ceil(i*cos a - .5))
    with edge replication and weight exp(-i^2 / 2 sigma^2), like MagickMotionBlurImage; taps that
    leave the image entirely end the sum, as in imagecorruptions.

    Applied directly as a sum of shifted slices (2r+1 taps, no dense kernel, no FFT): samples are
    sorted by angle so that, for each tap, samples with the same integer offset form contiguous
    runs of the batch, and every run is one fused ``add_`` of a shifted slice of the padded batch.
    """
    import numpy as np

    b, c, h, w = x.shape
    width = 2 * int(radius) + 1
    k = torch.exp(-torch.arange(width, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).tolist()
    a = torch.deg2rad(angles_deg.double().cpu()).reshape(-1)
    i = torch.arange(width, dtype=torch.float64)
    dy = torch.ceil(i.view(1, -1) * torch.sin(a).view(-1, 1) - 0.5).long()  # (b, width)
    dx = torch.ceil(i.view(1, -1) * torch.cos(a).view(-1, 1) - 0.5).long()
    out_of_image = (dy.abs() >= h) | (dx.abs() >= w)
    alive = out_of_image.long().cumsum(1) == 0
    # Offsets beyond the image size read the same replicated edge as offset +-max(h, w).
    p = min(width, max(h, w))
    dy, dx = dy.clamp(-p, p), dx.clamp(-p, p)
    order = torch.argsort(a, stable=True)
    dy, dx, alive = dy[order].numpy(), dx[order].numpy(), alive[order].numpy()
    top, bottom = max(0, -int(dy[alive].min())), max(0, int(dy[alive].max()))
    left, right = max(0, -int(dx[alive].min())), max(0, int(dx[alive].max()))
    identity = bool((order == torch.arange(b)).all())
    xs = x if identity else x.index_select(0, order.to(x.device))
    xp = pad2d(xs, (top, bottom), (left, right), "replicate")
    out = xs * k[0]  # tap 0: offset (0, 0) for every sample
    # Run boundaries per tap: where the (dy, dx, alive) triple changes along the sorted batch.
    change = (np.diff(dy, axis=0) != 0) | (np.diff(dx, axis=0) != 0) | (np.diff(alive, axis=0) != 0)
    for t in range(1, width):
        if k[t] == 0.0:
            continue
        cuts = (np.flatnonzero(change[:, t]) + 1).tolist()
        dst, src = [], []
        for s0, s1 in zip([0] + cuts, cuts + [b]):
            if alive[s0, t]:
                y0, x0 = top + int(dy[s0, t]), left + int(dx[s0, t])
                dst.append(out[s0:s1])
                src.append(xp[s0:s1, :, y0:y0 + h, x0:x0 + w])
        if dst:
            # Disjoint runs of one tap: one multi-tensor add.
            torch._foreach_add_(dst, src, alpha=k[t])
    if identity:
        return out
    return torch.empty_like(out).index_copy_(0, order.to(x.device), out)
