"""The clean suite: top-1 accuracy on the data source's examples, one cell clean/""."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from rws.evaluation.cells import Cell, CellResult, measured_accuracy
from rws.evaluation.sources import DataSource
from rws.evaluation.suites import Suite, register


@register
class CleanSuite(Suite):
    name = "clean"
    suite = "clean"

    def cells(self, source: DataSource) -> list[Cell]:
        return [Cell("clean", "clean", "")]

    def run(self, model: nn.Module, cell: Cell, source: DataSource, device: torch.device,
            deps: Mapping[Cell, torch.Tensor]) -> CellResult:
        return measured_accuracy(cell, model, source.batches(), device)
