"""Noise corruptions: gaussian, shot (Poisson), impulse (salt & pepper), speckle."""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from rws.corruptions.ops import rand, randn

Tensor = torch.Tensor
Gen = torch.Generator | None


def gaussian_noise(x: Tensor, c: float, g: Gen, table: str) -> Tensor:
    # Noise drawn already scaled, then one in-place add (no temporaries).
    return randn(tuple(x.shape), g, x.device, scale=float(c)).to(x.dtype).add_(x)


# ----------------------------------------------------------------------------- shot noise
# Exact Poisson sampling by inversion, X = #{k : F(k; lam) < u} for one uniform u, through a
# lookup table on a (lam, u) grid: lam_j = j / _LAM_STEPS, u-bins of width 1 / _U_BINS.
# X is nondecreasing in u and in lam, so for lam in [lam_j, lam_j+1) and u in bin m
#   K(lam_j, m / M) <= X <= K(lam_j+1, (m + 1) / M);
# where both bounds agree (~98 % of draws) the table holds X; the rest (-1 in the table) are
# resolved exactly from the CDF at the true lam (see _resolve).
_LAM_STEPS = 128     # grid step 1/128 in lam
_LAM_MAX = 32        # table covers lam < 32; larger rates use torch.poisson (exact, slower)
_U_BINS = 1024
_K_MAX = 127         # P(X > 127) < 1e-40 for lam <= 32
_TERMS = 4           # Poisson(delta) terms in the CDF shift, delta < 1/128: error < 2e-10


@lru_cache(maxsize=1)
def _poisson_tables() -> tuple[Tensor, Tensor, Tensor]:
    """(A, LO, Fpad): A[j, m] = X if determined else -1 (int8, j < 4096, m < 1024);
    LO[j, m] = K(lam_j, m / M) (int8); Fpad[j, _TERMS - 1 + k] = F(k; lam_j) (float64, zero
    padded on the left, j <= 4096)."""
    n_rows = _LAM_MAX * _LAM_STEPS + 1
    lam = torch.arange(n_rows, dtype=torch.float64) / _LAM_STEPS
    k = torch.arange(_K_MAX + 1, dtype=torch.float64)
    logp = torch.xlogy(k.view(1, -1), lam.view(-1, 1)) - lam.view(-1, 1) - torch.lgamma(k + 1).view(1, -1)
    cdf = torch.exp(logp).cumsum(1).clamp_(max=1.0)
    cdf[:, -1] = 1.0
    edges = torch.arange(_U_BINS + 1, dtype=torch.float64) / _U_BINS
    # K(lam_j, u) = #{k : F(k; lam_j) < u} = searchsorted(F_j, u, side='left')
    kk = torch.searchsorted(cdf.contiguous(), edges.view(1, -1).expand(n_rows, -1).contiguous())
    lo = kk[:-1, :-1]
    hi = kk[1:, 1:]
    a = torch.where(lo == hi, lo, torch.full_like(lo, -1))
    fpad = torch.cat((torch.zeros(n_rows, _TERMS - 1, dtype=torch.float64), cdf), 1)
    return a.to(torch.int8).contiguous(), lo.to(torch.int8).contiguous(), fpad.contiguous()


def _resolve(lam: Tensor, u: Tensor, j: Tensor, k0: Tensor, fpad: Tensor) -> Tensor:
    """Exact inversion for undetermined draws: smallest k >= k0 with u <= F(k; lam).

    F(k; lam_j + d) = e^-d sum_i d^i / i! F(k - i; lam_j) (Poisson additivity), from the table
    row j; truncated after _TERMS terms (d < 1/128).
    """
    d = lam - j.double() / _LAM_STEPS
    e = torch.exp(-d)
    terms = [e]
    for i in range(1, _TERMS):
        terms.append(terms[-1] * d / i)
    w = torch.stack(terms, 1)
    ff = fpad.view(-1)
    # flat position of F(k - i; lam_j) is j * ncol + k + _TERMS - 1 - i
    offs = torch.arange(_TERMS - 1, -1, -1)
    flat = j * fpad.shape[1] + k0
    k = k0.clone()
    active = torch.arange(len(k))
    width = 4  # candidates k .. k+3 evaluated in one batched gather (most need 0 or 1 step)
    cand = torch.arange(width).view(1, width, 1) + offs.view(1, 1, -1)
    while len(active):
        f = (ff.take(flat[active].view(-1, 1, 1) + cand) * w[active].unsqueeze(1)).sum(2)  # (n, width)
        # F increases with k: the number of candidates below u is how far X lies beyond k.
        ahead = (u[active].view(-1, 1) > f).sum(1)
        k[active] += ahead
        flat[active] += ahead
        active = active[ahead == width]
        if len(active) and bool((k[active] >= _K_MAX - width).any()):  # F(127) = 1 > u; NaNs only
            break
    return k


def poisson_from_uniform(lam: Tensor, u: Tensor) -> Tensor:
    """Poisson(lam) by inversion of the uniforms ``u`` (both 1-D float32 on the CPU, lam in
    [0, 32)): the smallest k with u <= F(k; lam), as float32. Table lookup for ~98 % of the
    values, exact CDF evaluation for the rest."""
    a, lo, fpad = _poisson_tables()
    # Table index floor(lam * steps) * M + floor(u * M), in float32 (exact: powers of two, < 2^24).
    idx = lam.mul(_LAM_STEPS).floor_().mul_(_U_BINS).add_(u.mul(_U_BINS).floor_()).long()
    k = a.view(-1).take(idx)
    out = k.to(torch.float32)
    und = (k < 0).nonzero().view(-1)
    if len(und):
        iu = idx[und]
        kk = _resolve(lam[und].double(), u[und].double(), iu // _U_BINS, lo.view(-1).take(iu).long(), fpad)
        out[und] = kk.to(torch.float32)
    return out


def shot_noise(x: Tensor, c: float, g: Gen, table: str) -> Tensor:
    # All draws on the CPU so the same generator gives the same image on any device.
    xc = x.detach().float().cpu()
    n = xc.numel()
    u = rand((n,), g, torch.device("cpu"))
    lam = xc.reshape(-1).clamp_min(0).mul_(float(c))
    has_big = n > 0 and float(lam.max()) >= _LAM_MAX
    if has_big:
        big = lam >= _LAM_MAX
        out = poisson_from_uniform(lam.masked_fill(big, 0.0), u)
        bi = big.nonzero().view(-1)
        out[bi] = torch.poisson(lam[bi], generator=g)
    else:
        out = poisson_from_uniform(lam, u)
    return out.div_(float(c)).view(x.shape).to(x.device, x.dtype)


def impulse_noise(x: Tensor, c: float, g: Gen, table: str) -> Tensor:
    """skimage 's&p': each value independently replaced with prob `amount`, half salt, half pepper.

    Instead of one uniform per value, the hit positions are drawn as i.i.d. geometric gaps
    between consecutive hits (the same Bernoulli(amount) process, ~amount * n draws), plus one
    salt/pepper draw per hit, in raster order of the flattened batch.
    """
    n = x.numel()
    c = float(c)
    flat = x.reshape(-1).clone()
    if n == 0 or c <= 0:
        return flat.view(x.shape)
    if c >= 0.5:  # few misses: skipping buys nothing, draw one uniform per value
        u = rand((n,), g, torch.device("cpu")).to(x.device)
        return flat.masked_fill_(u < c, 0.0).masked_fill_(u < 0.5 * c, 1.0).view(x.shape)
    log_miss = math.log1p(-c)
    pos = []
    last = -1
    while True:
        m = int(n * c + 6 * math.sqrt(n * c) + 16)
        u = rand((m,), g, torch.device("cpu"))
        # gap = #misses before the next hit ~ Geometric(c): floor(log(1 - u) / log(1 - c))
        gaps = torch.floor(torch.log(1.0 - u.double()) / log_miss).long()
        p = torch.cumsum(gaps + 1, 0) + last
        pos.append(p[p < n])
        if len(pos[-1]) < m:
            break
        last = int(p[-1])
    pos = torch.cat(pos)
    salt = (rand((len(pos),), g, torch.device("cpu")) < 0.5).to(x.dtype)
    flat[pos.to(x.device)] = salt.to(x.device)
    return flat.view(x.shape)


def speckle_noise(x: Tensor, c: float, g: Gen, table: str) -> Tensor:
    # x + x * (c n), written into the (scaled) noise buffer in one fused op.
    n = randn(tuple(x.shape), g, x.device, scale=float(c)).to(x.dtype)
    return torch.addcmul(x, x, n, out=n)
