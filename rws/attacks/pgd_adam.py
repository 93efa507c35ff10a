"""PGD with Adam: the PGD-40 evaluation attack of the adapters paper (Appendix A: "For PGD40 we
change the optimizer to Adam with step-size 0.1 decayed by 10x at steps 20 and 30").

The paper gives only the optimizer, the step size and its schedule. What it leaves open is chosen
here to match the public evaluation code of its authors' group (DeepMind's adversarial_robustness
eval: PGD-40, Adam, piecewise-constant 0.1 -> 0.01 -> 0.001, margin loss), and every choice is an
option:

- ``betas=(0.9, 0.999)``, ``adam_eps=1e-9``: Adam's usual moments, the tiny epsilon of that code
  (gradients of a margin loss in pixel space can be small; a larger epsilon would damp them).
- ``update="raw"``: Adam runs on the raw input gradient (per-coordinate normalisation is Adam's own);
  ``"sign"`` feeds it the gradient's sign instead (Adam on FGSM directions).
- ``loss="margin"``: max_{j != y} z_j - z_y, ascended (``"ce"`` and ``"dlr"`` also work).
- ``random_start=True``: uniform start in the eps-ball; the point returned is the last iterate
  (``keep_best=True`` returns, per example, the first iterate that was misclassified instead).
- The step (Adam's learning rate) is in pixel units, not relative to eps: 0.1 is far larger than
  4/255, so the first steps jump to the faces of the ball (Adam's first update is lr * sign(g)) and
  the decayed steps (0.01, 0.001) refine inside it. Every iterate is projected onto the threat set.
  ``milestones`` default to 1/2 and 3/4 of ``steps`` (20 and 30 for 40 steps), ``gamma=0.1``.

Works for linf and l2 (the projection is the threat's); l1 needs the sparse l1-APGD instead.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from rws.attacks._common import loss_and_grad, project, random_init
from rws.attacks.pgd import Attack
from rws.attacks.threat import ThreatModel

UPDATES = ("raw", "sign")


class PGDAdam(Attack):
    """Projected gradient ascent whose step is an Adam update with a step-decay schedule."""

    def __init__(self, threat: ThreatModel | dict, steps: int = 40, lr: float = 0.1,
                 milestones: Sequence[int] | None = None, gamma: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-9, update: str = "raw",
                 loss: str = "margin", random_start: bool = True, keep_best: bool = False,
                 model_mode: str = "eval", generator: torch.Generator | None = None) -> None:
        super().__init__(threat, model_mode, generator)
        if self.threat.norm == "l1":
            raise ValueError("PGDAdam supports linf and l2; use L1APGD for l1 (see rws.attacks.build_attack)")
        if update not in UPDATES:
            raise ValueError(f"PGDAdam update must be one of {', '.join(UPDATES)}, got {update!r}")
        self.steps = int(steps)
        if self.steps < 1:
            raise ValueError(f"PGDAdam steps must be >= 1, got {steps}")
        self.lr, self.gamma = float(lr), float(gamma)
        self.milestones = tuple(int(m) for m in milestones) if milestones is not None else \
            (self.steps // 2, (3 * self.steps) // 4)
        self.betas = (float(betas[0]), float(betas[1]))
        self.adam_eps, self.update, self.loss = float(adam_eps), update, loss
        self.random_start, self.keep_best = bool(random_start), bool(keep_best)

    def lr_at(self, step: int) -> float:
        """The step size of 0-based step ``step``: ``lr * gamma ** (milestones passed)``."""
        return self.lr * self.gamma ** sum(step >= m for m in self.milestones)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = self.threat
        delta = random_init(x, t, self.generator) if self.random_start else torch.zeros_like(x)
        m, v = torch.zeros_like(x), torch.zeros_like(x)
        b1, b2 = self.betas
        best = found = None
        if self.keep_best:
            best, found = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for k in range(self.steps):
            _, grad, logits = loss_and_grad(model, x + delta, y, self.loss)
            if self.keep_best:
                self._record(best, found, x + delta, logits, y)
            g = grad.sign() if self.update == "sign" else grad
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            m_hat, v_hat = m / (1 - b1 ** (k + 1)), v / (1 - b2 ** (k + 1))
            delta = project(x, delta + self.lr_at(k) * m_hat / (v_hat.sqrt() + self.adam_eps), t)
        x_adv = x + delta
        if not self.keep_best:
            return x_adv
        with torch.no_grad():
            self._record(best, found, x_adv, model(x_adv), y)
        return torch.where(found.view(-1, *([1] * (x.dim() - 1))), best, x_adv)

    @staticmethod
    def _record(best: torch.Tensor, found: torch.Tensor, x_adv: torch.Tensor, logits: torch.Tensor,
                y: torch.Tensor) -> None:
        """Keep the first misclassified iterate of each example (in place)."""
        new = (logits.argmax(1) != y) & ~found
        best[new] = x_adv[new].detach()
        found |= new

    def __repr__(self) -> str:
        return (f"PGDAdam({self.threat}, steps={self.steps}, lr={self.lr}, milestones={self.milestones}, "
                f"update={self.update}, loss={self.loss}, model_mode={self.model_mode})")
