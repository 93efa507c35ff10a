"""The evaluation engine: models x planned cells -> result rows + per-example correctness.

evaluate.py and sweep.py both come through here:

    plan = plan_cells(make_suite(options), source)             # what to measure, with settings keys
    with Engine(out, device=..., shard=...) as engine:
        engine.run([ModelJob(spec, model_fn), ...], plan)      # skips cells already on disk

A cell is skipped when a row with its key (spec_id, suite, condition, level, settings) exists in any
result file of ``out``. A model is built (``model_fn()``) only when one of its cells must run, so a
finished model costs nothing on resume. Cells a cell depends on (the threats of a union) come from
this model's cells measured in the same call, else from the correctness store, else are measured.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from rws.evaluation.cells import Cell, CellResult, resolve_device, settings_hash
from rws.evaluation.correctness import CorrectnessStore
from rws.evaluation.results import CellKey, ResultsWriter, level_str, now
from rws.evaluation.shards import Shard
from rws.evaluation.sources import DataSource
from rws.evaluation.suites import Suite
from rws.utils.io import fault_point


@dataclass(frozen=True)
class PlannedCell:
    """A cell of a suite on a data source, with its resolved settings and their hash."""

    suite: Suite
    cell: Cell
    source: DataSource
    settings: dict[str, Any]
    key: str

    def row_key(self, spec_id: str) -> CellKey:
        return (spec_id, self.cell.suite, self.cell.condition, level_str(self.cell.level), self.key)


def plan_cell(suite: Suite, cell: Cell, source: DataSource) -> PlannedCell:
    settings = {"data": source.settings(), "suite": suite.settings(cell, source)}
    return PlannedCell(suite, cell, source, settings, settings_hash(settings))


def plan_cells(suite: Suite, source: DataSource, only: Sequence[Cell] | None = None) -> list[PlannedCell]:
    """The suite's cells on ``source`` (or the subset ``only``, in the suite's order)."""
    cells = suite.cells(source)
    if only is not None:
        missing = [c for c in only if c not in cells]
        if missing:
            raise ValueError(f"suite {suite.name!r} has no cell(s) {missing}; it has {cells}")
        cells = [c for c in cells if c in only]
    data = source.settings()  # once per source: TestStream builds a loader to read its batch size
    out = []
    for c in cells:
        settings = {"data": data, "suite": suite.settings(c, source)}
        out.append(PlannedCell(suite, c, source, settings, settings_hash(settings)))
    return out


@dataclass
class ModelJob:
    """One model to evaluate: its spec (id, canonical JSON, short name), how to get the model, and
    extra columns for its rows (e.g. a sweep's soup weights)."""

    spec_id: str
    spec_json: str
    name: str
    model_fn: Callable[[], nn.Module]
    extra: dict[str, Any] = field(default_factory=dict)


class Engine:
    """Runs planned cells for models and appends their rows to ``out`` (see the module docstring)."""

    def __init__(self, out: str | os.PathLike, device: str | torch.device = "cpu", shard: Shard | None = None,
                 resume: bool = True, progress: bool = True, git: str | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        from rws.utils.provenance import git_commit

        self.out = Path(out)
        self.device = resolve_device(device)
        self.writer = ResultsWriter(self.out, shard)
        self.correct = CorrectnessStore(self.out)
        self.resume = resume
        self.existing: set[CellKey] = self.writer.existing_keys() if resume else set()
        self.progress = progress
        self.git = git if git is not None else git_commit()
        self.log = log

    def todo(self, jobs: Sequence[ModelJob], plan: Sequence[PlannedCell]) -> list[tuple[ModelJob, list[PlannedCell]]]:
        """Per model, the planned cells without a row on disk."""
        out = []
        for job in jobs:
            cells = [p for p in plan if p.row_key(job.spec_id) not in self.existing]
            out.append((job, cells))
        return out

    def run(self, jobs: Sequence[ModelJob], plan: Sequence[PlannedCell], desc: str = "eval") -> int:
        """Measure every missing (model, cell); returns how many cells were measured."""
        from tqdm.auto import tqdm

        todo = self.todo(jobs, plan)
        n_todo = sum(len(c) for _j, c in todo)
        total = len(jobs) * len(plan)
        if self.log:
            self.log(f"[{desc}] {len(jobs)} models x {len(plan)} cells = {total} cells; "
                     f"{total - n_todo} already done, {n_todo} to run -> {self.out}")
        bar = tqdm(total=n_todo, desc=desc, unit="cell", file=sys.stderr, dynamic_ncols=True,
                   disable=not self.progress)
        try:
            for job, cells in todo:
                if not cells:
                    continue
                model = job.model_fn()
                memo: dict[tuple[Cell, str], torch.Tensor] = {}
                for p in cells:
                    bar.set_postfix_str(f"{job.name} {p.cell.condition} {level_str(p.cell.level)}".strip())
                    res = self._measure(model, job, p, memo)
                    bar.set_postfix_str(f"{job.name} {p.cell.condition}={res.rows[0]['value']:.3f}"
                                        if res.rows else job.name)
                    bar.update(1)
                del model
        finally:
            bar.close()
        return n_todo

    def _measure(self, model: nn.Module, job: ModelJob, p: PlannedCell,
                 memo: dict[tuple[Cell, str], torch.Tensor]) -> CellResult:
        deps: dict[Cell, torch.Tensor] = {}
        for dep in p.suite.depends_on(p.cell, p.source):
            dp = plan_cell(p.suite, dep, p.source)
            if (dep, dp.key) in memo:
                deps[dep] = memo[(dep, dp.key)]
            elif self.resume and self.correct.has(job.spec_id, dep, dp.key):
                deps[dep] = self.correct.load(job.spec_id, dep, dp.key)
            else:
                deps[dep] = self._measure(model, job, dp, memo).correct
        model.eval()
        res = p.suite.run(model, p.cell, p.source, self.device, deps)
        memo[(p.cell, p.key)] = res.correct
        self.correct.save(job.spec_id, p.cell, p.key, p.settings, res.correct)
        key = p.row_key(job.spec_id)
        if key not in self.existing:
            stamp = now()
            self.writer.write({"spec_id": job.spec_id, "spec": job.spec_json, "model": job.name, **r,
                               "settings": p.key, "seed": p.suite.seed, "git": self.git, "timestamp": stamp,
                               **job.extra} for r in res.rows)
            self.existing.add(key)
            fault_point("cell")  # crash-safety tests only: a no-op unless RWS_FAULT_KILL_AT=cell[:n]
        return res

    def rows(self) -> list[dict[str, Any]]:
        """Every row of ``out`` (all shards)."""
        return self.writer.rows()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def evaluate_suite(model: nn.Module, options: Mapping[str, Any], source: DataSource,
                   device: str | torch.device = "cpu", corrupt_fn: Callable[..., torch.Tensor] | None = None
                   ) -> list[CellResult]:
    """Every cell of one suite on one model, in memory (no files): for notebooks and tests."""
    from rws.evaluation.suites import make_suite

    suite = make_suite(options, corrupt_fn=corrupt_fn)
    device = resolve_device(device)
    done: dict[Cell, torch.Tensor] = {}
    out = []
    for cell in suite.cells(source):
        model.eval()
        res = suite.run(model, cell, source, device, {d: done[d] for d in suite.depends_on(cell, source)})
        done[cell] = res.correct
        out.append(res)
    return out


def result_rows(results: Iterable[CellResult]) -> list[dict[str, Any]]:
    return [r for res in results for r in res.rows]
