"""Corruption-augmented training (the RWS paper's robust models, and 'Data Augmentation').

Each training batch is corrupted on the fly: one corruption type, a list, or all 19 mixed with a
per-sample random choice, at a fixed severity or a severity range. ``p_clean`` keeps a fraction of
samples clean (0 for the RWS paper's robust models, which train on the corrupted set only).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from rws.methods.base import ClassifierModule
from rws.methods.step import StepOutput


class CorruptionModule(ClassifierModule):
    def __init__(self, model: dict, corruptions: str | Sequence[str] = "all",
                 severity: int | Sequence[int] = 5, table: str = "cifar", p_clean: float = 0.0,
                 seed: int = 0, **kw: Any) -> None:
        from rws.corruptions import resolve_corruptions

        names = resolve_corruptions(corruptions if isinstance(corruptions, str) else list(corruptions))
        sev = [int(severity)] if isinstance(severity, int) else [int(s) for s in severity]
        if len(sev) == 2 and sev[0] < sev[1] and not isinstance(severity, int):
            sev = list(range(sev[0], sev[1] + 1))  # [lo, hi] is a range
        if any(s not in range(1, 6) for s in sev):
            raise ValueError(f"method.severity must be in 1..5 (an int or [lo, hi]), got {severity}")
        super().__init__(model=model, corruptions=names, severity=sev, table=table,
                         p_clean=p_clean, seed=seed, **kw)
        self.corruption_names, self.severities = names, sev
        self.table, self.p_clean = table, float(p_clean)
        # A private generator keeps the corruption stream repeatable and independent of the
        # global RNG that data augmentation and dropout consume.
        self._gen = torch.Generator().manual_seed(int(seed))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        return self.supervised_step(self.corrupt_batch(x), y)

    def corrupt_batch(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with each sample corrupted by a random (corruption, severity), drawn from the private generator."""
        from rws.corruptions import corrupt

        n = len(x)
        which = torch.randint(len(self.corruption_names), (n,), generator=self._gen)
        sev = torch.tensor(self.severities)[torch.randint(len(self.severities), (n,), generator=self._gen)]
        keep_clean = torch.rand(n, generator=self._gen) < self.p_clean
        out = x.clone()
        # Group samples by (corruption, severity) so each corruption runs batched.
        for ci in which.unique().tolist():
            for s in sev.unique().tolist():
                idx = ((which == ci) & (sev == s) & ~keep_clean).nonzero().flatten()
                if len(idx):
                    out[idx.to(x.device)] = corrupt(x[idx.to(x.device)], self.corruption_names[ci], int(s),
                                                    table=self.table, generator=self._gen)
        return out
