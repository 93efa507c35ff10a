"""Exports: the hand-off between training and every post-hoc stage.

An export directory holds
    model.safetensors  the state dict (no 'model.' prefix, no optimizer state)
    model.yaml         the resolved model config; ``create_model(**cfg)`` rebuilds the module
    metrics.json       final metrics, run config, git commit, library versions

Reading an export needs neither Lightning nor pickle.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from rws.utils.io import atomic_path, json_text, load_safetensors, sha256_file
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
    """Write model.safetensors, model.yaml and metrics.json into ``path``, so that a crash at any
    point never leaves new weights beside an old model.yaml or metrics.json (e.g. a resumed run
    re-exporting into its run dir). All three are written whole to temp files first (until then the
    old export is untouched); then the old model.yaml and metrics.json are removed and the three
    renamed into place: weights, model.yaml, metrics.json (the file pipelines take for "done") last.
    A kill leaves the old export, one that ``load_export`` refuses (no model.yaml), or weights and
    model.yaml of the new one (metrics.json missing)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    check_finite(state, source=str(path / MODEL_FILE))
    cfg = {"_target_": _FACTORY, **{k: v for k, v in model_cfg.items() if k != "_target_"}}
    with ExitStack() as stack:  # atomic_path renames on exit, in the reverse order of entry
        tmp_metrics = stack.enter_context(atomic_path(path / METRICS_FILE))
        tmp_cfg = stack.enter_context(atomic_path(path / CONFIG_FILE))
        tmp_model = stack.enter_context(atomic_path(path / MODEL_FILE))
        save_file(state, str(tmp_model), metadata={"format": "rws-export-v1"})
        tmp_cfg.write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
        tmp_metrics.write_text(json_text({"metrics": metrics or {}, "config": run_cfg or {},
                                          "model_sha256": sha256_file(tmp_model), **provenance()}))
        for name in (METRICS_FILE, CONFIG_FILE):
            (path / name).unlink(missing_ok=True)
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
            f"{MODEL_FILE}, {CONFIG_FILE} and {METRICS_FILE}; train.py writes one to <run_dir>/export "
            f"(one whose writing was killed lacks {CONFIG_FILE}: rerun the job that writes it).")
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

