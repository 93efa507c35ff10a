"""Perturbation sequences in the style of CIFAR-10-P / Tiny-ImageNet-P / ImageNet-P (Hendrycks &
Dietterich 2019), built from the project's corruption ops and generated on the fly.

``perturbation_sequence(x, name, difficulty=1, length=None, table="cifar", generator=None)`` turns a
batch ``x`` (B, 3, H, W) in [0, 1] into ``(B, T, 3, H, W)`` frames in [0, 1]. Predictions on the
frames give the flip probability (``rws.evaluation.metrics.flip_probability``): noise sequences
(``NOISE_PERTURBATIONS``) compare every frame with the first (the clean image), the others compare
consecutive frames.

Reference schedules (``ImageNet-P/create_p/make_cifar_p.py``, ``make_tinyimagenet_p.py``,
``make_imagenet_p.py`` of github.com/hendrycks/robustness). i is the frame index 0..T-1, T = 31
unless noted; values are cifar / tiny_imagenet / imagenet (``SCHEDULES`` holds them all):

    gaussian_noise  frame 0 clean, then clip(x + s N(0, 1)); s per difficulty 1/2/3:
                    .02/.04/.06 / .025/.05/.075 / .03/.05/.08
    shot_noise      frame 0 clean, then Poisson(c x) / c; c: 700/400/200 / 500/250/125 / 300/120/60
    speckle_noise   frame 0 clean, then x + x s N(0, 1); s: .05/.07/.10 / .05/.10/.15 / .05/.10/.15
    motion_blur     ImageMagick motion blur (radius, sigma, angle): (6, 1.8, 9 (i - 20)) with T = 21 /
                    (14, 3, 5 (i - 30)) / (10, 3, 4 (i - 30))
    zoom_blur       running mean of the image zoomed by 1 + .004 k, k = 0..i (all tables)
    snow            one snow layer N(.05, s), zoomed z, kept above .5, motion-blurred (radius r,
                    sigma g) at angle 4 i - 150, blend .85: (s, z, r, g) = (.3, 2, 10, 2) /
                    (.28, 2, 10, 2.5) / (.3, 3, 14, 4)
    brightness      HSV value + d (i - 15): d = .015 / .02 / .02
    translate       horizontal shift by i - 7 px with T = 16 / i - 15 / i - 20 with T = 41 (nearest)
    rotate          rotation by i - 15 degrees (bilinear; all tables)
    tilt            perspective tilt about both axes by .75 (i - 15) / i - 15 / i - 15 degrees
    scale           zoom about the centre by (2 i + 70) / 100 / (2.5 i + 40) / 100 / (2.5 i + 40) / 100
    gaussian_blur   sigma .3 + .015 i / .35 + .014 i / .25 + .035 i (truncate 7 / 7 / 6)
    spatter         one water layer N(m, s), blurred b, kept above t, drifting down: every frame
                    rows <- np.convolve(rows, k, 'same'); (m, s, b, t, k) = (.6, .265, 1.75, .7,
                    [.2, .8]) / (.6, .25, 1.75, .7, [.2, .8]) / (.65, .27, 3.7, .69, [.05, .1, .15, .7])
    shear           x-shear by i - 15 degrees (bilinear; all tables)

The first ten are the papers' test perturbations (``TEST_PERTURBATIONS``, the mFR set), the last
four their validation ones. **Difficulty**: for the noise perturbations it picks the noise level
(1..3, the reference's ``_2``/``_3`` data sets); for the others the frames do not change and the
difficulty is the stride of the flip comparison (the reference's ``step_size`` in ``test.py``), so
it only matters to ``flip_probability(..., step=difficulty)``.

Where ours differs from the reference:

* Frames stay float (no 8-bit rounding of every frame, no H.264 video coding of Tiny-ImageNet-P /
  ImageNet-P frames). Internal 8-bit steps of the reference are kept where they shape the image
  (the snow layer, the spatter layer's uint8 conversion).
* Randomness is torch's, drawn on the CPU from ``generator`` (a generator on another device is
  turned into a CPU generator by drawing one seed from it, so a seed gives the same frames for a
  CPU generator on any device, and deterministic but different frames for a CUDA generator).
* Geometric frames (translate, rotate, tilt, scale, shear, zoom_blur's zooms) warp the H x W image
  itself with zero (black) fill. The Tiny-ImageNet and ImageNet scripts warp a larger resized image
  and centre-crop it, so their borders show real content; ours are black there, like CIFAR-10-P.
  Affine warps turn about the image centre ((W - 1) / 2, (H - 1) / 2 in pixel indices, PIL's
  convention); tilt uses the reference's homography (centre W / 2, H / 2, cv2's convention).
  Sampling is ``grid_sample`` (bilinear, or exact integer shifts for translate).
* Motion blur (and the snow streaks) use ``rws.corruptions.ops.motion_blur``, the ImageMagick
  tap rule (see docs/corruptions.md); the Tiny-ImageNet script blurs the full-size photo before
  resizing it, we blur the image as given. Spatter's water rim is the spatter corruption's
  (``weather.water``: Canny, chamfer distance transform and the rest of the reference's cv2 chain).
* Pixel parameters (translate shifts, blur radii) are the reference's absolute values for its image
  size (32 / 64 / 224 px); they are not rescaled for other sizes.
* ``length`` other than the reference's keeps the reference's per-frame step: sequences that grow
  from the clean image (the noises, zoom_blur, gaussian_blur, spatter) take frames 0..T-1, the
  symmetric or sweeping ones (motion_blur, snow, brightness, translate, rotate, tilt, scale, shear)
  take the T frames centred on the reference's range (extended by the same formula when longer).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Callable

import torch
import torch.nn.functional as F

from rws.corruptions import digital, noise, ops, weather

Tensor = torch.Tensor
Gen = torch.Generator | None

TEST_PERTURBATIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "motion_blur", "zoom_blur", "snow",
    "brightness", "translate", "rotate", "tilt", "scale",
)
VALIDATION_PERTURBATIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "shear")
PERTURBATIONS: tuple[str, ...] = TEST_PERTURBATIONS + VALIDATION_PERTURBATIONS
NOISE_PERTURBATIONS: tuple[str, ...] = ("gaussian_noise", "shot_noise", "speckle_noise")
# The sequences that draw random numbers (the others are a fixed function of the image).
RANDOM_PERTURBATIONS: tuple[str, ...] = NOISE_PERTURBATIONS + ("snow", "spatter")
GEOMETRIC_PERTURBATIONS: tuple[str, ...] = ("translate", "rotate", "tilt", "scale", "shear")
PERTURBATION_GROUPS: dict[str, tuple[str, ...]] = {
    "all": PERTURBATIONS, "test": TEST_PERTURBATIONS, "validation": VALIDATION_PERTURBATIONS,
    "noise": NOISE_PERTURBATIONS, "geometric": GEOMETRIC_PERTURBATIONS,
}
DIFFICULTIES: tuple[int, ...] = (1, 2, 3)
SEQUENCE_TABLES: tuple[str, ...] = ("cifar", "tiny_imagenet", "imagenet")

# Windowing rule for a non-reference length (see the module docstring).
_FROM_START = frozenset({"gaussian_noise", "shot_noise", "speckle_noise", "zoom_blur", "gaussian_blur", "spatter"})

# Per table: the reference's schedule. Linear schedules are (value at frame 0, step per frame);
# noise levels are per difficulty.
SCHEDULES: dict[str, dict[str, dict[str, Any]]] = {
    "cifar": {
        "gaussian_noise": {"length": 31, "level": (0.02, 0.04, 0.06)},
        "shot_noise": {"length": 31, "level": (700, 400, 200)},
        "speckle_noise": {"length": 31, "level": (0.05, 0.07, 0.10)},
        "motion_blur": {"length": 21, "radius": 6, "sigma": 1.8, "angle": (-180.0, 9.0)},
        "zoom_blur": {"length": 31, "zoom": (1.0, 0.004)},
        "snow": {"length": 31, "loc": 0.05, "scale": 0.3, "zoom": 2.0, "threshold": 0.5, "radius": 10,
                 "sigma": 2.0, "angle": (-150.0, 4.0), "blend": 0.85},
        "brightness": {"length": 31, "delta": (-0.225, 0.015)},
        "translate": {"length": 16, "shift": (-7, 1)},
        "rotate": {"length": 31, "angle": (-15.0, 1.0)},
        "tilt": {"length": 31, "angle": (-11.25, 0.75)},
        "scale": {"length": 31, "scale": (0.70, 0.02)},
        "gaussian_blur": {"length": 31, "sigma": (0.3, 0.015), "truncate": 7.0},
        "spatter": {"length": 31, "loc": 0.6, "scale": 0.265, "sigma": 1.75, "threshold": 0.7,
                    "intensity": 0.6, "drift": (0.2, 0.8)},
        "shear": {"length": 31, "angle": (-15.0, 1.0)},
    },
    "tiny_imagenet": {
        "gaussian_noise": {"length": 31, "level": (0.025, 0.05, 0.075)},
        "shot_noise": {"length": 31, "level": (500, 250, 125)},
        "speckle_noise": {"length": 31, "level": (0.05, 0.10, 0.15)},
        "motion_blur": {"length": 31, "radius": 14, "sigma": 3.0, "angle": (-150.0, 5.0)},
        "zoom_blur": {"length": 31, "zoom": (1.0, 0.004)},
        "snow": {"length": 31, "loc": 0.05, "scale": 0.28, "zoom": 2.0, "threshold": 0.5, "radius": 10,
                 "sigma": 2.5, "angle": (-150.0, 4.0), "blend": 0.85},
        "brightness": {"length": 31, "delta": (-0.30, 0.02)},
        "translate": {"length": 31, "shift": (-15, 1)},
        "rotate": {"length": 31, "angle": (-15.0, 1.0)},
        "tilt": {"length": 31, "angle": (-15.0, 1.0)},
        "scale": {"length": 31, "scale": (0.40, 0.025)},
        "gaussian_blur": {"length": 31, "sigma": (0.35, 0.014), "truncate": 7.0},
        "spatter": {"length": 31, "loc": 0.6, "scale": 0.25, "sigma": 1.75, "threshold": 0.7,
                    "intensity": 0.6, "drift": (0.2, 0.8)},
        "shear": {"length": 31, "angle": (-15.0, 1.0)},
    },
    "imagenet": {
        "gaussian_noise": {"length": 31, "level": (0.03, 0.05, 0.08)},
        "shot_noise": {"length": 31, "level": (300, 120, 60)},
        "speckle_noise": {"length": 31, "level": (0.05, 0.10, 0.15)},
        "motion_blur": {"length": 31, "radius": 10, "sigma": 3.0, "angle": (-120.0, 4.0)},
        "zoom_blur": {"length": 31, "zoom": (1.0, 0.004)},
        "snow": {"length": 31, "loc": 0.05, "scale": 0.3, "zoom": 3.0, "threshold": 0.5, "radius": 14,
                 "sigma": 4.0, "angle": (-150.0, 4.0), "blend": 0.85},
        "brightness": {"length": 31, "delta": (-0.30, 0.02)},
        "translate": {"length": 41, "shift": (-20, 1)},
        "rotate": {"length": 31, "angle": (-15.0, 1.0)},
        "tilt": {"length": 31, "angle": (-15.0, 1.0)},
        "scale": {"length": 31, "scale": (0.40, 0.025)},
        "gaussian_blur": {"length": 31, "sigma": (0.25, 0.035), "truncate": 6.0},
        "spatter": {"length": 31, "loc": 0.65, "scale": 0.27, "sigma": 3.7, "threshold": 0.69,
                    "intensity": 0.6, "drift": (0.05, 0.1, 0.15, 0.7)},
        "shear": {"length": 31, "angle": (-15.0, 1.0)},
    },
}


# ----------------------------------------------------------------------------- names
def canonical_perturbation(name: str) -> str:
    """The perturbation's canonical name; ValueError listing the valid ones."""
    key = str(name).strip().lower()
    if key not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; valid: {', '.join(PERTURBATIONS)}")
    return key


def resolve_perturbations(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Expand "all", "test" (the papers' ten), "validation", "noise", "geometric", names and
    comma-separated strings, in the order given, without duplicates."""
    items = [s.strip().lower() for part in ([spec] if isinstance(spec, str) else list(spec))
             for s in str(part).split(",")]
    out: list[str] = []
    for item in items:
        if not item:
            continue
        if item in PERTURBATION_GROUPS:
            names = list(PERTURBATION_GROUPS[item])
        elif item in PERTURBATIONS:
            names = [item]
        else:
            raise ValueError(f"unknown perturbation or group {item!r}; valid: {', '.join(PERTURBATION_GROUPS)}, "
                             f"{', '.join(PERTURBATIONS)}")
        out.extend(n for n in names if n not in out)
    if not out:
        raise ValueError(f"empty perturbation spec {spec!r}; valid: {', '.join(PERTURBATION_GROUPS)}, names")
    return out


def is_noise(name: str) -> bool:
    """Whether flips of ``name`` are counted against the first frame."""
    return canonical_perturbation(name) in NOISE_PERTURBATIONS


def _check_table(table: str) -> str:
    if table not in SCHEDULES:
        raise ValueError(f"unknown perturbation table {table!r}; valid: {', '.join(SEQUENCE_TABLES)}")
    return table


def _check_difficulty(difficulty: Any) -> int:
    try:
        ok = not isinstance(difficulty, bool) and float(difficulty) == int(float(difficulty)) \
            and int(float(difficulty)) in DIFFICULTIES
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"unknown difficulty {difficulty!r}; valid: {list(DIFFICULTIES)}")
    return int(float(difficulty))


def reference_length(name: str, table: str = "cifar") -> int:
    """Frames per sequence in the reference data set (31; CIFAR motion blur 21, translate 16/31/41)."""
    return int(SCHEDULES[_check_table(table)][canonical_perturbation(name)]["length"])


def sequence_length(name: str, length: int | None = None, table: str = "cifar") -> int:
    """``length`` checked (an int >= 2), or the reference's length when None."""
    if length is None:
        return reference_length(name, table)
    if isinstance(length, bool) or int(length) != length or int(length) < 2:
        raise ValueError(f"sequence length must be an integer >= 2, got {length!r}")
    return int(length)


def frame_indices(name: str, length: int | None = None, table: str = "cifar") -> list[int]:
    """The reference frame index of each frame: 0..T-1 for sequences that grow from the clean
    image, the T indices centred on the reference's range for the others."""
    name = canonical_perturbation(name)
    t = sequence_length(name, length, table)
    start = 0 if name in _FROM_START else (reference_length(name, table) - t) // 2
    return list(range(start, start + t))


def _linear(pair: tuple[float, float], idx: list[int]) -> list[float]:
    v0, step = pair
    return [float(v0) + float(step) * i for i in idx]


# ----------------------------------------------------------------------------- helpers
def _cpu_generator(generator: Gen) -> Gen:
    """The project's ops draw on the CPU; a generator on another device seeds a CPU one."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator().manual_seed(seed)


def _repeat(x: Tensor, t: int) -> Tensor:
    """(B, C, H, W) -> (B * t, C, H, W), example-major (frame index fastest)."""
    return x.unsqueeze(1).expand(-1, t, *x.shape[1:]).reshape(-1, *x.shape[1:])


def _per_frame(values: list[float], b: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Per-frame values laid out like ``_repeat``: (B * T,)."""
    return torch.tensor(values, device=device, dtype=dtype).repeat(b)


def _warp_frames(x: Tensor, inverse: Tensor, mode: str = "bilinear") -> Tensor:
    """x (B, C, H, W) seen through each frame's 3x3 homography ``inverse`` (T, 3, 3), which maps
    output pixel indices (x, y, 1) to input pixel indices (pixel centres at integers); zero fill
    outside the image. Returns (B, T, C, H, W); one sampling grid per frame, shared by the batch."""
    b, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    pts = torch.stack((xs, ys, torch.ones_like(xs)), -1).view(h * w, 3)
    src = pts @ inverse.to(torch.float64).transpose(1, 2)  # (T, H*W, 3), on the CPU in float64
    sx, sy = src[..., 0] / src[..., 2], src[..., 1] / src[..., 2]
    grids = torch.stack((2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1), -1)
    grids = grids.view(-1, 1, h, w, 2).to(x.device, x.dtype)
    return torch.stack([F.grid_sample(x, g.expand(b, h, w, 2), mode=mode, padding_mode="zeros", align_corners=True)
                        for g in grids], 1)


def _about_centre(forward: Tensor, h: int, w: int) -> Tensor:
    """Inverse homographies (N, 3, 3) of 2x2 linear maps ``forward`` (N, 2, 2) applied about the
    image centre ((W - 1) / 2, (H - 1) / 2)."""
    n = forward.shape[0]
    inv2 = torch.linalg.inv(forward.double())
    c = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    out = torch.zeros(n, 3, 3, dtype=torch.float64)
    out[:, :2, :2] = inv2
    out[:, :2, 2] = c - inv2 @ c
    out[:, 2, 2] = 1
    return out


def _affine_frames(x: Tensor, forward: Tensor) -> Tensor:
    """x (B, C, H, W), forward (T, 2, 2) -> (B, T, C, H, W): each frame's linear map about the centre."""
    return _warp_frames(x, _about_centre(forward, *x.shape[-2:]))


def _rotation(deg: list[float]) -> Tensor:
    a = torch.deg2rad(torch.tensor(deg, dtype=torch.float64))
    # Counter-clockwise on screen (y points down), like PIL / torchvision rotate.
    return torch.stack((torch.stack((a.cos(), a.sin()), -1), torch.stack((-a.sin(), a.cos()), -1)), -2)


def _shear(deg: list[float]) -> Tensor:
    # torchvision's affine with shear=(phi, 0): x' = x - tan(phi) y.
    s = torch.tan(torch.deg2rad(torch.tensor(deg, dtype=torch.float64)))
    m = torch.eye(2, dtype=torch.float64).repeat(len(deg), 1, 1)
    m[:, 0, 1] = -s
    return m


def _scaling(factors: list[float]) -> Tensor:
    return torch.diag_embed(torch.tensor(factors, dtype=torch.float64).view(-1, 1).expand(-1, 2))


def _tilt_homography(deg: float, h: int, w: int) -> Tensor:
    """make_*_p.py's tilt: P2 T RX(theta) RY(phi) P1 with phi = theta = deg (forward map, cv2 pixels)."""
    phi = theta = math.radians(deg)
    f = math.sqrt(w ** 2 + h ** 2)
    p1 = torch.tensor([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1], [0, 0, 1]], dtype=torch.float64)
    rx = torch.tensor([[1, 0, 0, 0], [0, math.cos(theta), -math.sin(theta), 0],
                       [0, math.sin(theta), math.cos(theta), 0], [0, 0, 0, 1]], dtype=torch.float64)
    ry = torch.tensor([[math.cos(phi), 0, -math.sin(phi), 0], [0, 1, 0, 0],
                       [math.sin(phi), 0, math.cos(phi), 0], [0, 0, 0, 1]], dtype=torch.float64)
    tr = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, f], [0, 0, 0, 1]], dtype=torch.float64)
    p2 = torch.tensor([[f, 0, w / 2, 0], [0, f, h / 2, 0], [0, 0, 1, 0]], dtype=torch.float64)
    return p2 @ tr @ rx @ ry @ p1


def _shift(x: Tensor, dx: int) -> Tensor:
    """Horizontal integer shift (positive: right), zero fill; exact (nearest sampling)."""
    w = x.shape[-1]
    out = torch.zeros_like(x)
    if abs(dx) < w:
        if dx >= 0:
            out[..., dx:] = x[..., :w - dx]
        else:
            out[..., :w + dx] = x[..., -dx:]
    return out


@lru_cache(maxsize=32)
def _drift_matrix(n: int, kernel: tuple[float, ...]) -> Tensor:
    """(n, n) matrix of ``np.convolve(column, kernel, mode='same')`` along the rows (the
    reference's per-frame spatter drift), built from numpy itself on unit vectors."""
    import numpy as np

    eye = np.eye(n)
    cols = [np.convolve(eye[:, k], np.asarray(kernel), mode="same") for k in range(n)]
    return torch.from_numpy(np.stack(cols, 1)).float()


def _water(x: Tensor, liquid: Tensor, intensity: float) -> Tensor:
    """The water branch of the spatter corruption (rws.corruptions.weather.water) on a given
    liquid layer (N, 1, H, W): shaded rim from the distance to the layer's edges, pale turquoise."""
    return weather.water(x, liquid, intensity)


# ----------------------------------------------------------------------------- sequences
def _noise_seq(x: Tensor, name: str, p: dict, difficulty: int, idx: list[int], g: Gen) -> Tensor:
    b = x.shape[0]
    level = p["level"][difficulty - 1]
    fn = {"gaussian_noise": noise.gaussian_noise, "shot_noise": noise.shot_noise,
          "speckle_noise": noise.speckle_noise}[name]
    # Frame 0 is the clean image; the others are independent draws around it.
    noisy = fn(_repeat(x, len(idx) - 1).contiguous(), level, g, "cifar").clamp_(0, 1)
    return torch.cat((x.unsqueeze(1), noisy.view(b, len(idx) - 1, *x.shape[1:])), 1)


def _motion_blur_seq(x: Tensor, name: str, p: dict, difficulty: int, idx: list[int], g: Gen) -> Tensor:
    b, t = x.shape[0], len(idx)
    angles = torch.tensor(_linear(p["angle"], idx), dtype=torch.float64).repeat(b)
    return ops.motion_blur(_repeat(x, t).contiguous(), int(p["radius"]), float(p["sigma"]), angles).view(
        b, t, *x.shape[1:])


def _zoom_blur_seq(x: Tensor, name: str, p: dict, difficulty: int, idx: list[int], g: Gen) -> Tensor:
    # Frame i: the mean of the image zoomed by 1 + .004 k for k = 0..i (k = 0 is the image itself).
    zooms = _linear(p["zoom"], idx)
    zoomed = _affine_frames(x, _scaling(zooms))
    counts = torch.arange(1, len(idx) + 1, device=x.device, dtype=x.dtype).view(1, -1, 1, 1, 1)
    return zoomed.cumsum(1) / counts


def _snow_seq(x: Tensor, name: str, p: dict, difficulty: int, idx: list[int], g: Gen) -> Tensor:
    b, _, h, w = x.shape
    t = len(idx)
    layer = ops.randn((b, 1, h, w), g, x.device, scale=float(p["scale"])).add_(float(p["loc"]))
    layer = ops.apply_separable(layer, ops.zoom_matrix(h, p["zoom"], "center", x.device),
                                ops.zoom_matrix(w, p["zoom"], "center", x.device))
    layer = layer.masked_fill(layer < p["threshold"], 0.0).clamp_(0, 1)
    layer = layer.mul(255).floor_().div_(255)  # the reference stores the layer as an 8-bit PNG
    angles = torch.tensor(_linear(p["angle"], idx), dtype=torch.float64).repeat(b)
    streaks = ops.motion_blur(_repeat(layer, t).contiguous(), int(p["radius"]), float(p["sigma"]), angles)
    streaks = torch.round(streaks * 255) / 255  # ImageMagick's 8-bit output
    streaks = streaks + torch.flip(streaks, dims=(-2, -1))
    blend = float(p["blend"])
    base = blend * x + (1 - blend) * torch.maximum(x, ops.gray(x) * 1.5 + 0.5)
    return (_repeat(base, t) + streaks).view(b, t, *x.shape[1:])


def _brightness_seq(x: Tensor, name: str, p: dict, difficulty: int, idx: list[int], g: Gen) -> Tensor:
    b, t = x.shape[0], len(idx)
    c = _per_frame(_linear(p["delta"], idx), b, x.device, x.dtype).view(-1, 1, 1, 1)
    return digital.brightness(_repeat(x, t), c, None, "cifar").view(b, t, *x.shape[1:])


def _translate_seq(x: Tensor, name: str, p: dict, difficulty: int, idx: list[int], g: Gen) -> Tensor:
    return torch.stack([_shift(x, int(round(s))) for s in _linear(p["shift"], idx)], 1)


def _rotate_seq(x: Tensor, name: str, p: dict, difficulty: int, idx: list[int], g: Gen) -> Tensor:
    return _affine_frames(x, _rotation(_linear(p["angle"], idx)))


def _shear_seq(x: Tensor, name: str, p: dict, difficulty: int, idx: list[int], g: Gen) -> Tensor:
    return _affine_frames(x, _shear(_linear(p["angle"], idx)))


def _scale_seq(x: Tensor, name: str, p: dict, difficulty: int, idx: list[int], g: Gen) -> Tensor:
    return _affine_frames(x, _scaling(_linear(p["scale"], idx)))


def _tilt_seq(x: Tensor, name: str, p: dict, difficulty: int, idx: list[int], g: Gen) -> Tensor:
    h, w = x.shape[-2:]
    return _warp_frames(x, torch.stack([torch.linalg.inv(_tilt_homography(a, h, w)) for a in _linear(p["angle"], idx)]))


def _gaussian_blur_seq(x: Tensor, name: str, p: dict, difficulty: int, idx: list[int], g: Gen) -> Tensor:
    # skimage.filters.gaussian (border 'nearest') with the reference's truncate.
    return torch.stack([ops.gaussian(x, s, mode="replicate", truncate=float(p["truncate"]))
                        for s in _linear(p["sigma"], idx)], 1)


def _spatter_seq(x: Tensor, name: str, p: dict, difficulty: int, idx: list[int], g: Gen) -> Tensor:
    b, _, h, w = x.shape
    t = len(idx)
    liquid = ops.randn((b, 1, h, w), g, x.device, scale=float(p["scale"])).add_(float(p["loc"]))
    liquid = ops.gaussian(liquid, float(p["sigma"]))
    liquid = liquid.masked_fill(liquid < p["threshold"], 0.0)
    drift = _drift_matrix(h, tuple(p["drift"])).to(x.device, liquid.dtype)
    layers = []
    for i in range(idx[-1] + 1):  # the layer drifts from frame 0 on
        if i >= idx[0]:
            layers.append(liquid)
        liquid = torch.matmul(drift, liquid)
    layer = torch.stack(layers, 1).view(b * t, 1, h, w)
    return _water(_repeat(x, t), layer, float(p["intensity"])).view(b, t, *x.shape[1:])


_SEQUENCES: dict[str, Callable[..., Tensor]] = {
    "gaussian_noise": _noise_seq, "shot_noise": _noise_seq, "motion_blur": _motion_blur_seq,
    "zoom_blur": _zoom_blur_seq, "snow": _snow_seq, "brightness": _brightness_seq,
    "translate": _translate_seq, "rotate": _rotate_seq, "tilt": _tilt_seq, "scale": _scale_seq,
    "speckle_noise": _noise_seq, "gaussian_blur": _gaussian_blur_seq, "spatter": _spatter_seq,
    "shear": _shear_seq,
}
assert tuple(_SEQUENCES) == PERTURBATIONS


def perturbation_sequence(x: Tensor, name: str, difficulty: int = 1, length: int | None = None,
                          table: str = "cifar", generator: torch.Generator | None = None) -> Tensor:
    """Frames of perturbation ``name`` for every image of ``x`` (B, 3, H, W) in [0, 1]:
    a (B, T, 3, H, W) tensor in [0, 1] on ``x``'s device and dtype.

    ``difficulty`` (1..3) is the noise level of the noise perturbations and leaves the frames of
    the others unchanged (it is their flip-comparison stride); ``length`` T defaults to the
    reference's; ``table`` is "cifar", "tiny_imagenet" or "imagenet". Random draws (noise, snow,
    spatter) come from ``generator`` (the global generator when None), so a seeded generator gives
    the same frames every time. See the module docstring for the schedules.
    """
    name = canonical_perturbation(name)
    difficulty = _check_difficulty(difficulty)
    table = _check_table(table)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
    idx = frame_indices(name, length, table)
    if x.shape[0] == 0:
        return x.new_zeros(0, len(idx), *x.shape[1:])
    work = x.detach().to(torch.float32) if x.dtype != torch.float64 else x.detach()
    with torch.no_grad():
        y = _SEQUENCES[name](work, name, SCHEDULES[table][name], difficulty, idx, _cpu_generator(generator))
    return y.clamp(0, 1).to(x.dtype)
