"""Common corruptions generated on the fly (``rws.corruptions``): one cell per (corruption, severity).

How the noise is seeded belongs to the data source (per batch for evaluate.py's test stream, per
condition for the sweep's fixed subset); this suite only says which corruption, severity, parameter
table and seed.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from rws.evaluation.cells import Cell, CellResult, measured_accuracy
from rws.evaluation.sources import DataSource
from rws.evaluation.suites import Suite, register

DEFAULT_SEVERITIES = (1, 2, 3, 4, 5)


def corruption_cells(options: Mapping[str, Any]) -> list[Cell]:
    """``corruptions`` (all | a group | names) x ``severities`` (an int or a list, default 1..5)."""
    from rws.corruptions import resolve_corruptions

    names = list(resolve_corruptions(options.get("corruptions", "all")))
    sev = options.get("severities") or DEFAULT_SEVERITIES
    sevs = [int(s) for s in (sev if isinstance(sev, (list, tuple)) else [sev])]
    return [Cell("corruptions", c, s) for c in names for s in sevs]


@register
class CorruptionSuite(Suite):
    name = "corruptions"
    suite = "corruptions"
    options = ("corruptions", "severities", "table")

    def cells(self, source: DataSource) -> list[Cell]:
        return corruption_cells(self.config)

    def _table(self, source: DataSource) -> str:
        return self.config.get("table") or source.corruption_table

    def settings(self, cell: Cell, source: DataSource) -> dict[str, Any]:
        return {"corruption_source": "on_the_fly", "table": self._table(source), "seed": self.seed,
                **source.batch_settings()}

    def run(self, model: nn.Module, cell: Cell, source: DataSource, device: torch.device,
            deps: Mapping[Cell, torch.Tensor]) -> CellResult:
        batches = source.corrupted_batches(cell.condition, int(cell.level), self.seed, self._table(source), device,
                                           self.corrupt_fn)
        return measured_accuracy(cell, model, batches, device, shifted=True)
