"""Single-step l_inf adversarial training attacks.

FGSM-RS ("Fast is better than free", Wong et al. 2020): uniform start in the eps-ball, one signed
gradient step of 1.25 eps, projection back onto the ball.
N-FGSM (de Jorge et al. 2022): a larger noise start (uniform in [-2 eps, 2 eps]), a step of eps and
*no* projection onto the eps-ball: the effective perturbation can reach 3 eps, which is what avoids
catastrophic overfitting without extra cost. The result is still clipped to the [0, 1] image box.
"""

from __future__ import annotations

import torch
from torch import nn

from rws.attacks._common import loss_and_grad, project, rand_like
from rws.attacks.pgd import Attack
from rws.attacks.threat import ThreatModel


class _OneStep(Attack):
    def __init__(self, threat: ThreatModel | dict, model_mode: str = "eval",
                 generator: torch.Generator | None = None) -> None:
        super().__init__(threat, model_mode, generator)
        if self.threat.norm != "linf":
            raise ValueError(f"{type(self).__name__} is an l_inf attack, got {self.threat.norm}")


class FGSMRS(_OneStep):
    """``step_size`` and ``init_radius`` (the half-width of the uniform start) are relative to eps."""

    def __init__(self, threat: ThreatModel | dict, step_size: float = 1.25, model_mode: str = "eval",
                 generator: torch.Generator | None = None, init_radius: float = 1.0) -> None:
        super().__init__(threat, model_mode, generator)
        self.step_size, self.init_radius = float(step_size), float(init_radius)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = self.threat.eps
        # init_radius 1.0 multiplies eps by exactly 1: the default start is bit-identical to U(-eps, eps).
        delta = project(x, (2 * rand_like(x, self.generator) - 1) * (self.init_radius * eps), self.threat)
        _, grad, _ = loss_and_grad(model, x + delta, y)
        return x + project(x, delta + self.step_size * eps * grad.sign(), self.threat)


class NFGSM(_OneStep):
    """``noise`` (the init radius: the start is U(-noise eps, noise eps)) and ``step_size`` are relative to eps."""

    def __init__(self, threat: ThreatModel | dict, noise: float = 2.0, step_size: float = 1.0,
                 model_mode: str = "eval", generator: torch.Generator | None = None) -> None:
        super().__init__(threat, model_mode, generator)
        self.noise, self.step_size = float(noise), float(step_size)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eps = self.threat.eps
        delta = (2 * rand_like(x, self.generator) - 1) * (self.noise * eps)
        _, grad, _ = loss_and_grad(model, (x + delta).clamp(0, 1), y)
        return (x + delta + self.step_size * eps * grad.sign()).clamp(0, 1)
