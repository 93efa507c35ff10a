"""Exact enumeration of soup weight grids.

A grid is "weights in [low, high] in steps of ``step``", optionally constrained to sum to 1 (affine).
Every weight is an integer multiple of the step, so we enumerate integer tuples and never compare
float sums to 1: ``0.2 + 0.2 + 0.6 == 1.0`` style checks silently drop valid soups.

The paper's 4-model grid over [-0.4, 1.4] with step 0.2 has exactly 480 affine soups
(4-tuples of integers in [-2, 7] summing to 5); the paper reports 460 (see docs/soups.md).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator, Mapping, Sequence

Weights = tuple[Fraction, ...]


def to_fraction(x: Any) -> Fraction:
    """Exact value of a user number: floats go through their shortest repr, so 0.2 means 1/5."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, float):
        return Fraction(repr(x))
    return Fraction(str(x))


@dataclass(frozen=True)
class GridSpec:
    n: int
    low: Fraction
    high: Fraction
    step: Fraction
    affine: bool = True
    total: Fraction = Fraction(1)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"a grid needs at least one member, got n={self.n}")
        if self.step <= 0:
            raise ValueError(f"grid step must be > 0, got {self.step}")
        if self.high < self.low:
            raise ValueError(f"grid high ({self.high}) < low ({self.low})")
        for name, v in (("low", self.low), ("high", self.high)):
            if (v / self.step).denominator != 1:
                raise ValueError(f"grid {name}={float(v)} is not a multiple of step={float(self.step)}")
        if self.affine and (self.total / self.step).denominator != 1:
            raise ValueError(f"the affine total {self.total} is not a multiple of step={float(self.step)}")

    @classmethod
    def make(cls, n: int, low: Any, high: Any, step: Any, affine: bool = True, total: Any = 1) -> "GridSpec":
        return cls(n, to_fraction(low), to_fraction(high), to_fraction(step), bool(affine), to_fraction(total))

    def integer_tuples(self) -> Iterator[tuple[int, ...]]:
        """Integer multiples of the step, in lexicographic order (the order of itertools.product)."""
        lo, hi = int(self.low / self.step), int(self.high / self.step)
        if not self.affine:
            yield from itertools.product(range(lo, hi + 1), repeat=self.n)
            return
        target = int(self.total / self.step)
        yield from _bounded_compositions(self.n, lo, hi, target)

    def __iter__(self) -> Iterator[Weights]:
        for t in self.integer_tuples():
            yield tuple(i * self.step for i in t)

    def __len__(self) -> int:
        return sum(1 for _ in self.integer_tuples())


def _bounded_compositions(n: int, lo: int, hi: int, target: int) -> Iterator[tuple[int, ...]]:
    # Prune on the reachable range of the remaining coordinates so the count stays cheap for big grids.
    if n == 1:
        if lo <= target <= hi:
            yield (target,)
        return
    rest = n - 1
    first_lo = max(lo, target - rest * hi)
    first_hi = min(hi, target - rest * lo)
    for first in range(first_lo, first_hi + 1):
        for tail in _bounded_compositions(rest, lo, hi, target - first):
            yield (first, *tail)


def front(ws: Sequence[Any]) -> list[Weights]:
    """Two-model front: (w, 1 - w) for each w, exact."""
    return [(to_fraction(w), 1 - to_fraction(w)) for w in ws]


def enumerate_weights(cfg: Mapping[str, Any], n: int) -> list[Weights]:
    """Soup weights from a sweep's ``grid`` config.

    ``{low, high, step, affine}``: the exact grid; ``{weights: [[...], ...]}``: an explicit list;
    ``{kind: front, ws: [...]}``: the 2-model front w*a + (1-w)*b.
    """
    kind = cfg.get("kind") or ("front" if cfg.get("ws") is not None
                               else "weights" if cfg.get("weights") is not None else "grid")
    if kind == "front":
        if n != 2:
            raise ValueError(f"grid kind 'front' needs exactly 2 members, got {n}")
        ws = cfg.get("ws")
        if ws is None:
            spec = GridSpec.make(1, cfg.get("low", 0), cfg.get("high", 1), cfg.get("step", 0.1), affine=False)
            ws = [w[0] for w in spec]
        return front(ws)
    if kind == "weights":
        out = []
        for row in cfg["weights"]:
            if len(row) != n:
                raise ValueError(f"weights row {list(row)} has {len(row)} entries for {n} members")
            out.append(tuple(to_fraction(w) for w in row))
        if cfg.get("affine", True):
            bad = [r for r in out if sum(r) != 1]
            if bad:
                raise ValueError(f"{len(bad)} weight row(s) do not sum to 1 (set grid.affine=false to allow): "
                                 f"{[[float(w) for w in r] for r in bad[:5]]}")
        return out
    if kind == "grid":
        return list(GridSpec.make(n, cfg.get("low", -0.4), cfg.get("high", 1.4), cfg.get("step", 0.2),
                                  affine=cfg.get("affine", True)))
    raise ValueError(f"unknown grid kind {kind!r}; expected grid, weights or front")


def float_sum_count(n: int, low: float, high: float, step: float) -> int:
    """What a naive float check finds: values rounded to one decimal, kept when ``sum(t) == 1.0``.

    Only here to document why exact enumeration matters; it gives 336 instead of 480 on the paper grid.
    """
    k = int(round((high - low) / step))
    values = [round(low + i * step, 10) for i in range(k + 1)]
    return sum(1 for t in itertools.product(values, repeat=n) if sum(t) == 1.0)
