"""Perturbation sequences (CIFAR-10-P / ImageNet-P style): the flip probability of a model's
top-1 prediction along each example's sequence (``rws.corruptions.sequences``).

One cell per (perturbation, difficulty): ``Cell("perturbations", <name>, <difficulty>)``. Rows:

    flip_prob       flips / comparisons over all sequences (``metrics.flip_probability``; noise
                    sequences compare frame j with the first frame, the others frame j with frame
                    j - difficulty), n = number of sequences (examples)
    acc_first_frame top-1 accuracy on the first frame (the clean image for the noise sequences),
                    n = number of sequences

``CellResult.correct`` is per example (source order) "no flip anywhere in the sequence": True when
none of the comparisons the flip probability counts for that example is a flip (it says nothing
about the label; ``acc_first_frame`` does). So FP = 0 exactly when every example is "correct".

Frames are made per batch of ``source.batches()`` on the evaluation device, from a generator on
that device seeded with ``cell_seed(seed, name, difficulty, batch_idx)``: a cell's frames depend
neither on the cells run before it nor on the process, so any cell can be recomputed alone; they
do depend on the batch split, which is in the settings key. The model sees one frame of the batch
at a time (batch-size forward passes).

Options: ``perturbations`` (all | test | validation | noise | geometric | [names]; default all),
``difficulty`` (1..3 or a list; default 1: the noise level of the noise perturbations, the
comparison stride of the others), ``length`` (frames; default the reference's, see
``rws.corruptions.sequences``), ``table`` (cifar | tiny_imagenet | imagenet; default from the data:
the source's corruption table, "tiny_imagenet" for non-CIFAR images up to 64 px).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from rws.evaluation.cells import Cell, CellResult, cell_seed
from rws.evaluation.sources import DataSource
from rws.evaluation.suites import Suite, register


def _difficulties(options: Mapping[str, Any]) -> list[int]:
    from rws.corruptions.sequences import _check_difficulty

    d = options.get("difficulty")
    d = 1 if d is None else d
    return [_check_difficulty(v) for v in (d if isinstance(d, (list, tuple)) else [d])]


def _image_side(source: DataSource) -> int | None:
    dm = getattr(source, "datamodule", None)
    side = getattr(dm, "image_size", None)
    if side is None and isinstance(getattr(source, "x", None), torch.Tensor):
        side = int(source.x.shape[-1])
    return None if side is None else int(side)


@register
class PerturbationSuite(Suite):
    name = "perturbations"
    suite = "perturbations"
    options = ("perturbations", "difficulty", "length", "table")

    def __init__(self, options: Mapping[str, Any], corrupt_fn=None) -> None:
        from rws.corruptions.sequences import (NOISE_PERTURBATIONS, SEQUENCE_TABLES, resolve_perturbations,
                                               sequence_length)

        super().__init__(options, corrupt_fn)
        # Validate eagerly: a bad name, difficulty, length or table fails when the suite is built.
        self.names = resolve_perturbations(options.get("perturbations") or "all")
        self.difficulties = _difficulties(options)
        self.length = options.get("length")
        if self.length is not None:
            self.length = sequence_length(self.names[0], self.length)
            strided = any(n not in NOISE_PERTURBATIONS for n in self.names)
            too_short = [d for d in self.difficulties if strided and d >= self.length]
            if too_short:
                raise ValueError(f"difficulty {too_short} needs sequences longer than length={self.length}")
        table = options.get("table")
        if table is not None and table not in SEQUENCE_TABLES:
            raise ValueError(f"unknown perturbation table {table!r}; valid: {', '.join(SEQUENCE_TABLES)}")

    def cells(self, source: DataSource) -> list[Cell]:
        return [Cell("perturbations", n, d) for n in self.names for d in self.difficulties]

    def table(self, source: DataSource) -> str:
        """The schedule table: the ``table`` option, else by the data (CIFAR table -> cifar; Tiny-ImageNet
        table -> tiny_imagenet; other images up to 64 px -> tiny_imagenet; larger -> imagenet)."""
        if self.config.get("table"):
            return str(self.config["table"])
        if source.corruption_table in ("cifar", "tiny_imagenet"):
            return source.corruption_table
        side = _image_side(source)
        return "tiny_imagenet" if side is not None and side <= 64 else "imagenet"

    def _length(self, cell: Cell, source: DataSource) -> int:
        from rws.corruptions.sequences import sequence_length

        return sequence_length(cell.condition, self.length, self.table(source))

    def settings(self, cell: Cell, source: DataSource) -> dict[str, Any]:
        batch = source.batch_settings()
        if "batch_size" not in batch:
            # Frames are seeded per batch of source.batches(); a source that leaves its chunking
            # out of batch_settings (FixedSubset) still splits its examples by batch_size.
            batch = {**batch, "sequence_batch_size": getattr(source, "batch_size", None)}
        return {"table": self.table(source), "length": self._length(cell, source), "seed": self.seed, **batch}

    @torch.no_grad()
    def run(self, model: nn.Module, cell: Cell, source: DataSource, device: torch.device,
            deps: Mapping[Cell, torch.Tensor]) -> CellResult:
        from rws.corruptions.sequences import NOISE_PERTURBATIONS, perturbation_sequence
        from rws.evaluation.metrics import flip_indicators

        name, difficulty = cell.condition, int(cell.level)
        noise = name in NOISE_PERTURBATIONS
        table, length = self.table(source), self._length(cell, source)
        flips, first_right = [], []
        for i, (x, y) in enumerate(source.batches()):
            x, y = x.to(device, non_blocking=True).float(), y.to(device, non_blocking=True)
            gen = torch.Generator(device=x.device)
            gen.manual_seed(cell_seed(self.seed, name, difficulty, i))
            frames = perturbation_sequence(x, name, difficulty, length, table, gen)  # (B, T, 3, H, W)
            preds = torch.stack([model(frames[:, t].contiguous()).argmax(dim=1) for t in range(frames.shape[1])], 1)
            flips.append(flip_indicators(preds, noise, difficulty).cpu())
            first_right.append((preds[:, 0] == y).cpu())
        if not flips:
            raise ValueError(f"no test samples for {cell}: is the test split empty?")
        flip = torch.cat(flips)            # (N, comparisons)
        first = torch.cat(first_right)
        n = int(flip.shape[0])
        rows = [{"suite": cell.suite, "condition": name, "level": difficulty, "metric": "flip_prob",
                 "value": int(flip.sum()) / flip.numel(), "n": n},
                {"suite": cell.suite, "condition": name, "level": difficulty, "metric": "acc_first_frame",
                 "value": int(first.sum()) / n, "n": n}]
        return CellResult(cell, ~flip.any(dim=1), rows)
