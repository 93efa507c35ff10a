"""Public entry points: ``corrupt`` and ``resolve_corruptions``."""

from __future__ import annotations

import numbers
from typing import Callable

import torch

from rws.corruptions import blur, digital, jpeg, noise, weather
from rws.corruptions.params import ALIASES, CORRUPTIONS, GROUPS, SEVERITIES, TABLES, params
from rws.errors import UserError

Tensor = torch.Tensor

_FUNCS: dict[str, Callable[..., Tensor]] = {
    "gaussian_noise": noise.gaussian_noise, "shot_noise": noise.shot_noise,
    "impulse_noise": noise.impulse_noise, "speckle_noise": noise.speckle_noise,
    "defocus_blur": blur.defocus_blur, "glass_blur": blur.glass_blur,
    "motion_blur": blur.motion_blur, "zoom_blur": blur.zoom_blur, "gaussian_blur": blur.gaussian_blur,
    "snow": weather.snow, "frost": weather.frost, "fog": weather.fog, "spatter": weather.spatter,
    "brightness": digital.brightness, "contrast": digital.contrast, "saturate": digital.saturate,
    "elastic_transform": digital.elastic_transform, "pixelate": digital.pixelate,
    "jpeg_compression": jpeg.jpeg_compression,
}
assert tuple(_FUNCS) == CORRUPTIONS


def canonical_name(name: str) -> str:
    """Canonical corruption name for a name or alias; ValueError listing the valid ones."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in _FUNCS:
        raise ValueError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}; "
                         f"aliases: {', '.join(f'{a}->{b}' for a, b in ALIASES.items())}")
    return key


def resolve_corruptions(spec: str | list[str]) -> list[str]:
    """Expand "all", group names (noise/blur/weather/digital), names and aliases.

    A string may hold several comma-separated items. Order follows the spec; duplicates drop.
    """
    items = [s for part in ([spec] if isinstance(spec, str) else list(spec))
             for s in str(part).split(",")]
    out: list[str] = []
    for item in (s.strip().lower() for s in items):
        if not item:
            continue
        if item == "all":
            names = list(CORRUPTIONS)
        elif item in GROUPS:
            names = list(GROUPS[item])
        else:
            try:
                names = [canonical_name(item)]
            except ValueError:
                raise ValueError(f"unknown corruption or group {item!r}; valid: all, "
                                 f"{', '.join(GROUPS)}, {', '.join(CORRUPTIONS)}, "
                                 f"{', '.join(ALIASES)}") from None
        out.extend(n for n in names if n not in out)
    if not out:
        raise ValueError(f"empty corruption spec {spec!r}; valid: all, {', '.join(GROUPS)}, names")
    return out


# Smallest H and W every corruption handles under every table (1x1 raised inside the filters or gave
# NaN); glass_blur needs more (8 at ImageNet severity 5), found by trying sizes 1..8 at every table.
MIN_SIZE = 2
MIN_SIZE_BY_NAME = {"glass_blur": 8}
# Slack on the [0, 1] range for float arithmetic upstream (e.g. 1 + 1e-7 after a resize or mix).
RANGE_TOL = 1e-6


def _check_images(x: object, name: str) -> None:
    """UserError unless ``x`` is a floating (B, 3, H, W) tensor in [0, 1] without NaN and at least the
    minimum size for corruption ``name``."""
    if not isinstance(x, torch.Tensor):
        raise UserError(f"corrupt: x must be a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise UserError(f"corrupt: x must have shape (B, 3, H, W), got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise UserError(f"corrupt: x must be a floating tensor with values in [0, 1], got dtype {x.dtype}"
                        + (" (divide uint8 images by 255 first)" if x.dtype == torch.uint8 else ""))
    m = MIN_SIZE_BY_NAME.get(name, MIN_SIZE)
    if x.shape[2] < m or x.shape[3] < m:
        raise UserError(f"corrupt: x must be at least {m}x{m} pixels for {name}, got {x.shape[2]}x{x.shape[3]}")
    if x.numel() == 0:
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if not (lo >= -RANGE_TOL and hi <= 1 + RANGE_TOL):  # also catches NaN (aminmax propagates it)
        if torch.isnan(x).any():
            raise UserError("corrupt: x contains NaN; expected values in [0, 1]")
        raise UserError(f"corrupt: x must have values in [0, 1], got [{lo:g}, {hi:g}]"
                        + (" (0..255 images: divide by 255)" if hi > 1.5 else ""))


def corrupt(x: Tensor, name: str, severity: int, table: str = "cifar",
            generator: torch.Generator | None = None) -> Tensor:
    """Corrupt a batch ``x`` (B, 3, H, W) in [0, 1] with ``name`` at ``severity`` (1..5).

    ``x`` must be a floating tensor with values in [0, 1] (1e-6 slack), no NaN, H and W at least
    ``MIN_SIZE`` (``MIN_SIZE_BY_NAME`` for glass_blur); anything else (uint8, 0..255 floats, [-1, 1], numpy arrays, a severity that is
    not an int in 1..5, a generator that is not a ``torch.Generator``) raises ``UserError``.

    Returns a tensor of the same shape, device and dtype, clamped to [0, 1]. Random draws come
    from ``generator`` (a CPU ``torch.Generator``; the global one when None) and are made on the
    CPU, so a seed gives the same result on CPU and CUDA.
    """
    key = canonical_name(name)
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or int(severity) not in SEVERITIES:
        raise UserError(f"corrupt: severity must be an int in {list(SEVERITIES)}, got {severity!r}")
    if not isinstance(table, str) or table not in TABLES:
        raise UserError(f"corrupt: unknown corruption table {table!r}; valid: {sorted(TABLES)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise UserError(f"corrupt: generator must be None or a torch.Generator, got {type(generator).__name__}")
    _check_images(x, key)
    if x.shape[0] == 0:
        return x.clone()
    c = params(key, int(severity), table)
    # Work in float32 (at least) so half-precision inputs do not distort the filters.
    work = x.detach().to(torch.float32) if x.dtype != torch.float64 else x.detach()
    with torch.no_grad():
        y = _FUNCS[key](work, c, generator, table)
    # Clamp in place when the result is a fresh buffer (not the input or a view of it).
    if y.untyped_storage().data_ptr() not in (work.untyped_storage().data_ptr(),
                                              x.untyped_storage().data_ptr()):
        return y.clamp_(0, 1).to(x.dtype)
    return y.clamp(0, 1).to(x.dtype)
