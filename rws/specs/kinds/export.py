"""``{kind: export, path: DIR}``: a trained model, read from its export directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from rws.specs.context import BuildContext
from rws.specs.registry import SpecError, SpecKind, register_kind
from rws.weights.export import load_export


def check_export(spec: dict[str, Any], where: str) -> None:
    if not isinstance(spec["path"], str) or not spec["path"]:
        raise SpecError(f"{where}.path must be an export directory path, got {spec['path']!r}")


def build_export(spec: dict[str, Any], ctx: BuildContext) -> nn.Module:
    return load_export(spec["path"]).build(ctx.device)


def export_name(spec: dict[str, Any], name_of: Callable[[Any], str]) -> str:
    # Exports live at .../<run_name>/<timestamp>/export: skip 'export' and timestamp-like parts.
    parts = [p for p in Path(str(spec["path"])).parts if p not in ("export", "model.safetensors", "/", "")]
    for part in reversed(parts):
        if not part[:1].isdigit():
            return part
    return parts[-1] if parts else "model"


KIND = register_kind(SpecKind(name="export", required=("path",), build=build_export, check=check_export,
                              display=export_name))
