"""Sharding a run over jobs: ``shard=i/n`` makes job i evaluate its share of the spec list and write
its own result file, ``results.shard-i-of-n.jsonl``, next to the others in the same directory.

Every reader of a results directory (``rws.evaluation.results.read_results``, the summary, the
sweep's selection step, ``rws.report.tables``) reads all of its result files, so n shard jobs
give the same rows as one unsharded run. Specs are dealt round-robin (spec j goes to shard j mod n),
which spreads the cost of a grid evenly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

T = TypeVar("T")
_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard must be i/n with 0 <= i < n, got {self.index}/{self.count}")

    def select(self, items: Sequence[T]) -> list[T]:
        """This shard's share of ``items``: every n-th item starting at i."""
        return list(items[self.index::self.count])

    @property
    def suffix(self) -> str:
        """The result-file infix, e.g. ``shard-0-of-2``."""
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(value: Any) -> Shard | None:
    """``None``/"" -> no sharding; "i/n" (or a Shard) -> Shard(i, n)."""
    if value is None or value == "" or isinstance(value, Shard):
        return value or None
    m = _PATTERN.match(str(value))
    if not m:
        raise ValueError(f"shard must look like i/n (e.g. shard=0/4), got {value!r}")
    return Shard(int(m.group(1)), int(m.group(2)))
