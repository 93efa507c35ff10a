"""Data sources: which test examples a suite sees, how they are batched and how corruption noise is
seeded. Every suite reads its examples through one of these, so evaluate.py and sweep.py run the
same suites; the seeding scheme is a documented property of the source, never an ``if`` in a suite.

``TestStream`` (evaluate.py)
    The datamodule's test loader (it does not shuffle), the first ``n`` examples, in the loader's
    batches. Attacks see those batches. Corruption noise is drawn per batch from a generator on the
    evaluation device seeded with ``cell_seed(seed, corruption, severity, batch_idx)``: a cell's
    images depend neither on the cells run before it nor on the process.

``FixedSubset`` (sweep.py)
    ``k`` examples drawn once at random from the first ``pool`` test examples
    (``load_test_subset``); a target with a smaller k uses the first k of them, so scores on
    different k are nested. Forward passes use chunks of ``batch_size``; an attack sees all k at once.
    Corruption noise is drawn once per (corruption, severity, k) from a CPU generator seeded with
    ``seed * 1_000_003 + int(sha256(f"{corruption}:{severity}")[:8], 16)`` and the corrupted images
    are cached, because they do not depend on the model being evaluated.

``settings()`` lists everything about the source that changes a measured value; it is part of every
cell's settings key (see ``rws.evaluation.cells``). ``batch_settings()`` adds how examples are
batched, for the cells whose value depends on it (on-the-fly corruptions, attacks).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterator

import torch

from rws.evaluation.cells import Batch, cell_seed, limit_batches

CorruptFn = Callable[..., torch.Tensor]


def data_identity(datamodule: Any) -> dict[str, Any]:
    """What identifies the test examples of a datamodule: its config name, the classes it keeps
    (``class_subset``, only when set, so identities without it stay as they were) and test subsetting
    (``test_subset``/``test_per_class`` draw with the data seed)."""
    ident: dict[str, Any] = {"name": getattr(datamodule, "name", type(datamodule).__name__)}
    classes = getattr(datamodule, "class_subset", None)
    if classes is not None:
        ident["class_subset"] = list(classes)
    subset = {k: getattr(datamodule, k, None) for k in ("test_subset", "test_per_class")}
    ident.update(subset)
    if any(v is not None for v in subset.values()):
        ident["seed"] = getattr(datamodule, "seed", None)
    return ident


def _default_corrupt() -> CorruptFn:
    from rws.corruptions import corrupt

    return corrupt


def _chunks(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[Batch]:
    for i in range(0, len(y), batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]


class DataSource(ABC):
    """The examples a suite measures on. ``corruption_table`` is the dataset's corruption parameter
    table ("cifar", "tiny_imagenet" or "imagenet"), ``dataset_kind`` picks default threat radii (ImageNet's
    for both ImageNet tables)."""

    corruption_table: str = "cifar"

    @property
    def dataset_kind(self) -> str:
        return "imagenet" if self.corruption_table in ("imagenet", "tiny_imagenet") else "cifar"

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Everything about the examples that changes a value (part of each cell's settings key)."""

    def batch_settings(self) -> dict[str, Any]:
        """How examples are grouped into batches, for the suites whose values depend on it (per-batch
        noise, attacks); forward-only cells leave it out of their settings."""
        return {}

    @abstractmethod
    def batches(self) -> Iterator[Batch]:
        """The clean examples in forward-pass batches."""

    @abstractmethod
    def attack_batches(self) -> Iterator[Batch]:
        """The batches an attack is run on (APGD's random start depends on the batch it is given)."""

    @abstractmethod
    def corrupted_batches(self, corruption: str, severity: int, seed: int, table: str, device: torch.device,
                          corrupt: CorruptFn | None = None) -> Iterator[Batch]:
        """The examples corrupted with this source's seeding scheme (see the module docstring)."""

    @abstractmethod
    def aligned_examples(self) -> int | None:
        """How many leading examples of a dataset aligned with the test split ``select`` reads
        (None: all), so a reader can load only those."""

    @abstractmethod
    def select(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        """This source's examples out of a dataset aligned with the test split (e.g. CIFAR-10-C
        arrays), in batches of ``batch_size``."""


class TestStream(DataSource):
    """The first ``n`` examples (all when None) of ``datamodule.test_dataloader()``."""

    def __init__(self, datamodule: Any, n: int | None = None) -> None:
        self.datamodule = datamodule
        self.n = None if n is None else int(n)
        self.corruption_table = getattr(datamodule, "corruption_table", "cifar")

    def settings(self) -> dict[str, Any]:
        return {"source": "test_stream", "data": data_identity(self.datamodule), "n": self.n}

    def batch_settings(self) -> dict[str, Any]:
        # Attacks run per loader batch, and corruption noise is seeded per batch.
        return {"batch_size": getattr(self.datamodule.test_dataloader(), "batch_size", None)}

    def batches(self) -> Iterator[Batch]:
        return limit_batches(self.datamodule.test_dataloader(), self.n)

    def attack_batches(self) -> Iterator[Batch]:
        return self.batches()

    def corrupted_batches(self, corruption: str, severity: int, seed: int, table: str, device: torch.device,
                          corrupt: CorruptFn | None = None) -> Iterator[Batch]:
        corrupt = corrupt or _default_corrupt()
        for i, (x, y) in enumerate(self.batches()):
            x, y = x.to(device, non_blocking=True).float(), y.to(device, non_blocking=True)
            # Seeded per batch, not per run: a cell's images do not depend on which cells ran before it.
            gen = torch.Generator(device=x.device)
            gen.manual_seed(cell_seed(seed, corruption, severity, i))
            yield corrupt(x, corruption, int(severity), table=table, generator=gen), y

    def aligned_examples(self) -> int | None:
        return self.n

    def select(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        m = len(y) if self.n is None else min(self.n, len(y))
        return _chunks(x[:m], y[:m], batch_size)


def load_test_subset(datamodule: Any, k: int, seed: int, pool: int = 10000) -> tuple[torch.Tensor, torch.Tensor]:
    """k examples drawn at random (fixed seed) from the first ``pool`` test examples.

    Targets use nested prefixes of this subset, so scores on different k are comparable."""
    try:
        datamodule.setup("test")
    except TypeError:
        datamodule.setup()
    xs, ys, seen = [], [], 0
    for x, y in datamodule.test_dataloader():
        xs.append(x)
        ys.append(y)
        seen += len(y)
        if seen >= pool:
            break
    x, y = torch.cat(xs)[:pool], torch.cat(ys)[:pool]
    idx = _subset_index(len(y), k, seed)
    return x[idx].contiguous(), y[idx].contiguous()


def _subset_index(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]


def subset_seed(seed: int, corruption: str, severity: int) -> int:
    """The sweep's corruption seed: one generator per (corruption, severity), so adding a target
    does not change another's images."""
    digest = hashlib.sha256(f"{corruption}:{severity}".encode()).hexdigest()
    return seed * 1_000_003 + int(digest[:8], 16)


class FixedSubset(DataSource):
    """The first ``k`` of a fixed random subset ``x, y`` (drawn by ``load_test_subset`` with ``seed``
    from the first ``pool`` test examples). ``prefix(k)`` gives the source of a smaller k that shares
    the tensors and the corrupted-image cache."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, k: int | None = None, *, seed: int = 0,
                 pool: int = 10000, data: dict[str, Any] | None = None, corruption_table: str = "cifar",
                 batch_size: int = 256, cache: dict | None = None) -> None:
        self.x, self.y = x, y
        self.k = len(y) if k is None else min(int(k), len(y))
        self.seed, self.pool, self.data = int(seed), int(pool), dict(data or {})
        self.corruption_table = corruption_table
        self.batch_size = int(batch_size)
        self._cache: dict[tuple, torch.Tensor] = {} if cache is None else cache

    def prefix(self, k: int) -> "FixedSubset":
        return FixedSubset(self.x, self.y, k, seed=self.seed, pool=self.pool, data=self.data,
                           corruption_table=self.corruption_table, batch_size=self.batch_size, cache=self._cache)

    def settings(self) -> dict[str, Any]:
        # No batch settings: batch_size only chunks forward passes (an attack sees all k at once,
        # noise is drawn for all k at once).
        return {"source": "test_subset", "data": self.data, "k": self.k, "seed": self.seed, "pool": self.pool}

    def batches(self) -> Iterator[Batch]:
        return _chunks(self.x[:self.k], self.y[:self.k], self.batch_size)

    def attack_batches(self) -> Iterator[Batch]:
        yield self.x[:self.k], self.y[:self.k]

    def corrupted_batches(self, corruption: str, severity: int, seed: int, table: str, device: torch.device,
                          corrupt: CorruptFn | None = None) -> Iterator[Batch]:
        key = (corruption, int(severity), self.k, int(seed), table)
        if key not in self._cache:
            corrupt = corrupt or _default_corrupt()
            g = torch.Generator().manual_seed(subset_seed(seed, corruption, int(severity)))
            self._cache[key] = corrupt(self.x[:self.k], corruption, int(severity), table=table, generator=g)
        return _chunks(self._cache[key], self.y[:self.k], self.batch_size)

    def aligned_examples(self) -> int | None:
        return self.pool

    def select(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[Batch]:
        x, y = x[:self.pool], y[:self.pool]
        idx = _subset_index(len(y), self.k, self.seed)
        return _chunks(x[idx], y[idx], batch_size)
