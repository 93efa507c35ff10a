"""Patch a standard model with one or more signatures and write the result as an export.

    python -m rws.stages.patch base=PATH signatures='[{path: sigs/fog.safetensors, alpha: 1.0}]' out=DIR

bn_policy: null (each signature's stored policy), robust, std, recalibrate or official; bn_mix: affine | convex.
``recalibrate`` and ``official`` (signatures extracted with bn_policy=official: the official code's
ResNet path) need a calibration source that names its data, e.g.
``'calibration={data: cifar10, split: train, corruption: fog, severity: 5, batches: 10}'``.
The model is built through the ``patch`` spec kind, so it is the model evaluate.py builds from the
same spec; the spec and its id are recorded in metrics.json.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig

from rws.cli.entry import hydra_entry
from rws.errors import UserError
from rws.specs import build, spec_id, validate
from rws.utils.config import to_plain
from rws.utils.io import sha256_file
from rws.weights.export import load_export, save_export

log = logging.getLogger(__name__)


def patch_export(base: str, signatures: Sequence[Mapping[str, Any]], out: str | Path,
                 bn_policy: str | None = None, bn_mix: str = "affine",
                 calibration: Mapping[str, Any] | None = None, run_cfg: dict[str, Any] | None = None) -> Path:
    if not signatures:
        raise ValueError("signatures is empty: pass signatures='[{path: FILE, alpha: 1.0}]'")
    if isinstance(signatures, (str, Mapping)):
        signatures = [signatures]  # type: ignore[list-item]
    for i, s in enumerate(signatures):
        if not isinstance(s, Mapping) or not s.get("path"):
            raise UserError(f"signatures[{i}] is {s!r}", "option signatures",
                            "a list of mappings, e.g. 'signatures=[{path: sigs/fog.safetensors, alpha: 1.0}]'")
        alpha = s.get("alpha", 1.0)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise UserError(f"alpha of {s['path']} is {alpha!r}", f"option signatures[{i}].alpha",
                            "a finite number, e.g. alpha: 0.5")
    export = load_export(base)
    sigs = [{"path": str(s["path"]), "alpha": float(s.get("alpha", 1.0))} for s in signatures]
    spec: dict[str, Any] = {"kind": "patch", "base": {"kind": "export", "path": str(export.path)},
                            "signatures": sigs, "bn_policy": bn_policy, "bn_mix": bn_mix}
    if calibration is not None:
        spec["calibration"] = to_plain(calibration)
    model = build(validate(spec, where="patch"))
    record = {"base": {"path": str(export.path), "sha256": export.sha256}, "bn_policy": bn_policy,
              "bn_mix": bn_mix, "calibration": spec.get("calibration"), "spec": spec, "spec_id": spec_id(spec),
              "signatures": [{**s, "sha256": sha256_file(s["path"])} for s in sigs]}
    return save_export(out, model, export.model_cfg, metrics={}, run_cfg={**(run_cfg or {}), "patch": record})


@hydra_entry("patch")
def main(cfg: DictConfig) -> None:
    path = patch_export(cfg.base, to_plain(cfg.signatures) or [], cfg.out, bn_policy=cfg.bn_policy,
                        bn_mix=cfg.bn_mix, calibration=to_plain(cfg.calibration), run_cfg=to_plain(cfg))
    log.info("patched export written to %s", path)


if __name__ == "__main__":
    main()
