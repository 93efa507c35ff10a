"""Names, groups, aliases and the three severity tables (CIFAR-10-C, Tiny-ImageNet-C, ImageNet-C).

The CIFAR table holds the values of Hendrycks' ``make_cifar_c.py``; the Tiny-ImageNet table those of
his ``make_tinyimagenet_c.py``; the ImageNet table the values used by ``imagecorruptions``
(ImageNet-C). Each entry is a list of 5 per-severity parameters.
"""

from __future__ import annotations

from typing import Any

CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur",
    "snow", "frost", "fog", "spatter",
    "brightness", "contrast", "saturate", "elastic_transform", "pixelate", "jpeg_compression",
)

GROUPS: dict[str, tuple[str, ...]] = {
    "noise": CORRUPTIONS[0:4],
    "blur": CORRUPTIONS[4:9],
    "weather": CORRUPTIONS[9:13],
    "digital": CORRUPTIONS[13:19],
}

# The five shifts the CPU-scale chains use (RWS rows, RWS transfer, the soups grid search): one or two
# per family, chosen for spread in difficulty at 32 px.
CPU_SHIFTS: tuple[str, ...] = ("gaussian_noise", "defocus_blur", "fog", "contrast", "pixelate")

ALIASES: dict[str, str] = {"elastic": "elastic_transform", "jpeg": "jpeg_compression"}

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)


def _arange(start: float, stop: float, step: float) -> list[float]:
    # Same float accumulation as np.arange, so the number of zoom factors matches the reference.
    import numpy as np

    return [float(v) for v in np.arange(start, stop, step)]


CIFAR: dict[str, list[Any]] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "speckle_noise": [0.06, 0.1, 0.12, 0.16, 0.2],
    # (disk radius, alias blur sigma)
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    # (sigma, max_delta, iterations)
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    # (radius, sigma)
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [_arange(1, 1.06, 0.01), _arange(1, 1.11, 0.01), _arange(1, 1.16, 0.01),
                  _arange(1, 1.21, 0.01), _arange(1, 1.26, 0.01)],
    "gaussian_blur": [0.4, 0.6, 0.7, 0.8, 1],
    # (loc, scale, zoom, threshold, blur radius, blur sigma, blend)
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    # (image weight, frost weight)
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    # (strength, wibble decay)
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    # (loc, scale, sigma, threshold, intensity/mud sigma, mode 0=water 1=mud)
    "spatter": [(0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0),
                (0.65, 0.3, 1, 0.69, 0.5, 0), (0.65, 0.1, 0.7, 0.69, 0.6, 1),
                (0.65, 0.1, 0.5, 0.68, 0.6, 1)],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    # (saturation scale, saturation shift)
    "saturate": [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
    # (alpha, sigma, affine jitter) as fractions of the image size (make_cifar_c uses IMSIZE=32)
    "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                          (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
}

IMAGENET: dict[str, list[Any]] = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
    "shot_noise": [60, 25, 12, 5, 3],
    "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
    "speckle_noise": [0.15, 0.2, 0.35, 0.45, 0.6],
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
    "zoom_blur": [_arange(1, 1.11, 0.01), _arange(1, 1.16, 0.01), _arange(1, 1.21, 0.02),
                  _arange(1, 1.26, 0.02), _arange(1, 1.31, 0.03)],
    "gaussian_blur": [1, 2, 3, 4, 6],
    "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
             (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
             (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
    "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
    "fog": [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],
    "spatter": [(0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0),
                (0.65, 0.3, 2, 0.68, 0.5, 0), (0.65, 0.3, 1, 0.65, 1.5, 1),
                (0.67, 0.4, 1, 0.65, 1.5, 1)],
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
    "saturate": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)],
    # imagecorruptions' elastic: alpha (absolute), no affine step; sigma = 1% of the size.
    "elastic_transform": [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "jpeg_compression": [25, 18, 15, 10, 7],
}

# make_tinyimagenet_c.py is make_cifar_c.py at IMSIZE = 64 with its own values (17 of the 19 differ
# from ImageNet-C's; brightness and contrast are the same), so its functions take the CIFAR forms.
TINY_IMAGENET: dict[str, list[Any]] = {
    "gaussian_noise": [0.04, 0.08, 0.12, 0.15, 0.18],
    "shot_noise": [250, 100, 50, 30, 15],
    "impulse_noise": [0.01, 0.02, 0.05, 0.08, 0.14],
    "speckle_noise": [0.15, 0.2, 0.25, 0.3, 0.35],
    "defocus_blur": [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)],
    "glass_blur": [(0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)],
    "motion_blur": [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
    "zoom_blur": [_arange(1, 1.06, 0.01), _arange(1, 1.11, 0.01), _arange(1, 1.16, 0.01),
                  _arange(1, 1.21, 0.01), _arange(1, 1.26, 0.01)],
    "gaussian_blur": [0.5, 0.75, 1, 1.25, 1.5],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8),
             (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
             (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)],
    "frost": [(1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)],
    "fog": [(0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)],
    "spatter": [(0.62, 0.1, 0.7, 0.7, 0.6, 0), (0.65, 0.1, 0.8, 0.7, 0.6, 0),
                (0.65, 0.3, 1, 0.69, 0.6, 0), (0.65, 0.1, 0.7, 0.68, 0.6, 1),
                (0.65, 0.1, 0.5, 0.67, 0.6, 1)],
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
    "saturate": [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (30, 0.2)],
    # (alpha, sigma, affine jitter) as fractions of the image size (make_tinyimagenet_c uses IMSIZE=64)
    "elastic_transform": [(0, 0, 0.08), (0.05, 0.3, 0.06), (0.1, 0.08, 0.06),
                          (0.1, 0.03, 0.03), (0.16, 0.03, 0.02)],
    "pixelate": [0.9, 0.8, 0.7, 0.6, 0.5],
    "jpeg_compression": [65, 58, 50, 40, 25],
}

TABLES: dict[str, dict[str, list[Any]]] = {"cifar": CIFAR, "tiny_imagenet": TINY_IMAGENET, "imagenet": IMAGENET}

# Tables whose functions follow Hendrycks' make_cifar_c.py forms, and the script's fixed image size
# (IMSIZE): centred crop in the zoom helper, BOX up-sampling in pixelate, elastic = random affine +
# field in fractions of IMSIZE, fog map of at least IMSIZE, the first five frost textures.
# "imagenet" follows imagecorruptions instead.
SCRIPT_SIZE: dict[str, int] = {"cifar": 32, "tiny_imagenet": 64}


def params(name: str, severity: int, table: str) -> Any:
    """The parameter of ``name`` at ``severity`` (1..5) in ``table``; names must be canonical."""
    if table not in TABLES:
        raise ValueError(f"unknown corruption table {table!r}; valid: {sorted(TABLES)}")
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}; valid: {list(SEVERITIES)}")
    return TABLES[table][name][severity - 1]
