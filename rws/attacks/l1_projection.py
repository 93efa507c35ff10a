"""Exact Euclidean projection onto the l1 ball intersected with the [0, 1] box.

For a clean point x and a candidate perturbation z, the projection solves
    min_d ||d - z||_2^2  s.t.  ||d||_1 <= eps,  0 <= x + d <= 1.
The problem separates per coordinate given the l1 multiplier lambda >= 0:
    d_i = sign(z_i) * clip(|z_i| - lambda, 0, b_i),
where b_i is the room to the box boundary in the direction of z_i (1 - x_i for z_i > 0, x_i for
z_i < 0). If lambda = 0 is feasible it is optimal; otherwise lambda solves
    f(lambda) = sum_i clip(|z_i| - lambda, 0, b_i) = eps.
f is continuous, piecewise linear and non-increasing with breakpoints max(|z_i| - b_i, 0) (slope -1
starts) and |z_i| (slope -1 ends), so sorting the 2d breakpoints and integrating the slope gives f at
every breakpoint; the root is then found by linear interpolation on the right segment. No iteration,
no tolerance: the result is exact up to floating point.
"""

from __future__ import annotations

import torch


def project_l1_box(x: torch.Tensor, z: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Project the perturbations ``z`` (B, ...) of clean points ``x`` in [0, 1] onto the l1 ball of
    radius ``eps`` (scalar or per-sample (B,)) intersected with the box; returns the perturbation."""
    shape, dtype = z.shape, z.dtype
    bsz = z.shape[0]
    # float64 keeps the cumulative sums exact enough that ||d||_1 <= eps holds to ~1e-12.
    zf = z.reshape(bsz, -1).double()
    xf = x.reshape(bsz, -1).double()
    eps_t = torch.as_tensor(eps, dtype=torch.float64, device=z.device).expand(bsz) if not torch.is_tensor(eps) \
        else eps.to(device=z.device, dtype=torch.float64).reshape(-1).expand(bsz)

    a = zf.abs()
    room = torch.where(zf > 0, 1.0 - xf, xf).clamp_min(0.0)
    f0 = torch.minimum(a, room)  # the box-only projection (lambda = 0)
    out = f0.sum(1)
    need = out > eps_t
    lam = torch.zeros(bsz, dtype=torch.float64, device=z.device)
    if need.any():
        idx = need.nonzero().squeeze(1)
        ai, bi, ei = a[idx], room[idx], eps_t[idx]
        n = ai.shape[1]
        starts = (ai - bi).clamp_min(0.0)
        points = torch.cat([starts, ai], 1)
        change = torch.cat([-torch.ones_like(starts), torch.ones_like(ai)], 1)
        # Coordinates with a_i = 0 contribute a start and end at 0: they cancel, as they should.
        points, order = points.sort(1)
        change = change.gather(1, order)
        slope = change.cumsum(1)  # slope of f on [points_k, points_{k+1}]
        seg = points.diff(dim=1)
        f_at = f0[idx].sum(1, keepdim=True) + torch.cat(
            [torch.zeros_like(points[:, :1]), (slope[:, :-1] * seg).cumsum(1)], 1)
        # f is non-increasing and ends at 0 < eps, so the last breakpoint with f >= eps brackets the root.
        k = ((f_at >= ei[:, None]).sum(1) - 1).clamp(0, 2 * n - 1)
        fk = f_at.gather(1, k[:, None]).squeeze(1)
        sk = slope.gather(1, k[:, None]).squeeze(1)
        pk = points.gather(1, k[:, None]).squeeze(1)
        lam[idx] = pk + (fk - ei) / (-sk).clamp_min(1.0)
    d = torch.minimum((a - lam[:, None]).clamp_min(0.0), room)
    return (zf.sign() * d).reshape(shape).to(dtype)
