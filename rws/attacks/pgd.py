"""Projected gradient descent (Madry et al. 2018) for l_inf and l_2, plus a torchattacks-backed
variant used to cross-check ours.

Attacks are callables ``attack(model, x, y) -> x_adv`` working in [0, 1] pixel space. They run the
model in eval mode by default: in train mode every attack forward pass would update BatchNorm's
running statistics with adversarial batches (10 extra updates per step for PGD-10) and normalize
each attack step with the statistics of the current perturbed batch, which makes the attack a
function of the batch composition. ``model_mode="train"`` reproduces implementations that attack in
train mode; either way every module's flag is restored afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rws.attacks._common import loss_and_grad, lp_normalize, project, random_init, random_other_class
from rws.attacks.modes import preserve_modes
from rws.attacks.threat import ThreatModel


class Attack:
    """Base: threat model, model mode during the attack, optional generator for random starts."""

    def __init__(self, threat: ThreatModel | dict, model_mode: str = "eval",
                 generator: torch.Generator | None = None) -> None:
        self.threat = ThreatModel.from_config(threat)
        if model_mode not in ("eval", "train"):
            raise ValueError(f"model_mode must be 'eval' or 'train', got {model_mode!r}")
        self.model_mode = model_mode
        self.generator = generator

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with preserve_modes(model, self.model_mode):
            x_adv = self.perturb(model, x.detach(), y.detach())
        return x_adv.detach()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.threat}, model_mode={self.model_mode})"


class PGD(Attack):
    """PGD with a random start; ``step_size`` is relative to eps (default 2.5 / steps).

    ``targeted=True`` (the targeted threat model of Xie et al. 2019 / Sec. 5.3 of the adapters
    paper): every example gets a random target class other than its label, drawn from the attack's
    generator (after the random start) from the logits of the first step, so no extra forward pass;
    each step then *descends* the cross-entropy of the target instead of ascending the label's loss.
    The targets of the last call are kept in ``last_targets`` for inspection.
    """

    def __init__(self, threat: ThreatModel | dict, steps: int = 10, step_size: float | None = None,
                 random_start: bool = True, loss: str = "ce", model_mode: str = "eval",
                 generator: torch.Generator | None = None, targeted: bool = False) -> None:
        super().__init__(threat, model_mode, generator)
        if self.threat.norm == "l1":
            raise ValueError("PGD supports linf and l2; use L1APGD for l1 (see rws.attacks.build_attack)")
        if targeted and loss != "ce":
            raise ValueError(f"targeted PGD descends the target's cross-entropy; loss must be 'ce', got {loss!r}")
        self.steps = int(steps)
        # 2.5 * eps / steps lets the iterate cross the ball more than once, as in Madry et al.
        self.step_size = float(step_size) if step_size is not None else 2.5 / max(self.steps, 1)
        self.random_start, self.loss, self.targeted = random_start, loss, bool(targeted)
        self.last_targets: torch.Tensor | None = None

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = self.threat
        delta = random_init(x, t, self.generator) if self.random_start else torch.zeros_like(x)
        alpha = self.step_size * t.eps
        target: torch.Tensor | None = None
        for _ in range(self.steps):
            if self.targeted:
                grad, target = self._target_grad(model, x + delta, y, target)
                direction = -lp_normalize(grad, t.norm)
            else:
                _, grad, _ = loss_and_grad(model, x + delta, y, self.loss)
                direction = lp_normalize(grad, t.norm)
            delta = project(x, delta + alpha * direction, t)
        self.last_targets = target
        return x + delta

    def _target_grad(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor,
                     target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(d CE(model(x_adv), target) / d x_adv, target); the target is drawn on the first call,
        when the logits tell the number of classes."""
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_adv)
            if target is None:
                target = random_other_class(y, logits.shape[1], self.generator)
            loss = F.cross_entropy(logits, target, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
        return grad.detach(), target


class TorchattacksPGD(Attack):
    """``torchattacks.PGD`` / ``PGDL2`` behind our calling convention: built per call on the input's
    device, modes restored exactly (torchattacks leaves every submodule in train mode)."""

    def __init__(self, threat: ThreatModel | dict, steps: int = 10, step_size: float | None = None,
                 random_start: bool = True, model_mode: str = "eval",
                 generator: torch.Generator | None = None) -> None:
        super().__init__(threat, model_mode, generator)
        if self.threat.norm == "l1":
            raise ValueError("torchattacks has no eps-bounded l1 attack; use L1APGD")
        self.steps = int(steps)
        self.step_size = float(step_size) if step_size is not None else 2.5 / max(self.steps, 1)
        self.random_start = random_start

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torchattacks

        with preserve_modes(model, self.model_mode):
            t = self.threat
            cls = torchattacks.PGD if t.norm == "linf" else torchattacks.PGDL2
            atk = cls(model, eps=t.eps, alpha=self.step_size * t.eps, steps=self.steps,
                      random_start=self.random_start)
            atk.device = x.device
            if self.model_mode == "train":
                atk.set_model_training_mode(model_training=True)
            x_adv = atk(x.detach(), y.detach())
        return x_adv.detach()
