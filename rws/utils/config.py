"""OmegaConf containers to plain Python, in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


def to_plain(obj: Any, resolve: bool = True) -> Any:
    """DictConfig/ListConfig (also nested inside plain containers), tuples and Paths -> plain JSON-able
    Python. Anything else is returned as it is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=resolve)
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v, resolve) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, resolve) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_dict(cfg: Any) -> dict[str, Any]:
    """A whole run config as a dict for result files: resolved where possible; interpolations that
    need a running Hydra app (e.g. ``${hydra:runtime.output_dir}``) are kept unresolved."""
    try:
        return to_plain(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - any resolver failure: fall back to the raw config
        return to_plain(cfg, resolve=False)
