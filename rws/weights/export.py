"""Exports: the hand-off between training and every post-hoc stage.

An export directory holds
    model.safetensors  the state dict (no 'model.' prefix, no optimizer state)
    model.yaml         the resolved model config; ``create_model(**cfg)`` rebuilds the module
    metrics.json       final metrics, run config, git commit, library versions

Reading an export needs neither Lightning nor pickle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from rws.utils.io import load_safetensors, save_safetensors, sha256_file, write_json, write_text
from rws.utils.provenance import provenance

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model.yaml"
METRICS_FILE = "metrics.json"
_FACTORY = "rws.models.create_model"


@dataclass
class Export:
    path: Path
    model_cfg: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """A fresh module with this export's weights, in eval mode."""
        model = build_model(self.model_cfg)
        load_state_strict(model, self.state_dict, source=str(self.path / MODEL_FILE))
        return model.to(device).eval()

    @property
    def sha256(self) -> str:
        return sha256_file(self.path / MODEL_FILE)


def build_model(model_cfg: dict[str, Any]) -> nn.Module:
    """Rebuild a module from a model.yaml dict. Only rws's own factory is allowed as a target,
    so a model.yaml from elsewhere cannot make us import and call arbitrary code."""
    from rws.models import create_model

    cfg = dict(model_cfg)
    target = cfg.pop("_target_", _FACTORY)
    if target != _FACTORY:
        raise ValueError(f"model config _target_ must be {_FACTORY!r}, got {target!r}")
    return create_model(**cfg)


def save_export(path: str | os.PathLike, model: nn.Module, model_cfg: dict[str, Any],
                metrics: dict[str, Any] | None = None, run_cfg: dict[str, Any] | None = None) -> Path:
    """Write model.safetensors, model.yaml and metrics.json atomically into ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items()}
    check_finite(state, source=str(path / MODEL_FILE))
    cfg = {"_target_": _FACTORY, **{k: v for k, v in model_cfg.items() if k != "_target_"}}
    save_safetensors(state, path / MODEL_FILE, metadata={"format": "rws-export-v1"})
    write_text(path / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(cfg)))
    write_json(path / METRICS_FILE, {"metrics": metrics or {}, "config": run_cfg or {},
                                     "model_sha256": sha256_file(path / MODEL_FILE), **provenance()})
    return path


def load_export(path: str | os.PathLike) -> Export:
    """Read an export directory (or the model.safetensors inside it)."""
    path = Path(path)
    if path.is_file() and path.name == MODEL_FILE:
        path = path.parent
    missing = [f for f in (MODEL_FILE, CONFIG_FILE) if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"not an rws export: {path} lacks {', '.join(missing)}. An export directory holds "
            f"{MODEL_FILE}, {CONFIG_FILE} and {METRICS_FILE}; train.py writes one to <run_dir>/export.")
    state, _ = load_safetensors(path / MODEL_FILE)
    check_finite(state, source=str(path / MODEL_FILE))
    model_cfg = load_model_config(path)
    metrics: dict[str, Any] = {}
    if (path / METRICS_FILE).is_file():
        import json

        metrics = json.loads((path / METRICS_FILE).read_text())
    return Export(path=path, model_cfg=model_cfg, state_dict=state, metrics=metrics)


def load_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """The resolved model config (model.yaml) of an export directory (or of the model.safetensors
    inside it), without reading its weights."""
    path = Path(path)
    if path.name == MODEL_FILE:
        path = path.parent
    return OmegaConf.to_container(OmegaConf.load(path / CONFIG_FILE), resolve=True)


def check_finite(state: dict[str, torch.Tensor], source: str) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{source}: non-finite values (NaN/inf) in {len(bad)} tensor(s): {bad[:10]}")


def state_dict_mismatches(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable list of missing / unexpected keys and shape mismatches."""
    out = [f"missing: {k} {tuple(expected[k].shape)}" for k in expected if k not in got]
    out += [f"unexpected: {k} {tuple(got[k].shape)}" for k in got if k not in expected]
    out += [f"shape: {k} expected {tuple(expected[k].shape)}, got {tuple(got[k].shape)}"
            for k in expected if k in got and expected[k].shape != got[k].shape]
    return out


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict with a readable error that lists every mismatch."""
    problems = state_dict_mismatches(model.state_dict(), state)
    if problems:
        shown = "\n  ".join(problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        raise ValueError(f"{source} does not match the model architecture "
                         f"({len(problems)} problem(s)):\n  {shown}{more}")
    model.load_state_dict(state, strict=True)

