"""Signature quantization with true bit widths.

  * 32: float32 as is.
  * 16: float16 storage (2 bytes/element).
  * 8:  affine asymmetric uint8 per tensor. For a tensor t with range [lo, hi]:
            scale = (hi − lo) / 255,  zero_point = −lo / scale,
            q = clamp(round(t / scale + zero_point), 0, 255)          (uint8)
            t̂ = (q − zero_point) · scale
        stored as ``<key>`` (uint8), ``<key>.__scale`` and ``<key>.__zero_point`` (float32 scalars).
        The zero point is kept as a float (not rounded to an integer) so the grid spans exactly
        [lo, hi]: nothing is clipped and |t − t̂| ≤ scale/2 for every element. A constant tensor
        gets scale = 1 and is reproduced exactly.

(The official RWS code's "quantization" argument is a number of levels, not bits; here ``bits``
means bits per stored element.)
"""

from __future__ import annotations

from typing import Mapping

import torch

BITS = (32, 16, 8)
SCALE = ".__scale"
ZERO_POINT = ".__zero_point"


def quantize_tensor(key: str, t: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    if bits == 32:
        return {key: t.float().contiguous()}
    if bits == 16:
        return {key: t.half().contiguous()}
    if bits != 8:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    x = t.double()
    lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = -lo / scale
    q = torch.clamp(torch.round(x / scale + zp), 0, 255).to(torch.uint8)
    return {key: q.contiguous(), key + SCALE: torch.tensor(scale, dtype=torch.float64).float().reshape(()),
            key + ZERO_POINT: torch.tensor(zp, dtype=torch.float64).float().reshape(())}


def quantize_state(state: Mapping[str, torch.Tensor], bits: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        out.update(quantize_tensor(k, v, bits))
    return out


def dequantize_state(stored: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Back to float32, dropping the ``.__scale`` / ``.__zero_point`` siblings."""
    out: dict[str, torch.Tensor] = {}
    for k, v in stored.items():
        if k.endswith(SCALE) or k.endswith(ZERO_POINT):
            continue
        if v.dtype == torch.uint8:
            try:
                scale, zp = stored[k + SCALE], stored[k + ZERO_POINT]
            except KeyError as e:
                raise KeyError(f"uint8 tensor {k} lacks its {e.args[0]} sibling") from None
            # float64 for the affine map so the bound scale/2 is not eaten by float32 rounding of q·scale
            out[k] = ((v.double() - zp.double()) * scale.double()).float()
        else:
            out[k] = v.float()
    return out


def stored_bytes(numel: int, bits: int) -> int:
    """Payload bytes for ``numel`` elements at ``bits`` (scale/zero point not counted)."""
    return numel * bits // 8
