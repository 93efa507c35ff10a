"""Adversarial attacks in [0, 1] pixel space: threat models, training attacks, robust evaluation.

Every attack is a callable ``attack(model, x, y) -> x_adv`` that takes its device from ``x``,
restores every module's train/eval flag afterwards and touches no parameter gradients.
Training attacks come from ``build_attack``; ``PGDAdam`` (rws.attacks.pgd_adam) is the adapters
paper's PGD-40-with-Adam evaluation attack (``pgd40-adam`` in ``robust_correct`` and the suite).
"""

from __future__ import annotations

import torch

from rws.attacks.apgd import APGD
from rws.attacks.l1_apgd import L1APGD
from rws.attacks.l1_projection import project_l1_box
from rws.attacks.modes import module_modes, preserve_modes, restore_modes
from rws.attacks.one_step import FGSMRS, NFGSM
from rws.attacks.pgd import PGD, Attack, TorchattacksPGD
from rws.attacks.pgd_adam import PGDAdam
from rws.attacks.threat import NORMS, ThreatModel, canonical_norm, default_eps, parse_threats

ATTACKS = ("pgd", "apgd", "fgsm_rs", "n_fgsm", "torchattacks")


def build_attack(threat: ThreatModel | dict | str | None = None, attack: str = "pgd", steps: int = 10,
                 step_size: float | None = None, model_mode: str = "eval",
                 generator: torch.Generator | None = None, norm: str | None = None,
                 eps: float | str | None = None, dataset_kind: str = "cifar",
                 purpose: str = "train", targeted: bool = False,
                 init_radius: float | None = None, random_start: bool | None = None,
                 sparsity: float | None = None) -> Attack:
    """The training attack for a threat model: ``pgd`` is PGD for linf/l2 and l1-APGD for l1;
    ``apgd`` is APGD for linf/l2 (rws.attacks.apgd) and l1-APGD for l1, both as E-AT trains with them
    (no random start, l1 initial top-k 0.05); ``fgsm_rs`` / ``n_fgsm`` are the one-step linf attacks;
    ``torchattacks`` is torchattacks' PGD.
    ``step_size`` is relative to eps (None: each attack's default). ``norm``/``eps`` may be given
    instead of ``threat`` (eps None: the per-dataset default). ``targeted`` (PGD, linf/l2): descend
    toward a random other class per example. ``init_radius`` (one-step attacks, relative to eps):
    the half-width of the uniform start (None: FGSM-RS 1, N-FGSM 2). ``random_start`` (pgd, apgd,
    torchattacks; None: pgd and torchattacks start at random, apgd at the clean image) and ``sparsity``
    (l1-APGD's initial top-k fraction; None: 0.2 for pgd, 0.05 for apgd)."""
    if threat is None:
        if norm is None:
            raise ValueError("build_attack needs a threat or a norm")
        threat = {"norm": norm, "eps": eps}
    t = ThreatModel.from_config(threat, dataset_kind, purpose)
    attack = attack.lower().replace("-", "_")
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; expected one of {', '.join(ATTACKS)}")
    if targeted and (attack != "pgd" or t.norm == "l1"):
        raise ValueError(f"targeted attacks are PGD in linf or l2 (attack=pgd), got attack={attack!r} "
                         f"with norm {t.norm}")
    if init_radius is not None and attack not in ("fgsm_rs", "n_fgsm"):
        raise ValueError(f"init_radius sets the start of the one-step attacks (fgsm_rs, n_fgsm), got "
                         f"attack={attack!r}; PGD starts uniformly in the eps-ball")
    if random_start is not None and attack not in ("pgd", "apgd", "torchattacks"):
        raise ValueError(f"random_start applies to pgd, apgd and torchattacks, got attack={attack!r}; "
                         f"the one-step attacks always start at random (init_radius)")
    if sparsity is not None and (attack not in ("pgd", "apgd") or t.norm != "l1"):
        raise ValueError(f"sparsity is l1-APGD's initial top-k fraction (attack pgd or apgd with an l1 "
                         f"threat), got attack={attack!r} with norm {t.norm}")
    if sparsity is not None and not 0.0 < sparsity <= 1.0:
        raise ValueError(f"sparsity must be in (0, 1], got {sparsity}")
    kw = {"model_mode": model_mode, "generator": generator}
    if attack in ("pgd", "apgd"):
        rs = (attack == "pgd") if random_start is None else bool(random_start)
        if t.norm == "l1":
            k = (0.2 if attack == "pgd" else 0.05) if sparsity is None else float(sparsity)
            return L1APGD(t, steps=steps, step_size=1.0 if step_size is None else step_size, sparsity=k,
                          random_start=rs, **kw)
        if attack == "apgd":
            return APGD(t, steps=steps, step_size=2.0 if step_size is None else step_size, random_start=rs, **kw)
        return PGD(t, steps=steps, step_size=step_size, targeted=targeted, random_start=rs, **kw)
    if attack == "torchattacks":
        return TorchattacksPGD(t, steps=steps, step_size=step_size,
                               random_start=True if random_start is None else bool(random_start), **kw)
    if attack == "fgsm_rs":
        return FGSMRS(t, step_size=1.25 if step_size is None else step_size,
                      init_radius=1.0 if init_radius is None else init_radius, **kw)
    return NFGSM(t, step_size=1.0 if step_size is None else step_size,
                 noise=2.0 if init_radius is None else init_radius, **kw)


def __getattr__(name: str):  # evaluation pulls in pyautoattack and tqdm: import it on first use
    if name in ("robust_correct", "union_correct", "evaluate_threats"):
        from rws.attacks import evaluate

        return getattr(evaluate, name)
    raise AttributeError(name)


__all__ = [
    "APGD", "ATTACKS", "Attack", "FGSMRS", "L1APGD", "NFGSM", "NORMS", "PGD", "PGDAdam", "ThreatModel", "TorchattacksPGD",
    "build_attack", "canonical_norm", "default_eps", "evaluate_threats", "module_modes", "parse_threats",
    "preserve_modes", "project_l1_box", "restore_modes", "robust_correct", "union_correct",
]
