"""Deterministic index selection: train/val carving, per-class subsets, random subsets.

Every function draws from its own ``torch.Generator`` seeded by the caller, never from the
global RNG, so splits are identical across runs, processes and DDP ranks.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def resolve_count(size: int | float | None, n: int) -> int:
    """``size`` as a count (int >= 1) or a fraction of ``n`` (0 <= float < 1)."""
    if size is None:
        return 0
    if isinstance(size, float) and size < 1:
        if size < 0:
            raise ValueError(f"a fractional size must be in [0, 1), got {size}")
        return int(round(size * n))
    count = int(size)
    if not 0 <= count < n:
        raise ValueError(f"size {count} must be in [0, {n}) for {n} items")
    return count


def split_indices(n: int, val_size: int | float | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx), disjoint and covering range(n), both sorted."""
    n_val = resolve_count(val_size, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def per_class_subset(labels: torch.Tensor, indices: torch.Tensor, per_class: int | None, seed: int) -> torch.Tensor:
    """At most ``per_class`` of ``indices`` from each class, chosen by a seeded shuffle; sorted."""
    if per_class is None:
        return indices
    perm = indices[torch.randperm(len(indices), generator=torch.Generator().manual_seed(int(seed) + 1))]
    keep = []
    ys = labels[perm]
    for c in ys.unique():
        keep.append(perm[ys == c][: int(per_class)])
    return torch.cat(keep).sort().values if keep else indices[:0]


def random_subset(indices: torch.Tensor, size: int | float | None, seed: int) -> torch.Tensor:
    """A seeded random subset of ``indices`` (count or fraction), sorted; all of them when None."""
    if size is None or (not isinstance(size, float) and int(size) >= len(indices)):
        return indices
    k = resolve_count(size, len(indices))
    perm = torch.randperm(len(indices), generator=torch.Generator().manual_seed(int(seed) + 2))
    return indices[perm[:k]].sort().values


def check_class_subset(subset: Sequence[int] | None, num_classes: int, dataset: str) -> list[int] | None:
    """``data.class_subset``: distinct non-negative class indices, as many as ``data.num_classes``."""
    if subset is None:
        return None
    if isinstance(subset, (str, bytes)) or not all(isinstance(c, int) and not isinstance(c, bool) for c in subset):
        raise ValueError(f"data.class_subset={subset!r} of {dataset} must be a list of class indices")
    subset = [int(c) for c in subset]
    if len(set(subset)) != len(subset) or any(c < 0 for c in subset) or not subset:
        raise ValueError(f"data.class_subset={subset} of {dataset} must be distinct non-negative class indices")
    if len(subset) != num_classes:
        raise ValueError(f"data.class_subset has {len(subset)} classes but data.num_classes={num_classes}; "
                         f"set data.num_classes={len(subset)}")
    return subset


def select_classes(data: Any, labels: torch.Tensor, classes: Sequence[str], subset: Sequence[int],
                   dataset: str) -> tuple[Any, torch.Tensor, list[str]]:
    """The samples of the classes in ``subset``, relabelled to their position in it."""
    if max(subset) >= len(classes):
        raise ValueError(f"data.class_subset={list(subset)} of {dataset}: the data has {len(classes)} classes "
                         f"(indices 0..{len(classes) - 1})")
    relabel = torch.full((len(classes),), -1, dtype=torch.long)
    relabel[torch.tensor(list(subset))] = torch.arange(len(subset))
    new = relabel[labels]
    keep = torch.nonzero(new >= 0).flatten()
    kept = data[keep] if isinstance(data, torch.Tensor) else [data[int(i)] for i in keep]
    return kept, new[keep], [classes[c] for c in subset]
