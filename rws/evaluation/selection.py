"""Selection over many evaluated specs (a sweep's soups, α or β grid points), from result files only.

A *target* is a named group of cells (suite, condition, level, settings); a spec's score on it is
the accuracy over all of the target's examples (correct / n summed over its cells). From the
(spec x target) score matrix:

- ``best_specs``: the best spec per target ("dataset-specific soups") and the best average
  ("single soup"), the paper's Table 1; exact ties are broken uniformly at random (seeded), and
  ``n_tied`` says how many specs tied;
- ``few_shot_study``: the paper's Fig. 8 from per-example correctness: pick the spec on k random
  examples, score it on held-out ones. Ties on the k examples are broken uniformly at random per trial
  (seeded), and a multi-condition target is split by base image (``base_image_groups``).

Why random ties: a sweep lists its soups in grid order, whose first entries are extreme soups (e.g.
[-0.4, -0.4, 0.4, 1.4]). On a few examples hundreds of soups tie, and "first in order" then
systematically picks an extreme soup instead of a typical one of the tied set.
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


def _pick_tied(values: torch.Tensor, g: torch.Generator) -> tuple[int, int]:
    """(index of a maximum of ``values`` chosen uniformly among the exact ties, number tied). Always
    draws once from ``g``, so the stream does not depend on how many tied."""
    tied = (values == values.max()).nonzero().squeeze(1)
    return int(tied[torch.randint(len(tied), (1,), generator=g)]), len(tied)


def best_specs(scores: torch.Tensor, spec_ids: Sequence[str], targets: Sequence[str],
               extras: Sequence[Mapping[str, Any]] | None = None, seed: int = 0) -> dict[str, Any]:
    """Per-target argmax and the best average. Each entry: spec_id, the spec's ``extras`` (a soup's
    weights), its scores, ``n_tied`` (specs with exactly the same best score). Exact ties are broken
    uniformly at random by a generator seeded with ``seed`` (so the choice repeats), not toward the
    first spec in sweep order."""
    g = torch.Generator().manual_seed(seed)

    def entry(i: int) -> dict[str, Any]:
        return {"spec_id": spec_ids[i], **(dict(extras[i]) if extras else {}),
                "scores": {t: float(scores[i, j]) for j, t in enumerate(targets)}}

    per_target = {}
    for j, t in enumerate(targets):
        i, n_tied = _pick_tied(torch.nan_to_num(scores[:, j], nan=-math.inf), g)
        per_target[t] = {**entry(i), "score": float(scores[i, j]), "n_tied": n_tied}
    i, n_tied = _pick_tied(torch.nan_to_num(scores.mean(1), nan=-math.inf), g)
    return {"targets": list(targets), "per_target": per_target,
            "single": {**entry(i), "average": float(scores[i].mean()), "n_tied": n_tied}}


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


def base_image_groups(n_examples: int, n_cells: int) -> torch.Tensor:
    """(N,) base-image id of each column of a target's correctness matrix. A sweep target's cells are
    concatenated in order and each holds the same k images (the prefix of the sweep's fixed test
    subset) in the same order, so column j shows image j mod k under the condition of cell j // k."""
    if n_cells < 1 or n_examples % n_cells:
        raise ValueError(f"a target with {n_cells} cells cannot have {n_examples} examples "
                         f"(every cell holds the same images, so N must be a multiple of the cell count)")
    return torch.arange(n_examples // n_cells).repeat(n_cells)


def few_shot_splits(n_examples: int, ks: Sequence[int] = FEW_SHOT_KS, trials: int = 50, n_test: int | None = 500,
                    seed: int = 0, groups: torch.Tensor | None = None
                    ) -> list[tuple[torch.Tensor, dict[int, torch.Tensor]]]:
    """The few-shot study's random splits: per trial (held-out example indices, {k: selection indices}).

    Held out are whole groups (base images; ``groups`` (N,) gives each example's, None: every example
    its own), drawn in random order until at least ``n_test`` examples (at most half of N) are held out;
    the k selection examples are drawn from the other groups' examples, so no base image is ever in
    both sets. ks larger than the smallest possible pool are dropped."""
    groups = torch.arange(n_examples) if groups is None else torch.as_tensor(groups).reshape(-1)
    if len(groups) != n_examples:
        raise ValueError(f"groups has {len(groups)} entries for {n_examples} examples")
    _, inv, counts = groups.unique(return_inverse=True, return_counts=True)
    n_groups = len(counts)
    n_test = min(n_test or n_examples // 2, n_examples // 2)
    pool_min = n_examples - n_test - (int(counts.max()) - 1 if n_groups else 0)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(trials):
        perm = torch.randperm(n_groups, generator=g)
        rank = torch.empty_like(perm)
        rank[perm] = torch.arange(n_groups)
        order = torch.argsort(rank[inv], stable=True)  # examples, group by group in perm order
        m = min(int(torch.searchsorted(counts[perm].cumsum(0), n_test)) + 1, max(n_groups // 2, 1))
        n_held = int(counts[perm[:m]].sum())
        test, pool = order[:n_held], order[n_held:]
        picks = {int(k): pool[torch.randperm(len(pool), generator=g)[:k]] for k in ks if k <= pool_min}
        out.append((test, picks))
    return out


def few_shot_study(correct: torch.Tensor, ks: Sequence[int] = FEW_SHOT_KS, trials: int = 50,
                   n_test: int | None = 500, seed: int = 0, groups: torch.Tensor | None = None) -> dict[str, Any]:
    """The Fig. 8 study from a (S specs, N examples) correctness matrix, no re-evaluation.

    Each trial holds out about ``n_test`` examples (at most half of N; whole base images when ``groups``
    is given, see ``few_shot_splits``), draws k of the rest, picks the spec with the best accuracy on
    those k and records its held-out accuracy. Ties on the k examples (common: with k = 10 hundreds
    of soups can be right on all 10) are broken uniformly at random per trial by a generator seeded
    with ``seed`` + 1 (the splits use ``seed``), so in expectation a trial scores the mean of the tied
    specs. Returns mean/std over trials per k (ks larger than the pool are dropped), plus the oracle.
    """
    correct = correct.bool()
    s, n = correct.shape
    splits = few_shot_splits(n, ks, trials, n_test, seed, groups)
    tie_g = torch.Generator().manual_seed(seed + 1)
    per_k: dict[int, list[float]] = {k: [] for k in (splits[0][1] if splits else {})}
    oracle: list[float] = []
    for test, picks in splits:
        test_acc = correct[:, test].double().mean(1)
        oracle.append(float(test_acc.max()))
        for k, pick in picks.items():
            best, _ = _pick_tied(correct[:, pick].sum(1), tie_g)
            per_k[k].append(float(test_acc[best]))

    def stats(v: list[float]) -> dict[str, float]:
        t = torch.tensor(v, dtype=torch.float64)
        return {"mean": float(t.mean()), "std": float(t.std(unbiased=False)), "trials": len(v)}

    n_held = len(splits[0][0]) if splits else 0
    out = {"n_soups": s, "n_examples": n, "n_test": n_held,
           "k": {str(k): stats(v) for k, v in per_k.items()}, "oracle": stats(oracle)}
    if groups is not None:
        out["n_images"] = int(torch.as_tensor(groups).unique().numel())
    return out
