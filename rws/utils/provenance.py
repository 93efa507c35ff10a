"""What produced a file: git commit, library versions, host. Recorded in every results file."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

_LIBS = ("torch", "torchvision", "pytorch-lightning", "hydra-core", "omegaconf", "timm",
         "torchattacks", "torchmetrics", "safetensors", "numpy", "wandb", "rws")


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the rws checkout (with '-dirty' when there are local changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBS:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


def provenance() -> dict:
    return {
        "git_commit": git_commit(),
        "versions": library_versions(),
        "host": platform.node(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
