"""Co-training with adapters (Eq. 2 of "Revisiting adapters with adversarial training"):

    loss = alpha * CE(f(x; psi + phi_clean), y) + (1 - alpha) * CE(f(x + delta; psi + phi_robust), y)

with delta found by the attack while the model is in its robust mode (the inner max of Eq. 2 is
over the robust-mode loss). The model must declare the modes contract (rws.models.contracts) with
the modes ``clean`` and ``robust``: an adapter model (``model.adapter=cls_token``, ...; ``none``
shares every parameter and is Eq. 1). ``alpha=1`` is nominal training of the clean mode (no attack
is run), ``alpha=0`` adversarial training of the robust mode (no clean pass).

Both passes run before one backward: a step costs one clean forward, the attack, one adversarial
forward and a single backward through both graphs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rws.attacks import build_attack
from rws.attacks.threat import ThreatModel
from rws.methods.base import ClassifierModule
from rws.methods.mixing import hard_labels
from rws.methods.step import StepOutput
from rws.models.contracts import has_modes, mode_names, using_mode

CLEAN_MODE, ROBUST_MODE = "clean", "robust"


class CoTrainModule(ClassifierModule):
    """``alpha`` weights the clean-mode loss; ``threat``/``attack``/``attack_steps``/``step_size``/
    ``init_radius``/``targeted``/``model_mode`` configure the robust-mode attack (see
    rws.attacks.build_attack; ``step_size`` and ``init_radius`` are relative to eps); ``seed`` seeds
    the private generator of the attack's random starts and targets."""

    def __init__(self, model: dict, alpha: float = 0.5, threat: Any = None, attack: str = "pgd",
                 attack_steps: int = 2, step_size: float | None = None, init_radius: float | None = None,
                 targeted: bool = False, model_mode: str = "eval", dataset_kind: str = "cifar",
                 seed: int = 0, **kw: Any) -> None:
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"method.alpha must be in [0, 1] (1: nominal, 0: adversarial training), got {alpha}")
        parsed = ThreatModel.from_config(threat if threat is not None else {"norm": "linf", "eps": None},
                                         dataset_kind, "train")
        # Built before the model so a bad attack setting fails without building a network.
        gen = torch.Generator().manual_seed(int(seed))
        atk = build_attack(parsed, attack=attack, steps=int(attack_steps), step_size=step_size,
                           model_mode=model_mode, generator=gen, targeted=bool(targeted),
                           init_radius=init_radius)
        # Hyperparameters hold the resolved radius so a checkpoint records what ran.
        super().__init__(model=model, alpha=alpha, threat={"norm": parsed.norm, "eps": parsed.eps},
                         attack=attack, attack_steps=int(attack_steps), step_size=step_size,
                         init_radius=init_radius, targeted=bool(targeted), model_mode=model_mode,
                         dataset_kind=dataset_kind, seed=int(seed), **kw)
        self._check_modes()
        # A private generator (as AdversarialModule's): starts and targets repeat per seed and leave
        # the global RNG to data augmentation and dropout.
        self._gen = gen
        self.alpha, self.threat, self.attack = alpha, parsed, atk

    def _check_modes(self) -> None:
        name = self.model_cfg.get("name", type(self.model).__name__)
        if not has_modes(self.model):
            raise ValueError(f"method=cotrain needs a model with clean and robust modes, model {name!r} has "
                             f"none: set model.adapter (e.g. model.adapter=cls_token; model.adapter=none "
                             f"shares every parameter)")
        missing = [m for m in (CLEAN_MODE, ROBUST_MODE) if m not in mode_names(self.model)]
        if missing:
            raise ValueError(f"method=cotrain needs the modes {CLEAN_MODE!r} and {ROBUST_MODE!r}, model {name!r} "
                             f"has {', '.join(mode_names(self.model))}; check model.adapter")

    def adversarial_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x + delta, delta found with the model in robust mode (the mode is restored afterwards)."""
        with using_mode(self.model, ROBUST_MODE):
            return self.attack(self.model, x, hard_labels(y))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        n, labels = len(y), hard_labels(y)  # y: class indices, or soft targets of a mixed batch
        losses: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        logs: list[tuple[str, torch.Tensor]] = []
        if self.alpha > 0:
            with using_mode(self.model, CLEAN_MODE):
                clean_logits = self.model(x)
            clean = self.loss(clean_logits, y)
            losses.append(self.alpha * clean)
            logits.append(clean_logits)
            logs += [("train/clean_loss", clean), ("train/clean_acc", _accuracy(clean_logits, labels))]
        if self.alpha < 1:
            x_adv = self.adversarial_batch(x, y)
            with using_mode(self.model, ROBUST_MODE):
                adv_logits = self.model(x_adv)
            adv = self.loss(adv_logits, y)
            losses.append((1 - self.alpha) * adv)
            logits.append(adv_logits)
            logs += [("train/adv_loss", adv), ("train/adv_acc", _accuracy(adv_logits, labels))]
        loss = losses[0] if len(losses) == 1 else losses[0] + losses[1]
        # train/acc is over every example the loss saw: clean and adversarial, each once.
        out = StepOutput(loss=loss, logits=torch.cat(logits), target=labels.repeat(len(logits)))
        for name, value in logs:
            out.log(name, value, n)
        return out


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(1) == y).float().mean()
