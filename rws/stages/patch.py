"""Patch a standard model with one or more signatures and write the result as an export.

    python -m rws.stages.patch base=PATH signatures='[{path: sigs/fog.safetensors, alpha: 1.0}]' out=DIR

bn_policy: null (each signature's stored policy), robust or std. ``recalibrate`` needs data:
use ``Patcher(...).recalibrate(batches)`` from Python.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import hydra
from omegaconf import DictConfig, OmegaConf

from rws.utils.io import sha256_file
from rws.weights.export import load_export, save_export
from rws.weights.patching import Patcher

log = logging.getLogger(__name__)


def patch_export(base: str, signatures: Sequence[Mapping[str, Any]], out: str | Path,
                 bn_policy: str | None = None, run_cfg: dict[str, Any] | None = None) -> Path:
    if not signatures:
        raise ValueError("signatures is empty: pass signatures='[{path: FILE, alpha: 1.0}]'")
    if bn_policy == "recalibrate":
        raise ValueError("bn_policy=recalibrate needs calibration data; use Patcher.recalibrate from Python")
    export = load_export(base)
    model = export.build()
    sigs = [(str(s["path"]), float(s.get("alpha", 1.0))) for s in signatures]
    Patcher(model, sigs, bn_policy=bn_policy).apply()
    record = {"base": {"path": str(export.path), "sha256": export.sha256}, "bn_policy": bn_policy,
              "signatures": [{"path": p, "alpha": a, "sha256": sha256_file(p)} for p, a in sigs]}
    return save_export(out, model, export.model_cfg, metrics={}, run_cfg={**(run_cfg or {}), "patch": record})


@hydra.main(config_path="../conf", config_name="patch", version_base="1.3")
def main(cfg: DictConfig) -> None:
    sigs = OmegaConf.to_container(cfg.signatures, resolve=True) or []
    path = patch_export(cfg.base, sigs, cfg.out, bn_policy=cfg.bn_policy,
                        run_cfg=OmegaConf.to_container(cfg, resolve=True))
    log.info("patched export written to %s", path)


if __name__ == "__main__":
    main()
