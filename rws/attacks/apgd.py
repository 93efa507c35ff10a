"""APGD for l_inf and l_2 as a training attack (Croce & Hein 2020), in the form E-AT trains with.

E-AT (Croce & Hein 2022, github.com/fra31/robust-finetuning, ``autopgd_train.py``) attacks each
training batch with APGD-CE: no random start (the attack starts at the clean image), initial step
``2 eps`` (``step_size`` is relative to eps), momentum 0.75 from the second step on, and the APGD
step-size schedule: the first check after max(floor(0.22 N), 1) iterations, the interval then shrinking
by max(floor(0.03 N), 1) down to max(floor(0.06 N), 1). At a check a sample halves its step and restarts
from its best point (and that point's gradient) when the loss increased in at most 75 % of the steps
since the previous check, or when the best loss did not improve since that check and its step was not
halved there. The loss history starts zero-filled, so the first check compares the first iterate's loss
with 0, as the reference does.

Returns each example's highest-loss point. ``last_correct`` holds, after a call, whether each example
was classified correctly at *every* point the attack evaluated (the clean start included): the attack's
own robust accuracy, which E-AT's norm sampling is built on.
"""

from __future__ import annotations

import torch
from torch import nn

from rws.attacks._common import loss_and_grad, lp_normalize, project, random_init
from rws.attacks.pgd import Attack
from rws.attacks.threat import ThreatModel


def apgd_checkpoint_lengths(n_iter: int) -> tuple[int, int, int]:
    """(first interval, minimum interval, decrement) of APGD's l_inf / l_2 step-size checks."""
    return max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)


class APGD(Attack):
    def __init__(self, threat: ThreatModel | dict, steps: int = 10, step_size: float = 2.0,
                 random_start: bool = False, momentum: float = 0.75, rho: float = 0.75, loss: str = "ce",
                 model_mode: str = "eval", generator: torch.Generator | None = None) -> None:
        super().__init__(threat, model_mode, generator)
        if self.threat.norm not in ("linf", "l2"):
            raise ValueError(f"APGD here covers linf and l2, got {self.threat.norm}; l1 is L1APGD")
        self.steps = int(steps)
        self.step_size = float(step_size)  # initial step, relative to eps
        self.momentum = float(momentum)    # weight of the new step from the second step on
        self.rho = float(rho)              # fraction of loss increases below which the step halves
        self.random_start, self.loss = bool(random_start), loss
        self.last_correct: torch.Tensor | None = None

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t, n = self.threat, self.steps
        bsz = x.shape[0]
        shape = (-1, *([1] * (x.dim() - 1)))
        delta = random_init(x, t, self.generator) if self.random_start else torch.zeros_like(x)
        x_adv = x + delta
        loss, grad, logits = loss_and_grad(model, x_adv, y, self.loss)
        correct = logits.argmax(1) == y
        x_best, loss_best, grad_best = x_adv.clone(), loss.clone(), grad.clone()

        eta = torch.full((bsz,), self.step_size * t.eps, device=x.device, dtype=x.dtype)
        interval, min_interval, decrement = apgd_checkpoint_lengths(n)
        since_check = 0
        loss_hist = torch.zeros(n, bsz, device=x.device, dtype=loss.dtype)
        best_at_check = loss_best.clone()
        halved_at_check = torch.ones(bsz, dtype=torch.bool, device=x.device)
        x_prev = x_adv.clone()

        for i in range(n):
            z = x + project(x, x_adv + eta.view(shape) * lp_normalize(grad, t.norm) - x, t)
            if i > 0:
                a = self.momentum
                z = x + project(x, x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev) - x, t)
            x_prev, x_adv = x_adv, z
            loss, grad, logits = loss_and_grad(model, x_adv, y, self.loss)
            correct &= logits.argmax(1) == y
            loss_hist[i] = loss
            better = loss > loss_best
            x_best[better], loss_best[better], grad_best[better] = x_adv[better], loss[better], grad[better]

            since_check += 1
            if since_check == interval:
                # Loss increases over the last `interval` steps; index i - c - 1 = -1 reads the
                # zero-filled last row on the first check, as APGD's reference does.
                ups = sum((loss_hist[i - c] > loss_hist[i - c - 1]).float() for c in range(interval))
                halve = (ups <= interval * self.rho) | (~halved_at_check & (best_at_check >= loss_best))
                halved_at_check, best_at_check = halve, loss_best.clone()
                eta = torch.where(halve, eta / 2, eta)
                x_adv[halve], grad[halve] = x_best[halve], grad_best[halve]
                since_check = 0
                interval = max(interval - decrement, min_interval)
        self.last_correct = correct
        return x_best
