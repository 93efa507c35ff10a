"""Selection over many evaluated specs (a sweep's soups, α or β grid points), from result files only.

A *target* is a named group of cells (suite, condition, level, settings); a spec's score on it is
the accuracy over all of the target's examples (correct / n summed over its cells). From the
(spec x target) score matrix:

- ``best_specs``: the best spec per target ("dataset-specific soups") and the best average
  ("single soup"), the paper's Table 1; ties go to the first spec in sweep order;
- ``few_shot_study``: the paper's Fig. 8 from per-example correctness: pick the spec on k random
  examples, score it on held-out ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from rws.evaluation.correctness import CorrectnessStore
from rws.evaluation.cells import Cell
from rws.evaluation.results import level_str

FEW_SHOT_KS = (10, 30, 100, 300, 500)
CellRef = tuple[str, str, Any, str]  # (suite, condition, level, settings hash)


@dataclass(frozen=True)
class TargetCells:
    """A named selection of measured cells."""

    name: str
    cells: tuple[CellRef, ...]

    def keys(self) -> list[tuple[str, str, str, str]]:
        return [(s, c, level_str(lvl), h) for s, c, lvl, h in self.cells]

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "TargetCells":
        return cls(str(obj["name"]), tuple((str(s), str(c), lvl, str(h)) for s, c, lvl, h in obj["cells"]))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "cells": [list(c) for c in self.cells]}


def target_scores(rows: Iterable[Mapping[str, Any]], spec_ids: Sequence[str],
                  targets: Sequence[TargetCells]) -> torch.Tensor:
    """(S, T) accuracy over each target's examples; NaN where a cell is missing. A cell measured
    twice keeps the last row. Counts are recovered exactly (value = right / n), so a one-cell target
    scores its row's value and a multi-cell one the fraction over the concatenated examples."""
    cell_rows: dict[tuple[str, str, str, str, str], tuple[int, int]] = {}
    for r in rows:
        if r.get("metric") != "acc" or not r.get("settings"):
            continue
        n = int(r["n"])
        cell_rows[(str(r["spec_id"]), str(r["suite"]), str(r["condition"]), level_str(r.get("level")),
                   str(r["settings"]))] = (round(float(r["value"]) * n), n)
    out = torch.full((len(spec_ids), len(targets)), float("nan"), dtype=torch.float64)
    for i, sid in enumerate(spec_ids):
        for j, t in enumerate(targets):
            counts = [cell_rows.get((sid, *k)) for k in t.keys()]
            if counts and all(c is not None for c in counts):
                out[i, j] = sum(c[0] for c in counts) / sum(c[1] for c in counts)
    return out


def best_specs(scores: torch.Tensor, spec_ids: Sequence[str], targets: Sequence[str],
               extras: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Per-target argmax and the best average. Each entry: spec_id, the spec's ``extras`` (a soup's
    weights), its scores. Ties go to the first spec."""
    def entry(i: int) -> dict[str, Any]:
        return {"spec_id": spec_ids[i], **(dict(extras[i]) if extras else {}),
                "scores": {t: float(scores[i, j]) for j, t in enumerate(targets)}}

    per_target = {}
    for j, t in enumerate(targets):
        col = torch.nan_to_num(scores[:, j], nan=-math.inf)
        i = int(col.argmax())
        per_target[t] = {**entry(i), "score": float(scores[i, j])}
    avg = torch.nan_to_num(scores.mean(1), nan=-math.inf)
    i = int(avg.argmax())
    return {"targets": list(targets), "per_target": per_target,
            "single": {**entry(i), "average": float(scores[i].mean())}}


def markdown_table(best: Mapping[str, Any], scores: torch.Tensor, spec_ids: Sequence[str], labels: Sequence[str],
                   references: Sequence[tuple[str, int]] = (), noun: str = "soup") -> str:
    """Table-1 style: the ``references`` (name, spec index: e.g. each member alone when it is a grid
    point), the best single spec, the per-target best specs; then which spec won each target."""
    targets = best["targets"]
    index = {sid: i for i, sid in enumerate(spec_ids)}
    fmt = lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"
    lines = ["| model | " + " | ".join(targets) + " | avg |", "|---" * (len(targets) + 2) + "|"]
    for name, i in references:
        row = scores[i]
        lines.append(f"| {name} | " + " | ".join(fmt(float(v)) for v in row) + f" | {fmt(float(row.mean()))} |")
    single = best["single"]
    lines.append(f"| single {noun} {_label(single, labels, index, named=False)} | "
                 + " | ".join(fmt(single["scores"][t]) for t in targets) + f" | {fmt(single['average'])} |")
    spec = [best["per_target"][t]["score"] for t in targets]
    lines.append(f"| dataset-specific {noun}s | " + " | ".join(fmt(v) for v in spec)
                 + f" | {fmt(sum(spec) / len(spec))} |")
    lines.append("")
    for t in targets:
        lines.append(f"- best for {t}: {_label(best['per_target'][t], labels, index)}")
    return "\n".join(lines) + "\n"


def _label(entry: Mapping[str, Any], labels: Sequence[str], index: Mapping[str, int], named: bool = True) -> str:
    if "weights" in entry:
        weights = str([round(w, 3) for w in entry["weights"]])
        return f"weights {weights}" if named else weights
    i = index.get(entry["spec_id"])
    return labels[i] if i is not None and i < len(labels) else str(entry["spec_id"])


def correctness_matrix(store: CorrectnessStore, spec_ids: Sequence[str], target: TargetCells) -> torch.Tensor | None:
    """(S, N) uint8: each spec's per-example correctness over the target's cells (concatenated in
    order), in spec order; None unless every spec has every cell."""
    rows = []
    for sid in spec_ids:
        parts = []
        for suite, cond, lvl, h in target.cells:
            cell = Cell(suite, cond, lvl)
            if not store.has(sid, cell, h):
                return None
            parts.append(store.load(sid, cell, h))
        rows.append(torch.cat(parts))
    return torch.stack(rows).to(torch.uint8) if rows else None


def few_shot_study(correct: torch.Tensor, ks: Sequence[int] = FEW_SHOT_KS, trials: int = 50,
                   n_test: int | None = 500, seed: int = 0) -> dict[str, Any]:
    """The Fig. 8 study from a (S specs, N examples) correctness matrix, no re-evaluation.

    Each trial holds out ``n_test`` random examples (at most half of N), draws k of the rest, picks
    the spec with the best accuracy on those k (first in order on ties) and records its held-out
    accuracy. Returns mean/std over trials per k (ks larger than the pool are dropped), plus the oracle.
    """
    correct = correct.bool()
    s, n = correct.shape
    n_test = min(n_test or n // 2, n // 2)
    g = torch.Generator().manual_seed(seed)
    per_k: dict[int, list[float]] = {int(k): [] for k in ks if k <= n - n_test}
    oracle: list[float] = []
    for _ in range(trials):
        perm = torch.randperm(n, generator=g)
        test, pool = perm[:n_test], perm[n_test:]
        test_acc = correct[:, test].double().mean(1)
        oracle.append(float(test_acc.max()))
        for k in per_k:
            pick = pool[torch.randperm(len(pool), generator=g)[:k]]
            best = int(correct[:, pick].double().mean(1).argmax())
            per_k[k].append(float(test_acc[best]))

    def stats(v: list[float]) -> dict[str, float]:
        t = torch.tensor(v, dtype=torch.float64)
        return {"mean": float(t.mean()), "std": float(t.std(unbiased=False)), "trials": len(v)}

    return {"n_soups": s, "n_examples": n, "n_test": n_test,
            "k": {str(k): stats(v) for k, v in per_k.items()}, "oracle": stats(oracle)}
