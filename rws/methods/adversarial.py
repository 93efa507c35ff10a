"""Adversarial training in one or several l_p threat models.

Modes (``mode``):
- ``single``: one threat model (Madry et al. 2018); ``attack: fgsm_rs | n_fgsm`` for the cheap
  one-step l_inf variants.
- ``max``: MAX (Tramer & Boneh 2019): attack every threat model, train each example on the
  perturbation with the highest loss.
- ``sat``: SAT: one threat model per batch, uniformly at random.
- ``eat``: E-AT (Croce & Hein 2022): one threat model per batch, sampled with probability
  proportional to its running training robust error (an EMA per norm), so the norm the model is
  currently worst at gets more batches.

Fine-tuning a robust export to another threat model (theta_p -> theta_q) is ``init=<export>`` with
this method and a short schedule; see docs/attacks.md.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from rws.attacks import build_attack, parse_threats
from rws.attacks.modes import preserve_modes
from rws.methods.base import ClassifierModule
from rws.methods.mixing import hard_labels
from rws.methods.step import StepOutput

MODES = ("single", "max", "sat", "eat")


class AdversarialModule(ClassifierModule):
    def __init__(self, model: dict, threats: Sequence[Any] | None = None, mode: str = "single",
                 attack: str = "pgd", attack_steps: int = 10, step_size: float | None = None,
                 clean_weight: float = 0.0, dataset_kind: str = "cifar", model_mode: str = "eval",
                 eat_momentum: float = 0.9, seed: int = 0, **kw: Any) -> None:
        threats = threats if threats is not None else [{"norm": "linf", "eps": None}]
        parsed = parse_threats(list(threats), dataset_kind, "train")
        if mode not in MODES:
            raise ValueError(f"method.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "single" and len(parsed) != 1:
            raise ValueError(f"mode=single needs exactly one threat, got {len(parsed)}; use max, sat or eat")
        if not 0.0 <= clean_weight <= 1.0:
            raise ValueError(f"clean_weight must be in [0, 1], got {clean_weight}")
        # Hyperparameters hold the resolved radii as plain dicts so a checkpoint records what ran.
        super().__init__(model=model, threats=[{"norm": t.norm, "eps": t.eps} for t in parsed], mode=mode,
                         attack=attack, attack_steps=int(attack_steps), step_size=step_size,
                         clean_weight=float(clean_weight), dataset_kind=dataset_kind, model_mode=model_mode,
                         eat_momentum=float(eat_momentum), seed=int(seed), **kw)
        self.threats, self.mode, self.clean_weight = parsed, mode, float(clean_weight)
        self.eat_momentum = float(eat_momentum)
        # A private generator: random starts and norm sampling repeat per seed and do not consume
        # the global RNG used by data augmentation.
        self._gen = torch.Generator().manual_seed(int(seed))
        self.attacks = [build_attack(t, attack=attack, steps=attack_steps, step_size=step_size,
                                     model_mode=model_mode, generator=self._gen) for t in parsed]
        self.model_mode = model_mode
        norms = [t.norm for t in parsed]
        self.threat_keys = [t.norm if norms.count(t.norm) == 1 else f"{t.norm}_{i}" for i, t in enumerate(parsed)]
        # Running training robust error per threat (E-AT); starts at 1 so sampling starts uniform.
        self.register_buffer("robust_error_ema", torch.ones(len(parsed)), persistent=True)

    # ----- norm selection -------------------------------------------------------------------
    def sampling_probs(self) -> torch.Tensor:
        """Per-threat probability for the next batch (sat: uniform; eat: proportional to error)."""
        k = len(self.threats)
        if self.mode == "eat":
            err = self.robust_error_ema.detach().float().cpu().clamp_min(1e-3)
            return err / err.sum()
        return torch.full((k,), 1.0 / k)

    def _pick_threat(self) -> int:
        if self.mode == "single":
            return 0
        return int(torch.multinomial(self.sampling_probs(), 1, generator=self._gen))

    def update_error_ema(self, j: int, error: float) -> None:
        m = self.eat_momentum
        self.robust_error_ema[j] = m * self.robust_error_ema[j] + (1 - m) * float(error)

    def _loss_per_threat(self, xs: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        # Scored in the attack's model mode without grad: choosing the worst norm must not touch
        # BN statistics or parameter gradients.
        with torch.no_grad(), preserve_modes(self.model, self.model_mode):
            return torch.stack([F.cross_entropy(self.model(xa), y, reduction="none") for xa in xs], 1)

    # ----- the step ---------------------------------------------------------------------------
    def adversarial_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_adv, threat index per example): max attacks in every threat model and keeps each
        example's highest-loss perturbation; single/sat/eat attack the whole batch in one threat."""
        labels = hard_labels(y)  # attacks take class indices; y may be a mixed batch's soft targets
        if self.mode == "max":
            xs = [atk(self.model, x, labels) for atk in self.attacks]
            worst = self._loss_per_threat(xs, y).argmax(1)
            x_adv = torch.stack(xs, 1)[torch.arange(len(y), device=x.device), worst]
            return x_adv, worst
        j = self._pick_threat()
        ids = torch.full((len(y),), j, device=x.device, dtype=torch.long)
        return self.attacks[j](self.model, x, labels), ids

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        x_adv, ids = self.adversarial_batch(x, y)
        out = self.supervised_step(x_adv, y)
        if self.clean_weight > 0:
            clean = self.loss(self.model(x), y)
            out.log("train/clean_loss", clean, len(y))
            out.loss = (1 - self.clean_weight) * out.loss + self.clean_weight * clean
        self._record_threat_stats(out, ids)
        return out

    def _record_threat_stats(self, out: StepOutput, ids: torch.Tensor) -> None:
        """Robust accuracy per threat model (and the E-AT error update it feeds); for max/sat/eat
        the fraction of examples each threat trained on; for eat the running errors."""
        correct = (out.logits.detach().argmax(1) == hard_labels(out.target)).float()
        for j, key in enumerate(self.threat_keys):
            sel = ids == j
            n = int(sel.sum())
            if n == 0:
                continue
            acc = correct[sel].mean()
            out.log(f"train/adv_acc_{key}", acc, n)
            if self.mode == "eat":
                self.update_error_ema(j, 1.0 - float(acc))
        if self.mode in ("max", "sat", "eat"):
            for j, key in enumerate(self.threat_keys):
                out.log(f"train/frac_{key}", (ids == j).float().mean(), len(ids))
            if self.mode == "eat":
                for j, key in enumerate(self.threat_keys):
                    # A copy: the buffer keeps moving after this step.
                    out.log(f"train/eat_err_{key}", self.robust_error_ema[j].clone())
