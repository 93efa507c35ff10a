"""Baseline JPEG round trip (encode + decode) written with tensor ops.

Going through PIL or torchvision's CPU codec costs one C call per image plus a device round
trip; this batched DCT codec codes the whole batch with a few GEMMs on whatever device the
batch is on. It follows libjpeg's defaults as used by PIL: JFIF YCbCr, 4:2:0 chroma
subsampling, the Annex K tables scaled by quality, and "fancy" (triangular) chroma upsampling
on decode. Outputs agree with PIL to about a grey level on average (tested).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from rws.corruptions import ops

Tensor = torch.Tensor
Gen = torch.Generator | None

_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
         14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
         18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
           24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32


@lru_cache(maxsize=64)
def _qtables(quality: int) -> tuple[Tensor, Tensor]:
    # libjpeg's jpeg_quality_scaling + jpeg_add_quant_table (baseline: clamp to 1..255)
    q = min(max(int(quality), 1), 100)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    def mk(base: list[int]) -> Tensor:
        return torch.tensor([min(max((v * scale + 50) // 100, 1), 255) for v in base],
                            dtype=torch.float32).view(8, 8)
    return mk(_LUMA), mk(_CHROMA)


@lru_cache(maxsize=1)
def _dct_matrix() -> Tensor:
    d = torch.zeros(8, 8, dtype=torch.float64)
    for k in range(8):
        a = math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8)
        for n in range(8):
            d[k, n] = a * math.cos(math.pi * (2 * n + 1) * k / 16)
    return d.float()


@lru_cache(maxsize=32)
def _block_dct(n: int) -> Tensor:
    """(n, n) block-diagonal 8-point DCT: M X M^T is the 2-D DCT of every 8x8 block of X."""
    return torch.block_diag(*([_dct_matrix()] * (n // 8)))


@lru_cache(maxsize=64)
def _tiled_q(quality: int, h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(1/Q, Q) tiled over (h, w) planes, for the luma and the chroma table."""
    out = []
    for q in _qtables(quality):
        t = q.repeat(h // 8, w // 8)
        out += [1.0 / t, t]
    return tuple(out)


def _roundtrip_plane(p: Tensor, inv_q: Tensor, q: Tensor) -> Tensor:
    """DCT-quantise-dequantise-IDCT of level-shifted (B, C, H, W) planes (values - 128, H and W
    multiples of 8); returns the reconstruction, rounded and clamped, still shifted by -128.

    The blockwise DCT is a product with block-diagonal DCT matrices on both sides, so all blocks
    of the batch are coded with two GEMMs per direction and no block reshuffling.
    """
    h, w = p.shape[-2:]
    mh, mw = _block_dct(h).to(p), _block_dct(w).to(p)
    coef = ops.apply_separable(p, mh, mw)
    coef = coef.mul_(inv_q.to(p)).round_().mul_(q.to(p))
    # round(v + 128) clamped to 0..255, minus 128 = round(v) clamped to -128..127
    return ops.apply_separable(coef, mh.T, mw.T).round_().clamp_(-128, 127)


@lru_cache(maxsize=32)
def _fancy_up_matrix(n: int) -> Tensor:
    """(2n, n) libjpeg fancy upsampling along one axis: 3/4 nearer sample + 1/4 further one
    (edge samples repeated)."""
    m = torch.zeros(2 * n, n, dtype=torch.float64)
    for i in range(n):
        m[2 * i, i] += 0.75
        m[2 * i, max(i - 1, 0)] += 0.25
        m[2 * i + 1, i] += 0.75
        m[2 * i + 1, min(i + 1, n - 1)] += 0.25
    return m.float()


_RGB2YCC = torch.tensor([[0.299, 0.587, 0.114],
                         [-0.168735892, -0.331264108, 0.5],
                         [0.5, -0.418687589, -0.081312411]])
_YCC2RGB = torch.tensor([[1.0, 0.0, 1.402],
                         [1.0, -0.344136286, -0.714136286],
                         [1.0, 1.772, 0.0]])


def jpeg_compression(x: Tensor, c: int, g: Gen, table: str) -> Tensor:
    b, _, h, w = x.shape
    rgb = x.clamp(0, 1).mul_(255).round_()  # the reference encodes an 8-bit image
    # libjpeg pads partial MCUs by replicating the last row/column; MCU is 16x16 for 4:2:0.
    ph, pw = (-h) % 16, (-w) % 16
    if ph or pw:
        rgb = F.pad(rgb, (0, pw, 0, ph), mode="replicate")
    hh, ww = rgb.shape[-2:]
    # Colour conversion as one (3, 3) matrix product per image. Y is level-shifted by -128 right
    # away and Cb/Cr are left centred (their +128 and the codec's -128 cancel); all rounding
    # happens on integer-shifted values, so results equal the unshifted arithmetic.
    ycc = torch.matmul(_RGB2YCC.to(rgb), rgb.view(b, 3, hh * ww)).view(b, 3, hh, ww)
    ycc[:, :1] -= 128
    ycc.round_()
    iq_l, q_l, _, _ = _tiled_q(int(c), hh, ww)
    _, _, iq_c, q_c = _tiled_q(int(c), hh // 2, ww // 2)
    y = _roundtrip_plane(ycc[:, :1], iq_l, q_l)
    # 4:2:0: 2x2 means of Cb and Cr, coded with the chroma table, fancy-upsampled back.
    cbcr = F.avg_pool2d(ycc[:, 1:], 2)
    cbcr = _roundtrip_plane(cbcr, iq_c, q_c)
    cbcr = ops.apply_separable(cbcr, _fancy_up_matrix(hh // 2).to(x.device),
                               _fancy_up_matrix(ww // 2).to(x.device))
    ycc = torch.cat((y, cbcr), 1)
    # R = Y + 1.402 Cr etc. with Y = y + 128: round(v + 128) clamped = round(v) clamped + 128.
    out = torch.matmul(_YCC2RGB.to(ycc), ycc.view(b, 3, hh * ww)).view(b, 3, hh, ww)
    out = out.round_().clamp_(-128, 127).add_(128).div_(255)
    return out[..., :h, :w].to(x.dtype)
