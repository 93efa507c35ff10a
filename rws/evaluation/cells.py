"""What one measurement is: a cell (suite, condition, level), its settings key, and the counting
helpers every suite shares.

A cell's *settings* are every resolved option that changes its value besides the model (the data
source: which examples, how they are batched and seeded; the suite: corruption table, threat, attack
names and steps, ...). Their hash is the ``settings`` column of a result row, so a rerun with other
settings never reuses a cell measured with the old ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Cell:
    """One measurement of a suite. ``level``: severity (int), eps (float) or "" when there is none."""

    suite: str
    condition: str
    level: Any = ""


@dataclass
class CellResult:
    """Per-example correctness (bool, on the CPU, in data-source order) and the cell's long-format
    rows (``suite, condition, level, metric, value, n``; the engine adds spec, settings, seed, ...)."""

    cell: Cell
    correct: torch.Tensor
    rows: list[dict[str, Any]] = field(default_factory=list)


def accuracy_result(cell: Cell, correct: torch.Tensor) -> CellResult:
    """The usual result: one ``acc`` row = the fraction of ``correct``."""
    correct = correct.detach().to("cpu", torch.bool).flatten()
    total = int(correct.numel())
    if total == 0:
        raise ValueError(f"no test samples for {cell}: is the test split empty?")
    # right / total in Python: the same float evaluate.py has always written.
    row = {"suite": cell.suite, "condition": cell.condition, "level": cell.level, "metric": "acc",
           "value": int(correct.sum()) / total, "n": total}
    return CellResult(cell, correct, [row])


def routing_rows(cell: Cell, choices: torch.Tensor, heads: tuple[str, ...], shifted: bool) -> list[dict[str, Any]]:
    """Rows of a head-selecting model (a distillation student): ``head_frac:<head>`` for every head,
    the fraction of examples it answered, and ``f_correct``, the fraction sent to the right head
    (``clean`` on clean data, ``unclean`` on shifted data; the supplement's F_correct). A
    ``combined`` head counts as neither."""
    n = int(choices.numel())
    base = {"suite": cell.suite, "condition": cell.condition, "level": cell.level, "n": n}
    rows = [{**base, "metric": f"head_frac:{h}", "value": int((choices == j).sum()) / n} for j, h in enumerate(heads)]
    right = "unclean" if shifted else "clean"
    if "clean" in heads and "unclean" in heads:
        rows.append({**base, "metric": "f_correct", "value": int((choices == heads.index(right)).sum()) / n})
    return rows


def measured_accuracy(cell: Cell, model: nn.Module, batches: Iterable[Batch], device: torch.device,
                      transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
                      shifted: bool = False) -> CellResult:
    """``accuracy_result`` of ``correct_mask``; a head-selecting model also gets its routing rows
    (``shifted``: the cell's data is a distribution shift, so the right head is ``unclean``)."""
    from rws.models.contracts import recording_choices

    with recording_choices(model) as choices:
        correct = correct_mask(model, batches, device, transform)
    result = accuracy_result(cell, correct)
    if choices:
        result.rows += routing_rows(cell, torch.cat(choices), tuple(model.candidate_heads), shifted)
    return result


def settings_hash(settings: Mapping[str, Any]) -> str:
    """12 hex chars of sha1 over the settings as sorted JSON: the ``settings`` column of a row."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def limit_batches(batches: Iterable[Batch], n: int | None) -> Iterator[Batch]:
    """The first ``n`` samples of a batch stream (all when n is None)."""
    seen = 0
    for x, y in batches:
        if n is not None:
            if seen >= n:
                return
            x, y = x[: n - seen], y[: n - seen]
        seen += len(y)
        yield x, y


def cell_seed(seed: int, condition: str, level: Any, batch_idx: int) -> int:
    """A stable 63-bit seed per (seed, corruption, severity, batch): independent of evaluation
    order, process and PYTHONHASHSEED, so any cell can be recomputed alone."""
    digest = hashlib.sha256(f"{int(seed)}|{condition}|{level}|{batch_idx}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def correct_mask(model: nn.Module, batches: Iterable[Batch], device: torch.device,
                 transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
    """Per-example top-1 correctness (bool, CPU) over a batch stream. Batches move to ``device``;
    ``transform(x, batch_idx)`` perturbs a batch there."""
    masks = []
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True).float(), y.to(device, non_blocking=True)
        if transform is not None:
            x = transform(x, i)
        masks.append((model(x).argmax(dim=1) == y).cpu())
    return torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)


def count_correct(model: nn.Module, batches: Iterable[Batch], device: torch.device,
                  transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> tuple[int, int]:
    """(number correct, number seen); see ``correct_mask``."""
    mask = correct_mask(model, batches, device, transform)
    return int(mask.sum()), int(mask.numel())
