"""Per-example correctness of every measured cell, next to the result rows:

    <out>/correct/<suite>.<condition>[@<level>].<settings>/<spec_id>.safetensors   {"correct": uint8 (n,)}

One folder per measured cell (and settings), one file per model, in data-source order, so a
selection step (best soup per target, the few-shot study) or a union over threats needs no
re-evaluation. The file's metadata holds the cell and its full settings as JSON. A file is written
before the cell's rows, so a row on disk implies its correctness file (for rows of this engine).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from rws.evaluation.cells import Cell
from rws.evaluation.results import level_str
from rws.utils.io import load_safetensors, save_safetensors

CORRECT_DIR = "correct"


def cell_folder(suite: str, condition: str, level: Any, settings: str) -> str:
    lvl = level_str(level)
    return f"{suite}.{condition}{'@' + lvl if lvl else ''}.{settings}"


class CorrectnessStore:
    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory) / CORRECT_DIR

    def path(self, spec_id: str, cell: Cell, settings: str) -> Path:
        return self.dir / cell_folder(cell.suite, cell.condition, cell.level, settings) / f"{spec_id}.safetensors"

    def has(self, spec_id: str, cell: Cell, settings: str) -> bool:
        return self.path(spec_id, cell, settings).is_file()

    def save(self, spec_id: str, cell: Cell, settings: str, resolved: Mapping[str, Any],
             correct: torch.Tensor) -> Path:
        meta = {"suite": cell.suite, "condition": cell.condition, "level": level_str(cell.level),
                "settings": json.dumps(resolved, sort_keys=True, default=str)}
        return save_safetensors({"correct": correct.to(torch.uint8).contiguous()}, self.path(spec_id, cell, settings),
                                metadata=meta)

    def load(self, spec_id: str, cell: Cell, settings: str) -> torch.Tensor:
        return load_safetensors(self.path(spec_id, cell, settings))[0]["correct"].bool()
