"""l1-APGD (Croce & Hein 2021, "Mind the box: l1-APGD for sparse adversarial attacks").

Why not plain PGD for l1: the steepest l1 ascent direction moves a single coordinate, which is far
too slow, while a dense (l2-like) step is immediately undone by the l1 projection. l1-APGD instead
steps along the signs of the top-k gradient coordinates and lets k follow the sparsity of the best
point found so far. Semantics follow AutoAttack's APGD-L1 (``autoattack/autopgd_base.py``, norm "L1"):

- the step moves the coordinates whose |gradient| is at least the one of rank floor((1 - k) d) (ties
  included) along their signs, scaled to l1 norm eta, then projects exactly onto the l1 ball
  intersected with the image box (``project_l1_box``, which also keeps the step inside [0, 1]);
- every max(floor(0.04 N), 1) iterations (N = ``steps``; so after every iteration for N < 50, *not*
  on the l_inf / l_2 checkpoint schedule 0.22, 0.41, ... of the budget) k becomes
  ||delta_best||_0 / (1.5 d); a sample whose best point got sparser (||delta_best||_0 below 0.95 of its
  value at the previous check) restarts from the best point with the full step eta = step_size * eps,
  the others divide their step by 1.5, within [eta / 10, eta]. There is no step halving on loss
  oscillation (that is the l_inf / l_2 rule);
- initial k = ``sparsity`` = 0.2 (AutoAttack's value; E-AT's training attack starts at 0.05 and without
  random start, ``method=adversarial_eat``), eta = ``step_size`` * eps (eps by default), no momentum
  (``momentum`` < 1 mixes in the previous move as APGD does for l_inf / l_2); the random start projects a
  Gaussian onto the feasible set (the same draw as AutoAttack's for the same seed on CPU).

Until this schedule was adopted the checks ran on the l_inf / l_2 checkpoints, which made the attack
much weaker at small budgets (``benchmarks/bench_l1_apgd.py``, small_cnn on digits, eps 12: robust
accuracy 61.5 / 36.0 at 10 / 20 steps vs AutoAttack's 37.5 / 20.0; now 39.0 / 19.5).

Returns the highest-loss point (what adversarial training wants); evaluation uses pyautoattack.
``last_correct`` holds, after a call, whether each example was classified correctly at every point the
attack evaluated (start included): the attack's own robust accuracy (E-AT samples norms from it).
"""

from __future__ import annotations

import torch
from torch import nn

from rws.attacks._common import loss_and_grad, project, random_init
from rws.attacks.l1_projection import project_l1_box
from rws.attacks.pgd import Attack
from rws.attacks.threat import ThreatModel


def l1_check_interval(n_iter: int) -> int:
    """Iterations between two step-size / sparsity checks of AutoAttack's APGD-L1: max(floor(0.04 N), 1).

    Unlike APGD for l_inf / l_2 (checkpoints at 0.22, 0.41, ... of the budget), the l1 version revisits
    its step size and k at this fixed interval, i.e. after every iteration for N < 50."""
    return max(int(0.04 * n_iter), 1)


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
        self.last_correct: torch.Tensor | None = None

    def _direction(self, grad: torch.Tensor, k_frac: torch.Tensor) -> torch.Tensor:
        g = grad.flatten(1)
        mag = g.abs()
        d = mag.shape[1]
        # AutoAttack's top-k: threshold at the magnitude of rank floor((1 - k) d) in ascending order, keep
        # every coordinate at or above it (ties included), step along their signs with unit l1 norm.
        rank = ((1 - k_frac) * d).long().clamp(0, d - 1)
        thr = mag.sort(1).values.gather(1, rank[:, None])
        s = g.sign() * (mag >= thr)
        s = s / (s.abs().sum(1, keepdim=True) + 1e-10)
        return s.view_as(grad)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = self.threat
        bsz, d = x.shape[0], x[0].numel()
        delta = random_init(x, t, self.generator) if self.random_start else torch.zeros_like(x)
        x_adv = x + delta
        loss, grad, logits = loss_and_grad(model, x_adv, y, self.loss)
        correct = logits.argmax(1) == y
        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()

        eta_max = self.step_size * t.eps
        eta = torch.full((bsz,), eta_max, device=x.device, dtype=x.dtype)
        k_frac = torch.full((bsz,), self.sparsity, device=x.device, dtype=x.dtype)
        every = l1_check_interval(self.steps)
        nnz_old = torch.full((bsz,), float(d), device=x.device)
        x_prev = x_adv.clone()

        for i in range(self.steps):
            z = x_adv + _bcast(eta, x) * self._direction(grad, k_frac)
            z = x + project_l1_box(x, z - x, t.eps)
            if i > 0 and self.momentum < 1:
                # APGD's momentum: a convex mix of the projected step and the previous move.
                a = self.momentum
                z = x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev)
                z = x + project(x, z - x, t)
            x_prev, x_adv = x_adv, z
            loss, grad, logits = loss_and_grad(model, x_adv, y, self.loss)
            correct &= logits.argmax(1) == y
            better = loss > loss_best
            x_best[better], loss_best[better], grad_best[better] = x_adv[better], loss[better], grad[better]

            if (i + 1) % every == 0:
                # AutoAttack's APGD-L1 check: k follows the sparsity of the best point (its number of
                # nonzero coordinates / 1.5, pushing towards sparser solutions); a sample whose best
                # point got sparser (by 5 % since the last check) restarts from it with the full step,
                # the others divide their step by 1.5, within [eps_step / 10, eps_step].
                nnz = ((x_best - x).flatten(1) != 0).sum(1).float()
                sparser = nnz / nnz_old < 0.95
                k_frac = nnz / d / 1.5
                eta = torch.where(sparser, torch.full_like(eta, eta_max), eta / 1.5).clamp(eta_max / 10, eta_max)
                nnz_old = nnz
                x_adv[sparser], grad[sparser] = x_best[sparser], grad_best[sparser]
                x_prev[sparser] = x_best[sparser]
        self.last_correct = correct
        return x_best
