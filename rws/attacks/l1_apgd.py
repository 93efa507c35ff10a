"""l1-APGD (Croce & Hein 2021, "Mind the box: l1-APGD for sparse adversarial attacks").

Why not plain PGD for l1: the steepest l1 ascent direction moves a single coordinate, which is far
too slow, while a dense (l2-like) step is immediately undone by the l1 projection. l1-APGD instead
steps along the signs of the top-k gradient coordinates and lets k follow the sparsity of the best
point found so far. Because the feasible set is the l1 ball *intersected with the image box*,
coordinates that sit on the box boundary and whose gradient points outward are excluded from the
top-k (moving them would be clipped away and waste l1 budget), and the projection is the exact one
onto the intersection (``project_l1_box``).

Step size and sparsity are revisited at APGD's checkpoints (fractions p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) of the budget): k becomes ||delta_best||_0 / 1.5 (as a
fraction of d); a sample whose best point got sparser restarts from it with the full step eps,
the others divide their step by 1.5, within [eps/10, eps]. Like l1-APGD there is no momentum by
default (``momentum`` < 1 mixes in the previous move as APGD does for l_inf / l_2). The random start
projects a Gaussian onto the feasible set, so it starts on the l1 sphere (or the box).

Returns the highest-loss point (what adversarial training wants); evaluation uses pyautoattack.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rws.attacks._common import loss_and_grad, project, random_init
from rws.attacks.l1_projection import project_l1_box
from rws.attacks.pgd import Attack
from rws.attacks.threat import ThreatModel


def apgd_checkpoints(n_iter: int) -> list[int]:
    """Iteration indices at which APGD revisits its step size."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * n_iter) for q in p[1:] if q < 1 and math.ceil(q * n_iter) > 0})


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


class L1APGD(Attack):
    def __init__(self, threat: ThreatModel | dict, steps: int = 10, step_size: float = 1.0,
                 sparsity: float = 0.2, momentum: float = 1.0,
                 random_start: bool = True, loss: str = "ce", model_mode: str = "eval",
                 generator: torch.Generator | None = None) -> None:
        super().__init__(threat, model_mode, generator)
        if self.threat.norm != "l1":
            raise ValueError(f"L1APGD is an l1 attack, got {self.threat.norm}")
        self.steps = int(steps)
        self.step_size = float(step_size)  # initial eta, relative to eps
        self.sparsity = float(sparsity)    # initial fraction of coordinates moved per step
        self.momentum = float(momentum)  # weight of the new step; 1.0 = no momentum, as in l1-APGD
        self.random_start, self.loss = random_start, loss

    def _direction(self, grad: torch.Tensor, x_adv: torch.Tensor, k_frac: torch.Tensor) -> torch.Tensor:
        bsz = grad.shape[0]
        g = grad.flatten(1)
        xa = x_adv.flatten(1)
        # Coordinates pinned at a box face whose gradient pushes further out cannot move.
        blocked = ((xa <= 1e-10) & (g < 0)) | ((xa >= 1 - 1e-10) & (g > 0))
        mag = g.abs().masked_fill(blocked, 0.0)
        d = mag.shape[1]
        k = (k_frac * d).ceil().long().clamp(1, d)
        # Per-sample top-k: threshold at the k-th largest magnitude.
        thr = mag.sort(1, descending=True).values.gather(1, (k - 1)[:, None])
        sel = (mag >= thr) & (mag > 0)
        s = g.sign() * sel
        s = s / s.abs().sum(1, keepdim=True).clamp_min(1.0)
        return s.view_as(grad).reshape(bsz, *grad.shape[1:])

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = self.threat
        bsz, d = x.shape[0], x[0].numel()
        delta = random_init(x, t, self.generator) if self.random_start else torch.zeros_like(x)
        x_adv = x + delta
        loss, grad, _ = loss_and_grad(model, x_adv, y, self.loss)
        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()

        eta_max = self.step_size * t.eps
        eta = torch.full((bsz,), eta_max, device=x.device, dtype=x.dtype)
        k_frac = torch.full((bsz,), self.sparsity, device=x.device, dtype=x.dtype)
        checkpoints = set(apgd_checkpoints(self.steps))
        nnz_at_cp = torch.full((bsz,), float(d), device=x.device)
        x_prev = x_adv.clone()

        for i in range(self.steps):
            z = x_adv + _bcast(eta, x) * self._direction(grad, x_adv, k_frac)
            z = x + project_l1_box(x, z - x, t.eps)
            if i > 0 and self.momentum < 1:
                # APGD's momentum: a convex mix of the projected step and the previous move.
                a = self.momentum
                z = x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev)
                z = x + project(x, z - x, t)
            x_prev, x_adv = x_adv, z
            loss, grad, _ = loss_and_grad(model, x_adv, y, self.loss)
            better = loss > loss_best
            x_best[better], loss_best[better], grad_best[better] = x_adv[better], loss[better], grad[better]

            if i + 1 in checkpoints:
                # Sparsity follows the best point: move about as many coordinates as it uses
                # (divided by 1.5 to keep pushing towards sparser solutions).
                nnz = ((x_best - x).flatten(1).abs() > 1e-12).sum(1).float()
                k_frac = (nnz / d / 1.5).clamp(1.0 / d, 1.0)
                # A sparser best point means the current scale is off: restart from it with the full
                # step; otherwise shrink the step to refine the current region.
                sparser = nnz < 0.95 * nnz_at_cp
                eta = torch.where(sparser, torch.full_like(eta, eta_max), eta / 1.5).clamp(eta_max / 10, eta_max)
                x_adv[sparser], grad[sparser] = x_best[sparser], grad_best[sparser]
                x_prev[sparser] = x_best[sparser]
                nnz_at_cp = nnz
        return x_best
