"""Load a starting point (``init=``) into a fresh model with a strict key/shape check."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rws.weights.export import MODEL_FILE, load_export, load_state_strict
from rws.utils.io import torch_load


def read_init_state(path: str | Path) -> dict[str, torch.Tensor]:
    """State dict of an export dir / model.safetensors / Lightning .ckpt (keys as in ``Normalized``)."""
    path = Path(path)
    if path.is_dir() or path.name == MODEL_FILE:
        return load_export(path).state_dict
    if path.suffix == ".ckpt":
        ckpt = torch_load(path)
        state = ckpt.get("state_dict", ckpt)
        prefix = "model."
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    raise FileNotFoundError(f"init={path}: expected an export directory (with {MODEL_FILE}), "
                            f"a {MODEL_FILE} file, or a Lightning .ckpt")


def load_init(model: nn.Module, path: str | Path) -> None:
    load_state_strict(model, read_init_state(path), source=f"init={path}")
