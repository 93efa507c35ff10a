"""Deterministic index selection: train/val carving, per-class subsets, random subsets.

Every function draws from its own ``torch.Generator`` seeded by the caller, never from the
global RNG, so splits are identical across runs, processes and DDP ranks.
"""

from __future__ import annotations

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
