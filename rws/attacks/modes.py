"""Keep a model's train/eval flags exactly as they were around an attack.

``nn.Module.train()`` / ``.eval()`` recurse, so any attack that flips the mode (torchattacks calls
``model.eval()`` and later ``model.train()``) would also flip submodules a caller had deliberately
frozen in eval mode (e.g. BN layers kept in eval while fine-tuning). Recording every module's flag
and writing each one back is the only way to undo that faithfully.

These are train/eval *flags*. A model's *modes* (clean/robust adapters, a β mix) are another
contract: rws.models.contracts (``using_mode``, ``ModeView``), which attacks honour by attacking
through a ``ModeView`` or inside ``using_mode``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


def module_modes(model: nn.Module) -> dict[str, bool]:
    """``{qualified name: training flag}`` for the model and all its submodules."""
    return {name: m.training for name, m in model.named_modules()}


def restore_modes(model: nn.Module, modes: dict[str, bool]) -> None:
    for name, m in model.named_modules():
        if name in modes:
            m.training = modes[name]


@contextmanager
def preserve_modes(model: nn.Module, mode: str | None = None) -> Iterator[nn.Module]:
    """Optionally switch ``model`` to ``mode`` ("eval" | "train") and restore every flag on exit."""
    if mode not in (None, "eval", "train"):
        raise ValueError(f"model_mode must be 'eval' or 'train', got {mode!r}")
    saved = module_modes(model)
    try:
        if mode == "eval":
            model.eval()
        elif mode == "train":
            model.train()
        yield model
    finally:
        restore_modes(model, saved)
