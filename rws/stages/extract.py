"""Extract one Robust Weight Signature per corruption.

    python -m rws.stages.extract init=PATH std=PATH robust='{gaussian_noise: PATH, fog: PATH}' \
        out=DIR layers.k=5 granularity=per_tensor bits=16 bn_policy=robust

Writes ``<out>/<corruption>.safetensors`` and ``<out>/analysis.json`` (per-layer RWS norms relative
to the standard weights, per-layer cosine similarities between corruptions: the paper's Fig. 2-4).

bn_policy: robust | std | recalibrate | official. ``official`` (the official code's ResNet path) leaves
every key whose name contains ``bn`` or ``downsample`` (whole network) out of the RWS and stores the
robust model's raw values of them instead (metadata ``official_keys``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from rws.cli.entry import hydra_entry
from rws.errors import UserError
from rws.utils.io import write_json
from rws.weights.export import Export, build_model, load_export
from rws.weights.layer_select import Groups, fallback_groups, model_groups, select_from_cfg
from rws.weights.quantize import resolve_quant
from rws.weights.signature_io import Signature, arch_hash, save_signature
from rws.weights.signatures import (GRANULARITIES, extract_signature, layer_cosines, layer_norms, official_keys,
                                    official_values)

BN_POLICIES = ("robust", "std", "recalibrate", "official")

log = logging.getLogger(__name__)


def _natural(key: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split(".")]


def groups_for(export: Export) -> tuple[Groups, list[str]]:
    """(layer groups, state-dict keys in model order). safetensors files list keys alphabetically,
    so the order comes from the rebuilt model; without one, numeric indices are sorted naturally."""
    try:
        with torch.device("meta"):  # structure only: no memory, no init cost
            model = build_model(export.model_cfg)
    except Exception as e:  # unknown/foreign model config: grouping by module is still meaningful
        log.warning("cannot rebuild %s (%s); grouping keys by module", export.path, e)
        keys = sorted(export.state_dict, key=_natural)
        return fallback_groups({k: export.state_dict[k] for k in keys}), keys
    return model_groups(model), list(model.state_dict())


def _check_fits(option: str, export: Export, std: Export, keys: list[str], hint: str = "") -> None:
    """UserError naming ``export`` unless it has every key of ``keys`` with std's shape."""
    problems = [f"{k} missing" for k in keys if k not in export.state_dict]
    problems += [f"{k} has shape {tuple(export.state_dict[k].shape)}, std {tuple(std.state_dict[k].shape)}"
                 for k in keys if k in export.state_dict and export.state_dict[k].shape != std.state_dict[k].shape]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise UserError(f"{export.path} does not fit std ({'; '.join(problems[:3])}{more})", f"option {option}",
                        f"an export of the same architecture as std={std.path}{hint}")


def extract_all(init: str, std: str, robust: Mapping[str, str], out: str | Path,
                layers: Mapping[str, Any] | None = None, granularity: str = "per_tensor", bits: int = 16,
                bn_policy: str = "robust", severity: int | str = 5, analysis: bool = True,
                quant: str | None = None) -> dict[str, Any]:
    """Library entry point of the stage; returns the analysis dict."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if bn_policy not in BN_POLICIES:
        raise ValueError(f"bn_policy must be one of {', '.join(BN_POLICIES)}, got {bn_policy!r}")
    quant = resolve_quant(int(bits), quant)  # float | linear (bits=16 offers both)
    if not robust:
        raise ValueError("robust is empty: pass robust='{corruption: EXPORT_DIR, ...}'")
    out = Path(out)
    e_init, e_std = load_export(init), load_export(std)
    groups, state_keys = groups_for(e_std)
    missing = [k for k in state_keys if k not in e_std.state_dict]
    if missing:
        raise ValueError(f"{e_std.path}: state dict does not match its model.yaml, missing {missing[:5]}")
    layer_names, keys = select_from_cfg(groups, state_keys, layers)
    if bn_policy != "robust":  # only the robust policy ships running stats
        keys = [k for k in keys if not k.endswith(("running_mean", "running_var"))]
    official: list[str] = []
    if bn_policy == "official":  # averaged raw, never projected (whole network, not only the kept layers)
        official = official_keys(e_std.state_dict, state_keys)
        keys = [k for k in keys if k not in set(official)]
        if not official:
            log.warning("bn_policy=official: no key of %s contains 'bn' or 'downsample' (as on the official "
                        "code's VGG-16-BN); the signatures store no BN values, patching keeps the standard BN "
                        "until the statistics are re-estimated", e_std.path)
    all_keys = [k for k in state_keys if not k.endswith("num_batches_tracked")]
    sources = {"init": {"path": str(e_init.path), "sha256": e_init.sha256},
               "std": {"path": str(e_std.path), "sha256": e_std.sha256}}
    full: dict[str, dict[str, torch.Tensor]] = {}
    files: dict[str, str] = {}
    pending: dict[str, Signature] = {}  # written once every input has been read and checked
    _check_fits("init", e_init, e_std, all_keys if analysis else keys)
    for corruption, path in dict(robust).items():  # every input read and checked before the progress bar
        e_rob = load_export(path)
        _check_fits(f"robust.{corruption}", e_rob, e_std, keys + official)
        if analysis:
            _check_fits(f"robust.{corruption}", e_rob, e_std, all_keys,
                        " (analysis=true compares every layer, the head included; analysis=false needs only the kept ones)")
        del e_rob
    for corruption, path in tqdm(dict(robust).items(), desc="extract", unit="sig"):
        e_rob = load_export(path)
        rws, stats = extract_signature(e_init.state_dict, e_std.state_dict, e_rob.state_dict, keys,
                                       granularity, groups)
        sig = Signature(rws=rws, stats=stats, official=official_values(e_rob.state_dict, official),
                        layers=layer_names, granularity=granularity, bits=int(bits), quant=quant,
                        corruption=corruption, severity=str(severity), bn_policy=bn_policy,
                        arch_name=str(e_std.model_cfg.get("name", "")), arch_hash=arch_hash(e_std.state_dict),
                        model_cfg=e_std.model_cfg,
                        sources={**sources, "robust": {"path": str(e_rob.path), "sha256": e_rob.sha256}})
        pending[corruption] = sig
        if analysis:  # Fig. 2/3 look at every layer, not only the kept ones
            full[corruption], _ = extract_signature(e_init.state_dict, e_std.state_dict, e_rob.state_dict,
                                                    all_keys, granularity, groups)
    summary: dict[str, Any] = {"layers": layer_names, "keys": keys, "granularity": granularity, "bits": int(bits),
                               "quant": quant, "bn_policy": bn_policy, "files": files}
    if bn_policy == "official":
        summary["official_keys"] = official
    if analysis:
        norms = {c: layer_norms(r, e_std.state_dict, groups) for c, r in full.items()}
        layer_order = [n for n, _ in groups if any(n in v for v in norms.values())]
        summary["layer_order"] = layer_order
        summary["relative_norm"] = norms
        summary["relative_norm_mean"] = {n: sum(norms[c][n] for c in norms) / len(norms) for n in layer_order}
        summary["cosine"] = layer_cosines(full, groups)
    for corruption, sig in pending.items():
        files[corruption] = str(save_signature(out / f"{corruption}.safetensors", sig))
    write_json(out / "analysis.json", summary)
    return summary


@hydra_entry("extract")
def main(cfg: DictConfig) -> None:
    robust = OmegaConf.to_container(cfg.robust, resolve=True) if cfg.robust is not None else {}
    summary = extract_all(cfg.init, cfg.std, robust, cfg.out,
                          layers=OmegaConf.to_container(cfg.layers, resolve=True), granularity=cfg.granularity,
                          bits=cfg.bits, bn_policy=cfg.bn_policy, severity=cfg.severity, analysis=cfg.analysis,
                          quant=cfg.get("quant"))
    log.info("wrote %d signature(s) to %s (layers: %s)", len(summary["files"]), cfg.out, summary["layers"])


if __name__ == "__main__":
    main()
