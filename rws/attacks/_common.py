"""Helpers shared by the attacks: losses, gradients, noise and the l_p geometry."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rws.attacks.l1_projection import project_l1_box
from rws.attacks.threat import ThreatModel


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "dlr":
        # Difference of logits ratio (Croce & Hein 2020): scale invariant, so it does not saturate
        # on over-confident models the way CE does.
        srt = logits.sort(1).values
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        top_is_y = logits.argmax(1) == y
        z_other = torch.where(top_is_y, srt[:, -2], srt[:, -1])
        denom = srt[:, -1] - srt[:, -3] + 1e-12 if logits.shape[1] > 2 else srt[:, -1].abs() + 1e-12
        return -(z_y - z_other) / denom
    if loss == "margin":
        # Carlini-Wagner style margin: highest other logit minus the true logit (> 0 iff misclassified).
        # Unbounded and not saturating like CE, the usual loss of PGD-with-Adam evaluations.
        z_y = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
        return other - z_y
    raise ValueError(f"unknown attack loss {loss!r}; use 'ce', 'dlr' or 'margin'")


def loss_and_grad(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor,
                  loss: str = "ce") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-sample loss, d loss / d x_adv, logits). Only the input gradient is computed, so no
    parameter ``.grad`` is touched and an attack inside a training step cannot leak gradients."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        per = per_sample_loss(logits, y, loss)
        (grad,) = torch.autograd.grad(per.sum(), x_adv)
    return per.detach(), grad.detach(), logits.detach()


def rand_like(x: torch.Tensor, generator: torch.Generator | None, kind: str = "uniform") -> torch.Tensor:
    """Noise drawn on the generator's device (so a CPU generator works for CUDA inputs)."""
    dev = generator.device if generator is not None else x.device
    fn = torch.rand if kind == "uniform" else torch.randn
    return fn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


def random_other_class(y: torch.Tensor, num_classes: int, generator: torch.Generator | None) -> torch.Tensor:
    """A uniformly random class other than ``y`` per example (the random target of a targeted
    attack): ``(y + U{1..K-1}) mod K`` can never be ``y``."""
    if num_classes < 2:
        raise ValueError(f"a targeted attack needs at least 2 classes, the model has {num_classes}")
    dev = generator.device if generator is not None else y.device
    offset = torch.randint(1, num_classes, y.shape, generator=generator, device=dev).to(y.device)
    return (y + offset) % num_classes


def lp_normalize(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit l_p norm for gradient ``g`` (linf: sign; l2: g/||g||)."""
    if norm == "linf":
        return g.sign()
    if norm == "l2":
        n = g.flatten(1).norm(dim=1).clamp_min(1e-12)
        return g / n.view(-1, *([1] * (g.dim() - 1)))
    raise ValueError(f"no dense steepest direction for {norm}; use the l1-APGD attack")


def project(x: torch.Tensor, delta: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project a perturbation onto the threat's ball intersected with the [0, 1] box."""
    if threat.norm == "l1":
        return project_l1_box(x, delta, threat.eps)
    if threat.norm == "linf":
        delta = delta.clamp(-threat.eps, threat.eps)
    else:
        n = delta.flatten(1).norm(dim=1)
        delta = delta * (threat.eps / n.clamp_min(1e-12)).clamp(max=1.0).view(-1, *([1] * (delta.dim() - 1)))
    # Clipping into the box only shrinks |delta_i| coordinate-wise, so it keeps the norm bound
    # (for linf and l2 this composition is the exact projection onto the intersection).
    return (x + delta).clamp(0.0, 1.0) - x


def random_init(x: torch.Tensor, threat: ThreatModel, generator: torch.Generator | None) -> torch.Tensor:
    """A random perturbation inside the threat set."""
    if threat.norm == "linf":
        delta = (2 * rand_like(x, generator) - 1) * threat.eps
    elif threat.norm == "l2":
        # Random direction, radius uniform in [0, eps]: spreads starts through the ball's interior.
        d = rand_like(x, generator, "normal")
        n = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        r = rand_like(n, generator) * threat.eps
        delta = d * (r / n).view(-1, *([1] * (x.dim() - 1)))
    else:
        # A full Gaussian projected onto the l1-ball and box: the exact projection soft-thresholds
        # it, so the start is already sparse and on the l1 sphere, like l1-optimal perturbations.
        delta = rand_like(x, generator, "normal")
    return project(x, delta, threat)
