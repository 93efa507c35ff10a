"""One wandb run per evaluate.py / sweep.py call when ``logger=wandb`` is selected: the result rows as
a ``wandb.Table``, the per-model summary (and a sweep's selection) in the run summary, the figures as
images. ``WANDB_MODE=offline`` (or ``logger.wandb.offline=true``) works without an account; the run
lands in ``<out>/wandb``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

from rws.utils.config import to_plain

TABLE_COLUMNS = ("spec_id", "model", "suite", "condition", "level", "metric", "value", "n", "settings", "seed")


def wandb_enabled(cfg: DictConfig) -> bool:
    lcfg = cfg.get("logger") or {}
    return "wandb" in lcfg


def _table_cell(row: Mapping[str, Any], col: str) -> Any:
    v = row.get(col)
    # Levels mix "", ints and floats, which one wandb column cannot hold: logged as JSON text.
    return json.dumps(v) if col in ("level", "weights") else v


def log_results(cfg: DictConfig, rows: list[dict[str, Any]], out: str | os.PathLike, job_type: str,
                models: Mapping[str, Mapping[str, Any]] | None = None, extra_summary: Mapping[str, Any] | None = None,
                figures: Iterable[str | os.PathLike] = (), config: Mapping[str, Any] | None = None) -> bool:
    """Log one run (see the module docstring); returns False when wandb is not selected.

    ``models``: spec_id -> summary dict (numbers go to ``run.summary["<model>/<spec_id>"]``);
    ``extra_summary``: more run-summary entries (e.g. a sweep's best soups)."""
    if not wandb_enabled(cfg):
        return False
    import wandb

    w = cfg.logger.wandb

    def sel(key: str, default: Any = None) -> Any:
        try:
            return to_plain(OmegaConf.select(w, key, default=default))
        except Exception:  # noqa: BLE001 - e.g. an interpolation that needs the Hydra runtime
            return default

    mode = os.environ.get("WANDB_MODE") or ("offline" if sel("offline", False) else None)
    run = wandb.init(project=sel("project", "rws"), entity=sel("entity"), name=sel("name"), group=sel("group"),
                     tags=sel("tags") or None, job_type=job_type, dir=str(out), mode=mode,
                     config=dict(config or {}))
    try:
        cols = list(TABLE_COLUMNS) + (["weights"] if any("weights" in r for r in rows) else [])
        run.log({"results": wandb.Table(columns=cols, data=[[_table_cell(r, c) for c in cols] for r in rows])})
        for sid, s in (models or {}).items():
            run.summary[f"{s.get('model')}/{sid}"] = {k: v for k, v in s.items()
                                                      if isinstance(v, (int, float)) and v is not None}
        for k, v in (extra_summary or {}).items():
            run.summary[k] = v
        images = {Path(f).stem: wandb.Image(str(f)) for f in figures if Path(f).is_file()}
        if images:
            run.log({"figures/" + k: v for k, v in images.items()})
    finally:
        wandb.finish()
    return True
