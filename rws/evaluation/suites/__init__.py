"""The suite registry: one module per suite, each registering a ``Suite`` class by its config name.

    clean              top-1 accuracy                                   clean/""
    corruptions        19 corruptions x severities, on the fly          <corruption>/severity
    corruption_arrays  CIFAR-10-C style .npy arrays (root)              <corruption>/severity (suite "corruptions")
    adversarial        APGD per threat, their union, clean              <norm>/eps, union/"", clean/""
    perturbations      flip probability on perturbation sequences       <perturbation>/difficulty

A suite is built from its options (a plain dict: ``name`` plus the suite's own keys, ``seed``,
``n``), lists its cells for a data source, names the settings that change a cell's value, may
depend on other cells of its own (the union needs every threat's per-example correctness), and runs
one cell on a model, returning a ``CellResult`` (per-example correctness + long-format rows).
Which examples, how they are batched and how corruption noise is seeded is the data source's job
(``rws.evaluation.sources``), so the same suite serves evaluate.py and sweep.py.

A new suite (e.g. distribution-shift folders) is one more module here with
``@register`` on its class; see docs/evaluation.md ("Adding a suite").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from rws.evaluation.cells import Cell, CellResult
from rws.evaluation.sources import DataSource

# Options every suite accepts: its registry name, the seed of its randomness and the example cap
# (``n``, read by the caller that builds the data source).
COMMON_OPTIONS = ("name", "seed", "n")


class Suite(ABC):
    """A named group of cells. Subclasses set ``name`` (the config name), ``suite`` (the value of
    the ``suite`` column of its rows) and ``options`` (the keys they accept beyond COMMON_OPTIONS)."""

    name: ClassVar[str]
    suite: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Mapping[str, Any], corrupt_fn: Callable[..., torch.Tensor] | None = None) -> None:
        unknown = sorted(set(options) - set(COMMON_OPTIONS) - set(self.options))
        if unknown:
            raise ValueError(f"suite {self.name!r}: unknown option(s) {unknown}; it accepts "
                             f"{', '.join(sorted(set(COMMON_OPTIONS) | set(self.options)))}")
        self.config = dict(options)
        self.seed = int(options.get("seed") or 0)
        self.corrupt_fn = corrupt_fn

    @abstractmethod
    def cells(self, source: DataSource) -> list[Cell]:
        """Every cell this suite measures on ``source``, in evaluation order."""

    def settings(self, cell: Cell, source: DataSource) -> dict[str, Any]:
        """The suite's options that change ``cell``'s value (the data source adds its own)."""
        return {}

    def depends_on(self, cell: Cell, source: DataSource) -> list[Cell]:
        """Cells of this suite whose per-example correctness ``run`` needs for ``cell``."""
        return []

    @abstractmethod
    def run(self, model: nn.Module, cell: Cell, source: DataSource, device: torch.device,
            deps: Mapping[Cell, torch.Tensor]) -> CellResult:
        """Measure ``cell`` (``deps`` holds the correctness of ``depends_on(cell)``)."""


_REGISTRY: dict[str, type[Suite]] = {}


def register(cls: type[Suite]) -> type[Suite]:
    """Class decorator: make a suite available under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"suite {cls.name!r} is registered twice ({_REGISTRY[cls.name].__module__}, {cls.__module__})")
    _REGISTRY[cls.name] = cls
    return cls


def suite_names() -> list[str]:
    return list(_REGISTRY)


def make_suite(options: Mapping[str, Any], corrupt_fn: Callable[..., torch.Tensor] | None = None) -> Suite:
    """The suite an options dict describes. ``{name: corruptions, source: arrays, root}`` (the older
    spelling) means ``corruption_arrays``; ``corrupt_fn`` replaces ``rws.corruptions.corrupt`` (tests)."""
    opts = dict(options)
    name = opts.get("name")
    if name == "corruptions" and opts.get("source") == "arrays":
        name = opts["name"] = "corruption_arrays"
    if name in ("corruptions", "corruption_arrays"):
        expected = "arrays" if name == "corruption_arrays" else "on_the_fly"
        source = opts.pop("source", expected)
        if source != expected:
            raise ValueError(f"corruption source must be 'on_the_fly' or 'arrays', got {source!r}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown suite {name!r}; suites: {', '.join(_REGISTRY)} (config files in "
                         f"rws/conf/suite, e.g. corruptions_quick, are selected with suite=[...], not inline suites=[...])")
    return _REGISTRY[name](opts, corrupt_fn=corrupt_fn)


# Importing the suite modules registers them (in this order: the order of error messages and docs).
from rws.evaluation.suites import clean  # noqa: E402,F401,I001
from rws.evaluation.suites import corruptions  # noqa: E402,F401
from rws.evaluation.suites import corruption_arrays  # noqa: E402,F401
from rws.evaluation.suites import adversarial  # noqa: E402,F401
from rws.evaluation.suites import perturbations  # noqa: E402,F401
