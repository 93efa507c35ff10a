"""Lightning checkpoint I/O that is atomic on save and never unpickles code on load.

Lightning's TorchCheckpointIO writes the file in place, so a crash mid-write leaves a truncated
checkpoint that ``resume`` would then choke on; we write to a temp file and rename.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from rws.utils.io import torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
