"""Signature quantization with true bit widths.

``quant`` picks the scheme: "float" (IEEE floating point of that width) or "linear" (affine integer
codes, the paper's linear quantization). None = the natural one: float for 32 and 16, linear for 8.

  * 32: float32 as is (float only).
  * 16, quant="float" (the default): float16 storage (2 bytes/element).
  * 16, quant="linear": affine asymmetric per tensor over 65536 levels, stored as int16 codes
        q = clamp(round(t / scale + zero_point), −32768, 32767) with scale = (hi − lo) / 65535 and
        zero_point = −lo / scale − 32768, so t̂ = (q − zero_point) · scale as for 8 bits. Scale and
        zero point are stored as float64 scalars (the zero point can be far larger than 2^24, where
        float32 would move the grid by whole levels); |t − t̂| ≤ scale/2 before the float32 cast.
  * 8 (linear only):  affine asymmetric uint8 per tensor. For a tensor t with range [lo, hi]:
            scale = (hi − lo) / 255,  zero_point = −lo / scale,
            q = clamp(round(t / scale + zero_point), 0, 255)          (uint8)
            t̂ = (q − zero_point) · scale
        stored as ``<key>`` (uint8), ``<key>.__scale`` and ``<key>.__zero_point`` (float64 scalars,
        computed in float64 as for linear 16 bits: in float32 a range small against its offset, e.g.
        1 + [0, 1e-4], moved the grid by a good part of a step, and a denormal range such as
        [0, 1e-44] got scale 0). The zero point is kept as a float (not rounded to an integer) so
        the grid spans exactly [lo, hi]: nothing is clipped and |t − t̂| ≤ scale/2 for every element
        before the float32 cast of t̂ (which adds at most half a float32 ulp of t̂). A constant tensor
        (or one whose range/levels is not a normal float64) gets scale = 1 and its error is at most
        its range. Files written with float32 scale/zero point still load (dequantized in float64).

(The official RWS code's "quantization" argument is a number of levels, not bits; here ``bits``
means bits per stored element.)
"""

from __future__ import annotations

import math
import sys
from typing import Mapping

import torch

BITS = (32, 16, 8)
QUANTS = ("float", "linear")
SCALE = ".__scale"
ZERO_POINT = ".__zero_point"
# bits -> the schemes it offers; the first is the default (quant=None)
_SCHEMES: dict[int, tuple[str, ...]] = {32: ("float",), 16: ("float", "linear"), 8: ("linear",)}


def resolve_quant(bits: int, quant: str | None = None) -> str:
    """The scheme for ``bits``: ``quant`` checked against what the width offers, or its default."""
    if bits not in _SCHEMES:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    if quant is None:
        return _SCHEMES[bits][0]
    if quant not in _SCHEMES[bits]:
        offered = ", ".join(f"{b}: {'|'.join(q)}" for b, q in _SCHEMES.items())
        raise ValueError(f"quant={quant!r} is not offered at {bits} bits; valid (bits: quant) {offered}")
    return quant


def _linear(key: str, t: torch.Tensor, qmin: int, qmax: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Affine codes in [qmin, qmax]; scale and zero point computed and stored in float64."""
    x = t.double()
    lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
    scale = (hi - lo) / float(qmax - qmin)
    if not (math.isfinite(scale) and scale >= sys.float_info.min):  # constant, or a denormal step
        scale = 1.0
    zp = -lo / scale + qmin
    q = torch.clamp(torch.round(x / scale + zp), qmin, qmax).to(dtype)
    return {key: q.contiguous(), key + SCALE: torch.tensor(scale, dtype=torch.float64).reshape(()),
            key + ZERO_POINT: torch.tensor(zp, dtype=torch.float64).reshape(())}


def _linear16(key: str, t: torch.Tensor) -> dict[str, torch.Tensor]:
    return _linear(key, t, -32768, 32767, torch.int16)


def quantize_tensor(key: str, t: torch.Tensor, bits: int, quant: str | None = None) -> dict[str, torch.Tensor]:
    quant = resolve_quant(bits, quant)
    if bits == 32:
        return {key: t.float().contiguous()}
    if bits == 16:
        return _linear16(key, t) if quant == "linear" else {key: t.half().contiguous()}
    return _linear(key, t, 0, 255, torch.uint8)


def quantize_state(state: Mapping[str, torch.Tensor], bits: int, quant: str | None = None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        out.update(quantize_tensor(k, v, bits, quant))
    return out


def dequantize_state(stored: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Back to float32, dropping the ``.__scale`` / ``.__zero_point`` siblings."""
    out: dict[str, torch.Tensor] = {}
    for k, v in stored.items():
        if k.endswith(SCALE) or k.endswith(ZERO_POINT):
            continue
        if v.dtype in (torch.uint8, torch.int16):  # linear codes (8 and 16 bit)
            try:
                scale, zp = stored[k + SCALE], stored[k + ZERO_POINT]
            except KeyError as e:
                raise KeyError(f"{v.dtype} tensor {k} lacks its {e.args[0]} sibling") from None
            # float64 for the affine map so the bound scale/2 is not eaten by float32 rounding of q·scale
            out[k] = ((v.double() - zp.double()) * scale.double()).float()
        else:
            out[k] = v.float()
    return out


def stored_bytes(numel: int, bits: int) -> int:
    """Payload bytes for ``numel`` elements at ``bits`` (scale/zero point not counted)."""
    return numel * bits // 8
