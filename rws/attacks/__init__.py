"""Adversarial attacks in [0, 1] pixel space: threat models, training attacks, robust evaluation.

Every attack is a callable ``attack(model, x, y) -> x_adv`` that takes its device from ``x``,
restores every module's train/eval flag afterwards and touches no parameter gradients.
"""

from __future__ import annotations

import torch

from rws.attacks.l1_apgd import L1APGD
from rws.attacks.l1_projection import project_l1_box
from rws.attacks.modes import module_modes, preserve_modes, restore_modes
from rws.attacks.one_step import FGSMRS, NFGSM
from rws.attacks.pgd import PGD, Attack, TorchattacksPGD
from rws.attacks.threat import NORMS, ThreatModel, canonical_norm, default_eps, parse_threats

ATTACKS = ("pgd", "fgsm_rs", "n_fgsm", "torchattacks")


def build_attack(threat: ThreatModel | dict | str | None = None, attack: str = "pgd", steps: int = 10,
                 step_size: float | None = None, model_mode: str = "eval",
                 generator: torch.Generator | None = None, norm: str | None = None,
                 eps: float | str | None = None, dataset_kind: str = "cifar",
                 purpose: str = "train") -> Attack:
    """The training attack for a threat model: ``pgd`` is PGD for linf/l2 and l1-APGD for l1;
    ``fgsm_rs`` / ``n_fgsm`` are the one-step linf attacks; ``torchattacks`` is torchattacks' PGD.
    ``step_size`` is relative to eps (None: each attack's default). ``norm``/``eps`` may be given
    instead of ``threat`` (eps None: the per-dataset default)."""
    if threat is None:
        if norm is None:
            raise ValueError("build_attack needs a threat or a norm")
        threat = {"norm": norm, "eps": eps}
    t = ThreatModel.from_config(threat, dataset_kind, purpose)
    attack = attack.lower().replace("-", "_")
    kw = {"model_mode": model_mode, "generator": generator}
    if attack == "pgd":
        if t.norm == "l1":
            return L1APGD(t, steps=steps, step_size=1.0 if step_size is None else step_size, **kw)
        return PGD(t, steps=steps, step_size=step_size, **kw)
    if attack == "torchattacks":
        return TorchattacksPGD(t, steps=steps, step_size=step_size, **kw)
    if attack == "fgsm_rs":
        return FGSMRS(t, step_size=1.25 if step_size is None else step_size, **kw)
    if attack == "n_fgsm":
        return NFGSM(t, step_size=1.0 if step_size is None else step_size, **kw)
    raise ValueError(f"unknown attack {attack!r}; expected one of {', '.join(ATTACKS)}")


def __getattr__(name: str):  # evaluation pulls in pyautoattack and tqdm: import it on first use
    if name in ("robust_correct", "union_correct", "evaluate_threats"):
        from rws.attacks import evaluate

        return getattr(evaluate, name)
    raise AttributeError(name)


__all__ = [
    "ATTACKS", "Attack", "FGSMRS", "L1APGD", "NFGSM", "NORMS", "PGD", "ThreatModel", "TorchattacksPGD",
    "build_attack", "canonical_norm", "default_eps", "evaluate_threats", "module_modes", "parse_threats",
    "preserve_modes", "project_l1_box", "restore_modes", "robust_correct", "union_correct",
]
