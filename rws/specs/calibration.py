"""Declarative calibration sources: the data a spec's BN recalibration runs on, stored in the spec
so a result row alone rebuilds its model.

    calibration: {data: cifar10_jpeg, overrides: [data.subset_per_class=20],   # optional
                  split: train, corruptions: [fog, snow], severity: 5, batches: 10, batch_size: 128, seed: 0}

Batches are the datamodule's un-augmented training batches (``calibration_batches``; ``split: val``:
the first batches of the held-out validation split, for head-selection thresholds), each
optionally corrupted: batch i with ``corruptions[i % len(corruptions)]``, all draws from ONE
generator seeded with ``seed`` (the stream the RWS CPU pipeline used for its recalibrated rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch

from rws.specs.registry import SpecError

SOURCE_KEYS = ("data", "overrides", "split", "corruption", "corruptions", "severity", "batches", "batch_size", "seed")
SPLITS = ("train", "val")
DEFAULT_SEVERITY = 5
# The seed the RWS CPU pipeline hard-coded before the seed was a source key: its stored specs name
# no seed, and must rebuild the same model.
DEFAULT_SEED = 1234


@dataclass(frozen=True)
class CalibrationSource:
    batches: int
    data: str | None = None
    overrides: tuple[str, ...] = ()
    split: str = "train"
    corruptions: tuple[str, ...] = ()
    severity: int = DEFAULT_SEVERITY
    batch_size: int | None = None
    seed: int = DEFAULT_SEED

    @classmethod
    def parse(cls, source: Any, where: str = "calibration") -> "CalibrationSource":
        """Validate a source mapping; SpecError naming the key and what was expected."""
        if not isinstance(source, Mapping):
            raise SpecError(f"{where}: a calibration source must be a mapping like "
                            f"{{split: train, batches: 10}}, got {source!r}")
        unknown = [k for k in source if k not in SOURCE_KEYS]
        if unknown:
            raise SpecError(f"{where}: unknown calibration key(s) {unknown}; keys: {', '.join(SOURCE_KEYS)}")
        split = source.get("split", "train")
        if split not in SPLITS:
            raise SpecError(f"{where}.split must be 'train' (un-augmented training batches) or 'val' (the "
                            f"held-out validation split, in order), got {split!r}")
        if "batches" not in source:
            raise SpecError(f"{where}: missing key 'batches' (how many calibration batches)")
        batches = _positive_int(source["batches"], f"{where}.batches")
        batch_size = source.get("batch_size")
        if batch_size is not None:
            batch_size = _positive_int(batch_size, f"{where}.batch_size")
        seed = source.get("seed", DEFAULT_SEED)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise SpecError(f"{where}.seed must be an integer, got {seed!r}")
        return cls(batches=batches, data=_data_name(source.get("data"), where),
                   overrides=_overrides(source.get("overrides"), where), split=split,
                   corruptions=_corruptions(source, where), severity=_severity(source, where),
                   batch_size=batch_size, seed=seed)


def check_source(source: Any, where: str) -> None:
    """Validation hook for the kinds that hold a calibration source."""
    CalibrationSource.parse(source, where)


def calibration_stream(dm: Any, source: CalibrationSource) -> Iterator[tuple[torch.Tensor, Any]]:
    """(x, y) calibration batches of ``dm`` as ``source`` describes them."""
    if source.split == "val":
        batches = _val_batches(dm, source.batches, source.batch_size)
    else:
        batches = dm.calibration_batches(source.batches, source.batch_size or dm.batch_size)
    if not source.corruptions:
        yield from batches
        return
    from rws.corruptions import corrupt

    cs = source.corruptions
    gen = torch.Generator().manual_seed(source.seed)  # one generator for the whole stream
    for i, (x, y) in enumerate(batches):
        yield corrupt(x, cs[i % len(cs)], source.severity, table=dm.corruption_table, generator=gen), y


def _val_batches(dm: Any, n_batches: int, batch_size: int | None) -> Iterator[tuple[torch.Tensor, Any]]:
    """The first ``n_batches`` of the validation split (not shuffled), re-batched to ``batch_size``."""
    loader = dm.val_dataloader()
    if not loader:
        raise SpecError("calibration split 'val': the datamodule has no validation split (val_size=0)")
    xs, ys, seen = [], [], 0
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        seen += len(y)
        size = batch_size or len(y)
        if seen >= n_batches * size:
            break
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    size = batch_size or len(ys[0])
    for i in range(n_batches):
        if i * size >= len(y_all):
            return
        yield x_all[i * size:(i + 1) * size], y_all[i * size:(i + 1) * size]


def compose_datamodule(data: str, overrides: tuple[str, ...] = ()) -> Any:
    """The datamodule of data config ``data`` (rws/conf/data) with Hydra ``overrides``, set up."""
    from hydra.utils import instantiate

    from rws.config import compose

    cfg = compose("evaluate", [f"data={data}", *overrides])
    dm = instantiate(cfg.data)
    dm.setup()
    return dm


def _positive_int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise SpecError(f"{where} must be a positive integer, got {v!r}")
    return v


def _data_name(data: Any, where: str) -> str | None:
    if data is None:
        return None
    from rws.config import CONF_DIR

    names = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
    if not isinstance(data, str) or data not in names:
        raise SpecError(f"{where}.data: unknown data config {data!r}; configs in {CONF_DIR / 'data'}: "
                        f"{', '.join(names)}")
    return data


def _overrides(overrides: Any, where: str) -> tuple[str, ...]:
    if overrides is None:
        return ()
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise SpecError(f"{where}.overrides must be a list of Hydra override strings like "
                        f"['data.subset_per_class=20'], got {overrides!r}")
    return tuple(overrides)


def _corruptions(source: Mapping[str, Any], where: str) -> tuple[str, ...]:
    if "corruption" in source and "corruptions" in source:
        raise SpecError(f"{where}: give 'corruption' (one name) or 'corruptions' (a list), not both")
    if "corruption" in source:
        names, key = [source["corruption"]], "corruption"
    elif "corruptions" in source:
        names, key = source["corruptions"], "corruptions"
        if not isinstance(names, list) or not names:
            raise SpecError(f"{where}.corruptions must be a non-empty list of corruption names, got {names!r}")
    else:
        return ()
    from rws.corruptions import canonical_name

    for name in names:
        try:
            canonical_name(name)
        except ValueError as e:
            raise SpecError(f"{where}.{key}: {e}") from None
    return tuple(str(n) for n in names)


def _severity(source: Mapping[str, Any], where: str) -> int:
    from rws.corruptions import SEVERITIES

    severity = source.get("severity", DEFAULT_SEVERITY)
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise SpecError(f"{where}.severity must be one of {list(SEVERITIES)}, got {severity!r}")
    return int(severity)
