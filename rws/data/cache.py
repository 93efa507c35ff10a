"""Decoded-image cache: a folder of image files -> one uint8 tensor file, decoded once.

The key hashes the sorted relative file list with sizes and mtimes plus the target size, so
adding, removing or touching a file, or asking for another resolution, makes a new entry
instead of silently serving stale pixels.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from rws.data import image_folder
from rws.utils.io import torch_load, torch_save

log = logging.getLogger("rws.data")

CACHE_VERSION = 1  # bump when the decode pipeline changes pixels (resize method, colour conversion)


def default_cache_dir() -> Path:
    return Path(os.environ.get("RWS_CACHE", "~/.cache/rws")).expanduser()


def cache_key(root: str | Path, files: Sequence[Path], labels: Sequence[int], size: int) -> str:
    root = Path(root)
    h = hashlib.sha256(f"v{CACHE_VERSION}|size={size}|n={len(files)}".encode())
    for f, y in zip(files, labels):
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}|{st.st_size}|{st.st_mtime_ns}|{y}\n".encode())
    return h.hexdigest()[:20]


def load_or_decode(root: str | Path, files: Sequence[Path], labels: Sequence[int], size: int,
                   cache_dir: str | Path | None = None, tag: str = "images",
                   workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Return (x uint8 (N,3,size,size), y int64 (N,), key), decoding only on a cache miss."""
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    key = cache_key(root, files, labels, size)
    path = cache_dir / "decoded" / f"{tag}-{size}px-{key}.pt"
    if path.is_file():
        try:
            blob = torch_load(path)
            return blob["x"], blob["y"], key
        except Exception as e:  # a truncated or foreign file: decode again and overwrite it
            log.warning("ignoring unreadable cache file %s (%s)", path, e)
    log.info("decoding %d images from %s into %s", len(files), root, path)
    x = image_folder.decode_files(files, size, workers=workers, desc=f"decoding {tag}")
    y = torch.as_tensor(list(labels), dtype=torch.int64)
    torch_save({"x": x, "y": y, "key": key}, path)
    return x, y, key
