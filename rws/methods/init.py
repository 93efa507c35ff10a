"""Load a starting point (``init=``) into a fresh model with a strict key/shape check."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from rws.utils.io import torch_load
from rws.weights.export import MODEL_FILE, load_export, load_state_strict


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


def skipped_keys(model: nn.Module, skip: Sequence[str]) -> list[str]:
    """Keys of ``model`` matched by ``skip``: regexes, or the word ``head`` for the classifier."""
    keys = list(model.state_dict())
    out: set[str] = set()
    for pattern in skip:
        if pattern == "head":
            from rws.models import head_keys

            out.update(head_keys(model))
        else:
            rx = re.compile(pattern)
            out.update(k for k in keys if rx.search(k))
    return [k for k in keys if k in out]


def load_init(model: nn.Module, path: str | Path, skip: Sequence[str] = ()) -> list[str]:
    """Load ``path`` into ``model``; keys matched by ``skip`` keep the model's fresh values (a new
    head for another number of classes). Everything else must match exactly. Returns the skipped keys."""
    state = read_init_state(path)
    own = model.state_dict()
    skipped = skipped_keys(model, skip) if skip else []
    if skipped:
        state = {**{k: v for k, v in state.items() if k not in skipped}, **{k: own[k] for k in skipped}}
    load_state_strict(model, state, source=f"init={path}")
    return skipped
