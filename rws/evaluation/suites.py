"""Evaluation suites: named groups of cells, each cell one (condition, level) measurement.

A suite config is a plain dict with ``name`` (the suite type) and its options:

    {name: clean}
    {name: corruptions, corruptions: all, severities: [1,2,3,4,5], source: on_the_fly, seed: 0}
    {name: corruptions, source: arrays, root: /data/CIFAR-10-C}
    {name: adversarial, threats: [...]}        # delegates to rws.attacks.evaluate_threats

``suite_cells`` lists a suite's cells up front (so a run can show progress and skip cells that
are already in the results); ``run_cell`` measures one and returns its rows
(``suite, condition, level, metric, value, n``; the caller adds spec_id, model, seed, ...).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]
CorruptFn = Callable[..., torch.Tensor]
SUITES = ("clean", "corruptions", "adversarial")


@dataclass(frozen=True)
class Cell:
    suite: str
    condition: str
    level: Any  # severity (int), eps (float) or "" when the condition has no level


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
def count_correct(model: nn.Module, batches: Iterable[Batch], device: torch.device,
                  transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> tuple[int, int]:
    """(number correct, number seen). ``transform(x, batch_idx)`` perturbs a batch on ``device``."""
    right = total = 0
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True).float(), y.to(device, non_blocking=True)
        if transform is not None:
            x = transform(x, i)
        right += int((model(x).argmax(dim=1) == y).sum())
        total += int(y.numel())
    return right, total


def _row(cell: Cell, right: int, total: int) -> dict[str, Any]:
    if total == 0:
        raise ValueError(f"no test samples for {cell}: is the test split empty?")
    return {"suite": cell.suite, "condition": cell.condition, "level": cell.level,
            "metric": "acc", "value": right / total, "n": total}


def _test_batches(datamodule: Any, n: int | None) -> Iterator[Batch]:
    return limit_batches(datamodule.test_dataloader(), n)


def _subset(suite: Mapping[str, Any]) -> int | None:
    n = suite.get("n", suite.get("test_subset"))
    return None if n in (None, "", "all") else int(n)


def _corruption_names(spec: Any) -> list[str]:
    from rws.corruptions import resolve_corruptions

    return list(resolve_corruptions(spec))


def suite_cells(suite: Mapping[str, Any]) -> list[Cell]:
    """Every cell a suite will measure, in evaluation order."""
    name = suite.get("name")
    if name == "clean":
        return [Cell("clean", "clean", "")]
    if name == "corruptions":
        names = _corruption_names(suite.get("corruptions", "all"))
        sevs = [int(s) for s in (suite.get("severities") or [1, 2, 3, 4, 5])]
        return [Cell("corruptions", c, s) for c in names for s in sevs]
    if name == "adversarial":
        # The attack code reports its own conditions (per threat, plus 'union'); one cell runs them all.
        return [Cell("adversarial", "*", "")]
    raise ValueError(f"unknown suite {name!r}; suites: {', '.join(SUITES)} (config files in conf/suite, "
                     f"e.g. corruptions_quick, are selected with suite=[...], not inline suites=[...])")


def run_cell(model: nn.Module, cell: Cell, datamodule: Any, suite: Mapping[str, Any],
             device: str | torch.device = "cpu", corrupt_fn: CorruptFn | None = None) -> list[dict[str, Any]]:
    """Measure one cell. ``corrupt_fn`` replaces ``rws.corruptions.corrupt`` (tests, custom ops)."""
    device = resolve_device(device)
    model.eval()
    n = _subset(suite)
    if cell.suite == "clean":
        return [_row(cell, *count_correct(model, _test_batches(datamodule, n), device))]
    if cell.suite == "corruptions":
        return [_corruption_cell(model, cell, datamodule, suite, device, n, corrupt_fn)]
    if cell.suite == "adversarial":
        return _adversarial_cell(model, datamodule, suite, device, n)
    raise ValueError(f"unknown suite {cell.suite!r}; suites: {', '.join(SUITES)}")


def _corruption_cell(model: nn.Module, cell: Cell, datamodule: Any, suite: Mapping[str, Any],
                     device: torch.device, n: int | None, corrupt_fn: CorruptFn | None) -> dict[str, Any]:
    source = suite.get("source", "on_the_fly")
    if source == "arrays":
        root = suite.get("root")
        if not root:
            raise ValueError("suite corruptions with source=arrays needs 'root' (a CIFAR-10-C style directory)")
        from rws.data import CorruptedArrays

        x, y = CorruptedArrays(root).load(cell.condition, int(cell.level), limit=n)
        bs = int(suite.get("batch_size", 256))
        batches = ((x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs))
        return _row(cell, *count_correct(model, batches, device))
    if source != "on_the_fly":
        raise ValueError(f"corruption source must be 'on_the_fly' or 'arrays', got {source!r}")
    if corrupt_fn is None:
        from rws.corruptions import corrupt as corrupt_fn
    table = suite.get("table") or getattr(datamodule, "corruption_table", "cifar")
    seed = int(suite.get("seed", 0))

    def transform(x: torch.Tensor, i: int) -> torch.Tensor:
        # Seeded per batch, not per run: a cell's images do not depend on which cells ran before it.
        gen = torch.Generator(device=x.device)
        gen.manual_seed(cell_seed(seed, cell.condition, cell.level, i))
        return corrupt_fn(x, cell.condition, int(cell.level), table=table, generator=gen)

    return _row(cell, *count_correct(model, _test_batches(datamodule, n), device, transform))


def _adversarial_cell(model: nn.Module, datamodule: Any, suite: Mapping[str, Any], device: torch.device,
                      n: int | None) -> list[dict[str, Any]]:
    """Per-threat and union robust accuracy via ``rws.attacks.evaluate_threats``, which returns
    {"clean", <norm> (or <norm>@<eps> when a norm repeats), "union", "n"}."""
    try:
        from rws.attacks import evaluate_threats, parse_threats
    except ImportError as e:
        raise NotImplementedError(
            "the adversarial suite needs rws.attacks.evaluate_threats, which is not available") from e
    kind = "imagenet" if getattr(datamodule, "corruption_table", "cifar") == "imagenet" else "cifar"
    threats = parse_threats(suite.get("threats") or ["linf"], kind, purpose="eval")
    opts = {k: suite[k] for k in ("attacks", "n_iter", "batch_size") if k in suite}
    res = evaluate_threats(model, _test_batches(datamodule, n), threats, seed=int(suite.get("seed", 0)),
                           device=device, progress=False, **opts)
    norms = [t.norm for t in threats]
    total = int(res["n"])
    rows = [{"suite": "adversarial", "condition": "clean", "level": "", "metric": "acc",
             "value": float(res["clean"]), "n": total}]
    for t in threats:
        key = t.norm if norms.count(t.norm) == 1 else f"{t.norm}@{t.eps:.6g}"
        rows.append({"suite": "adversarial", "condition": t.norm, "level": float(t.eps), "metric": "acc",
                     "value": float(res[key]), "n": total})
    rows.append({"suite": "adversarial", "condition": "union", "level": "", "metric": "acc",
                 "value": float(res["union"]), "n": total})
    return rows


def run_suite(name: str, model: nn.Module, datamodule: Any, suite: Mapping[str, Any] | None = None,
              device: str | torch.device = "cpu", skip: Callable[[Cell], bool] | None = None,
              corrupt_fn: CorruptFn | None = None) -> Iterator[tuple[Cell, list[dict[str, Any]]]]:
    """Run every cell of suite ``name`` (options in ``suite``), yielding (cell, rows) as each
    finishes so the caller can append them to disk immediately. Cells where ``skip(cell)`` is
    true yield no rows."""
    cfg = {**(dict(suite) if suite else {}), "name": name}
    for cell in suite_cells(cfg):
        if skip is not None and skip(cell):
            yield cell, []
            continue
        yield cell, run_cell(model, cell, datamodule, cfg, device, corrupt_fn)
