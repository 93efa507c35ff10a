"""Digital corruptions: brightness, contrast, saturate, elastic transform, pixelate."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rws.corruptions import ops
from rws.corruptions.params import SCRIPT_SIZE

Tensor = torch.Tensor
Gen = torch.Generator | None


def brightness(x: Tensor, c: float, g: Gen, table: str) -> Tensor:
    # HSV round trip with V <- clip(V + c): every channel is V * f(H, S), so the result is the
    # input scaled by V'/V (and plain V' for black pixels). Same values as skimage, fewer passes.
    v = x.amax(1, keepdim=True)
    v2 = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * (v2 / v.clamp_min(1e-12)), v2.expand_as(x))


def contrast(x: Tensor, c: float, g: Gen, table: str) -> Tensor:
    means = x.mean((2, 3), keepdim=True)  # per image and channel, like the reference
    return (x - means) * c + means


def saturate(x: Tensor, c: tuple, g: Gen, table: str) -> Tensor:
    # In HSV each channel is V * (1 - S * w(H)), so S -> S' moves channels along (V - x).
    # Grey pixels have H = 0 in skimage, i.e. w = (0, 1, 1): a saturation shift makes them red.
    v = x.amax(1, keepdim=True)
    delta = v - x.amin(1, keepdim=True)
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    s2 = (s * c[0] + c[1]).clamp(0, 1)
    coloured = v - (s2 / s.clamp_min(1e-12)) * (v - x)
    w0 = torch.tensor([0.0, 1.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    grey = v * (1 - s2 * w0)
    return torch.where(s > 0, coloured, grey)


def pixelate(x: Tensor, c: float, g: Gen, table: str) -> Tensor:
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * c)), max(1, int(w * c))
    # make_cifar_c (and make_tinyimagenet_c) scales back up with BOX, imagecorruptions with NEAREST.
    up = "box" if table in SCRIPT_SIZE else "nearest"
    down = ops.apply_separable(x, ops.pil_resize_matrix(h, sh, "box"), ops.pil_resize_matrix(w, sw, "box"))
    return ops.apply_separable(down, ops.pil_resize_matrix(sh, h, up), ops.pil_resize_matrix(sw, w, up))


def _sample(x: Tensor, sy: Tensor, sx: Tensor, mode: str) -> Tensor:
    """Bilinear sampling at pixel coordinates (B, H, W); 'symmetric' = scipy 'reflect',
    'reflect101' = cv2 BORDER_REFLECT_101."""
    h, w = x.shape[-2:]
    if mode == "symmetric":
        # align_corners=False reflects about the outer pixel edges, as scipy's 'reflect' does
        gx, gy = (2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1
        grid = torch.stack((gx, gy), -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gx, gy = 2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1
    grid = torch.stack((gx, gy), -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def _affine(x: Tensor, jitter: float, g: Gen) -> Tensor:
    """make_cifar_c's random affine: three points jittered by U(-jitter, jitter), cv2-style warp."""
    b, _, h, w = x.shape
    cy, cx = float(h // 2), float(w // 2)  # np.float32(shape) // 2, used as (x, y) by cv2
    s = float(min(h, w) // 3)
    src = torch.tensor([[cy + s, cx + s], [cy + s, cx - s], [cy - s, cx - s]], dtype=torch.float64)
    dst = src + ops.uniform((b, 3, 2), -jitter, jitter, g, torch.device("cpu")).double()
    # Solve for the inverse map dst -> src, which is what warpAffine samples with.
    ones = torch.ones(b, 3, 1, dtype=torch.float64)
    a = torch.cat((dst, ones), 2)  # (b, 3, 3)
    coef = torch.linalg.solve(a, src.expand(b, 3, 2))  # (b, 3, 2): [x, y, 1] @ coef = src
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    pts = torch.stack((xs, ys, torch.ones_like(xs)), -1).view(1, h * w, 3)
    srcp = (pts @ coef).view(b, h, w, 2).to(x.device, x.dtype)
    return _sample(x, srcp[..., 1], srcp[..., 0], "reflect101")


def elastic_transform(x: Tensor, c, g: Gen, table: str) -> Tensor:
    b, _, h, w = x.shape
    if table in SCRIPT_SIZE:
        # fractions of the script's IMSIZE (make_cifar_c: 32, make_tinyimagenet_c: 64)
        alpha, sigma, jitter = (float(v) * SCRIPT_SIZE[table] for v in c)
        x = _affine(x, jitter, g)
        lo, hi, sig = -1.0, 1.0, (sigma, sigma)
    else:
        alpha = float(c)
        lo, hi, sig = -h * 0.005, h * 0.005, (h * 0.01, w * 0.01)
    if alpha == 0:
        return x
    dx = ops.uniform((b, 1, h, w), lo, hi, g, x.device)
    dy = ops.uniform((b, 1, h, w), lo, hi, g, x.device)
    dx = ops.gaussian(dx, sig, mode="symmetric", truncate=3.0)[:, 0] * alpha
    dy = ops.gaussian(dy, sig, mode="symmetric", truncate=3.0)[:, 0] * alpha
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    return _sample(x, ys + dy, xs + dx, "symmetric")
