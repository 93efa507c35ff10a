"""Adversarial robustness: APGD (``rws.attacks.robust_correct``) per threat model, their union, and
clean accuracy on the same examples. ``attacks`` may also name the adapters paper's PGD-40 with Adam
(``pgd40-adam``, or ``pgd-adam`` for ``n_iter`` steps), alone or after the APGD attacks.

Cells: ``clean``/"" , ``<norm>``/eps for each threat, ``union``/"" (correct under every threat).
Each threat is its own cell, so adding a threat to a finished run evaluates only that threat (and
the new union, from the stored per-example correctness of every threat).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from rws.attacks.threat import ThreatModel, parse_threats
from rws.evaluation.cells import Cell, CellResult, accuracy_result, correct_mask
from rws.evaluation.sources import DataSource
from rws.evaluation.suites import Suite, register

EVAL_ATTACKS = ("apgd-ce", "apgd-t")
DEFAULT_STEPS = 40


@register
class AdversarialSuite(Suite):
    name = "adversarial"
    suite = "adversarial"
    options = ("threats", "attacks", "n_iter")

    def __init__(self, options: Mapping[str, Any], **kw: Any) -> None:
        super().__init__(options, **kw)
        from rws.attacks.evaluate import check_eval_attack

        # A misspelt attack fails here, before any model is built or cell evaluated.
        self.attacks = [check_eval_attack(str(a)) for a in (self.config.get("attacks") or EVAL_ATTACKS)]
        self.n_iter = int(self.config.get("n_iter") or DEFAULT_STEPS)

    def threats(self, source: DataSource) -> list[ThreatModel]:
        """The threat models; an eps of null is the dataset's default evaluation radius."""
        return parse_threats(self.config.get("threats") or ["linf"], source.dataset_kind, purpose="eval")

    def _threat_cells(self, source: DataSource) -> list[tuple[Cell, ThreatModel]]:
        return [(Cell("adversarial", t.norm, float(t.eps)), t) for t in self.threats(source)]

    def cells(self, source: DataSource) -> list[Cell]:
        return [Cell("adversarial", "clean", ""), *(c for c, _t in self._threat_cells(source)),
                Cell("adversarial", "union", "")]

    def settings(self, cell: Cell, source: DataSource) -> dict[str, Any]:
        if cell.condition == "clean":
            return {}
        attack = {"attacks": self.attacks, "n_iter": self.n_iter, "seed": self.seed, **source.batch_settings()}
        if cell.condition == "union":
            return {**attack, "threats": [[t.norm, float(t.eps)] for t in self.threats(source)]}
        return attack

    def depends_on(self, cell: Cell, source: DataSource) -> list[Cell]:
        return [c for c, _t in self._threat_cells(source)] if cell.condition == "union" else []

    def run(self, model: nn.Module, cell: Cell, source: DataSource, device: torch.device,
            deps: Mapping[Cell, torch.Tensor]) -> CellResult:
        if cell.condition == "clean":
            return accuracy_result(cell, correct_mask(model, source.batches(), device))
        if cell.condition == "union":
            # robust_correct is already clean-correct, so the union is the AND over threats.
            masks = [deps[c] for c in self.depends_on(cell, source)]
            union = masks[0].clone()
            for m in masks[1:]:
                union &= m
            return accuracy_result(cell, union)
        threat = dict(self._threat_cells(source))[cell]
        return accuracy_result(cell, self._robust(model, threat, source, device))

    def _robust(self, model: nn.Module, threat: ThreatModel, source: DataSource, device: torch.device) -> torch.Tensor:
        from rws.attacks.evaluate import robust_correct

        masks = []
        for x, y in source.attack_batches():
            x, y = x.to(device), y.to(device)
            masks.append(robust_correct(model, x, y, threat, attacks=self.attacks, n_iter=self.n_iter,
                                        seed=self.seed).cpu())
        return torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)
