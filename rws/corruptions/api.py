"""Public entry points: ``corrupt`` and ``resolve_corruptions``."""

from __future__ import annotations

from typing import Callable

import torch

from rws.corruptions import blur, digital, jpeg, noise, weather
from rws.corruptions.params import ALIASES, CORRUPTIONS, GROUPS, SEVERITIES, TABLES, params

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


def corrupt(x: Tensor, name: str, severity: int, table: str = "cifar",
            generator: torch.Generator | None = None) -> Tensor:
    """Corrupt a batch ``x`` (B, 3, H, W) in [0, 1] with ``name`` at ``severity`` (1..5).

    Returns a tensor of the same shape, device and dtype, clamped to [0, 1]. Random draws come
    from ``generator`` (a CPU ``torch.Generator``; the global one when None) and are made on the
    CPU, so a seed gives the same result on CPU and CUDA.
    """
    key = canonical_name(name)
    if isinstance(severity, bool) or int(severity) != severity or int(severity) not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}; valid: {list(SEVERITIES)}")
    if table not in TABLES:
        raise ValueError(f"unknown corruption table {table!r}; valid: {sorted(TABLES)}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
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
