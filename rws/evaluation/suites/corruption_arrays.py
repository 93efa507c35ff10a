"""Precomputed corruption arrays (CIFAR-10-C layout, ``rws.data.CorruptedArrays``): the same cells
and rows as the on-the-fly suite (suite "corruptions"), read from ``<root>/<corruption>.npy``.
The arrays are aligned with the test split; the data source picks its examples out of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from rws.evaluation.cells import Cell, CellResult, measured_accuracy
from rws.evaluation.sources import DataSource
from rws.evaluation.suites import Suite, register
from rws.evaluation.suites.corruptions import corruption_cells


@register
class CorruptionArraysSuite(Suite):
    name = "corruption_arrays"
    suite = "corruptions"
    options = ("corruptions", "severities", "root", "batch_size")

    def __init__(self, options: Mapping[str, Any], **kw: Any) -> None:
        super().__init__(options, **kw)
        if not self.config.get("root"):
            raise ValueError("suite corruption_arrays (corruptions with source=arrays) needs 'root' "
                             "(a CIFAR-10-C style directory)")
        self.root = str(Path(str(self.config["root"])).expanduser().resolve())

    def cells(self, source: DataSource) -> list[Cell]:
        return corruption_cells(self.config)

    def settings(self, cell: Cell, source: DataSource) -> dict[str, Any]:
        return {"corruption_source": "arrays", "root": self.root}

    def run(self, model: nn.Module, cell: Cell, source: DataSource, device: torch.device,
            deps: Mapping[Cell, torch.Tensor]) -> CellResult:
        from rws.data import CorruptedArrays

        x, y = CorruptedArrays(self.root).load(cell.condition, int(cell.level), limit=source.aligned_examples())
        batches = source.select(x, y, int(self.config.get("batch_size") or 256))
        return measured_accuracy(cell, model, batches, device, shifted=True)
